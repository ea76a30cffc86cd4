"""The Celery executor on the local backend, end to end with real processes (its own stack).

Refusals first (an SQLite stack is not moved to PostgreSQL), then: up --executor celery
--workers 2 -> healthy (PostgreSQL, Redis, two workers) -> a DAG of 12 independent tasks,
each returning the Celery hostname that ran it, succeeds on both workers -> scale workers 3
-> the third worker takes tasks -> SIGKILL one worker's whole session mid-run: status reports
it stopped and the run still ends (the scheduler fails its tasks after the heartbeat timeout
and retries them elsewhere) -> scale workers 2 drops it -> down leaves no process and no port
-> down --volumes deletes PostgreSQL's data too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import psutil
import pytest

from mlflowctl.state import ensure_home
from conftest import REPO, exposed_sockets, port_open, stack_processes

pytestmark = [pytest.mark.stack, pytest.mark.slow]

DAG = "mlwf_fanout"
RUN_TIMEOUT_S = 420


def _status(stack) -> tuple[int, dict[str, dict]]:
    result = stack.mlwf("status", "--json", timeout=120)
    return result.returncode, {s["name"]: s for s in json.loads(result.stdout)["services"]}


_TOKENS: dict[str, str] = {}


def _headers(stack) -> dict[str, str]:
    """One token per stack (they last 24 h): the api-server is slow under load, ask it less."""
    if stack.url not in _TOKENS:
        response = _call("post", f"{stack.url}/auth/token", json={"username": stack.user, "password": stack.password})
        _TOKENS[stack.url] = response.json()["access_token"]
    return {"Authorization": f"Bearer {_TOKENS[stack.url]}"}


def _call(method: str, url: str, *, attempts: int = 4, **kwargs) -> httpx.Response:
    """An API call that tolerates a few timeouts (2 shared cores, several stacks at once)."""
    for attempt in range(attempts):
        try:
            return httpx.request(method, url, timeout=60, **kwargs)
        except httpx.TimeoutException:
            if attempt == attempts - 1:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def _trigger(stack, run_id: str, sleep: float) -> None:
    response = _call(
        "post",
        f"{stack.url}/api/v2/dags/{DAG}/dagRuns",
        json={"logical_date": None, "dag_run_id": run_id, "conf": {"sleep": sleep}},
        headers=_headers(stack),
    )
    assert response.status_code in (200, 201), response.text


def _wait_run(stack, run_id: str, timeout: float = RUN_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = _call(
            "get", f"{stack.url}/api/v2/dags/{DAG}/dagRuns/{quote(run_id, safe='')}", headers=_headers(stack)
        ).json()["state"]
        if state in ("success", "failed"):
            return state
        assert time.monotonic() < deadline, f"run {run_id} still {state} after {timeout} s"
        time.sleep(2)


def _hostnames(stack, run_id: str) -> dict[str, str]:
    """task id -> the Celery hostname its return value names."""
    headers = _headers(stack)
    base = f"{stack.url}/api/v2/dags/{DAG}/dagRuns/{quote(run_id, safe='')}/taskInstances"
    tasks = _call("get", base, headers=headers).json()["task_instances"]
    names = {}
    for task in tasks:
        entry = _call("get", f"{base}/{task['task_id']}/xcomEntries/return_value", headers=headers)
        assert entry.status_code == 200, entry.text
        names[task["task_id"]] = str(entry.json()["value"]).strip('"')
    return names


def _workers(names: dict[str, str]) -> set[str]:
    return {name.split("@", 1)[0] for name in names.values()}


def _kill_session(pid: int) -> None:
    """SIGKILL every process group of the worker's session (as if its machine died)."""
    groups = set()
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == pid:
                groups.add(os.getpgid(process.pid))
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _busy(service: dict) -> bool:
    return service["state"] == "healthy" and not service["detail"].startswith("0 of")


def test_celery_up_spread_scale_kill_down(make_stack):
    stack = make_stack()
    shutil.copy(REPO / "tests" / "dags" / f"{DAG}_dag.py", stack.project / "dags")
    try:
        _scenario(stack)
    finally:  # PostgreSQL's data may live outside the temporary project (root, 0700 parents)
        stack.mlwf("down", "--volumes", "--yes", timeout=180)


