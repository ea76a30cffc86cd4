"""The session stack, read-only: status, idempotent up, logs, config, auth really on."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import httpx
import pytest

from conftest import exposed_sockets, port_open, stack_processes, stack_sessions

pytestmark = pytest.mark.stack


def test_status_json_reports_every_component_healthy(stack):
    result = stack.mlwf("status", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["backend"] == "local" and data["healthy"] is True
    services = {s["name"]: s for s in data["services"]}
    assert set(services) >= {"api-server", "scheduler", "dag-processor", "triggerer"}
    for service in services.values():
        assert service["state"] == "healthy" and service["pid"] > 0
    assert services["api-server"]["port"] == stack.ports["airflow_port"]
    # The DAG table comes through the REST API with the generated credentials.
    # The fixture waited for the project's DAGs to be registered.
    dags = {d["dag_id"]: d for d in data["dags"]}
    assert {"ml_pipeline_dag", "monitoring_dag"} <= set(dags)
    # Other tests on the shared stack pause and unpause DAGs: compare with what the server says.
    for dag_id in ("ml_pipeline_dag", "monitoring_dag"):
        server = httpx.get(
            f"{stack.url}/api/v2/dags/{dag_id}", headers={"Authorization": f"Bearer {stack.token()}"}, timeout=30
        ).json()
        assert dags[dag_id]["paused"] is server["is_paused"]


def test_second_up_changes_nothing(stack):
    before = {s["name"]: s["pid"] for s in json.loads(stack.mlwf("status", "--json").stdout)["services"]}
    result = stack.mlwf("up")
    assert result.returncode == 0, result.stderr
    assert "already running; nothing changed" in result.stderr
    after = {s["name"]: s["pid"] for s in json.loads(stack.mlwf("status", "--json").stdout)["services"]}
    assert after == before


def test_auth_is_on_and_the_generated_password_works(stack):
    assert httpx.get(f"{stack.url}/api/v2/dags", timeout=10).status_code == 401
    bad = httpx.post(f"{stack.url}/auth/token", json={"username": "admin", "password": "admin"}, timeout=10)
    assert bad.status_code == 401
    good = httpx.post(f"{stack.url}/auth/token", json={"username": "admin", "password": stack.password}, timeout=10)
    assert good.status_code == 201
    token = good.json()["access_token"]
    pools = httpx.get(f"{stack.url}/api/v2/pools", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert "ml_training" in {p["name"] for p in pools.json()["pools"]}
    for name in ("secrets.json", "simple_auth_manager_passwords.json"):
        assert stat.S_IMODE(os.stat(stack.home / name).st_mode) == 0o600


def test_pools_are_created_through_the_client_and_an_existing_one_is_kept(stack, tmp_path):
    from mlflowctl.api.airflow import AirflowClient

    headers = {"Authorization": f"Bearer {stack.token()}"}
    with AirflowClient(stack.url, "admin", lambda: stack.password, home=tmp_path) as client:
        assert client.ensure_pool("ml_training", 7, "not this") is False  # `up` made it: kept as it is
        try:
            assert client.ensure_pool("mlwf_test_pool", 3, "made by a test") is True
            made = httpx.get(f"{stack.url}/api/v2/pools/mlwf_test_pool", headers=headers, timeout=10).json()
            assert (made["slots"], made["description"]) == (3, "made by a test")
        finally:
            httpx.delete(f"{stack.url}/api/v2/pools/mlwf_test_pool", headers=headers, timeout=10)
    kept = httpx.get(f"{stack.url}/api/v2/pools/ml_training", headers=headers, timeout=10).json()
    assert kept["slots"] == 1 and kept["description"] != "not this"


def test_up_has_the_execution_api_answer_once_before_any_task_calls_it(stack):
    """The api-server sets up its Execution API on the first request there (seconds of CPU, in
    which it answers nothing else): `up` makes that request, so no task's first call pays it."""
    import re

    log = (stack.home / "logs" / "api-server.log").read_text(errors="replace")
    paths = re.findall(r"path=(/execution/\S*)", log)
    assert paths, "no Execution API request in the api-server's log"
    assert paths[0] == "/execution/health", paths[:3]


