"""The preprocess stage: a stratified train/holdout split, imputed and scaled with train's statistics.

Seeded: the same input and seed give the same output bytes.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import pandas as pd

from mlpipeline.files import atomic_write_json
from mlpipeline.sources import DataError
from mlpipeline.storage import LABEL, ensure_out_dir, feature_columns, read_parquet, write_parquet


def _fill_medians(x: np.ndarray, medians: np.ndarray | None = None) -> np.ndarray:
    """Median imputation in place; the medians are computed from `x` unless given.

    Same result as SimpleImputer(strategy="median", keep_empty_features=True), but linear:
    np.nanmedian selects (np.partition) where SimpleImputer sorts a masked array, which took
    most of this stage's time on a million rows. An all-null column gets 0.
    """
    if medians is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice encountered"
            medians = np.nan_to_num(np.nanmedian(x, axis=0), nan=0.0)
    missing = np.isnan(x)
    if missing.any():
        rows, cols = np.nonzero(missing)
        x[rows, cols] = medians[cols]
    return medians


def preprocess_data(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    label: str = LABEL,
    test_size: float = 0.2,
    seed: int = 42,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Stratified train/holdout split, then median imputation and standard scaling fitted on train only.

    Statistics are computed in float64; the scaled features are stored as `dtype` (float32 by
    default: standardised features lose nothing that matters at float32 precision, and it halves
    the size, I/O and memory of every later stage and lets the solvers run in float32).
    Writes `out_dir/train.parquet`, `out_dir/holdout.parquet` and `out_dir/preprocessing.json`
    (the fitted medians, means and scales).
    """
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be between 0 and 1 (exclusive), got {test_size}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    out = ensure_out_dir(out_dir)
    df = read_parquet(path)
    features = feature_columns(df, label, str(path))
    y = df[label].to_numpy()
    x = df[features].to_numpy(dtype=np.float64)
    del df
    try:
        train_idx, hold_idx = train_test_split(
            np.arange(len(y)), test_size=test_size, random_state=seed, stratify=y
        )
    except ValueError as exc:
        raise DataError(f"cannot split {path} into train and holdout (stratified): {exc}") from exc
    x_train, x_hold = x[train_idx], x[hold_idx]
    del x
    medians = _fill_medians(x_train)
    _fill_medians(x_hold, medians)
    scaler = StandardScaler(copy=False)
    x_train = scaler.fit_transform(x_train)
    x_hold = scaler.transform(x_hold)
    paths = {"train_path": out / "train.parquet", "holdout_path": out / "holdout.parquet"}
    for key, xs, idx in (("train_path", x_train, train_idx), ("holdout_path", x_hold, hold_idx)):
        part = pd.DataFrame(xs.astype(dtype, copy=False), columns=features, copy=False)
        part[label] = y[idx]
        write_parquet(part, paths[key])
    params = {
        "features": features,
        "label": label,
        "test_size": test_size,
        "seed": seed,
        "dtype": dtype,
        "median": [float(v) for v in medians],
        "mean": [float(v) for v in scaler.mean_],
        "scale": [float(v) for v in scaler.scale_],
    }
    params_path = atomic_write_json(out / "preprocessing.json", params)
    return {
        "train_path": str(paths["train_path"]),
        "holdout_path": str(paths["holdout_path"]),
        "rows_train": len(train_idx),
        "rows_holdout": len(hold_idx),
        "preprocessing_path": params_path,
    }
