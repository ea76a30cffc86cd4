"""The DAGs, tested with Airflow itself.

Airflow reads its configuration once per process, so every Airflow call here runs in a
child process with its own AIRFLOW_HOME, SQLite database and data root (migrated once
per module): the tests stay independent of whatever else the pytest session imported.
The child prints one ``RESULT <json>`` line that the test asserts on.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlpipeline.model_deployment import ModelRegistry
from mlpipeline.notifications import read_log

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
PIPELINE_CHAIN = [
    "download_data", "validate_data", "preprocess_data", "feature_engineering",
    "train_model", "evaluate_model", "deploy_model", "send_notification",
]
MONITORING_CHAIN = [
    "check_dag_runs", "check_task_failures", "check_scheduler_health", "generate_health_report", "send_alerts",
]

DRIVER = textwrap.dedent(
    r'''
    import json, sys, datetime as dt
    from airflow.dag_processing.dagbag import DagBag

    def seconds(td):
        return None if td is None else td.total_seconds()

    bag = DagBag(dag_folder=sys.argv[2])
    mode = sys.argv[1]
    if mode == "describe":
        out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
        for dag in bag.dags.values():
            out["dags"][dag.dag_id] = {
                "timetable": getattr(dag.timetable, "expression", None),
                "schedule": str(dag.schedule) if hasattr(dag, "schedule") else None,
                "catchup": dag.catchup,
                "tags": sorted(dag.tags),
                "start_date": dag.start_date.isoformat(),
                "start_tz": dag.start_date.utcoffset().total_seconds(),
                "max_active_runs": dag.max_active_runs,
                "default_args": {
                    k: (seconds(v) if isinstance(v, dt.timedelta) else v if isinstance(v, (int, float, str)) else repr(v))
                    for k, v in dag.default_args.items()
                },
                "tasks": {
                    t.task_id: {
                        "upstream": sorted(t.upstream_task_ids),
                        "downstream": sorted(t.downstream_task_ids),
                        "pool": t.pool,
                        "execution_timeout": seconds(t.execution_timeout),
                        "retries": t.retries,
                        "retry_delay": seconds(t.retry_delay),
                        "retry_exponential_backoff": t.retry_exponential_backoff,
                        "has_failure_callback": bool(t.on_failure_callback),
                    }
                    for t in dag.tasks
                },
                "params": {k: dag.params.get_param(k).dump() for k in dag.params},
                "deadline": [
                    {
                        "reference": type(d.reference).__name__,
                        "interval": seconds(d.interval),
                        "callback": type(d.callback).__name__,
                        "path": d.callback.path,
                    }
                    for d in (dag.deadline or [])
                ],
            }
        print("RESULT " + json.dumps(out, default=str))
    elif mode == "refuse":
        dag = bag.get_dag(sys.argv[3])
        results = []
        for conf in json.loads(sys.argv[4]):
            try:
                dag.test(run_conf=conf)
                results.append({"error": None})
            except Exception as exc:
                results.append({"error": type(exc).__name__, "message": str(exc)})
        print("RESULT " + json.dumps(results))
    elif mode == "run":
        dag = bag.get_dag(sys.argv[3])
        conf = json.loads(sys.argv[4])
        # The DAG keeps its Deadline Alert: mlwf's Airflow plugin fixes dag.test()'s lookup of it.
        try:
            dr = dag.test(run_conf=conf)
        except Exception as exc:
            print("RESULT " + json.dumps({"error": type(exc).__name__, "message": str(exc)}))
            sys.exit(0)
        tis = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dr.get_task_instances()}
        xcom, keys = {}, {}
        for ti in dr.get_task_instances():
            if str(getattr(ti.state, "value", ti.state)) == "success":
                from airflow.models.xcom import XComModel
                from airflow.utils.session import create_session
                with create_session() as s:
                    query = XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=ti.task_id, key="return_value")
                    row = s.scalars(query).first()
                    xcom[ti.task_id] = XComModel.deserialize_value(row) if row is not None else None
                    every = XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=ti.task_id)
                    keys[ti.task_id] = sorted({r.key for r in s.scalars(every)})
        print("RESULT " + json.dumps({"state": str(getattr(dr.state, "value", dr.state)), "run_id": dr.run_id, "tis": tis, "xcom": xcom, "xcom_keys": keys}, default=str))
    '''
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AirflowEnv:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "airflow"
        self.data = root / "data"
        self.home.mkdir(parents=True)
        self.driver = root / "driver.py"
        self.driver.write_text(DRIVER)
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLWF_"))
        } | {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "MLWF_DATA_ROOT": str(self.data),
            "PYTHONPATH": str(REPO / "src"),
        }

    def run(self, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args], env=self.env | (env or {}), cwd=self.root,
            capture_output=True, text=True, timeout=timeout,
        )

    def driver_result(self, *args: str, env: dict | None = None) -> dict:
        out = self.run(str(self.driver), args[0], str(DAGS), *args[1:], env=env)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        assert lines, f"driver failed (rc {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
        return json.loads(lines[-1][len("RESULT "):])

    def run_dag(self, dag_id: str, conf: dict | None = None, env: dict | None = None) -> dict:
        return self.driver_result("run", dag_id, json.dumps(conf or {}), env=env)


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory) -> AirflowEnv:
    af = AirflowEnv(tmp_path_factory.mktemp("airflow_dags"))
    migrate = af.run("-m", "airflow", "db", "migrate", timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    return af


@pytest.fixture(scope="module")
def described(airflow_env) -> dict:
    return airflow_env.driver_result("describe")


# ------------------------------------------------------------------ structure


def test_dag_folder_imports_without_errors(described):
    assert described["import_errors"] == {}
    assert set(described["dags"]) == {"ml_pipeline_dag", "monitoring_dag"}


def _assert_chain(tasks: dict, chain: list[str]) -> None:
    assert sorted(tasks) == sorted(chain)
    for before, after in zip(chain, chain[1:]):
        assert tasks[before]["downstream"] == [after]
        assert tasks[after]["upstream"] == [before]
    assert tasks[chain[0]]["upstream"] == [] and tasks[chain[-1]]["downstream"] == []


def test_ml_pipeline_dag_structure(described):
    d = described["dags"]["ml_pipeline_dag"]
    _assert_chain(d["tasks"], PIPELINE_CHAIN)
    assert d["timetable"] == d["schedule"] == "0 2 * * *"
    assert d["catchup"] is False
    assert d["start_tz"] == 0.0 and "mlwf" in d["tags"]
    args = d["default_args"]
    assert args["retries"] == 2 and args["retry_delay"] == 60.0
    assert args["retry_exponential_backoff"] == 2.0  # a multiplier in 3.3; True would mean 1.0 = no backoff
    assert args["execution_timeout"] > 0
    for task_id, t in d["tasks"].items():
        assert t["retries"] == 2 and t["retry_delay"] == 60.0 and t["retry_exponential_backoff"] == 2.0, task_id
        assert t["execution_timeout"] and t["execution_timeout"] > 0, task_id
        assert t["has_failure_callback"], task_id
        assert t["pool"] == ("ml_training" if task_id == "train_model" else "default_pool"), task_id
    assert d["deadline"] == [
        {
            "reference": "DagRunQueuedAtDeadline", "interval": 120 * 60.0, "callback": "SyncCallback",
            "path": "mlpipeline.notifications.deadline_missed",
        }
    ]


def test_ml_pipeline_params_are_typed(described):
    from mlpipeline.model_training import MODEL_TYPES
    from mlpipeline.storage import LABEL

    params = described["dags"]["ml_pipeline_dag"]["params"]
    assert params["source"]["value"] == "sklearn:breast_cancer" and params["source"]["schema"]["type"] == "string"
    assert params["model_type"]["schema"]["enum"] == list(MODEL_TYPES)
    assert params["thresholds"]["schema"]["type"] == ["null", "object"]
    assert params["seed"]["schema"]["type"] == "integer"
    assert {"tolerance", "test_size", "sha256", "model_params", "min_rows"} <= set(params)
    assert LABEL == "target"


def test_monitoring_dag_structure(described):
    d = described["dags"]["monitoring_dag"]
    _assert_chain(d["tasks"], MONITORING_CHAIN)
    assert d["schedule"] == "@hourly" and d["timetable"] == "0 * * * *" and d["catchup"] is False
    assert all(t["execution_timeout"] for t in d["tasks"].values())


@pytest.mark.slow
def test_airflow_dags_test_runs_the_pipeline_with_its_deadline_and_exits_0(airflow_env):
    """Airflow 3.3.2 alone exits 1 after the last task; mlwf's plugin (an `airflow.plugins`
    entry point) fixes the deadline lookup in every Airflow process of this environment."""
    plugins = airflow_env.run("-m", "airflow", "plugins", "--output", "json")
    assert plugins.returncode == 0, plugins.stderr[-2000:]
    assert "mlwf_fixes" in plugins.stdout
    result = airflow_env.run("-m", "airflow", "dags", "test", "ml_pipeline_dag")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "has no attribute 'hex'" not in output
    assert "DagRun Finished: dag_id=ml_pipeline_dag" in output and "state=success" in output


def test_bad_conf_is_refused_before_any_task(airflow_env):
    confs = [
        {"model_type": "svm"}, {"seed": "forty"}, {"thresholds": {"accuracy": 3}}, {"test_size": 0},
        {"source": "ftp://example.org/data.csv"}, {"source": "sklearn:boston"}, {"source": "s3:bucket/key.csv"},
    ]
    runs = airflow_env.data / "runs"
    before = sorted(runs.iterdir()) if runs.exists() else []  # other tests of the module may have run the pipeline
    results = airflow_env.driver_result("refuse", "ml_pipeline_dag", json.dumps(confs))
    for conf, result in zip(confs, results, strict=True):
        assert result["error"] == "ParamValidationError", (conf, result)
    assert (sorted(runs.iterdir()) if runs.exists() else []) == before  # no task ran: no run folder was made


# ------------------------------------------------------------------ runs


@pytest.mark.slow
def test_pipeline_run_leaves_a_production_model(airflow_env):
    result = airflow_env.run_dag("ml_pipeline_dag", {"source": "sklearn:breast_cancer"})
    assert result["state"] == "success", result
    assert set(result["tis"].values()) == {"success"}
    deployment = result["xcom"]["deploy_model"]["deployment"]
    assert deployment["promoted"] is True
    registry = ModelRegistry(airflow_env.data / "registry")
    version = registry.production_version()
    assert version == deployment["version"]
    meta = registry.verify(version)
    assert meta["metrics"] == result["xcom"]["evaluate_model"]["metrics"]
    assert meta["metrics"]["accuracy"] > 0.9
    assert meta["run_id"] == result["run_id"] and meta["data_fingerprint"]
    assert meta["dag_git_commit"] is None or len(meta["dag_git_commit"]) == 40
    assert meta["library_versions"]["apache-airflow"] == "3.3.2"
    model, _ = registry.load(version)
    assert hasattr(model, "predict")
    # XCom stays small: paths, counts, metrics, one value a task (not one a dict key: 108 API calls a run)
    assert all(len(json.dumps(v)) < 8000 for v in result["xcom"].values())
    assert result["xcom_keys"] == {task: ["return_value"] for task in result["tis"]}
    events = [r["event"] for r in read_log(airflow_env.data / "notifications.jsonl")]
    assert "model_promoted" in events


@pytest.mark.slow
def test_run_on_invalid_data_stops_before_training(airflow_env):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    bad = pd.DataFrame({"a": rng.normal(size=60), "b": [np.nan] * 60, "target": [1] * 60})
    csv = airflow_env.data / "inputs" / "single_class.csv"  # data files are read from the data root
    csv.parent.mkdir(parents=True, exist_ok=True)
    bad.to_csv(csv, index=False)
    before = set(ModelRegistry(airflow_env.data / "registry").list_versions())

    result = airflow_env.run_dag("ml_pipeline_dag", {"source": str(csv)})
    assert result["state"] == "failed"
    assert result["tis"]["download_data"] == "success"
    assert result["tis"]["validate_data"] == "failed"
    for task_id in PIPELINE_CHAIN[2:]:
        assert result["tis"][task_id] == "upstream_failed", task_id
    assert set(ModelRegistry(airflow_env.data / "registry").list_versions()) == before
    runs = airflow_env.data / "runs"
    run_dir = next(p for p in runs.iterdir() if (p / "download").exists() and not (p / "train").exists())
    report = json.loads((run_dir / "validate" / "validation.json").read_text())
    assert report["passed"] is False
    failed = [r for r in read_log(airflow_env.data / "notifications.jsonl") if r["event"] == "task_failed"]
    assert failed and failed[-1]["payload"]["task_id"] == "validate_data"
    assert failed[-1]["payload"]["try_number"] == 1  # validation errors are not retried


@pytest.mark.slow
def test_a_damaged_production_pointer_fails_deploy_at_once_and_promotes_nothing(airflow_env):
    registry = ModelRegistry(airflow_env.data / "registry")
    if registry.production_version() is None:
        assert airflow_env.run_dag("ml_pipeline_dag", {})["state"] == "success"
    before = set(registry.list_versions())
    good = registry.pointer_path.read_bytes()
    registry.pointer_path.write_bytes(good[: len(good) // 2])  # cut by a crash, as far as a reader can tell
    try:
        result = airflow_env.run_dag("ml_pipeline_dag", {})
        assert result["state"] == "failed" and result["tis"]["deploy_model"] == "failed", result
        assert registry.pointer_path.read_bytes() == good[: len(good) // 2]
        assert set(registry.list_versions()) == before
        failed = [r for r in read_log(airflow_env.data / "notifications.jsonl") if r["event"] == "task_failed"]
        assert failed[-1]["payload"]["task_id"] == "deploy_model"
        assert failed[-1]["payload"]["try_number"] == 1  # not retried: a retry cannot repair it
        assert f"production pointer {registry.pointer_path} is damaged" in failed[-1]["message"]
    finally:
        registry.pointer_path.write_bytes(good)


# ------------------------------------------------------------------ monitoring


class _FakeAirflowApi:
    """Answers the monitoring endpoints with a healthy deployment (the all-ok branch)."""

    def __init__(self) -> None:
        import datetime as dt

        now = dt.datetime.now(dt.timezone.utc).isoformat()
        self.seen: list[str] = []
        bodies = {
            "/auth/token": {"access_token": "t"},
            "/api/v2/monitor/health": {"scheduler": {"status": "healthy", "latest_scheduler_heartbeat": now}},
            "/api/v2/importErrors": {"import_errors": [], "total_entries": 0},
            "/api/v2/dags/~/dagRuns": {
                "dag_runs": [{"dag_id": "ml_pipeline_dag", "dag_run_id": "r1", "state": "success", "start_date": now}],
                "total_entries": 1,
            },
            "/api/v2/dags/~/dagRuns/~/taskInstances": {"task_instances": [], "total_entries": 0},
        }
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                path = self.path.split("?")[0]
                fake.seen.append(f"{self.command} {self.path}")
                body = bodies.get(path)
                if "state=running" in self.path:
                    body = {"dag_runs": [], "total_entries": 0}
                data = json.dumps(body or {"detail": "not found"}).encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_monitoring_alerts_when_the_api_is_unreachable(airflow_env):
    env = {"MLWF_AIRFLOW_URL": f"http://127.0.0.1:{_free_port()}", "MLWF_AIRFLOW_USER": "admin"}
    result = airflow_env.run_dag("monitoring_dag", env=env)
    assert result["state"] == "success", result
    assert result["tis"]["send_alerts"] == "success"
    assert result["xcom_keys"] == {task: ["return_value"] for task in result["tis"]}
    report = result["xcom"]["generate_health_report"]
    assert report["worst"] == "critical"
    findings = json.loads(Path(report["report_path"]).read_text())["findings"]
    assert {f["rule"] for f in findings} == {"api_reachable"}
    alerts = [r for r in read_log(airflow_env.data / "notifications.jsonl") if r["event"] == "health_alert"]
    assert alerts and alerts[-1]["severity"] == "critical" and "unreachable" in alerts[-1]["message"]


@pytest.mark.slow
def test_monitoring_skips_alerts_when_all_is_ok(airflow_env):
    api = _FakeAirflowApi()
    try:
        before = len(read_log(airflow_env.data / "notifications.jsonl"))
        # the connection form (AIRFLOW_CONN_MLWF_API) wins over MLWF_AIRFLOW_URL
        host = api.url.removeprefix("http://")
        env = {"AIRFLOW_CONN_MLWF_API": f"http://admin:pw@{host}", "MLWF_AIRFLOW_URL": "http://127.0.0.1:1"}
        result = airflow_env.run_dag("monitoring_dag", env=env)
    finally:
        api.close()
    assert result["state"] == "success", result
    assert result["tis"]["send_alerts"] == "skipped"
    assert result["xcom"]["generate_health_report"]["worst"] == "ok"
    assert len(read_log(airflow_env.data / "notifications.jsonl")) == before
    assert any(s.startswith("POST /auth/token") for s in api.seen)
    assert any("start_date_gte" in s for s in api.seen)


# ------------------------------------------------------------------ the deadline alert, for real


@pytest.mark.stack
@pytest.mark.slow
def test_missed_deadline_notifies_through_the_webhook(make_stack):
    """A stack whose DAG deadline is ~1 s: the scheduler queues the callback, the executor runs it,
    and mlpipeline.notifications logs it and POSTs it to a real local webhook."""
    import time
    import httpx

    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    stack = make_stack()
    stack.env["MLWF_DEADLINE_MINUTES"] = "0.02"
    stack.env["MLWF_WEBHOOK_URL"] = f"http://127.0.0.1:{hook.server_address[1]}/deadline"
    try:
        stack.up()
        stack.wait_for_dags(["ml_pipeline_dag"])
        headers = {"Authorization": f"Bearer {stack.token()}"}
        with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:
            client.patch("/api/v2/dags/ml_pipeline_dag", json={"is_paused": False}).raise_for_status()
            client.post("/api/v2/dags/ml_pipeline_dag/dagRuns", json={"logical_date": None}).raise_for_status()
            client.patch("/api/v2/dags/ml_pipeline_dag", json={"is_paused": True})
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any(r["event"] == "deadline_missed" for r in received):
            time.sleep(1)
    finally:
        stack.mlwf("down", timeout=120)
        hook.shutdown()
        hook.server_close()
    missed = [r for r in received if r["event"] == "deadline_missed"]
    assert missed, f"no deadline notification; webhook got {received}"
    assert missed[0]["payload"]["dag_id"] == "ml_pipeline_dag" and missed[0]["severity"] == "warning"
    logged = [r for r in read_log(stack.home / "data" / "notifications.jsonl") if r["event"] == "deadline_missed"]
    assert logged and logged[0]["webhook"]["status"] == "sent"
