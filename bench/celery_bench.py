#!/usr/bin/env python
"""Celery scale-out (issue 7): 12 independent tasks of 2 s each, local executor vs Celery workers.

One run on this machine, two temporary stacks on free ports (the tests' project copy):
  1. the local executor at parallelism 4;
  2. the Celery executor (mlwf's own PostgreSQL and Redis) at 1, 2 and 4 workers of
     concurrency 2 (`mlwf scale workers N` between the measurements; parallelism 16 so the
     scheduler is not the limit).
Each configuration: one warm-up run (tasks sleep 0 s: the workers import the task code),
then the measured runs of `mlwf_fanout` (tests/dags) with conf {"sleep": 2}: one run alone,
then BURST runs triggered at once. Reported for both: wall time (the first start_date to the
last end_date, as Airflow records them), tasks per minute, speed-up against 1 worker; and the
idle memory (PSS) one more worker costs.

Why both: one run of 12 tasks is 6 waves on 1 worker (2 slots) but 2 waves on 4 workers (8
slots, the second wave half empty), so its speed-up cannot exceed 12/4 = 3.00x whatever the
overhead. With BURST runs queued the slots never wait for a run's last tasks: the throughput
of the workers themselves, ceiling 4x.

Targets: 4 workers >= 3x the throughput of 1 worker; each extra worker <= 250 MiB PSS idle.

    .venv/bin/python bench/celery_bench.py [--markdown]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import Stack, remove_postgres_left_outside  # noqa: E402  (the tests' temporary project with free ports)

from mlflowctl.backends.processes import session_members  # noqa: E402

DAG = "mlwf_fanout"
TASKS = 12
SLEEP_S = 2.0
MIB = 1024 * 1024
TARGET_SPEEDUP = 3.0
TARGET_WORKER_PSS_MIB = 250
IDLE_S = 10
BURST = 4  # runs triggered at once: 48 tasks, so no slot waits for the run's last few tasks


def _headers(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.token()}"}


def _trigger(stack: Stack, headers: dict[str, str], run_id: str, sleep: float) -> None:
    response = httpx.post(
        f"{stack.url}/api/v2/dags/{DAG}/dagRuns",
        json={"logical_date": None, "dag_run_id": run_id, "conf": {"sleep": sleep}},
        headers=headers,
        timeout=30,
    )
    response.raise_for_status()


def _ended(stack: Stack, headers: dict[str, str], run_ids: list[str]) -> list[dict]:
    """Wait for the runs to end; return them, or stop the bench if one did not succeed. One
    request a second for all of them: the wall time comes from Airflow's own dates, so a faster
    poll would only load the api-server being measured."""
    deadline = time.monotonic() + 900
    wanted = set(run_ids)
    while True:
        response = httpx.get(
            f"{stack.url}/api/v2/dags/{DAG}/dagRuns", params={"limit": 100, "order_by": "-run_after"},
            headers=headers, timeout=30,
        )
        response.raise_for_status()
        runs = {run["dag_run_id"]: run for run in response.json()["dag_runs"] if run["dag_run_id"] in wanted}
        if len(runs) == len(wanted) and all(run["state"] in ("success", "failed") for run in runs.values()):
            break
        if time.monotonic() > deadline:
            states = {run_id: run["state"] for run_id, run in runs.items()}
            raise SystemExit(f"runs not ended in 900 s: {states}")
        time.sleep(1)
    failed = sorted(run_id for run_id, run in runs.items() if run["state"] != "success")
    if failed:
        raise SystemExit(f"runs {failed} failed")
    return [runs[run_id] for run_id in run_ids]


def _runs(stack: Stack, run_ids: list[str], sleep: float) -> float:
    """Trigger the runs at once, wait for all; seconds from the first start_date to the last
    end_date, as Airflow records them."""
    headers = _headers(stack)  # one token: a login per poll would load the api-server being measured
    for run_id in run_ids:
        _trigger(stack, headers, run_id, sleep)
    runs = _ended(stack, headers, run_ids)
    start = min(datetime.fromisoformat(run["start_date"]) for run in runs)
    end = max(datetime.fromisoformat(run["end_date"]) for run in runs)
    return (end - start).total_seconds()


def _leaders(stack: Stack, pattern: str = "*.pid") -> dict[str, int]:
    """Service name -> the pid of its session leader, from the stack's pid files."""
    return {p.stem: int(json.loads(p.read_text())["pid"]) for p in sorted((stack.home / "run").glob(pattern))}


def _stack_processes(stack: Stack) -> list[psutil.Process]:
    """Every process of the stack: each service's session and descendants (PostgreSQL's backends
    leave the postmaster's session)."""
    found = {p.pid: p for sid in _leaders(stack).values() for p in session_members(sid)}
    for process in list(found.values()):
        try:
            found.update((child.pid, child) for child in process.children(recursive=True))
        except psutil.Error:
            continue
    return list(found.values())


def _pss(processes: list[psutil.Process]) -> int:
    total = 0
    for process in processes:
        try:
            total += process.memory_full_info().pss
        except psutil.Error:
            continue
    return total


def _worker_pss(stack: Stack) -> dict[str, int]:
    """PSS of each worker's process session (main process + pool processes)."""
    return {name: _pss(session_members(sid)) for name, sid in _leaders(stack, "worker-*.pid").items()}


def _stack_pss(stack: Stack) -> int:
    return _pss(_stack_processes(stack))


