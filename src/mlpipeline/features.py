"""The features stage: row statistics and products of the features most related to the label.

Chosen on the training split only, applied to both splits; deterministic.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import pyarrow as pyarrow

from mlpipeline.sources import DataError
from mlpipeline.storage import LABEL, dtypes_frame, ensure_out_dir, feature_columns, float_column, read_table, write_table


def _top_features(x: np.ndarray, y: np.ndarray, features: list[str], k: int) -> list[str]:
    """The `k` features with the highest ANOVA F score against the label (ties: column order)."""
    from sklearn.feature_selection import f_classif

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant columns give F = nan
        warnings.simplefilter("ignore", UserWarning)  # ... and a "Features [...] are constant" warning
        scores, _ = f_classif(x, y)
    scores = np.nan_to_num(scores, nan=0.0, posinf=0.0)
    order = np.argsort(-scores, kind="stable")
    return [features[i] for i in order[:k]]


def _float_dtype(table: pyarrow.Table, features: list[str]) -> type[np.floating]:
    """float32 when every feature is float32 (preprocess_data's default output), else float64."""
    return np.float32 if all(table.schema.field(c).type == pyarrow.float32() for c in features) else np.float64


def _matrix(table: pyarrow.Table, features: list[str], dtype: type[np.floating]) -> np.ndarray:
    """The features as one matrix, column-major as `DataFrame.to_numpy(dtype)` gives it for a frame
    read from Parquet (the layout decides the rounding of the row statistics)."""
    x = np.empty((table.num_rows, len(features)), dtype=dtype, order="F")
    for j, name in enumerate(features):
        x[:, j] = float_column(table, name, dtype)
    return x


def _derive(table: pyarrow.Table, x: np.ndarray, pairs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    derived = {
        "row_mean": x.mean(axis=1),
        "row_std": x.std(axis=1),
        "row_min": x.min(axis=1),
        "row_max": x.max(axis=1),
    }
    for a, b in pairs:
        derived[f"{a}_x_{b}"] = float_column(table, a, x.dtype.type) * float_column(table, b, x.dtype.type)
    return derived


def feature_engineering(
    train_path: str | os.PathLike[str],
    holdout_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    label: str = LABEL,
    seed: int = 42,
    top_k: int = 4,
) -> dict[str, Any]:
    """Add row statistics and pairwise products of the `top_k` most label-related features.

    The features are chosen on the training split only and applied to both splits.
    Deterministic (`seed` is accepted for interface symmetry; nothing here is random).
    Works on Arrow tables: the input columns are written back as they were read, beside the
    derived ones, without a pandas frame in between.
    """
    out = ensure_out_dir(out_dir)
    train = read_table(train_path, "training split")
    holdout = read_table(holdout_path, "holdout split")
    features = feature_columns(dtypes_frame(train), label, str(train_path))
    missing = [c for c in features if c not in holdout.column_names]
    if missing:
        raise DataError(f"holdout split {holdout_path} lacks feature columns: {', '.join(missing)}")
    dtype = _float_dtype(train, features)
    x_train = _matrix(train, features, dtype)
    top = _top_features(x_train, train.column(label).to_pandas().to_numpy(), features, max(0, top_k))
    pairs = [(a, b) for i, a in enumerate(top) for b in top[i + 1 :]]
    outputs = {"train_path": out / "train_features.parquet", "holdout_path": out / "holdout_features.parquet"}
    derived_names: list[str] = []
    for key, table, x in (("train_path", train, x_train), ("holdout_path", holdout, None)):
        derived = _derive(table, _matrix(table, features, dtype) if x is None else x, pairs)
        clash = [name for name in derived if name in features or name == label]
        if clash:
            raise DataError(f"derived feature names clash with existing columns: {', '.join(clash)}")
        columns = [table.column(c) for c in features] + [pyarrow.array(v) for v in derived.values()]
        names = [*features, *derived, label]
        write_table(pyarrow.table([*columns, table.column(label)], names=names), outputs[key])
        derived_names = list(derived)
        del derived, columns, x
    del x_train
    return {
        "train_path": str(outputs["train_path"]),
        "holdout_path": str(outputs["holdout_path"]),
        "features": len(features) + len(derived_names),
        "derived": derived_names,
        "selected": top,
        "seed": seed,
    }
