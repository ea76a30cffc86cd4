"""Stack lifecycle benchmark (issue 3), measured side by side in one run on this machine.

- `mlwf up` to all-healthy with a warm runtime (the database already migrated once)
  against `airflow standalone` to all-healthy (its database also created once before);
  the two are alternated over ROUNDS rounds, medians reported.
- `mlwf --help` and `mlwf status` wall time against `airflow dags list`.
- The idle stack's memory: PSS summed over every process of the stack (with monitoring),
  and `airflow standalone`'s for comparison.

Both stacks use free ports and their own temporary state; everything started is stopped.
Usage: .venv/bin/python bench/stack_bench.py [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MLWF = str(BIN / "mlwf")
AIRFLOW = str(BIN / "airflow")
PORTS = (
    "airflow_port", "prometheus_port", "exporter_port", "statsd_port", "grafana_port",
    "log_server_port", "trigger_log_server_port", "redis_port", "postgres_port", "serving_port",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PYCACHE = Path(tempfile.mkdtemp(prefix="mlwf-bench-pycache-"))


def clean_env() -> dict[str, str]:
    """The caller's environment without mlwf/Airflow settings, with bytecode caching on.

    This machine sets PYTHONDONTWRITEBYTECODE=1, so every Python start recompiles every
    module it imports (~1.5 s for `mlwf status`); an ordinary installation has .pyc files.
    Both sides get the same cache (outside the tree, in PYCACHE), warmed before timing.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLWF_", "AIRFLOW__", "AIRFLOW_CONN_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def make_project(root: Path) -> tuple[Path, dict[str, int], dict[str, str]]:
    project = root / "project"
    project.mkdir()
    for folder in ("dags", "src"):
        shutil.copytree(REPO / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    ports = {name: free_port() for name in PORTS}
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import write_settings  # the project's own settings, as the tests use them

    write_settings(project / "mlwf.toml", ports)
    env = clean_env() | {"MLWF_BACKEND": "local", "MLWF_HOME": str(project / ".mlwf")}
    return project, ports, env


def stack_database_url(project: Path, env: dict[str, str]) -> str:
    """The URL of the PostgreSQL the local stack of `project` runs on (its default database)."""
    from mlflowctl.backends.local.postgres import database_url
    from mlflowctl.config import load_config
    from mlflowctl.secrets import load_or_create

    config = load_config({}, cwd=project, environ=env)
    return database_url(config, load_or_create(config.home_dir))


CPU_SPENT: list[float] = []  # CPU seconds (user+sys) of each timed command: less load-dependent than wall


def timed(argv: list[str], **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SPENT.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return elapsed, result


def timed_cpu(argv: list[str], count: int, **kwargs) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(count):
        walls.append(timed(argv, **kwargs)[0])
        cpus.append(CPU_SPENT[-1])
    return walls, cpus


def pss_where(keep) -> int:
    """PSS summed over the live processes for which keep(pid) is true."""
    total = 0
    for process in psutil.process_iter():
        try:
            if keep(process.pid):
                total += process.memory_full_info().pss
        except (psutil.Error, ProcessLookupError):
            continue
    return total


def stack_pss(home: str) -> int:
    """Every process in the sessions the stack's services lead (their pid files)."""
    sessions = {json.loads(p.read_text())["pid"] for p in (Path(home) / "run").glob("*.pid")}
    return pss_where(lambda pid: os.getsid(pid) in sessions)


def group_pss(pgid: int) -> int:
    return pss_where(lambda pid: os.getpgid(pid) == pgid)


# ------------------------------------------------------------------ airflow standalone


def standalone_env(home: Path, project: Path) -> dict[str, str]:
    port = free_port()
    return clean_env() | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(project / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
        "PYTHONPATH": str(project / "src"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # standalone runs `airflow` from PATH
    }


_CLIENT = httpx.Client(timeout=1, trust_env=False)


def all_healthy(port: int) -> bool:
    try:
        health = _CLIENT.get(f"http://127.0.0.1:{port}/api/v2/monitor/health").json()
    except (httpx.HTTPError, ValueError):
        return False
    keys = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all((health.get(k) or {}).get("status") == "healthy" for k in keys)


def standalone_once(env: dict[str, str], log: Path, *, measure_pss: bool = False) -> tuple[float, int]:
    port = int(env["AIRFLOW__API__PORT"])
    start = time.perf_counter()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [AIRFLOW, "standalone"], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while not all_healthy(port):
            if process.poll() is not None or time.perf_counter() - start > 300:
                raise RuntimeError(f"airflow standalone did not become healthy; see {log}")
            time.sleep(0.25)
        elapsed = time.perf_counter() - start
        pss = 0
        if measure_pss:
            time.sleep(20)
            pss = group_pss(process.pid)
        return elapsed, pss
    finally:
        stop_standalone(process)
        time.sleep(1)


def stop_standalone(process: subprocess.Popen) -> None:
    """SIGINT stops standalone cleanly (field notes); whatever is left of its group is killed."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mlwf-stack-bench-"))
    project, ports, env = make_project(root)
    marker = env["MLWF_HOME"]
    sa_env = standalone_env(root / "standalone", project)
    sa_log = root / "standalone.log"
    results: dict[str, object] = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0], "bytecode_cache": True}
    try:
        # Warm both: runtime and database exist before anything is timed.
        subprocess.run([MLWF, "up"], cwd=project, env=env, check=True, capture_output=True)
        subprocess.run([MLWF, "down"], cwd=project, env=env, check=True, capture_output=True)
        standalone_once(sa_env, sa_log)

        mlwf_up, mlwf_core, standalone = [], [], []
        for _ in range(args.rounds):
            for extra, times in (([], mlwf_up), (["--exclude", "monitoring"], mlwf_core)):
                elapsed, result = timed([MLWF, "up", *extra], cwd=project, env=env)
                if result.returncode != 0:
                    raise RuntimeError(f"mlwf up failed: {result.stderr}")
                times.append(elapsed)
                subprocess.run([MLWF, "down"], cwd=project, env=env, check=True, capture_output=True)
            standalone.append(standalone_once(sa_env, sa_log)[0])
        results["mlwf_up_s"] = mlwf_up
        results["mlwf_up_core_s"] = mlwf_core
        results["standalone_s"] = standalone

        subprocess.run([MLWF, "up"], cwd=project, env=env, check=True, capture_output=True)
        help_s, help_cpu = timed_cpu([MLWF, "--help"], 5, cwd=project, env=env)
        status_s, status_cpu = timed_cpu([MLWF, "status"], 5, cwd=project, env=env)
        af_env = clean_env() | {
            "AIRFLOW_HOME": str(Path(marker) / "airflow"),
            # the stack's own database (PostgreSQL by default), as its scheduler was given it
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": stack_database_url(project, env),
            "AIRFLOW__CORE__DAGS_FOLDER": str(project / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        }
        dags_list_s, dags_list_cpu = timed_cpu([AIRFLOW, "dags", "list"], 3, cwd=project, env=af_env)
        results |= {"help_s": help_s, "status_s": status_s, "airflow_dags_list_s": dags_list_s}
        results |= {"help_cpu_s": help_cpu, "status_cpu_s": status_cpu, "airflow_dags_list_cpu_s": dags_list_cpu}
        time.sleep(20)
        results["idle_pss_mib"] = stack_pss(marker) / 2**20
        subprocess.run([MLWF, "down"], cwd=project, env=env, check=True, capture_output=True)
        results["standalone_idle_pss_mib"] = standalone_once(sa_env, sa_log, measure_pss=True)[1] / 2**20
    finally:
        subprocess.run([MLWF, "down"], cwd=project, env=env, capture_output=True)
        results["load_after"] = os.getloadavg()[0]

    med = statistics.median
    summary = {
        "mlwf up (warm) median s": round(med(results["mlwf_up_s"]), 2),
        "mlwf up --exclude monitoring s": round(med(results["mlwf_up_core_s"]), 2),
        "airflow standalone median s": round(med(results["standalone_s"]), 2),
        "up / standalone": round(med(results["mlwf_up_s"]) / med(results["standalone_s"]), 2),
        "up (core) / standalone": round(med(results["mlwf_up_core_s"]) / med(results["standalone_s"]), 2),
        "mlwf --help median s": round(med(results["help_s"]), 3),
        "mlwf status median s": round(med(results["status_s"]), 3),
        "airflow dags list median s": round(med(results["airflow_dags_list_s"]), 2),
        "mlwf --help CPU s": round(med(results["help_cpu_s"]), 3),
        "mlwf status CPU s": round(med(results["status_cpu_s"]), 3),
        "airflow dags list CPU s": round(med(results["airflow_dags_list_cpu_s"]), 2),
        "idle stack PSS MiB": round(results["idle_pss_mib"], 1),
        "airflow standalone idle PSS MiB": round(results["standalone_idle_pss_mib"], 1),
    }
    results["summary"] = summary
    for key, value in summary.items():
        print(f"{key:34} {value}")
    print(f"load average before/after: {results['load_before']:.1f} / {results['load_after']:.1f}")
    finish(results, args.json, root)


def remove_temporary(root: Path) -> None:
    """The bench's temporary folder and the PostgreSQL data its stacks kept outside it (root case)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import remove_postgres_left_outside

    remove_postgres_left_outside(root)
    shutil.rmtree(root, ignore_errors=True)


def finish(results: dict, json_path: Path | None, root: Path) -> None:
    """Keep the figures (--json) and remove the bench's temporary project and bytecode cache."""
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))
    remove_temporary(root)
    shutil.rmtree(PYCACHE, ignore_errors=True)


if __name__ == "__main__":
    main()
