"""The features stage: row statistics and products of the features most related to the label.

Chosen on the training split only, applied to both splits; deterministic.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import pandas as pd

from mlpipeline.sources import DataError
from mlpipeline.storage import LABEL, ensure_out_dir, feature_columns, read_parquet, write_parquet


def _top_features(train: pd.DataFrame, features: list[str], label: str, k: int) -> list[str]:
    """The `k` features with the highest ANOVA F score against the label (ties: column order)."""
    from sklearn.feature_selection import f_classif

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant columns give F = nan
        warnings.simplefilter("ignore", UserWarning)  # ... and a "Features [...] are constant" warning
        scores, _ = f_classif(train[features].to_numpy(dtype=_float_dtype(train, features)), train[label].to_numpy())
    scores = np.nan_to_num(scores, nan=0.0, posinf=0.0)
    order = np.argsort(-scores, kind="stable")
    return [features[i] for i in order[:k]]


def _float_dtype(frame: pd.DataFrame, features: list[str]) -> type[np.floating]:
    """float32 when every feature is float32 (preprocess_data's default output), else float64."""
    return np.float32 if all(frame[c].dtype == np.float32 for c in features) else np.float64


def _derive(frame: pd.DataFrame, features: list[str], pairs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    dtype = _float_dtype(frame, features)
    x = frame[features].to_numpy(dtype=dtype)
    derived = {
        "row_mean": x.mean(axis=1),
        "row_std": x.std(axis=1),
        "row_min": x.min(axis=1),
        "row_max": x.max(axis=1),
    }
    for a, b in pairs:
        derived[f"{a}_x_{b}"] = frame[a].to_numpy(dtype=dtype) * frame[b].to_numpy(dtype=dtype)
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
    """
    out = ensure_out_dir(out_dir)
    train = read_parquet(train_path, "training split")
    holdout = read_parquet(holdout_path, "holdout split")
    features = feature_columns(train, label, str(train_path))
    missing = [c for c in features if c not in holdout.columns]
    if missing:
        raise DataError(f"holdout split {holdout_path} lacks feature columns: {', '.join(missing)}")
    top = _top_features(train, features, label, max(0, top_k))
    pairs = [(a, b) for i, a in enumerate(top) for b in top[i + 1 :]]
    outputs = {"train_path": out / "train_features.parquet", "holdout_path": out / "holdout_features.parquet"}
    derived_names: list[str] = []
    for key, frame in (("train_path", train), ("holdout_path", holdout)):
        derived = _derive(frame, features, pairs)
        clash = [name for name in derived if name in features or name == label]
        if clash:
            raise DataError(f"derived feature names clash with existing columns: {', '.join(clash)}")
        result = pd.concat(
            [frame[features], pd.DataFrame(derived, index=frame.index), frame[[label]]], axis=1
        )
        write_parquet(result, outputs[key])
        derived_names = list(derived)
        del result, derived
    return {
        "train_path": str(outputs["train_path"]),
        "holdout_path": str(outputs["holdout_path"]),
        "features": len(features) + len(derived_names),
        "derived": derived_names,
        "selected": top,
        "seed": seed,
    }
