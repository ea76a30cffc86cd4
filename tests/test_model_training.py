"""mlpipeline.model_training on real files: train, evaluate, and skops save/load with an allow-list."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from mlpipeline import model_training as mt
from mlpipeline.download import download_data
from mlpipeline.features import feature_engineering
from mlpipeline.model_training import ModelError, UntrustedModelError
from mlpipeline.preprocessing import preprocess_data
from mlpipeline.sources import DataError
from mlpipeline.storage import LABEL, OutputDirError

METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")


def prepared(root: Path, source: str) -> dict:
    raw = download_data(source, root)
    split = preprocess_data(raw["path"], root)
    return feature_engineering(split["train_path"], split["holdout_path"], root)


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return prepared(tmp_path_factory.mktemp("binary"), "sklearn:breast_cancer")


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return prepared(tmp_path_factory.mktemp("multiclass"), "sklearn:wine")


def predictions(model_path: str, data_path: str) -> np.ndarray:
    data = pd.read_parquet(data_path).drop(columns=LABEL)
    return mt.load_model(model_path).predict_proba(data)


# --------------------------------------------------------------------------- train + evaluate


@pytest.mark.parametrize("model_type", mt.MODEL_TYPES)
def test_train_and_evaluate_each_model_type(tmp_path: Path, binary: dict, model_type: str) -> None:
    params = {"random_forest": {"n_estimators": 20}, "gradient_boosting": {"max_iter": 20}}.get(model_type)
    trained = mt.train_model(binary["train_path"], tmp_path, model_type=model_type, params=params, seed=3)
    assert trained["model_path"] == str(tmp_path / "model.skops")
    assert trained["model_type"] == model_type
    assert trained["params"]["random_state"] == 3
    assert trained["train_rows"] == 455 and trained["n_features"] == binary["features"]
    assert trained["training_seconds"] >= 0 and trained["classes"] == [0, 1]
    assert trained["model_sha256"] == hashlib.sha256(Path(trained["model_path"]).read_bytes()).hexdigest()
    json.dumps(trained)  # fit for XCom
    metrics = mt.evaluate_model(trained["model_path"], binary["holdout_path"], tmp_path)
    assert metrics["rows"] == 114 and metrics["average"] == "binary"
    for name in METRICS:
        assert 0.85 <= metrics[name] <= 1.0, (name, metrics[name])
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["metrics_path"] == str(tmp_path / "metrics.json")
    assert written == {k: v for k, v in metrics.items() if k != "metrics_path"}


def test_multiclass_uses_macro_averages_and_ovr_auc(tmp_path: Path, multiclass: dict) -> None:
    trained = mt.train_model(multiclass["train_path"], tmp_path)
    metrics = mt.evaluate_model(trained["model_path"], multiclass["holdout_path"], tmp_path)
    assert trained["classes"] == [0, 1, 2]
    assert metrics["average"] == "macro" and metrics["rows"] == 36
    assert metrics["roc_auc"] > 0.95 and metrics["f1"] > 0.9


@pytest.mark.parametrize("model_type", mt.MODEL_TYPES)
@pytest.mark.parametrize("data", ["binary", "multiclass"])
def test_metrics_match_scikit_learn_directly(tmp_path: Path, model_type: str, data: str, request) -> None:
    """One pass over the holdout (the most probable class) gives the metrics of the model's own
    predict and predict_proba."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    split = request.getfixturevalue(data)
    params = {"random_forest": {"n_estimators": 20}, "gradient_boosting": {"max_iter": 20}}.get(model_type)
    trained = mt.train_model(split["train_path"], tmp_path, model_type=model_type, params=params)
    metrics = mt.evaluate_model(trained["model_path"], split["holdout_path"], tmp_path)
    holdout = pd.read_parquet(split["holdout_path"])
    model = mt.load_model(trained["model_path"])
    x, y = holdout.drop(columns=LABEL), holdout[LABEL]
    predicted, proba = model.predict(x), model.predict_proba(x)
    assert metrics["accuracy"] == accuracy_score(y, predicted)
    average = "binary" if data == "binary" else "macro"
    for name, score in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        assert metrics[name] == pytest.approx(score(y, predicted, average=average, zero_division=0)), name
    if data == "binary":
        assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, proba[:, 1]))
    else:
        assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


@pytest.mark.parametrize("model_type", ["logistic_regression", "random_forest"])
def test_training_is_reproducible(tmp_path: Path, binary: dict, model_type: str) -> None:
    params = {"n_estimators": 15} if model_type == "random_forest" else None
    runs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        trained = mt.train_model(binary["train_path"], tmp_path / name, model_type=model_type, params=params, seed=seed)
        metrics = mt.evaluate_model(trained["model_path"], binary["holdout_path"], tmp_path / name)
        runs.append((predictions(trained["model_path"], binary["holdout_path"]), {k: metrics[k] for k in METRICS}))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    if model_type == "random_forest":  # the seed reaches the estimator
        assert not np.array_equal(runs[0][0], runs[2][0])


