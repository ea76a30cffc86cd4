#!/usr/bin/env python
"""Celery workers on another host (issue 18): what remote workers add, and what TLS costs.

One run, root only: two network namespaces joined by a veth pair (the e2e test's,
tests/test_multihost_e2e.py), two head projects with the system's PostgreSQL, parallelism 16.
Measured in the head's namespace, one after the other:
  1. loopback: `up --executor celery --workers 2` of the first project, no --listen, no TLS
     anywhere; then `down`;
  2. TLS: `up ... --workers 2 --listen 10.231.0.1` of the second (the head's workers now speak
     TLS to Redis and PostgreSQL, as --listen makes it);
  3. TLS + remote: the worker namespace joins 2 more workers (`mlwf worker join`); then
     `worker leave` and `down`;
ROUNDS times (default 3): a single burst moves by up to 10 % from one to the next on this
machine, more than the margin the targets leave, so the figures are the medians of the rounds.
Each: a warm-up (two runs of 0 s tasks at once, so every worker imports the task code), one
run of `mlwf_fanout` (12 tasks of 2 s) alone, then BURST runs at once (work queued: the
throughput of the slots). Wall time is Airflow's first start_date to last end_date (celery_bench.py).

Targets: 2 head + 2 remote workers >= 1.7x the queued throughput of 2 head workers (8 slots
against 4); TLS at most 10 % on the fan-out wall time against loopback.

Two hosts on one machine: by default each "host" has cores of its own (`--cores split`: the
head's processes, and this bench's client, on the first half of the cores, the joined host's
on the second, by CPU affinity, which every process they start inherits), as two machines would:
the remote workers bring CPU as well as slots. `--cores shared` lets both hosts use every
core: the remote workers then add slots only, and the tasks' start-up CPU of 8 slots
competes on the same cores (the figure BENCHMARKS.md compares from run to run).

    .venv/bin/python bench/multihost_bench.py [--cores split|shared] [--rounds N] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "bench")]
from celery_bench import BURST, DAG, SLEEP_S, TASKS, _runs, _wait_idle  # noqa: E402
from conftest import Stack  # noqa: E402
from test_multihost_e2e import (  # noqa: E402
    HEAD_IP,
    HeadApi,
    _in_namespace,
    _mlwf,
    _system_postgres,
    linked_namespaces,
)

TARGET_SPEEDUP = 1.7
TARGET_TLS_OVERHEAD = 0.10


def _checked(result, what: str) -> None:
    if result.returncode != 0:
        raise SystemExit(f"{what} failed (exit {result.returncode}): {result.stderr[-2000:]}")


def _measure(ns: str, stack: Stack, workers: list[Stack], label: str) -> dict:
    """One run alone, then BURST at once, from inside the head's namespace."""
    def idle() -> None:
        for owner in workers:
            _wait_idle(owner)

    load = os.getloadavg()[0]
    _in_namespace(ns, lambda: _runs(stack, [f"warm_{label}_a", f"warm_{label}_b"], 0))
    idle()
    one = _in_namespace(ns, lambda: _runs(stack, [f"one_{label}"], SLEEP_S))
    idle()
    burst = _in_namespace(ns, lambda: _runs(stack, [f"burst_{label}_{n}" for n in range(BURST)], SLEEP_S))
    loads = (load, os.getloadavg()[0])
    print(f"{label}: one run {one:.1f} s, {BURST} runs {burst:.1f} s, load {loads[0]:.1f}-{loads[1]:.1f}",
          file=sys.stderr)
    return {"one_s": one, "burst_s": burst, "load": loads}


