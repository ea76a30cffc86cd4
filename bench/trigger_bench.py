#!/usr/bin/env python
"""Orchestration overhead: `mlwf trigger ml_pipeline_dag --wait` against the in-process floor.

The floor: a fresh Python process imports dags/ml_pipeline_dag.py and calls the same
task functions (each @task's python_callable) one after another with the DAG's default
params (the default dataset, sklearn:breast_cancer), passing each result to the next, as
Airflow does through XCom. Its time runs from the first call to the end of the last
(the imports of pandas and scikit-learn are inside the first tasks, as in Airflow).

The orchestrated run: `mlwf trigger ml_pipeline_dag --wait --json` against a running
stack, wall time measured around the command. From its JSON: the per-task durations
Airflow recorded. Reported: whole-run ratio (wall / floor) and the mean orchestration
overhead per task = (wall - sum of task durations) / tasks.

Targets (issue 4): overhead <= 0.5 s per task; wall <= 2 x floor + 5 s.

    .venv/bin/python bench/trigger_bench.py --start           # temporary stack (mlwf up / down)
    .venv/bin/python bench/trigger_bench.py                   # the stack of this project (mlwf up first)
    .venv/bin/python bench/trigger_bench.py --start --runs 3 --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MLWF = str(Path(sys.executable).parent / "mlwf")
DAG_ID = "ml_pipeline_dag"
TARGET_OVERHEAD_S = 0.5

FLOOR_CHILD = r"""
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("ml_pipeline_dag_bench", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
dag = module.ml_pipeline_dag()  # the @dag function returns the DAG object
params = {k: dag.params[k] for k in dag.params.keys()}
order, seen = [], set()
def visit(task):
    if task.task_id in seen:
        return
    for upstream in sorted(task.upstream_list, key=lambda t: t.task_id):
        visit(upstream)
    seen.add(task.task_id)
    order.append(task)
for task in sorted(dag.tasks, key=lambda t: t.task_id):
    visit(task)
stages, state = [], None
started = time.perf_counter()
for task in order:
    kwargs = {}
    names = task.python_callable.__code__.co_varnames[: task.python_callable.__code__.co_argcount]
    if "params" in names: kwargs["params"] = params
    if "run_id" in names: kwargs["run_id"] = "bench__floor"
    t0 = time.perf_counter()
    state = task.python_callable(state, **kwargs) if state is not None else task.python_callable(**kwargs)
    stages.append([task.task_id, time.perf_counter() - t0])
print(json.dumps({"total": time.perf_counter() - started, "stages": stages}))
"""


def floor(data_root: Path) -> dict:
    """The task functions in one fresh process, one after another."""
    env = {**os.environ, "MLWF_DATA_ROOT": str(data_root), "PYTHONPATH": str(REPO / "src")}
    env = {k: v for k, v in env.items() if not k.startswith(("MLWF_STATSD", "MLWF_WEBHOOK"))}
    out = subprocess.run(
        [sys.executable, "-c", FLOOR_CHILD, str(REPO / "dags" / "ml_pipeline_dag.py")],
        env=env, capture_output=True, text=True, check=True, cwd=str(data_root),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def orchestrated(env: dict, cwd: Path) -> dict:
    started = time.perf_counter()
    out = subprocess.run(
        [MLWF, "trigger", DAG_ID, "--wait", "--unpause", "--json", "--timeout", "900"],
        env=env, cwd=str(cwd), capture_output=True, text=True,
    )
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"mlwf trigger failed ({out.returncode}): {out.stderr.strip()}")
    report = json.loads(out.stdout)
    task_time = sum(t["duration"] or 0 for t in report["tasks"])
    return {
        "wall": wall,
        "run_duration": report["duration"],
        "task_time": task_time,
        "tasks": len(report["tasks"]),
        "per_task": {t["task_id"]: t["duration"] for t in report["tasks"]},
    }


class TemporaryStack:
    """`mlwf up` in a temporary copy of the project on free ports; `mlwf down` on exit."""

    def __enter__(self) -> TemporaryStack:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from stack_bench import PYCACHE, make_project  # the same temporary project as the stack benchmark

        self.bytecode = PYCACHE  # the stack's bytecode cache (~90 MiB), made when stack_bench is imported
        self.root = Path(tempfile.mkdtemp(prefix="mlwf-trigger-bench-"))
        self.project, _, self.env = make_project(self.root)
        up = subprocess.run([MLWF, "up", "--exclude", "monitoring"], env=self.env, cwd=self.project,
                            capture_output=True, text=True)
        if up.returncode != 0:
            self.__exit__()
            raise SystemExit(f"mlwf up failed ({up.returncode}): {up.stderr.strip()[-2000:]}")
        return self

    def __exit__(self, *exc_info) -> None:
        from stack_bench import remove_temporary

        subprocess.run([MLWF, "down"], env=self.env, cwd=self.project, capture_output=True, text=True)
        remove_temporary(self.root)
        shutil.rmtree(self.bytecode, ignore_errors=True)


def summarize(floors: list[dict], runs: list[dict]) -> dict:
    floor_s = statistics.median(f["total"] for f in floors)
    wall = statistics.median(r["wall"] for r in runs)
    task_time = statistics.median(r["task_time"] for r in runs)
    tasks = runs[0]["tasks"]
    overhead = statistics.median((r["wall"] - r["task_time"]) / r["tasks"] for r in runs)
    return {
        "floor_s": floor_s,
        "wall_s": wall,
        "run_duration_s": statistics.median(r["run_duration"] for r in runs),
        "task_time_s": task_time,
        "tasks": tasks,
        "ratio": wall / floor_s,
        "overhead_per_task_s": overhead,
        # the same split further: mlwf's own share (start-up, trigger, queueing, polling) and the scheduler's gaps
        "outside_run_s": statistics.median(r["wall"] - r["run_duration"] for r in runs),
        "gaps_per_task_s": statistics.median((r["run_duration"] - r["task_time"]) / r["tasks"] for r in runs),
        "over_floor_per_task_s": statistics.median((r["wall"] - floor_s) / r["tasks"] for r in runs),
        "limit_s": 2 * floor_s + 5,
        "overhead_ok": overhead <= TARGET_OVERHEAD_S,
        "whole_run_ok": wall <= 2 * floor_s + 5,
        "floor_stages": {name: statistics.median(dict(f["stages"])[name] for f in floors) for name, _ in floors[0]["stages"]},
        "task_durations": {name: statistics.median(r["per_task"][name] or 0 for r in runs) for name in runs[0]["per_task"]},
    }


def report(result: dict, markdown: bool) -> str:
    rows = [
        ("in-process floor (task functions, one process)", f"{result['floor_s']:.2f} s"),
        ("`mlwf trigger --wait` wall time", f"{result['wall_s']:.2f} s"),
        ("Airflow's run duration (start to end)", f"{result['run_duration_s']:.2f} s"),
        (f"sum of the {result['tasks']} task durations", f"{result['task_time_s']:.2f} s"),
        ("whole-run ratio (wall / floor)", f"{result['ratio']:.2f}x (limit 2 x floor + 5 s = {result['limit_s']:.1f} s: "
         f"{'met' if result['whole_run_ok'] else 'MISSED'})"),
        ("orchestration overhead per task, (wall - sum of task durations) / tasks",
         f"{result['overhead_per_task_s']:.2f} s (target <= 0.5 s: {'met' if result['overhead_ok'] else 'MISSED'})"),
        ("  of which: wall - Airflow's run duration (mlwf start-up, trigger, queueing, last poll)",
         f"{result['outside_run_s']:.2f} s"),
        ("  of which: scheduler gaps, (run duration - sum of task durations) / tasks", f"{result['gaps_per_task_s']:.2f} s"),
        ("(wall - in-process floor) / tasks", f"{result['over_floor_per_task_s']:.2f} s"),
    ]
    stage_rows = [(n, f"{result['floor_stages'].get(n, 0):.2f} s", f"{d:.2f} s") for n, d in result["task_durations"].items()]
    rows.append(("load average (1 min) at start / end", " / ".join(map(str, result.get("load_average_1m", [])))))
    if markdown:
        lines = ["| measure | value |", "| --- | ---: |", *[f"| {a} | {b} |" for a, b in rows], ""]
        lines += ["| task | in-process | in Airflow (task duration) |", "| --- | ---: | ---: |"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in stage_rows]
        return "\n".join(lines)
    width = max(len(a) for a, _ in rows)
    out = [f"{a:<{width}}  {b}" for a, b in rows] + ["", "task                   in-process  in Airflow"]
    out += [f"{a:<22} {b:>10}  {c:>10}" for a, b, c in stage_rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", action="store_true", help="start a temporary stack (mlwf up) and stop it after")
    parser.add_argument("--runs", type=int, default=3, help="orchestrated runs and floor runs (medians reported)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mlwf-floor-") as scratch:
        floors = [floor(Path(scratch) / f"f{i}") for i in range(args.runs) if (Path(scratch) / f"f{i}").mkdir() or True]
    if args.start:
        with TemporaryStack() as stack:
            orchestrated(stack.env, stack.project)  # warm-up: first parse, first imports, pools
            runs = [orchestrated(stack.env, stack.project) for _ in range(args.runs)]
    else:
        orchestrated(dict(os.environ), Path.cwd())
        runs = [orchestrated(dict(os.environ), Path.cwd()) for _ in range(args.runs)]
    result = summarize(floors, runs)
    result["load_average_1m"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    print(json.dumps(result, indent=2) if args.json else report(result, args.markdown))
    return 1 if args.check and not (result["overhead_ok"] and result["whole_run_ok"]) else 0


if __name__ == "__main__":
    sys.exit(main())
