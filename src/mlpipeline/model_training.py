"""Training tasks of the ML pipeline: train, evaluate, and save/load models safely.

Plain Python, no Airflow import. Models are stored with skops, a format whose loading
runs no code: `load_model` refuses any file that holds a type outside an explicit
allow-list. Training is seeded (`random_state`), so the same data, parameters and seed
give the same predictions and metrics.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score
from sklearn.utils._param_validation import InvalidParameterError

from mlpipeline.files import atomic_write_bytes, atomic_write_json
from mlpipeline.sources import DataError
from mlpipeline.storage import LABEL, ensure_out_dir, read_parquet

with warnings.catch_warnings():
    # skops looks through every loaded module for types as it is imported; in a task process,
    # where Airflow is loaded, that reads each of Airflow's deprecated attributes once: ~1,160
    # "The `airflow.… attribute is deprecated" warnings in the task's log (`mlwf test`, `airflow
    # dags test`). They are about Airflow's names, not this code's: not shown.
    warnings.filterwarnings("ignore", message=r"The `airflow\.", category=FutureWarning)
    import skops.io as sio

MODEL_TYPES = ("logistic_regression", "random_forest", "gradient_boosting")
MODEL_FILE = "model.skops"

_ESTIMATORS: dict[str, type[BaseEstimator]] = {
    "logistic_regression": LogisticRegression,
    "random_forest": RandomForestClassifier,
    # histogram-based: bins each feature once, then builds trees on every core (OpenMP); at
    # 800k rows x 30 features ~10 s where the exact GradientBoostingClassifier takes minutes
    "gradient_boosting": HistGradientBoostingClassifier,
}
# Defaults we choose on top of scikit-learn's; `random_state` always comes from the seed
# unless the caller sets it.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    # newton-cholesky converges in a few iterations when rows >> features (our case): on 800k
    # rows x 30 features it fits ~4x faster than lbfgs to the same accuracy.
    "logistic_regression": {"solver": "newton-cholesky", "max_iter": 1000},
    # trees are independent: build them on every core
    "random_forest": {"n_estimators": 100, "n_jobs": -1},
    "gradient_boosting": {},
}
# A forest of fully grown trees costs time and memory in proportion to trees x rows per tree:
# scikit-learn's defaults (100 trees on bootstraps as large as the data) take ~10 minutes and
# several GiB at 800k rows here. Beyond FOREST_LARGE_ROWS training rows a forest therefore
# defaults to fewer trees, each on a bootstrap sample of at most FOREST_BOOTSTRAP_ROWS rows,
# with leaves of at least 2 rows; any of them the caller sets wins. At a million rows this
# fits in 31-50 s on the 2-core machines measured (the pipeline's 60 s budget, end to end,
# on the slower one), within 0.01 accuracy and ROC AUC of the defaults (BENCHMARKS.md);
# fewer, larger samples beat more, smaller ones there (100 trees on 40k rows each: -0.016).
FOREST_LARGE_ROWS = 100_000
FOREST_BOOTSTRAP_ROWS = 200_000
FOREST_LARGE_DEFAULTS: dict[str, Any] = {"n_estimators": 26, "min_samples_leaf": 2}

# Types a model file may contain beyond skops' own audited defaults (scikit-learn estimators,
# numpy arrays and dtypes, builtins). The forest needs its Cython Tree class, the histogram
# gradient boosting its TreePredictor (a plain class holding numpy arrays, whose __setstate__
# only sets attributes and casts the nodes array to its own dtype). Never extend this with
# skops.io.get_untrusted_types(): that would trust whatever a file holds.
TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
)


class ModelError(ValueError):
    """A model file is missing, unreadable, or not a model."""


class UntrustedModelError(ModelError):
    """A model file holds types outside the allow-list; it was not loaded."""


# --------------------------------------------------------------------------- save / load


def save_model(model: BaseEstimator, path: str | os.PathLike[str]) -> str:
    """Serialise `model` with skops to `path` atomically; return the file's sha256."""
    target = Path(path)
    ensure_out_dir(target.parent)
    return atomic_write_bytes(target, sio.dumps(model))


def load_model(path: str | os.PathLike[str]) -> BaseEstimator:
    """Load a skops model file, trusting only skops' defaults plus TRUSTED_TYPES.

    Raises UntrustedModelError (naming the offending types) before anything is constructed
    when the file holds any other type, and ModelError when it is not a readable model.
    """
    source = Path(path)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file {source}: {exc.strerror or exc}") from exc
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # zipfile.BadZipFile, KeyError/JSON errors from a damaged schema
        raise ModelError(f"{source} is not a skops model file: {type(exc).__name__}: {exc}") from exc
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise UntrustedModelError(f"refusing to load {source}: it contains untrusted types {', '.join(refused)}")
    try:
        model = sio.loads(data, trusted=list(TRUSTED_TYPES))
    except sio.exceptions.UntrustedTypesFoundException as exc:  # pragma: no cover - caught above
        raise UntrustedModelError(f"refusing to load {source}: {exc}") from exc
    except Exception as exc:
        raise ModelError(f"cannot load model {source}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, BaseEstimator) or not hasattr(model, "predict"):
        raise ModelError(f"{source} holds a {type(model).__name__}, not a scikit-learn model")
    return model


# --------------------------------------------------------------------------- train


def build_estimator(model_type: str, params: dict[str, Any] | None = None, *, seed: int = 42) -> tuple[BaseEstimator, dict[str, Any]]:
    """The unfitted estimator for `model_type` and the effective parameters set on it.

    Unknown model types or parameter names raise ValueError; bad values raise ValueError
    when the estimator is fitted.
    """
    if model_type not in _ESTIMATORS:
        raise ValueError(f"unknown model_type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError(f"params for {model_type} must be a mapping, got {type(params).__name__}")
    estimator = _ESTIMATORS[model_type]()
    valid = estimator.get_params(deep=False)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) for {model_type}: {', '.join(map(str, unknown))}; "
            f"valid: {', '.join(sorted(valid))}"
        )
    effective = {**DEFAULT_PARAMS[model_type], "random_state": seed, **params}
    try:
        json.dumps(effective)
    except TypeError as exc:
        raise ValueError(f"params for {model_type} must be JSON values: {exc}") from exc
    estimator.set_params(**effective)
    return estimator, effective


