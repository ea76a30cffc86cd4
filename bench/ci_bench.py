#!/usr/bin/env python
"""The CI commands against Airflow's own, side by side in one run (issue 16).

- `mlwf parse` against `airflow dags list-import-errors` (which reads the import errors the
  database holds: it parses nothing) and `airflow dags list-import-errors --local` (which
  parses the DAG folder, the same work as `mlwf parse`). Target: parse <= 0.5x.
- `mlwf test ml_pipeline_dag` against `airflow dags test ml_pipeline_dag` (target <= 0.5x)
  and against the in-process floor of bench/trigger_bench.py: the task functions called one
  after another in one fresh process (target <= 1.5x).
- The import floor of any parse: a bare interpreter that imports Airflow and its DagBag with
  the garbage collector off and leaves without tearing down its heap (as mlwf's child does,
  which mlwf stops once it has the report; the teardown alone is ~0.5 s), and does nothing
  else, against the same `list-import-errors`: what no parse that imports Airflow goes below.

Airflow's commands run with the environment `mlwf test` gives its child (the project's
settings, a migrated SQLite database of their own, made before timing) and mlwf's Airflow
plugin, without which `airflow dags test` exits 1 on this DAG. The commands are alternated
over ROUNDS rounds after one warm-up each; medians of wall time, and CPU time (user + sys of
the command and its children), are reported with each round's ratios and the load average
before and after.

    .venv/bin/python bench/ci_bench.py [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from stack_bench import AIRFLOW, MLWF, PYCACHE, make_project  # noqa: E402  (the same project and bytecode cache)
from trigger_bench import floor  # noqa: E402

DAG_ID = "ml_pipeline_dag"
IMPORT_FLOOR = "import gc, os; gc.disable(); import airflow; from airflow.dag_processing.dagbag import DagBag; os._exit(0)"


def timed(argv: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one command, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {out.returncode}:\n{out.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def airflow_env(project: Path, env: dict, scratch: Path) -> dict:
    """What `mlwf test`'s child runs with, on a database migrated here (not timed)."""
    sys.path.insert(0, str(HERE.parent))
    from mlflowctl.config import load_config
    from mlflowctl.dagcheck.runner import child_env

    cwd = Path.cwd()
    os.chdir(project)
    try:
        config = load_config({})
    finally:
        os.chdir(cwd)
    result = {**child_env(config, scratch, scratch / "airflow.db"), **{k: v for k, v in env.items() if k.startswith("PYTHON")}}
    # As mlwf's child gets it: bytecode written to the shared cache (child_env took this
    # machine's PYTHONDONTWRITEBYTECODE, which would have Airflow compile its CLI every time).
    result.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([AIRFLOW, "db", "migrate"], env=result, cwd=project, capture_output=True, check=True, timeout=600)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="mlwf-ci-bench-"))
    try:
        project, _, env = make_project(root)
        af_env = airflow_env(project, env, root / "airflow-scratch")
        commands = {
            "mlwf parse": ([MLWF, "parse"], env),
            "airflow dags list-import-errors": ([AIRFLOW, "dags", "list-import-errors"], af_env),
            "airflow dags list-import-errors --local": ([AIRFLOW, "dags", "list-import-errors", "--local"], af_env),
            # beside the commands it bounds, so that the three see the machine at the same moment
            "import floor (Airflow and DagBag)": ([str(Path(AIRFLOW).with_name("python")), "-c", IMPORT_FLOOR], af_env),
            "mlwf test": ([MLWF, "test", DAG_ID], env),
            "airflow dags test": ([AIRFLOW, "dags", "test", DAG_ID], af_env),
        }
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for name, (argv_, env_) in commands.items():  # warm-up: bytecode, the template database
            timed(argv_, env_, project)
        floors = []
        for _ in range(args.rounds):
            for name, (argv_, env_) in commands.items():
                samples[name].append(timed(argv_, env_, project))
            with tempfile.TemporaryDirectory(prefix="mlwf-floor-") as scratch:
                floors.append(floor(Path(scratch))["total"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(PYCACHE, ignore_errors=True)

    wall = {name: statistics.median(w for w, _ in values) for name, values in samples.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in samples.items()}
    floor_s = statistics.median(floors)
    result = {
        "wall_s": wall,
        "cpu_s": cpu,
        "floor_s": floor_s,
        "parse_vs_list_import_errors": wall["mlwf parse"] / wall["airflow dags list-import-errors"],
        "parse_vs_list_import_errors_local": wall["mlwf parse"] / wall["airflow dags list-import-errors --local"],
        "test_vs_dags_test": wall["mlwf test"] / wall["airflow dags test"],
        "test_vs_floor": wall["mlwf test"] / floor_s,
        "import_floor_vs_list_import_errors": wall["import floor (Airflow and DagBag)"] / wall["airflow dags list-import-errors"],
        "rounds": args.rounds,
        # The ratios within each round: how far the medians' ratios can be trusted.
        "each_round": [
            {
                "parse_vs_list_import_errors": parse[0] / listed[0],
                "test_vs_dags_test": test[0] / dags_test[0],
                "test_vs_floor": test[0] / floor_round,
                "import_floor_vs_list_import_errors": imports[0] / listed[0],
            }
            for parse, listed, test, dags_test, floor_round, imports in zip(
                samples["mlwf parse"], samples["airflow dags list-import-errors"], samples["mlwf test"],
                samples["airflow dags test"], floors, samples["import floor (Airflow and DagBag)"],
            )
        ],
        "load_average_before": [round(v, 1) for v in load_before],
        "load_average_after": [round(v, 1) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name in commands:
            print(f"{name:<42} wall {wall[name]:6.2f} s   cpu {cpu[name]:6.2f} s")
        print(f"{'in-process floor (trigger_bench)':<42} wall {floor_s:6.2f} s")
        print(f"parse / list-import-errors: {result['parse_vs_list_import_errors']:.2f}x "
              f"(--local: {result['parse_vs_list_import_errors_local']:.2f}x; target <= 0.5x)")
        print(f"test / dags test: {result['test_vs_dags_test']:.2f}x (target <= 0.5x); "
              f"test / floor: {result['test_vs_floor']:.2f}x (target <= 1.5x)")
        print(f"import floor / list-import-errors: {result['import_floor_vs_list_import_errors']:.2f}x")
        for name in ("parse_vs_list_import_errors", "test_vs_dags_test", "test_vs_floor", "import_floor_vs_list_import_errors"):
            print(f"  {name} each round: " + ", ".join(f"{r[name]:.2f}x" for r in result["each_round"]))
        print(f"load average before {result['load_average_before']}, after {result['load_average_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
