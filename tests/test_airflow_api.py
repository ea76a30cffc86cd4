"""mlpipeline.airflow_api: credentials parsing, and reads against the session's real stack."""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from mlpipeline.airflow_api import (
    AirflowApi,
    AirflowApiError,
    ApiCredentials,
    credentials_from_connection,
    credentials_from_env,
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_json_form_as_the_backends_write_it():
    conn = json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": 18080, "schema": "http", "login": "admin", "password": "p w"}
    )
    creds = credentials_from_env({"AIRFLOW_CONN_MLWF_API": conn, "MLWF_AIRFLOW_URL": "http://ignored:1"})
    assert creds == ApiCredentials("http://127.0.0.1:18080", "admin", "p w")


def test_connection_uri_form_and_env_fallback():
    creds = credentials_from_env({"AIRFLOW_CONN_MLWF_API": "http://ad%40min:s%2Fecret@localhost:9000"})
    assert creds == ApiCredentials("http://localhost:9000", "ad@min", "s/ecret")
    env = {"MLWF_AIRFLOW_URL": "http://h:1/", "MLWF_AIRFLOW_USER": "u", "MLWF_AIRFLOW_PASSWORD": "pw"}
    assert credentials_from_env(env) == ApiCredentials("http://h:1", "u", "pw")
    assert credentials_from_connection(
        conn_type="http", host="https://api.example.com/", port=None, login=None, password=None
    ) == ApiCredentials("https://api.example.com")
    assert "pw" not in repr(credentials_from_env(env))


def test_missing_or_broken_configuration_is_a_clear_error():
    with pytest.raises(AirflowApiError, match="no Airflow API configured"):
        credentials_from_env({})
    with pytest.raises(AirflowApiError, match="not a usable connection"):
        credentials_from_env({"AIRFLOW_CONN_MLWF_API": "{broken"})
    with pytest.raises(AirflowApiError, match="no host"):
        credentials_from_env({"AIRFLOW_CONN_MLWF_API": '{"conn_type": "http"}'})


def test_unreachable_server_is_an_api_error():
    with AirflowApi(ApiCredentials(f"http://127.0.0.1:{_closed_port()}", "admin", "x"), timeout=2) as api:
        with pytest.raises(AirflowApiError, match="unreachable"):
            api.health()


# ------------------------------------------------------------------ the real stack


@pytest.mark.stack
def test_reads_from_a_real_api_server(stack, smoke):
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    # A run of our own whose `check` task fails: what the monitoring DAG must find.
    failed = stack.mlwf("trigger", smoke, "--unpause", "--conf", '{"fail": true}', "--wait", "--json", timeout=240)
    run_id = json.loads(failed.stdout)["run_id"]
    assert failed.returncode != 0, failed.stdout
    with AirflowApi(ApiCredentials(stack.url, stack.user, stack.password)) as api:
        health = api.health()
        assert health["scheduler"]["status"] == "healthy"
        assert health["scheduler"]["latest_scheduler_heartbeat"]
        assert api.import_error_count() == 0
        ours = {r["dag_run_id"]: r for r in api.dag_runs(since=since)}
        assert ours[run_id]["state"] == "failed" and ours[run_id]["dag_id"] == smoke
        assert run_id in {r["dag_run_id"] for r in api.dag_runs(state="failed")}
        assert run_id not in {r["dag_run_id"] for r in api.dag_runs(state="running")}
        total, recent = api.failed_task_instances(since=since)
        assert total >= 1 and len(recent) <= total
        assert ("check", run_id) in {(t["task_id"], t["dag_run_id"]) for t in recent}


@pytest.mark.stack
def test_wrong_password_is_refused(stack):
    with AirflowApi(ApiCredentials(stack.url, stack.user, "wrong")) as api:
        with pytest.raises(AirflowApiError, match="refused the credentials"):
            api.health()


@pytest.mark.stack
@pytest.mark.slow
def test_monitoring_dag_runs_in_the_stack_and_writes_a_report(stack):
    """The worker reads the API with the connection mlwf_api the backend defines."""
    import httpx

    headers = {"Authorization": f"Bearer {stack.token()}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:
        client.patch("/api/v2/dags/monitoring_dag", json={"is_paused": False}).raise_for_status()
        created = client.post("/api/v2/dags/monitoring_dag/dagRuns", json={"logical_date": None})
        created.raise_for_status()
        run_id = created.json()["dag_run_id"]
        quoted = f"/api/v2/dags/monitoring_dag/dagRuns/{quote(run_id, safe='')}"
        deadline = time.monotonic() + 180
        state = None
        while time.monotonic() < deadline:
            state = client.get(quoted).json()["state"]
            if state in ("success", "failed"):
                break
            time.sleep(1)
        client.patch("/api/v2/dags/monitoring_dag", json={"is_paused": True})
        tis = {t["task_id"]: t["state"] for t in client.get(f"{quoted}/taskInstances").json()["task_instances"]}
    assert state == "success", tis
    assert tis["generate_health_report"] == "success"
    report = json.loads((Path(stack.home) / "data" / "health" / "latest.json").read_text())
    rules = {f["rule"]: f for f in report["findings"]}
    assert "api_reachable" not in rules, report  # the worker reached the API with the connection's credentials
    assert rules["scheduler_heartbeat"]["severity"] == "ok"
    assert rules["import_errors"]["severity"] == "ok"
    assert tis["send_alerts"] == ("skipped" if report["worst"] == "ok" else "success")