def test_the_execution_api_serves_the_version_this_runtimes_tasks_speak_alone(stack):
    """Every client of a stack that does not --listen is this runtime's Task SDK: the api-server
    builds its Execution API for that version alone (airflow_fixes.api_server_newest_execution_api)."""
    versions = subprocess.run(
        [sys.executable, "-c", "from airflow.api_fastapi.execution_api.versions import bundle; "
         "from airflow.sdk.api.datamodels._generated import API_VERSION; "
         "print(API_VERSION, bundle.versions[-1].value)"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout.splitlines()[-1].split()  # Airflow may log to stdout as it is imported
    newest, oldest = versions
    assert newest != oldest

    def health(version: str) -> int:
        return httpx.get(f"{stack.url}/execution/health", headers={"Airflow-API-Version": version}, timeout=10).status_code

    assert health(newest) == 200
    assert health(oldest) == 404  # an older version is not served: none of its routes exist


def test_nothing_of_the_stack_listens_beyond_loopback(stack):
    """Every TCP/UDP socket of every stack process on 127.0.0.1 or ::1, every Unix socket in
    a private folder; and the sockets we know of are really there (the audit sees them)."""
    import psutil

    assert exposed_sockets(stack.home, stack.project) == []
    listening = {
        (c.laddr.ip, c.laddr.port)
        for pid in stack_processes(stack.home, stack_sessions(stack.home))
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM
    }
    for name in ("airflow_port", "exporter_port", "prometheus_port", "statsd_port"):
        assert ("127.0.0.1", stack.ports[name]) in listening, name
    for name in ("log_server_port", "trigger_log_server_port"):  # no log servers on one host
        assert not port_open(stack.ports[name]), name


def test_logs_of_one_service_and_all_interleaved(stack):
    one = stack.mlwf("logs", "scheduler", "--tail", "5")
    assert one.returncode == 0, one.stderr
    lines = one.stdout.splitlines()
    assert 0 < len(lines) <= 5 and not lines[0].startswith("scheduler ")
    every = stack.mlwf("logs", "--tail", "3")
    prefixes = {line.split("|", 1)[0].strip() for line in every.stdout.splitlines()}
    assert {"api-server", "scheduler", "dag-processor", "triggerer"} <= prefixes
    unknown = stack.mlwf("logs", "no-such-service")
    assert unknown.returncode == 4 and "no-such-service" in unknown.stderr


def test_config_shows_sources_and_masks_secrets(stack):
    result = stack.mlwf("config", "--json", env={"MLWF_WEBHOOK_URL": "https://hooks.example/secret-token"})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["airflow_port"] == {"value": stack.ports["airflow_port"], "source": "mlwf.toml"}
    assert data["home"]["source"] == "MLWF_HOME"
    assert data["webhook_url"] == {"value": "****", "source": "MLWF_WEBHOOK_URL"}
    assert "secret-token" not in result.stdout
    assert stack.mlwf("config", "--show-password").stdout.strip() == stack.password


def test_monitoring_group_carries_scheduler_heartbeats_into_prometheus(stack):
    import shutil
    import time

    services = {s["name"]: s for s in json.loads(stack.mlwf("status", "--json").stdout)["services"]}
    assert services["exporter"]["state"] == "healthy"
    assert services["exporter"]["url"] == f"http://127.0.0.1:{stack.ports['exporter_port']}/metrics"
    if shutil.which("prometheus") is None:
        pytest.skip("no prometheus binary on PATH")
    assert services["prometheus"]["state"] == "healthy"
    deadline = time.monotonic() + 60
    while True:
        answer = httpx.get(
            f"http://127.0.0.1:{stack.ports['prometheus_port']}/api/v1/query",
            params={"query": "airflow_scheduler_heartbeat"},
            timeout=10,
        ).json()
        if answer["data"]["result"]:
            break
        assert time.monotonic() < deadline, "no scheduler heartbeat reached Prometheus in 60 s"
        time.sleep(2)
    assert answer["data"]["result"][0]["metric"]["job"] == "statsd-exporter"
