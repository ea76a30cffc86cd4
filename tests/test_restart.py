"""`mlwf restart [SERVICE]` on real stacks: one service comes back alone, the whole stack comes
back whole, the database takes Airflow's components with it, and the refusals are one line
with their documented exit codes.

The session stack is restarted only where it ends healthy (a single component); the whole
stack, the database, a dead service and the `--exclude` refusal run on a short-lived stack of
their own.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from conftest import UP_TIMEOUT_S

pytestmark = pytest.mark.stack

AIRFLOW = ("api-server", "scheduler", "dag-processor", "triggerer")
RESTART_TIMEOUT_S = UP_TIMEOUT_S - 20


def _pid_files(stack) -> dict[str, str]:
    """Each service's pid file as written (pid, start time, command): any restart changes it."""
    return {path.stem: path.read_text() for path in sorted((stack.home / "run").glob("*.pid"))}


def _pids(stack) -> dict[str, int]:
    return {name: json.loads(text)["pid"] for name, text in _pid_files(stack).items()}


def _restart(stack, *args: str):
    return stack.mlwf("restart", *args, "--timeout", str(RESTART_TIMEOUT_S), timeout=UP_TIMEOUT_S)


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_restart_scheduler_changes_only_its_pid_and_runs_still_succeed(stack, smoke):
    before = _pid_files(stack)
    assert "scheduler" in before and len(before) >= 5, before

    result = _restart(stack, "scheduler")

    assert result.returncode == 0, result.stderr
    after = _pid_files(stack)
    assert after.keys() == before.keys()
    assert after["scheduler"] != before["scheduler"]
    assert json.loads(after["scheduler"])["pid"] != json.loads(before["scheduler"])["pid"]
    assert {k: v for k, v in after.items() if k != "scheduler"} == {k: v for k, v in before.items() if k != "scheduler"}
    assert "restarted scheduler;" in result.stderr and "kept running" in result.stderr
    status = stack.mlwf("status", "--json")
    assert status.returncode == 0, status.stderr
    assert {s["name"]: s["pid"] for s in json.loads(status.stdout)["services"]}["scheduler"] == _pids(stack)["scheduler"]
    run = stack.mlwf("trigger", smoke, "--unpause", "--wait", "--timeout", "180", "--json", timeout=240)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["state"] == "success"


def test_an_unknown_service_is_one_line_naming_the_known_ones(stack):
    before = _pid_files(stack)
    result = stack.mlwf("restart", "schedular")
    assert result.returncode == 4, result.stderr
    lines = _error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: no service 'schedular'; services: "), result.stderr
    assert {"postgres", *AIRFLOW, "exporter"} <= set(lines[0].split("services: ")[1].split(", "))
    assert _pid_files(stack) == before


def test_restart_of_a_stack_that_is_not_running_is_exit_8(make_stack):
    stack = make_stack()  # a project whose stack was never started
    for args in ((), ("scheduler",)):
        result = stack.mlwf("restart", *args, timeout=60)
        assert result.returncode == 8, result.stderr
        assert _error_lines(result) == ["error: the stack is not running"]
    assert not stack.home.exists()  # nothing was made, not even the state directory


@pytest.mark.slow
def test_whole_stack_restart_postgres_and_an_excluded_service(make_stack):
    stack = make_stack()
    stack.up("--exclude", "monitoring")
    first = _pids(stack)
    assert "exporter" not in first

    left_out = stack.mlwf("restart", "exporter")
    assert left_out.returncode == 2, left_out.stderr
    assert _error_lines(left_out) == [
        "error: exporter was left out by `mlwf up --exclude monitoring`: it is not part of the running stack"
    ]
    assert _pids(stack) == first

    # The whole stack: every service is a new process, in up's order, and it ends healthy.
    whole = _restart(stack)
    assert whole.returncode == 0, whole.stderr
    second = _pids(stack)
    assert second.keys() == first.keys()  # what `up --exclude` left out stays out
    assert all(second[name] != first[name] for name in first), (first, second)
    status = stack.mlwf("status", "--json")
    assert status.returncode == 0, status.stderr
    assert {s["state"] for s in json.loads(status.stdout)["services"]} == {"healthy"}

    # The database: Airflow's components that would outlive it are restarted with it, as by `up`.
    database = _restart(stack, "postgres")
    assert database.returncode == 0, database.stderr
    third = _pids(stack)
    assert all(third[name] != second[name] for name in ("postgres", *AIRFLOW)), (second, third)
    assert stack.mlwf("status").returncode == 0

    # A service that died is started again (what its dead leader left behind stopped first).
    os.kill(third["triggerer"], signal.SIGKILL)
    revived = _restart(stack, "triggerer")
    assert revived.returncode == 0, revived.stderr
    fourth = _pids(stack)
    assert fourth["triggerer"] != third["triggerer"]
    assert {k: v for k, v in fourth.items() if k != "triggerer"} == {k: v for k, v in third.items() if k != "triggerer"}
    assert stack.mlwf("status").returncode == 0
