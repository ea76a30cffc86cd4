"""Metrics end to end and `mlwf health` on the session's real stack (issue 5).

One failing and one successful `ml_pipeline_dag` run are shared by every test here
(module fixture `runs`). Then: the metrics are in the stack's real Prometheus with the
right labels (asked through its HTTP API directly, not through mlwf's client); `mlwf
health --json` reports the failure and its task; `--fail-on` sets the exit code; every
Grafana panel query returns data; and, last (it stops Prometheus, then restores it with
`mlwf up`), the report degrades to the API with exit 9.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from test_exporter_prometheus import Prometheus

pytestmark = [pytest.mark.stack, pytest.mark.slow]

DAG = "ml_pipeline_dag"
TASKS = {
    "download_data", "validate_data", "preprocess_data", "feature_engineering",
    "train_model", "evaluate_model", "deploy_model", "send_notification",
}
FAILING_TASK = "validate_data"
RUN_TIMEOUT_S = 1500
DASHBOARDS = Path(__file__).resolve().parents[1] / "stack" / "grafana" / "dashboards"


# -- helpers --------------------------------------------------------------------------------


class Prom(Prometheus):
    """The stack's Prometheus (started by `mlwf up`, not here), asked over its HTTP API
    with the exporter tests' plain helpers, not with mlwf's client."""

    def __init__(self, port: int) -> None:  # noqa: super().__init__ would start one
        self.url = f"http://127.0.0.1:{port}"

    def wait_for(self, expr: str, check=bool, timeout: float = 90) -> list[dict]:
        # Scrapes and rule evaluations come every 10 s on the stack (1 s in the exporter tests).
        return super().wait_for(expr, check, timeout)


def values(result: list[dict], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


def api_get(stack, path: str, **params) -> dict:
    headers = {"Authorization": f"Bearer {stack.token()}"}
    response = httpx.get(f"{stack.url}/api/v2{path}", params=params, headers=headers, timeout=30)
    response.raise_for_status()
    return response.json()


def wait_run(stack, run_id: str, timeout: float = RUN_TIMEOUT_S) -> dict:
    from urllib.parse import quote

    deadline = time.monotonic() + timeout
    while True:
        run = api_get(stack, f"/dags/{DAG}/dagRuns/{quote(run_id, safe='')}")
        if run["state"] in ("success", "failed"):
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['state']} after {timeout} s"
        time.sleep(3)


def health(stack, *args: str):
    return stack.mlwf("health", *args, timeout=120)


def health_json(stack, *args: str) -> tuple[int, dict]:
    result = health(stack, "--json", "--window", "3h", *args)
    assert result.stdout.strip(), result.stderr
    return result.returncode, json.loads(result.stdout)


def rows(report: dict, section: str) -> dict[str, dict]:
    return {row["name"]: row for row in report["sections"][section]}


# -- the shared runs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(stack) -> dict:
    """A run that fails in validate_data (a one-class label), then a successful one."""
    bad = stack.project / "health-data" / "single_class.csv"  # data files are read from under the project
    bad.parent.mkdir(exist_ok=True)
    bad.write_text("f1,f2,target\n" + "".join(f"{i * 0.1:.1f},{i % 7},1\n" for i in range(40)))
    failing = stack.mlwf(
        "trigger", DAG, "--unpause", "--json", "--conf", json.dumps({"source": str(bad)}), timeout=120
    )
    assert failing.returncode == 0, failing.stderr
    failed_id = json.loads(failing.stdout)["run_id"]
    succeeding = stack.mlwf("trigger", DAG, "--json", timeout=120)
    assert succeeding.returncode == 0, succeeding.stderr
    success_id = json.loads(succeeding.stdout)["run_id"]
    failed, success = wait_run(stack, failed_id), wait_run(stack, success_id)
    assert failed["state"] == "failed", failed
    assert success["state"] == "success", success
    tasks = api_get(stack, f"/dags/{DAG}/dagRuns/{failed_id}/taskInstances")["task_instances"]
    states = {t["task_id"]: t["state"] for t in tasks}
    assert states[FAILING_TASK] == "failed" and states["download_data"] == "success", states
    return {"failed": failed_id, "success": success_id}


@pytest.fixture(scope="module")
def prom(stack, runs) -> Prom:
    p = Prom(stack.ports["prometheus_port"])
    # The last lines of the runs reach Prometheus at the next scrape, derived series one
    # rule evaluation later: wait for the latest of them.
    p.wait_for(f'airflow_task_failed{{dag_id="{DAG}",task_id="{FAILING_TASK}"}} >= 1')
    p.wait_for(f'airflow_dagrun_success{{dag_id="{DAG}"}} >= 1')
    p.wait_for(f'airflow_dagrun_failed{{dag_id="{DAG}"}} >= 1')
    p.wait_for(f'airflow_ti_finish{{dag_id="{DAG}",task_id="send_notification",state="success"}} >= 1')
    return p


# -- metrics in Prometheus ------------------------------------------------------------------


def test_task_metrics_carry_dag_task_and_state_labels(prom):
    durations = prom.query(f'airflow_task_duration{{dag_id="{DAG}"}}')
    assert TASKS <= {r["metric"]["task_id"] for r in durations}
    assert {r["metric"].get("quantile") for r in durations} >= {"0.5", "0.99"}  # a summary
    counts = values(prom.query(f'airflow_task_duration_count{{dag_id="{DAG}"}}'), "task_id")
    assert all(counts[t] >= 1 for t in TASKS), counts
    assert all(v > 0 for v in values(prom.query(f'airflow_task_duration_sum{{dag_id="{DAG}"}}'), "task_id").values())

    failed = values(prom.query(f'airflow_ti_finish{{dag_id="{DAG}",state="failed"}}'), "task_id")
    assert failed.get(FAILING_TASK, 0) >= 1, failed
    succeeded = values(prom.query(f'airflow_ti_finish{{dag_id="{DAG}",state="success"}}'), "task_id")
    assert TASKS <= set(succeeded), succeeded

    derived = values(prom.query(f'airflow_task_failed{{dag_id="{DAG}"}}'), "task_id")
    assert derived[FAILING_TASK] >= 1 and derived["download_data"] == 0, derived
    # The documented query, as written: one series per (dag_id, task_id) that ever started.
    rate = prom.query("rate(airflow_task_failed[5m])")
    assert (DAG, FAILING_TASK) in {(r["metric"]["dag_id"], r["metric"]["task_id"]) for r in rate}


def test_dag_run_and_scheduler_metrics(prom):
    success = values(prom.query("airflow_dagrun_success"), "dag_id")
    failed = values(prom.query("airflow_dagrun_failed"), "dag_id")
    total = values(prom.query("airflow_dagrun_total"), "dag_id")
    assert success[DAG] >= 1 and failed[DAG] >= 1 and total[DAG] == success[DAG] + failed[DAG]
    ratio = values(prom.query("airflow_dagrun_success / airflow_dagrun_total"), "dag_id")
    assert 0 < ratio[DAG] < 1
    states = {r["metric"]["state"] for r in prom.query(f'airflow_dagrun_duration_count{{dag_id="{DAG}"}}')}
    assert states == {"success", "failed"}
    beats = prom.query("airflow_scheduler_heartbeat")
    assert beats and float(beats[0]["value"][1]) > 0
    assert prom.query("rate(airflow_scheduler_heartbeat[1m]) > 0")
    assert values(prom.query("airflow_executor_open_slots"), "executor_class_name")
    assert values(prom.query("airflow_dag_processing_import_errors"), "") == {"": 0.0}


def test_pipeline_metrics(prom):
    stages = values(prom.query(f'mlpipeline_rows_processed{{dag_id="{DAG}"}}'), "stage")
    assert {"download", "validate", "preprocess", "train"} <= set(stages) and stages["validate"] > 0
    assert prom.query(f'mlpipeline_validation_failures{{dag_id="{DAG}"}}')
    for metric in ("accuracy", "f1", "roc_auc"):
        series = prom.query(f'mlpipeline_model_{metric}{{dag_id="{DAG}"}}')
        assert series, metric
        labels = series[0]["metric"]
        assert labels["version"].startswith("v") and labels["model_type"] == "logistic_regression"
        assert 0 < float(series[0]["value"][1]) <= 1
    assert prom.query(f'mlpipeline_model_promoted{{dag_id="{DAG}"}}')
    assert values(prom.query("mlpipeline_training_seconds_count"), "model_type")["logistic_regression"] >= 1


def _panel_queries() -> list[tuple[str, str, str]]:
    found = []

    def walk(panels, dashboard):
        for panel in panels:
            walk(panel.get("panels") or [], dashboard)
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    found.append((dashboard, panel.get("title", "?"), target["expr"]))

    for path in sorted(DASHBOARDS.glob("*.json")):
        walk(json.loads(path.read_text())["panels"], path.name)
    return found


PANELS = _panel_queries()


def test_dashboards_have_panel_queries():
    assert len(PANELS) >= 20  # 24 when written; a dashboard that lost its panels fails here
    assert not [expr for _, _, expr in PANELS if "$" in expr], "panel queries with Grafana variables"


@pytest.mark.parametrize(("dashboard", "title", "expr"), PANELS, ids=[f"{d}:{t}:{e[:40]}" for d, t, e in PANELS])
def test_every_grafana_panel_query_returns_data(prom, dashboard, title, expr):
    # Rates need two samples in their range: wait a few scrapes rather than fail at once.
    result = prom.wait_for(expr, timeout=60)
    assert result, f"{dashboard} panel {title!r}: {expr} returned nothing"


# -- mlwf health ----------------------------------------------------------------------------


def test_health_json_reports_the_failure_and_its_task(stack, runs, prom):
    code, report = health_json(stack)
    assert code == 0, report  # findings do not fail the command without --fail-on
    assert report["degraded"] is False and report["sources"] == {"api": "ok", "prometheus": "ok"}

    failures = rows(report, "task_failures")
    row = failures[f"{DAG}.{FAILING_TASK}"]
    assert row["status"] == "warning" and row["value"] >= 1 and row["source"] == "api"
    assert runs["failed"] in row["detail"]
    assert not any(name.endswith(("download_data", "train_model")) for name in failures)
    assert any(
        f["rule"] == "task_failures" and f["subject"] == f"{DAG}.{FAILING_TASK}" and f["severity"] == "warning"
        for f in report["findings"]
    )
    # No more than the API says, asked independently (the report's window is narrower).
    api_failed = api_get(stack, f"/dags/{DAG}/dagRuns/~/taskInstances", state="failed", limit=100)
    assert sum(t["task_id"] == FAILING_TASK for t in api_failed["task_instances"]) >= row["value"]

    run_row = rows(report, "dag_runs")[DAG]
    assert run_row["status"] in ("warning", "critical") and 0 < run_row["value"] < 1
    assert run_row["rule"] == "dag_run_success_ratio"

    components = rows(report, "components")
    for name in ("airflow api", "metadatabase", "scheduler", "triggerer", "dag-processor", "statsd exporter"):
        assert components[name]["status"] == "ok", components[name]
    assert 0 <= components["scheduler"]["value"] < 60

    durations = rows(report, "task_durations")
    assert {f"{DAG}.{t}" for t in TASKS} <= set(durations)
    train = durations[f"{DAG}.train_model"]
    assert train["value"] > 0 and train["unit"] == "s"
    assert train["trend"] and any(v is not None for v in train["trend"])

    quality = rows(report, "model_quality")
    assert any(name.endswith("roc_auc") and r["status"] == "ok" for name, r in quality.items()), quality
    assert report["worst"] in ("warning", "critical") and report["counts"]["warning"] >= 1


def test_fail_on_sets_the_exit_code(stack, prom):
    result = health(stack, "--fail-on", "warning", "--window", "3h")
    assert result.returncode == 12, (result.stdout, result.stderr)
    assert "finding(s) at warning or worse" in result.stderr and FAILING_TASK in result.stderr
    code, report = health_json(stack, "--fail-on", "critical")
    assert code == (12 if report["counts"]["critical"] else 0), report["findings"]


def test_table_report(stack, prom):
    result = health(stack, "--window", "3h")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for title in ("Components", "DAG runs", "Failures by task", "Durations by task", "Scheduler",
                  "Executor and pools", "Model quality"):
        assert title in out
    line = next(line for line in out.splitlines() if f"{DAG}.{FAILING_TASK}" in line and "failed task" in line)
    assert "warning" in line
    assert any(ch in out for ch in "▁▂▃▄▅▆▇█")  # the duration trend


def test_bad_input_is_refused_before_anything_is_sent(stack):
    for args in (("--window", "soon"), ("--fail-on", "sometimes"), ("--window", "10s")):
        result = health(stack, *args)
        assert result.returncode == 2 and result.stderr.startswith("error: "), (args, result.stderr)


# -- degraded: keep this test last in the module (it stops Prometheus, then restores it) ----


def _stop_prometheus(stack) -> None:
    record = json.loads((stack.home / "run" / "prometheus.pid").read_text())
    os.killpg(int(record["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{stack.ports['prometheus_port']}/-/ready", timeout=1)
        except httpx.TransportError:
            return
        assert time.monotonic() < deadline, "Prometheus still answers after SIGTERM"
        time.sleep(0.2)


def test_without_prometheus_health_degrades_to_the_api(stack, runs, prom):
    _stop_prometheus(stack)
    try:
        code, report = health_json(stack)
        assert code == 9, report
        assert report["degraded"] is True
        assert report["sources"]["api"] == "ok" and "refused" in report["sources"]["prometheus"]
        assert any(note.startswith("degraded: Prometheus") for note in report["notes"])
        assert rows(report, "components")["prometheus"]["status"] == "unknown"
        # What the API knows is still there...
        row = rows(report, "task_failures")[f"{DAG}.{FAILING_TASK}"]
        assert row["status"] == "warning" and row["source"] == "api"
        assert rows(report, "dag_runs")[DAG]["status"] in ("warning", "critical")
        assert rows(report, "components")["scheduler"]["status"] == "ok"
        # ...and what only Prometheus knows is marked unknown, not silently empty.
        for section in ("task_durations", "executor", "model_quality"):
            assert [r["status"] for r in report["sections"][section]] == ["unknown"], section

        plain = health(stack, "--window", "3h")
        assert plain.returncode == 9 and "DEGRADED" in plain.stdout
        assert "error: health report degraded (prometheus:" in plain.stderr
        # --fail-on's code wins when its findings are there.
        assert health(stack, "--fail-on", "warning", "--window", "3h").returncode == 12
    finally:
        restored = stack.mlwf("up", timeout=240)
        assert restored.returncode == 0, restored.stderr
    assert httpx.get(f"http://127.0.0.1:{stack.ports['prometheus_port']}/-/ready", timeout=5).status_code == 200
    code, report = health_json(stack)
    assert code == 0 and report["degraded"] is False
