"""`mlwf health` wall time with the stack up (issue 5; target <= 1 s).

Starts a local stack with free ports and its own state (or measures a running one with
--project), runs one ml_pipeline_dag run so the report has real series (durations,
model quality), then times ROUNDS runs of `mlwf health --json` and of `mlwf --help`
(the floor: interpreter + CLI start) as a user runs them: a fresh process each time.

Reported per command: median and best wall time, median CPU time of the child (user +
sys), and `elapsed_seconds` from the report (gathering + judging inside the process).
CPU time matters on a shared machine: with load average L on C cores a process gets
roughly C/L of a core, so wall ~ CPU * L / C once L > C.

Bytecode: this sandbox sets PYTHONDONTWRITEBYTECODE=1 and the venv holds no .pyc, so
every start compiles httpx, rich, typer... from source. A normal `pip install` writes
bytecode; the benchmark mirrors that with a private PYTHONPYCACHEPREFIX (warmed once)
and also reports the no-bytecode figure.

Usage: .venv/bin/python bench/health_bench.py [--rounds N] [--project DIR] [--no-run] [--json FILE]
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import Stack, remove_postgres_left_outside  # noqa: E402  (the test suite's stack handle: free ports, own state)

MLWF = str(Path(sys.executable).parent / "mlwf")


def timed(args: list[str], cwd: Path, env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result


def measure(stack: Stack, rounds: int, env: dict) -> dict:
    out: dict[str, dict] = {}
    for name, args in (("mlwf --help", [MLWF, "--help"]), ("mlwf health --json", [MLWF, "health", "--json"])):
        timed(args, stack.project, env)  # warm: page cache, bytecode prefix, token cache
        walls, cpus, inside = [], [], []
        for _ in range(rounds):
            wall, cpu, result = timed(args, stack.project, env)
            if result.returncode not in (0,):
                raise SystemExit(f"{' '.join(args)} exited {result.returncode}: {result.stderr}")
            walls.append(wall)
            cpus.append(cpu)
            if "health" in args:
                inside.append(json.loads(result.stdout)["elapsed_seconds"])
        out[name] = {
            "median_wall_s": round(statistics.median(walls), 3),
            "best_wall_s": round(min(walls), 3),
            "median_cpu_s": round(statistics.median(cpus), 3),
            **({"median_in_process_s": round(statistics.median(inside), 3)} if inside else {}),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--project", type=Path, help="measure the stack of this project (already up)")
    parser.add_argument("--no-run", action="store_true", help="do not run ml_pipeline_dag first")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    tmp = None
    if args.project:
        toml = (args.project / "mlwf.toml").read_text()
        ports = {k.strip(): int(v) for k, v in (line.split("=") for line in toml.splitlines() if "port" in line)}
        stack = Stack(project=args.project, home=args.project / ".mlwf", ports=ports)
        stack.env = {k: v for k, v in os.environ.items() if not k.startswith(("MLWF_", "AIRFLOW__"))}
        stack.env.update({"MLWF_HOME": str(stack.home), "MLWF_BACKEND": "local"})
    else:
        tmp = Path(tempfile.mkdtemp(prefix="mlwf-health-bench-"))
        stack = Stack.create(tmp)
        print("starting a stack ...", file=sys.stderr)
        stack.up()
    try:
        if not args.no_run and not args.project:
            stack.wait_for_dags(["ml_pipeline_dag"])
            print("running ml_pipeline_dag once ...", file=sys.stderr)
            run = stack.mlwf("trigger", "ml_pipeline_dag", "--unpause", "--wait", "--timeout", "1200", timeout=1300)
            if run.returncode != 0:
                raise SystemExit(f"pipeline run failed: {run.stderr}")
            time.sleep(25)  # two scrapes and rule evaluations
        cache = Path(tempfile.mkdtemp(prefix="mlwf-pycache-"))
        with_bytecode = {k: v for k, v in stack.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        with_bytecode["PYTHONPYCACHEPREFIX"] = str(cache)
        without_bytecode = {**stack.env, "PYTHONDONTWRITEBYTECODE": "1"}
        results = {
            "load_average_before": os.getloadavg(),
            "cpus": os.cpu_count(),
            "bytecode cached": measure(stack, args.rounds, with_bytecode),
            "no bytecode": measure(stack, args.rounds, without_bytecode),
            "load_average_after": os.getloadavg(),
        }
        shutil.rmtree(cache, ignore_errors=True)
    finally:
        if tmp is not None:
            stack.mlwf("down", timeout=120)
            remove_postgres_left_outside(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