def _prepare(root: Path, **settings) -> Stack:
    stack = Stack.create(root, **settings)
    shutil.copy(REPO / "tests" / "dags" / f"{DAG}_dag.py", stack.project / "dags")
    return stack


def _start(stack: Stack, *args: str) -> None:
    stack.up(*args)
    stack.wait_for_dags([DAG], timeout=300)
    httpx.patch(f"{stack.url}/api/v2/dags/{DAG}", json={"is_paused": False}, headers=_headers(stack), timeout=30)


def _scale(stack: Stack, workers: int) -> None:
    scaled = stack.mlwf("scale", "workers", str(workers), "--timeout", "300", timeout=360)
    if scaled.returncode != 0:
        raise SystemExit(f"scale failed: {scaled.stderr}")


def _wait_idle(stack: Stack, timeout: float = 120) -> None:
    """Until no worker runs a task: a run counts as ended when its tasks have reported their
    state, while their supervisors may still hold the worker's slots a moment longer."""
    from mlflowctl.backends.local.workers import tasks as worker_tasks
    from mlflowctl.backends.processes import read_pid_file

    deadline = time.monotonic() + timeout
    while any(
        (counted := worker_tasks(read_pid_file(path))) is not None and counted[1] > 0
        for path in (stack.home / "run").glob("worker-*.pid")
    ):
        if time.monotonic() > deadline:
            raise SystemExit(f"workers still busy {timeout:.0f} s after the warm-up")
        time.sleep(0.2)


def _measure(stack: Stack, label: str) -> tuple[float, float]:
    """Seconds for one run, then for BURST runs triggered at once (slots never idle)."""
    _runs(stack, [f"warmup_{label}"], 0)
    _wait_idle(stack)
    one = _runs(stack, [f"bench_{label}"], SLEEP_S)
    _wait_idle(stack)
    burst = _runs(stack, [f"burst_{label}_{n}" for n in range(BURST)], SLEEP_S)
    print(f"{label}: one run {one:.1f} s, {BURST} runs {burst:.1f} s", file=sys.stderr)
    return one, burst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mlwf-celery-bench-"))
    results: list[tuple[str, tuple[float, float]]] = []
    worker_pss: dict[str, int] = {}
    stack_pss: dict[int, int] = {}
    try:
        local = _prepare(root / "local", parallelism=4)
        _start(local)
        try:
            results.append(("local executor, parallelism 4", _measure(local, "local")))
        finally:
            local.mlwf("down", timeout=180)

        celery = _prepare(root / "celery", parallelism=16)
        _start(celery, "--executor", "celery", "--workers", "1")
        try:
            for workers in (1, 2, 4):
                if workers > 1:
                    _scale(celery, workers)
                results.append((f"celery, {workers} worker{'s' if workers > 1 else ''} x 2", _measure(celery, f"c{workers}")))
            # Idle memory, once every worker has run tasks and the rest of the stack has seen
            # the same runs: the stack at 4 workers, then at 1 after a warm shutdown of three.
            time.sleep(IDLE_S)
            worker_pss = _worker_pss(celery)
            stack_pss[4] = _stack_pss(celery)
            _scale(celery, 1)
            time.sleep(IDLE_S)
            stack_pss[1] = _stack_pss(celery)
        finally:
            celery.mlwf("down", "--volumes", "--yes", timeout=180)
    except BaseException:
        print(f"celery bench stopped; the local stack's state and logs are kept in {root}", file=sys.stderr)
        raise
    remove_postgres_left_outside(root)
    shutil.rmtree(root, ignore_errors=True)

    one_worker = dict(results)["celery, 1 worker x 2"]
    rows = []
    for label, timings in results:
        row = [label]
        for tasks, seconds, baseline in zip((TASKS, TASKS * BURST), timings, one_worker):
            speedup = f"{baseline / seconds:.2f}x" if label.startswith("celery") else "-"
            row += [f"{seconds:.1f}", f"{tasks / seconds * 60:.1f}", speedup]
        rows.append(tuple(row))
    per_worker = [pss / MIB for pss in worker_pss.values()]
    extra = (stack_pss[4] - stack_pss[1]) / 3 / MIB
    summary = {
        "runs": [
            dict(zip(("config", "one_run_wall_s", "one_run_tasks_per_min", "one_run_speedup_vs_1_worker",
                      "burst_wall_s", "burst_tasks_per_min", "burst_speedup_vs_1_worker"), row))
            for row in rows
        ],
        "burst_runs": BURST,
        "worker_session_pss_mib_idle": {k: round(v / MIB) for k, v in worker_pss.items()},
        "stack_pss_mib_idle": {str(k): round(v / MIB) for k, v in stack_pss.items()},
        "extra_worker_pss_mib": round(extra),
        "target_speedup_4_workers": TARGET_SPEEDUP,
        "target_extra_worker_pss_mib": TARGET_WORKER_PSS_MIB,
    }
    if options.markdown:
        print(
            f"| configuration | one run: wall (s) | tasks/min | speed-up | {BURST} runs at once: wall (s) "
            "| tasks/min | speed-up |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()
        print(
            f"Idle PSS per worker session (4 workers): {', '.join(f'{v:.0f}' for v in per_worker)} MiB; "
            f"whole stack idle {', '.join(f'{k} worker(s) {v / MIB:.0f} MiB' for k, v in stack_pss.items())}; "
            f"one more worker costs {extra:.0f} MiB (target <= {TARGET_WORKER_PSS_MIB})."
        )
    else:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