def test_user_params_override_defaults(tmp_path: Path, binary: dict) -> None:
    trained = mt.train_model(binary["train_path"], tmp_path, params={"C": 0.5, "solver": "lbfgs", "random_state": 1})
    assert trained["params"] == {"C": 0.5, "solver": "lbfgs", "max_iter": 1000, "random_state": 1}
    model = mt.load_model(trained["model_path"])
    assert (model.C, model.solver, model.random_state) == (0.5, "lbfgs", 1)


def test_unknown_model_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model_type 'svm'; choose one of logistic_regression, random_forest"):
        mt.train_model(tmp_path / "not-needed.parquet", tmp_path, model_type="svm")


@pytest.mark.parametrize(
    ("model_type", "params", "message"),
    [
        ("logistic_regression", {"n_estimators": 5}, "unknown parameter\\(s\\) for logistic_regression: n_estimators"),
        ("random_forest", {"max_depht": 3}, "unknown parameter\\(s\\) for random_forest: max_depht; valid: .*max_depth"),
        ("logistic_regression", {"C": -1.0}, "invalid parameters for logistic_regression .*'C' parameter"),
        ("random_forest", {"n_estimators": "many"}, "invalid parameters for random_forest"),
        ("gradient_boosting", {"learning_rate": -0.1}, "invalid parameters for gradient_boosting"),
        ("logistic_regression", [("C", 1.0)], "must be a mapping"),
        ("logistic_regression", {"C": object()}, "must be JSON values"),
    ],
)
def test_bad_params(tmp_path: Path, binary: dict, model_type: str, params: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        mt.train_model(binary["train_path"], tmp_path, model_type=model_type, params=params)
    assert not isinstance(info.value, DataError)
    assert not (tmp_path / "model.skops").exists()


def test_training_data_problems(tmp_path: Path) -> None:
    one_class = pd.DataFrame({"x": np.arange(20.0), LABEL: 1})
    one_class.to_parquet(tmp_path / "one.parquet", index=False)
    with pytest.raises(DataError, match="cannot train logistic_regression"):
        mt.train_model(tmp_path / "one.parquet", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        mt.train_model(tmp_path / "missing.parquet", tmp_path)
    one_class.drop(columns=LABEL).to_parquet(tmp_path / "nolabel.parquet", index=False)
    with pytest.raises(DataError, match="no label column"):
        mt.train_model(tmp_path / "nolabel.parquet", tmp_path)


def test_train_out_dir_not_writable(tmp_path: Path, binary: dict) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="not writable"):
        mt.train_model(binary["train_path"], tmp_path / "file" / "out")


def test_evaluate_bad_holdouts(tmp_path: Path, binary: dict) -> None:
    trained = mt.train_model(binary["train_path"], tmp_path)
    holdout = pd.read_parquet(binary["holdout_path"])
    holdout.drop(columns=["row_mean"]).to_parquet(tmp_path / "fewer.parquet", index=False)
    with pytest.raises(DataError, match="lacks features the model was trained on: row_mean"):
        mt.evaluate_model(trained["model_path"], tmp_path / "fewer.parquet", tmp_path)
    # one class in the holdout: ROC AUC is undefined and reported as None, the rest still computed
    holdout[holdout[LABEL] == 1].to_parquet(tmp_path / "ones.parquet", index=False)
    metrics = mt.evaluate_model(trained["model_path"], tmp_path / "ones.parquet", tmp_path)
    assert metrics["roc_auc"] is None and json.loads(Path(metrics["metrics_path"]).read_text())["roc_auc"] is None
    assert 0.9 < metrics["recall"] <= 1.0
    with pytest.raises(ModelError, match="cannot read model file"):
        mt.evaluate_model(tmp_path / "missing.skops", binary["holdout_path"], tmp_path)


# --------------------------------------------------------------------------- save / load


def test_save_and_load_round_trip(tmp_path: Path, binary: dict) -> None:
    train = pd.read_parquet(binary["train_path"])
    model = LogisticRegression(max_iter=500).fit(train.drop(columns=LABEL), train[LABEL])
    path = tmp_path / "sub" / "m.skops"
    digest = mt.save_model(model, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert zipfile.is_zipfile(path) and "schema.json" in zipfile.ZipFile(path).namelist()  # skops, not pickle
    loaded = mt.load_model(path)
    x = train.drop(columns=LABEL)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    assert list(loaded.feature_names_in_) == list(x.columns)
    assert [p.name for p in path.parent.iterdir()] == ["m.skops"]  # no temporary file left


@pytest.mark.parametrize(
    ("model_type", "params", "needs"),
    [
        ("random_forest", {"n_estimators": 5}, ["sklearn.tree._tree.Tree"]),
        ("gradient_boosting", {"max_iter": 5},
         ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]),
    ],
)
def test_tree_models_round_trip_with_the_allow_list(tmp_path: Path, binary: dict, model_type, params, needs) -> None:
    assert set(mt.TRUSTED_TYPES) == {"sklearn.tree._tree.Tree",
                                     "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"}
    trained = mt.train_model(binary["train_path"], tmp_path, model_type=model_type, params=params)
    assert sio.get_untrusted_types(file=trained["model_path"]) == needs
    with pytest.raises(sio.exceptions.UntrustedTypesFoundException):  # skops alone refuses them
        sio.load(trained["model_path"])
    loaded = mt.load_model(trained["model_path"])
    x = pd.read_parquet(binary["holdout_path"]).drop(columns=LABEL)
    fresh, _ = mt.build_estimator(model_type, params)
    fresh.fit(pd.read_parquet(binary["train_path"]).drop(columns=LABEL), pd.read_parquet(binary["train_path"])[LABEL])
    np.testing.assert_array_equal(loaded.predict_proba(x), fresh.predict_proba(x))  # seeded: the same model
    assert trained["params"]["n_jobs" if model_type == "random_forest" else "max_iter"] == (
        -1 if model_type == "random_forest" else 5)


def test_gradient_boosting_is_the_histogram_estimator(tmp_path: Path, binary: dict) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    trained = mt.train_model(binary["train_path"], tmp_path, model_type="gradient_boosting", params={"max_iter": 5})
    model = mt.load_model(trained["model_path"])
    assert isinstance(model, HistGradientBoostingClassifier) and model.n_iter_ == 5


def test_a_large_forest_grows_fewer_trees_on_bounded_bootstrap_samples(tmp_path: Path) -> None:
    data = prepared(tmp_path / "data", "synthetic:rows=260000,features=4,seed=1")
    rows = 208000  # the 80 % training split
    assert rows > mt.FOREST_BOOTSTRAP_ROWS > mt.FOREST_LARGE_ROWS
    fast = {"n_estimators": 2}  # the caller's own value wins: two trees keep this test quick
    sized = mt.train_model(data["train_path"], tmp_path / "a", model_type="random_forest", params=fast)
    assert sized["train_rows"] == rows
    assert sized["params"] | {"random_state": 0} == {
        "n_estimators": 2, "n_jobs": -1, "min_samples_leaf": 2, "max_samples": mt.FOREST_BOOTSTRAP_ROWS,
        "random_state": 0}
    model = mt.load_model(sized["model_path"])
    assert (model.max_samples, model.min_samples_leaf, len(model.estimators_)) == (mt.FOREST_BOOTSTRAP_ROWS, 2, 2)
    own = mt.train_model(data["train_path"], tmp_path / "b", model_type="random_forest",
                         params={**fast, "max_samples": 0.5, "min_samples_leaf": 1})
    assert (own["params"]["max_samples"], own["params"]["min_samples_leaf"]) == (0.5, 1)
    whole = mt.train_model(data["train_path"], tmp_path / "c", model_type="random_forest",
                           params={**fast, "bootstrap": False})
    assert "max_samples" not in whole["params"] and whole["params"]["min_samples_leaf"] == 2
    small = prepared(tmp_path / "small", "sklearn:breast_cancer")
    plain = mt.train_model(small["train_path"], tmp_path / "d", model_type="random_forest")["params"]
    assert plain == {"n_estimators": 100, "n_jobs": -1, "random_state": 42}  # scikit-learn's defaults, every core


def test_untrusted_content_is_refused(tmp_path: Path) -> None:
    """A model file that would call os.system when used is refused before anything is built."""
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10) % 2
    evil = make_pipeline(FunctionTransformer(func=os.system), LogisticRegression())
    evil.steps[1][1].fit(x, y)
    path = tmp_path / "evil.skops"
    path.write_bytes(sio.dumps(evil))
    with pytest.raises(UntrustedModelError, match=r"refusing to load .*evil\.skops.*untrusted types .*system"):
        mt.load_model(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "not a skops model file"), (b"\x80\x04K\x01.", "not a skops model file"),
     (b"PK\x03\x04 truncated zip", "not a skops model file")],
    ids=["empty", "pickle", "broken-zip"],
)
def test_unreadable_model_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.skops"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        mt.load_model(path)


def test_a_file_that_holds_no_model(tmp_path: Path) -> None:
    path = tmp_path / "array.skops"
    path.write_bytes(sio.dumps(np.arange(3)))
    with pytest.raises(ModelError, match="holds a ndarray, not a scikit-learn model"):
        mt.load_model(path)
    with pytest.raises(ModelError, match="cannot read model file"):
        mt.load_model(tmp_path / "missing.skops")


AIRFLOW_THEN_TRAINING = """
import warnings
import airflow.sdk  # noqa: F401  (a task process has Airflow loaded)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("default")
    import mlpipeline.model_training  # noqa: F401
print(sum(1 for w in caught if "airflow" in str(w.message)))
"""


def test_importing_the_training_module_beside_airflow_logs_no_airflow_deprecations():
    """skops scans every loaded module as it is imported: beside Airflow (a task process, `mlwf
    test`) that was ~1,160 of Airflow's deprecation warnings in the task's log."""
    import subprocess
    import sys

    answer = subprocess.run([sys.executable, "-c", AIRFLOW_THEN_TRAINING], capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr[-2000:]
    assert answer.stdout.strip().splitlines()[-1] == "0"
