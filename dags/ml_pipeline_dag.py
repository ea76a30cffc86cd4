"""ml_pipeline_dag: download -> validate -> preprocess -> features -> train -> evaluate -> deploy -> notify.

Wiring and configuration only: the work lives in ``mlpipeline.*`` (plain Python, unit-tested),
imported inside each task so parsing this file stays cheap. Tasks exchange data through files
under ``<MLWF_DATA_ROOT>/runs/<run id>/<stage>/`` written atomically; XCom carries one small,
growing dict (paths, row counts, metrics) along the chain, so the only edges are the chain's.
Each task pushes that dict whole (``multiple_outputs=False``): from the ``-> dict`` annotation
Airflow would infer one XCom per key, 108 API calls a run instead of 8.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from airflow.sdk import DeadlineAlert, DeadlineReference, Param, SyncCallback, dag, task

from mlpipeline.pools import TRAINING_POOL  # stdlib only: cheap at parse time
from mlpipeline.sources import SOURCE_HELP, SOURCE_PATTERN

DAG_ID = "ml_pipeline_dag"
LABEL = "target"  # mlpipeline.storage.LABEL (checked by tests/test_dags.py)
MODEL_TYPES = ("logistic_regression", "random_forest", "gradient_boosting")  # = model_training.MODEL_TYPES
CODE_DIR = str(Path(__file__).resolve().parent)


def _deadline_minutes() -> float:
    from mlpipeline.settings import DEFAULT_DEADLINE_MINUTES, SettingsError, load_settings

    try:
        return load_settings().deadline_minutes
    except SettingsError:
        return DEFAULT_DEADLINE_MINUTES


def _notify_task_failure(context: Any) -> None:
    """on_failure_callback: a task failed for good (retries exhausted or a non-retryable error)."""
    from mlpipeline.notifications import notify

    ti = context["ti"]
    error = context.get("exception")
    notify(
        "task_failed",
        f"{ti.dag_id}.{ti.task_id} failed in run {ti.run_id}: {error}",
        severity="critical",
        payload={"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id, "try_number": ti.try_number},
    )


DEFAULT_ARGS = {
    "owner": "mlwf",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=1),
    # A multiplier in Airflow 3.3 (True would be 1.0: a constant delay). 2.0 doubles it per try.
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=10),
    "execution_timeout": dt.timedelta(minutes=30),
    "on_failure_callback": _notify_task_failure,
}

PARAMS = {
    # The form is checked at trigger time; the limits that need the task's environment (allowed
    # folders) or arithmetic (synthetic sizes) by the download task before it reads anything.
    "source": Param(
        "sklearn:breast_cancer", type="string", minLength=1, pattern=SOURCE_PATTERN, description=SOURCE_HELP
    ),
    "sha256": Param(
        None, type=["null", "string"], pattern="^[0-9a-fA-F]{64}$",
        description="expected sha256 of a downloaded file (URL sources)",
    ),
    "model_type": Param("logistic_regression", type="string", enum=list(MODEL_TYPES)),
    "model_params": Param({}, type="object", description="hyper-parameters for the estimator"),
    "test_size": Param(0.2, type="number", exclusiveMinimum=0, maximum=0.5),
    "seed": Param(42, type="integer", minimum=0),
    "max_null_fraction": Param(0.2, type="number", minimum=0, maximum=1),
    "max_duplicate_fraction": Param(0.1, type="number", minimum=0, maximum=1),
    "min_rows": Param(10, type="integer", minimum=2),
    "thresholds": Param(
        None, type=["null", "object"],
        additionalProperties={"type": "number", "minimum": 0, "maximum": 1},
        description="promotion gate, metric -> minimum (null: MLWF_THRESHOLDS or the defaults)",
    ),
    "tolerance": Param(
        None, type=["null", "number"], minimum=0, maximum=0.5,
        description="how much worse than production a candidate may be (null: MLWF_PROMOTION_TOLERANCE)",
    ),
}


def _settings():
    from mlpipeline.settings import load_settings

    return load_settings()


def _metric(name: str, value: Any, kind: str = "gauge", **tags: Any) -> None:
    from mlpipeline.pipeline_metrics import publish

    if value is not None:
        publish(name, value, kind, dag_id=DAG_ID, **tags)


def _count(value: Any) -> int:
    """A list (names) or a number: keep XCom small by passing only the count."""
    return len(value) if isinstance(value, (list, tuple)) else int(value)


def _fail_fast(exc: Exception) -> None:
    """Errors a retry cannot fix (bad data, bad source) fail the task at once."""
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


@dag(
    dag_id=DAG_ID,
    description="Train, evaluate and (if it passes the gate) promote a model",
    schedule="0 2 * * *",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["mlwf", "ml"],
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(minutes=_deadline_minutes()),
        callback=SyncCallback(
            "mlpipeline.notifications.deadline_missed",
            kwargs={"deadline_minutes": _deadline_minutes()},
        ),
    ),
    doc_md=__doc__,
)
def ml_pipeline_dag() -> None:
    @task(multiple_outputs=False, execution_timeout=dt.timedelta(minutes=20))
    def download_data(params: dict | None = None, run_id: str | None = None) -> dict:
        from mlpipeline import download
        from mlpipeline.settings import SettingsError
        from mlpipeline.sources import DataError

        try:
            settings = _settings()
            raw = download.download_data(params["source"], settings.run_dir(run_id, "download"),
                                         sha256=params["sha256"], settings=settings)
        except SettingsError as exc:
            _fail_fast(exc)
        except DataError as exc:
            if not exc.retryable:
                _fail_fast(exc)  # a network source may recover on retry; a bad source or file will not
            raise
        _metric("rows_processed", raw["rows"], stage="download")
        return {
            "run_id": run_id,
            "source": raw["source"],
            "raw_path": raw["path"],
            "rows": raw["rows"],
            "columns": _count(raw["columns"]),
            "fingerprint": raw["fingerprint"],
        }

    @task(multiple_outputs=False, execution_timeout=dt.timedelta(minutes=20))
    def validate_data(state: dict, params: dict | None = None) -> dict:
        from mlpipeline import validation
        from mlpipeline.sources import DataError

        out = _settings().run_dir(state["run_id"], "validate")
        try:
            report = validation.validate_data(
                state["raw_path"], out, label=LABEL,
                max_null_fraction=params["max_null_fraction"],
                max_duplicate_fraction=params["max_duplicate_fraction"],
                min_rows=params["min_rows"],
            )
        except validation.DataValidationError as exc:
            _metric("validation_failures", len(exc.failures))
            _fail_fast(exc)
        except DataError as exc:
            _fail_fast(exc)
        _metric("validation_failures", 0)
        _metric("rows_processed", report["rows"], stage="validate")
        return {**state, "validation_report": report["report_path"]}

    @task(multiple_outputs=False, execution_timeout=dt.timedelta(minutes=30))
    def preprocess_data(state: dict, params: dict | None = None) -> dict:
        from mlpipeline import preprocessing

        out = _settings().run_dir(state["run_id"], "preprocess")
        r = preprocessing.preprocess_data(
            state["raw_path"], out, label=LABEL, test_size=params["test_size"], seed=params["seed"]
        )
        _metric("rows_processed", r["rows_train"] + r["rows_holdout"], stage="preprocess")
        return {
            **state, "rows_train": r["rows_train"], "rows_holdout": r["rows_holdout"],
            "pre_train_path": r["train_path"], "pre_holdout_path": r["holdout_path"],
        }

    @task(multiple_outputs=False, execution_timeout=dt.timedelta(minutes=30))
    def feature_engineering(state: dict, params: dict | None = None) -> dict:
        from mlpipeline import features

        out = _settings().run_dir(state["run_id"], "features")
        r = features.feature_engineering(
            state["pre_train_path"], state["pre_holdout_path"], out, label=LABEL, seed=params["seed"]
        )
        return {**state, "train_path": r["train_path"], "holdout_path": r["holdout_path"], "features": _count(r["features"])}

    @task(multiple_outputs=False, pool=TRAINING_POOL, execution_timeout=dt.timedelta(hours=2))
    def train_model(state: dict, params: dict | None = None) -> dict:
        from mlpipeline import model_training as mt

        out = _settings().run_dir(state["run_id"], "train")
        try:
            r = mt.train_model(
                state["train_path"], out, model_type=params["model_type"], params=params["model_params"] or None,
                label=LABEL, seed=params["seed"],
            )
        except ValueError as exc:  # bad hyper-parameters or untrainable data: a retry will not help
            _fail_fast(exc)
        _metric("training_seconds", r["training_seconds"], "timer", model_type=r["model_type"])
        _metric("rows_processed", r["train_rows"], stage="train")
        return {
            **state, "model_path": r["model_path"], "model_type": r["model_type"],
            "model_params": r["params"], "training_seconds": r["training_seconds"],
        }

    @task(multiple_outputs=False, execution_timeout=dt.timedelta(minutes=30))
    def evaluate_model(state: dict) -> dict:
        from mlpipeline import model_training as mt

        out = _settings().run_dir(state["run_id"], "evaluate")
        r = mt.evaluate_model(state["model_path"], state["holdout_path"], out, label=LABEL)
        metrics = {k: r[k] for k in ("accuracy", "precision", "recall", "f1", "roc_auc")}
        return {**state, "metrics": metrics, "metrics_path": r["metrics_path"]}

    @task(multiple_outputs=False, execution_timeout=dt.timedelta(minutes=10))
    def deploy_model(state: dict, params: dict | None = None) -> dict:
        import os

        from mlpipeline.model_deployment import PointerDamagedError
        from mlpipeline.model_deployment import deploy_model as deploy

        settings = _settings()
        try:
            result = deploy(
                state["model_path"], state["metrics"],
                registry_root=settings.registry_dir,
                thresholds=params["thresholds"] or settings.thresholds,
                tolerance=settings.tolerance if params["tolerance"] is None else params["tolerance"],
                metadata={
                    "run_id": state["run_id"], "dag_id": DAG_ID, "data_source": state["source"],
                    "data_fingerprint": state["fingerprint"], "data_rows": state["rows"],
                    "model_type": state["model_type"], "model_params": state["model_params"],
                    "training_seconds": state["training_seconds"], "features": state["features"],
                },
                code_path=CODE_DIR,
            )
        except PointerDamagedError as exc:  # a retry cannot repair it; the message says how
            _fail_fast(exc)
        if result["promoted"] and os.environ.get("MLWF_SERVING_URL"):  # the stack serves models: prove it
            from mlpipeline.model_deployment import ServedMismatchError, verify_served

            try:
                result["served"] = verify_served(
                    os.environ["MLWF_SERVING_URL"], result["version"], state["model_path"], state["holdout_path"],
                    label=LABEL,
                )
            except ServedMismatchError as exc:
                _fail_fast(exc)
        for name, value in state["metrics"].items():
            _metric(f"model_{name}", value, version=result["version"], model_type=state["model_type"])
        _metric("model_promoted", 1 if result["promoted"] else 0, version=result["version"])
        return {**state, "deployment": result}

    @task(multiple_outputs=False, execution_timeout=dt.timedelta(minutes=5))
    def send_notification(state: dict) -> dict:
        from mlpipeline.notifications import notify

        d = state["deployment"]
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in state["metrics"].items() if v is not None)
        verdict = "promoted to production" if d["promoted"] else "registered, NOT promoted"
        record = notify(
            "model_promoted" if d["promoted"] else "model_not_promoted",
            f"{DAG_ID} run {state['run_id']}: model {d['version']} {verdict} ({metrics}); {d['reason']}",
            severity="info" if d["promoted"] else "warning",
            payload={
                "run_id": state["run_id"], "version": d["version"], "promoted": d["promoted"],
                "production_version": d["production_version"], "metrics": state["metrics"],
            },
        )
        return {"event": record["event"], "webhook": record["webhook"]["status"], "version": d["version"]}

    state = download_data()
    state = validate_data(state)
    state = preprocess_data(state)
    state = feature_engineering(state)
    state = train_model(state)
    state = evaluate_model(state)
    state = deploy_model(state)
    send_notification(state)


ml_pipeline_dag()