def _scenario(stack) -> None:

    # An existing SQLite stack is not moved to PostgreSQL: one clear line, exit 2, nothing started.
    ensure_home(stack.home, stack.project)
    sqlite = stack.home / "airflow" / "airflow.db"
    sqlite.parent.mkdir(parents=True)
    sqlite.write_bytes(b"")
    refused = stack.mlwf("up", "--executor", "celery", timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert "SQLite" in refused.stderr and "mlwf down --volumes" in refused.stderr
    assert stack_processes(stack.home, project=stack.project) == []
    sqlite.unlink()

    stack.up("--executor", "celery", "--workers", "2")
    code, services = _status(stack)
    assert code == 0, services
    for name in ("postgres", "redis", "api-server", "scheduler", "worker-1", "worker-2", "spawner"):
        assert services[name]["state"] == "healthy", services[name]
    assert "worker-3" not in services
    assert services["redis"]["port"] == stack.ports["redis_port"]
    assert services["postgres"]["port"] == stack.ports["postgres_port"]
    assert exposed_sockets(stack.home, stack.project) == []  # workers, Redis, PostgreSQL, spawner included

    # Another executor under the running stack is refused: workers would be left behind.
    back = stack.mlwf("up", "--executor", "local", timeout=120)
    assert back.returncode == 2 and "mlwf down" in back.stderr, back.stderr
    # SQLite under this stack's PostgreSQL data is refused too.
    sqlite_back = stack.mlwf("up", "--database", "sqlite", timeout=120)
    assert sqlite_back.returncode == 2 and "PostgreSQL" in sqlite_back.stderr, sqlite_back.stderr

    deadline = time.monotonic() + 300
    while DAG not in {d["dag_id"] for d in _call("get", f"{stack.url}/api/v2/dags", headers=_headers(stack)).json()["dags"]}:
        assert time.monotonic() < deadline, "the DAG processor did not register mlwf_fanout"
        time.sleep(2)
    unpaused = _call("patch", f"{stack.url}/api/v2/dags/{DAG}", json={"is_paused": False}, headers=_headers(stack))
    assert unpaused.status_code == 200, unpaused.text

    _trigger(stack, "two_workers", sleep=2)
    assert _wait_run(stack, "two_workers") == "success"
    names = _hostnames(stack, "two_workers")
    assert len(names) == 12
    assert _workers(names) == {"w1", "w2"}, names

    # A third worker joins the running stack and takes tasks.
    scaled = stack.mlwf("scale", "workers", "3", "--timeout", "200", timeout=260)
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr
    code, services = _status(stack)
    assert services["worker-3"]["state"] == "healthy", services["worker-3"]
    spawned = (stack.home / "logs" / "spawner.log").read_text()
    assert f"forked worker-3 (pid {services['worker-3']['pid']})" in spawned, spawned
    _trigger(stack, "three_workers", sleep=3)
    assert _wait_run(stack, "three_workers") == "success"
    assert "w3" in _workers(_hostnames(stack, "three_workers"))

    # Kill worker-3 (its whole session) while it runs tasks: status says so, the run still ends.
    _trigger(stack, "worker_killed", sleep=8)
    deadline = time.monotonic() + 180
    while True:
        code, services = _status(stack)
        if _busy(services["worker-3"]):
            break
        assert time.monotonic() < deadline, f"worker-3 never got a task: {services['worker-3']}"
        time.sleep(1)
    _kill_session(services["worker-3"]["pid"])
    time.sleep(1)
    code, services = _status(stack)
    assert code == 9
    assert services["worker-3"]["state"] == "stopped", services["worker-3"]
    assert services["worker-1"]["state"] == "healthy" and services["worker-2"]["state"] == "healthy"
    assert _wait_run(stack, "worker_killed") == "success"  # retried on the others
    assert _workers(_hostnames(stack, "worker_killed")) <= {"w1", "w2", "w3"}

    # Scale back to 2: the dead worker's pid file and leftovers go, the stack is healthy again;
    # a killed spawner is started again (from a new launcher).
    killed_socket = Path((stack.home / "run" / "spawner.socket").read_text())
    os.kill(services["spawner"]["pid"], signal.SIGKILL)
    scaled = stack.mlwf("scale", "workers", "2", timeout=260)
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr
    code, services = _status(stack)
    assert code == 0 and "worker-3" not in services, services
    socket_folder = Path((stack.home / "run" / "spawner.socket").read_text()).parent
    assert socket_folder.is_dir() and not killed_socket.parent.exists()

    record = json.loads((stack.home / "executor.json").read_text())
    postgres_data = Path(record["postgres_dir"])
    assert (postgres_data / "data" / "PG_VERSION").is_file()
    stack.down_and_check()  # no process of any session, no Airflow port
    assert not socket_folder.exists(), "the spawner left its socket folder"
    for name in ("redis_port", "postgres_port"):
        assert not port_open(stack.ports[name]), f"{name} still open after down"

    wiped = stack.mlwf("down", "--volumes", "--yes", timeout=120)
    assert wiped.returncode == 0, wiped.stderr
    assert not postgres_data.exists() and not stack.home.exists()
