"""`up --timeout` bounds every phase: a metadata database that another process holds locked
(SQLite's BEGIN EXCLUSIVE) stalls `airflow db migrate` (Airflow waits up to 30 s per
statement for the lock, and retries), yet `up` ends in about the timeout, says which phase
ran out, and leaves no process of the stack behind: not the launcher, not what it forked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mlflowctl.secrets import load_or_create
from mlflowctl.state import ensure_home
from conftest import port_open, stack_processes

pytestmark = [pytest.mark.stack, pytest.mark.slow]

TIMEOUT_S = 20
HOLD_LOCK = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("CREATE TABLE IF NOT EXISTS held (x)")
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def _kill_leftovers(stack) -> list[int]:
    """SIGKILL what is left of the stack (only when the test failed); the pids found."""
    found = stack_processes(stack.home, project=stack.project)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return found


@pytest.mark.parametrize("launcher", ["1", "0"], ids=["launcher", "one process each"])
def test_up_with_a_locked_database_times_out_and_leaves_nothing_running(make_stack, launcher):
    stack = make_stack()
    ensure_home(stack.home, stack.project)  # a state directory mlwf made, whose database is held
    load_or_create(stack.home)
    database = stack.home / "airflow" / "airflow.db"
    database.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(database)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        try:
            result = stack.mlwf(
                "up", "--timeout", str(TIMEOUT_S), env={"MLWF_LAUNCHER": launcher}, timeout=TIMEOUT_S + 90
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"`mlwf up --timeout {TIMEOUT_S}` still ran after {TIMEOUT_S + 90} s")
        elapsed = time.monotonic() - started
        assert holder.poll() is None, "the lock holder died: the database was not locked all along"
        leftovers = stack_processes(stack.home, project=stack.project)
    finally:
        holder.stdin.close()
        holder.wait(10)
        found = _kill_leftovers(stack)

    assert result.returncode == 6, result.stdout + result.stderr  # TimeoutExpired
    assert elapsed < TIMEOUT_S + 30, f"up took {elapsed:.1f} s with --timeout {TIMEOUT_S}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: timed out after {TIMEOUT_S} s (--timeout) while migrating the metadata database"
    ], result.stderr
    assert "hint: mlwf logs migrate --tail 100" in result.stderr  # its log: nothing while it waits for the lock
    assert leftovers == [] and found == [], f"processes of the stack left after up timed out: {leftovers}"
    assert not list((stack.home / "run").glob("*.pid"))
    for name in ("airflow_port", "exporter_port", "prometheus_port"):
        assert not port_open(stack.ports[name]), f"{name} still open"