@contextmanager
def _on_cores(cores: set[int] | None):
    """Processes started meanwhile from this thread run on `cores` (None: no change)."""
    before = os.sched_getaffinity(0)
    if cores is not None:
        os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _start(ns: str, stack: Stack, *args: str) -> None:
    up = _mlwf(ns, stack, "up", "--executor", "celery", "--workers", "2", "--exclude", "monitoring",
               "--timeout", "300", *args, timeout=360)
    _checked(up, "up")
    api = HeadApi(ns, stack)
    deadline = time.monotonic() + 300
    while DAG not in {d["dag_id"] for d in api.call("get", "/api/v2/dags").json()["dags"]}:
        if time.monotonic() > deadline:
            raise SystemExit("the DAG processor did not register the fan-out DAG")
        time.sleep(2)
    api.call("patch", f"/api/v2/dags/{DAG}", json={"is_paused": False})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--rounds", type=int, default=3,
                        help="how many times the three configurations are measured, one after the other (>= 1)")
    parser.add_argument("--cores", choices=("split", "shared"), default="split",
                        help="half the cores for each host (split) or every core for both (shared)")
    options = parser.parse_args()
    if options.rounds < 1:
        parser.error("--rounds must be at least 1")
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise SystemExit("network namespaces need root and iproute2")
    cores = sorted(os.sched_getaffinity(0))
    if options.cores == "split" and len(cores) < 2:
        raise SystemExit("--cores split needs two cores")
    half = len(cores) // 2
    head_cores, remote_cores = (set(cores[:half]), set(cores[half:2 * half])) if options.cores == "split" else (None, None)
    root = Path(tempfile.mkdtemp(prefix="mlwf-multihost-bench-"))
    postgres = _system_postgres()
    plain_head = Stack.create(root / "plain", postgres_bin=postgres, parallelism=16)
    head = Stack.create(root / "head", postgres_bin=postgres, parallelism=16)
    remote = Stack.create(root / "worker", postgres_bin=postgres, parallelism=16)
    for stack in (plain_head, head, remote):
        shutil.copy(REPO / "tests" / "dags" / f"{DAG}_dag.py", stack.project / "dags")
    plain: list[dict] = []
    tls: list[dict] = []
    both: list[dict] = []
    token = root / "join.json"
    with linked_namespaces() as link, _on_cores(head_cores):
        try:
            for round_ in range(options.rounds):
                _start(link.head, plain_head)
                plain.append(_measure(link.head, plain_head, [plain_head], f"plain{round_}"))
                _checked(_mlwf(link.head, plain_head, "down", timeout=180), "down")
                _start(link.head, head, "--listen", HEAD_IP)
                _checked(_mlwf(link.head, head, "worker", "token", "--out", str(token)), "worker token")
                tls.append(_measure(link.head, head, [head], f"tls{round_}"))
                with _on_cores(remote_cores):
                    _checked(_mlwf(link.worker, remote, "worker", "join", str(token), "--workers", "2", timeout=240),
                             "join")
                both.append(_measure(link.head, head, [head, remote], f"remote{round_}"))
                _checked(_mlwf(link.worker, remote, "worker", "leave", timeout=180), "leave")
                _checked(_mlwf(link.head, head, "down", timeout=180), "down")
        finally:
            _mlwf(link.worker, remote, "down", timeout=180)
            for stack in (plain_head, head):
                _mlwf(link.head, stack, "down", "--volumes", "--yes", timeout=180)
    shutil.rmtree(root, ignore_errors=True)

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    labels = {"loopback, 2 head workers, no TLS": plain, "--listen (TLS), 2 head workers": tls,
              "--listen (TLS), 2 head + 2 remote workers": both}
    summary = {
        "runs": {label: {"one_run_wall_s": round(median(runs, "one_s"), 1),
                         "burst_wall_s": round(median(runs, "burst_s"), 1),
                         "burst_wall_s_each_round": [round(run["burst_s"], 1) for run in runs],
                         "burst_tasks_per_min": round(TASKS * BURST / median(runs, "burst_s") * 60, 1),
                         "load_before_after": [[round(x, 2) for x in run["load"]] for run in runs]}
                 for label, runs in labels.items()},
        "burst_runs": BURST,
        "rounds": options.rounds,
        "remote_speedup": round(median(tls, "burst_s") / median(both, "burst_s"), 2),
        "remote_speedup_each_round": [round(a["burst_s"] / b["burst_s"], 2) for a, b in zip(tls, both)],
        "tls_overhead_one_run": round(median(tls, "one_s") / median(plain, "one_s") - 1, 3),
        "tls_overhead_burst": round(median(tls, "burst_s") / median(plain, "burst_s") - 1, 3),
        "target_remote_speedup": TARGET_SPEEDUP,
        "target_tls_overhead": TARGET_TLS_OVERHEAD,
        "cpus": os.cpu_count(),
        "cores": options.cores,
    }
    if options.markdown:
        print(f"Cores: {options.cores}; {options.rounds} rounds (medians); load (1 min) {os.getloadavg()[0]:.1f} at the end.")
        print(f"| configuration | one run: wall (s) | {BURST} runs at once: wall (s), each round | median | tasks/min |")
        print("|---|---:|---|---:|---:|")
        for label, row in summary["runs"].items():
            each = ", ".join(f"{wall:.1f}" for wall in row["burst_wall_s_each_round"])
            print(f"| {label} | {row['one_run_wall_s']:.1f} | {each} | {row['burst_wall_s']:.1f} "
                  f"| {row['burst_tasks_per_min']:.1f} |")
        print()
        print(f"Remote workers: {summary['remote_speedup']:.2f}x the queued throughput of the head's 2 "
              f"(each round: {', '.join(f'{x:.2f}x' for x in summary['remote_speedup_each_round'])}; "
              f"target >= {TARGET_SPEEDUP}); TLS: {summary['tls_overhead_one_run']:+.1%} on one run, "
              f"{summary['tls_overhead_burst']:+.1%} on {BURST} runs (target <= {TARGET_TLS_OVERHEAD:.0%}).")
    else:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
