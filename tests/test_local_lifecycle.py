"""The destructive lifecycle on its own short-lived stack (the session stack stays untouched).

up -> healthy -> kill the scheduler by pid -> status says stopped, exits 9 -> up restarts only
the scheduler -> down leaves no process and no port -> a held port makes up fail clearly, with
nothing left running -> up again keeps the earlier DAG run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import httpx
import pytest

from conftest import port_open, stack_processes

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def _pids(stack) -> dict[str, int | None]:
    return {s["name"]: s["pid"] for s in json.loads(stack.mlwf("status", "--json").stdout)["services"]}


def test_lifecycle_kill_restart_port_clash_and_data_kept(make_stack):
    stack = make_stack()
    stack.up("--exclude", "monitoring")
    # What `up` excluded is not reported as stopped: the stack counts as healthy.
    healthy = stack.mlwf("status", "--json")
    assert healthy.returncode == 0, healthy.stderr
    assert "exporter" not in {s["name"] for s in json.loads(healthy.stdout)["services"]}
    stack.wait_for_dags(["ml_pipeline_dag"])
    headers = {"Authorization": f"Bearer {stack.token()}"}
    run = httpx.post(
        f"{stack.url}/api/v2/dags/ml_pipeline_dag/dagRuns",
        json={"logical_date": None, "dag_run_id": "kept_across_restarts"},
        headers=headers,
        timeout=10,
    )
    assert run.status_code in (200, 201), run.text

    # Kill the scheduler's leader by pid (its log server child is orphaned and still holds its port).
    before = _pids(stack)
    os.kill(before["scheduler"], signal.SIGKILL)
    time.sleep(0.5)
    status = stack.mlwf("status", "--json")
    assert status.returncode == 9, status.stderr
    states = {s["name"]: s["state"] for s in json.loads(status.stdout)["services"]}
    assert states["scheduler"] == "stopped"
    assert "scheduler stopped" in status.stderr

    restarted = stack.mlwf("up", "--exclude", "monitoring", "--timeout", "200", timeout=240)
    assert restarted.returncode == 0, restarted.stderr
    assert "restarted scheduler" in restarted.stderr
    after = _pids(stack)
    assert after["scheduler"] != before["scheduler"]
    assert {k: v for k, v in after.items() if k != "scheduler"} == {k: v for k, v in before.items() if k != "scheduler"}

    stack.down_and_check()

    # A port held by another socket: one clear line, exit 10, nothing left half-up.
    with socket.socket() as held:
        held.bind(("127.0.0.1", stack.ports["airflow_port"]))
        held.listen()
        clash = stack.mlwf("up", "--exclude", "monitoring", timeout=120)
    assert clash.returncode == 10, clash.stderr
    error_line = next(line for line in clash.stderr.splitlines() if line.startswith("error:"))
    assert str(stack.ports["airflow_port"]) in error_line and f"pid {os.getpid()}" in error_line
    assert stack_processes(stack.home, project=stack.project) == []
    assert not port_open(stack.ports["airflow_port"])

    # Up again: the earlier run is still there (data kept by down).
    stack.up("--exclude", "monitoring")
    kept = httpx.get(
        f"{stack.url}/api/v2/dags/ml_pipeline_dag/dagRuns/kept_across_restarts",
        headers={"Authorization": f"Bearer {stack.token()}"},
        timeout=10,
    )
    assert kept.status_code == 200, kept.text
    stack.down_and_check()


def test_up_that_times_out_shows_the_log_tail_and_leaves_nothing_behind(make_stack):
    stack = make_stack()
    result = stack.mlwf("up", "--timeout", "1", timeout=120)
    assert result.returncode == 6, result.stderr  # TimeoutExpired
    error = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert error.startswith("error: timed out after 1 s (--timeout) while "), result.stderr  # names the phase
    assert "hint: mlwf logs " in result.stderr
    assert stack_processes(stack.home, project=stack.project) == []
    assert not list((stack.home / "run").glob("*.pid"))
    assert not port_open(stack.ports["airflow_port"])


def test_failed_migration_shows_its_log(make_stack, tmp_path):
    stack = make_stack(database_url=f"sqlite:///{tmp_path}/no/such/dir/airflow.db")
    result = stack.mlwf("up", timeout=120)
    assert result.returncode == 9, result.stderr
    assert "airflow db migrate" in result.stderr and "last lines of migrate's log" in result.stderr
    assert stack_processes(stack.home, project=stack.project) == []


def test_task_preload_that_cannot_be_imported_stops_up_with_its_name(make_stack):
    """A misspelt library would otherwise cost every task its imports, silently."""
    stack = make_stack()
    result = stack.mlwf("up", "--exclude", "monitoring", env={"MLWF_TASK_PRELOAD": "pandas,no_such_library_xyz"}, timeout=180)
    assert result.returncode == 9, result.stderr  # the scheduler exited while starting
    assert "task_preload: cannot import 'no_such_library_xyz'" in result.stderr, result.stderr
    assert stack_processes(stack.home, project=stack.project) == []