def _defaults_for_rows(model_type: str, params: dict[str, Any], rows: int) -> dict[str, Any]:
    """Defaults that depend on the number of training rows (the caller's own parameters win)."""
    if model_type != "random_forest" or rows <= FOREST_LARGE_ROWS:
        return {}
    sized = dict(FOREST_LARGE_DEFAULTS)
    if params.get("bootstrap", True) and rows > FOREST_BOOTSTRAP_ROWS:
        sized["max_samples"] = FOREST_BOOTSTRAP_ROWS
    return {k: v for k, v in sized.items() if k not in params}


def _features_and_label(frame: Any, label: str, what: str) -> tuple[Any, np.ndarray]:
    if label not in frame.columns:
        raise DataError(f"{what} has no label column {label!r}")
    return frame.drop(columns=[label]), frame[label].to_numpy()


def train_model(
    train_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model_type: str = "logistic_regression",
    params: dict[str, Any] | None = None,
    label: str = LABEL,
    seed: int = 42,
) -> dict[str, Any]:
    """Fit the chosen estimator on the training split and save it to `out_dir/model.skops`."""
    estimator, effective = build_estimator(model_type, params, seed=seed)
    out = ensure_out_dir(out_dir)
    x, y = _features_and_label(read_parquet(train_path, "training split"), label, str(train_path))
    sized = _defaults_for_rows(model_type, params or {}, len(y))
    estimator.set_params(**sized)
    effective = {**effective, **sized}
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            estimator.fit(x, y)
        except InvalidParameterError as exc:
            raise ValueError(f"invalid parameters for {model_type} {effective}: {exc}") from exc
        except ValueError as exc:
            raise DataError(f"cannot train {model_type} on {train_path}: {exc}") from exc
    seconds = time.perf_counter() - started
    model_path = out / MODEL_FILE
    sha256 = save_model(estimator, model_path)
    return {
        "model_path": str(model_path),
        "model_type": model_type,
        "params": effective,
        "train_rows": len(y),
        "training_seconds": round(seconds, 3),
        "model_sha256": sha256,
        "n_features": int(x.shape[1]),
        "classes": [c.item() if isinstance(c, np.generic) else c for c in estimator.classes_],
        "warnings": sorted({str(w.message).strip().splitlines()[0] for w in caught}),
    }


# --------------------------------------------------------------------------- evaluate


def evaluate_model(
    model_path: str | os.PathLike[str],
    holdout_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    label: str = LABEL,
) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 and ROC AUC of the model on the holdout split.

    Binary problems use the positive (greater) class; multiclass ones macro averages and
    one-vs-rest ROC AUC. `roc_auc` is None when it is undefined (one class in the holdout).
    Writes `out_dir/metrics.json` and returns the metrics plus "metrics_path".

    The model goes over the holdout once: the predicted class is the most probable one, which
    is what a forest's `predict` computes itself; logistic regression and gradient boosting
    decide on their raw score and could differ only where a probability rounds to exactly 0.5.
    A second pass for `predict` cost ~1.3 s of a forest's or gradient boosting's 2.8 s here.
    """
    out = ensure_out_dir(out_dir)
    model = load_model(model_path)
    holdout = read_parquet(holdout_path, "holdout split")
    x, y = _features_and_label(holdout, label, str(holdout_path))
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        missing = [n for n in names if n not in x.columns]
        if missing:
            raise DataError(f"holdout split {holdout_path} lacks features the model was trained on: {', '.join(missing)}")
        x = x[list(names)]
    classes = model.classes_
    binary = len(classes) == 2
    averaging: dict[str, Any] = {"average": "binary", "pos_label": classes[1]} if binary else {"average": "macro"}
    proba = model.predict_proba(x) if hasattr(model, "predict_proba") else None
    predicted = model.predict(x) if proba is None else classes.take(np.argmax(proba, axis=1))
    # The three from one confusion count (each of precision_score, recall_score and f1_score makes its own).
    precision, recall, f1, _ = precision_recall_fscore_support(y, predicted, zero_division=0, **averaging)
    metrics: dict[str, Any] = {
        "accuracy": float(accuracy_score(y, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": _roc_auc(proba, y, classes),
        "rows": len(y),
        "average": averaging["average"],
    }
    metrics_path = out / "metrics.json"
    atomic_write_json(metrics_path, metrics)
    return {**metrics, "metrics_path": str(metrics_path)}


def _roc_auc(proba: np.ndarray | None, y: np.ndarray, classes: np.ndarray) -> float | None:
    if proba is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if len(classes) == 2:
                value = roc_auc_score(y == classes[1], proba[:, 1])
            else:
                value = roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes)
    except ValueError:  # only one class present in y, or labels the model never saw
        return None
    return None if np.isnan(value) else float(value)


__all__ = [
    "DEFAULT_PARAMS",
    "MODEL_TYPES",
    "TRUSTED_TYPES",
    "ModelError",
    "UntrustedModelError",
    "build_estimator",
    "evaluate_model",
    "load_model",
    "save_model",
    "train_model",
]
