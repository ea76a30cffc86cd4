"""Load benchmark (issue 22): a burst of clients, a soak, and the cost of PostgreSQL.

- The burst, side by side in one run: mlwf's default stack (PostgreSQL) against `airflow
  standalone` (SQLite, as it comes), each with the same two-task DAG (tests/dags/mlwf_burst_dag.py),
  the same client (`mlwf trigger`, pointed at standalone with --url and MLWF_AIRFLOW_PASSWORD from
  its generated passwords file) and the same counts (--triggers from --clients at once). For each:
  triggers that failed, runs that succeeded, p50/p95 of a trigger call, the time until every
  run ended, the components unhealthy afterwards; for mlwf, `mlwf status` sampled during the
  triggers (p50, worst, how many took over 2 s) beside `mlwf --help` at the same moments.
- The soak, on mlwf's stack: one trigger a second for --soak-minutes (bounded in count and
  time, loopback only, through the REST API so that the client's own start-up does not load
  the machine); every run must end; the stack's PSS, sampled every 10 s, may grow at most
  10 % from the first to the last minute; the idle PSS stays within 1 GiB.
- The cost of PostgreSQL: `mlwf up` (warm, median of --rounds) and idle PSS, PostgreSQL
  against SQLite.

Everything runs on free ports in temporary folders and is stopped at the end.
Usage: .venv/bin/python bench/load_bench.py [--triggers 200] [--clients 20] [--soak-minutes 20]
       [--rounds 3] [--json FILE]
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack_bench import (  # noqa: E402  (the helpers of the lifecycle benchmark, reused)
    AIRFLOW,
    MLWF,
    REPO,
    all_healthy,
    finish,
    group_pss,
    make_project,
    stack_pss,
    standalone_env,
    stop_standalone,
    timed,
)

DAG = "mlwf_burst"
HEALTH_KEYS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
RUNS_END_WITHIN_S = 900  # a stack whose scheduler died never ends its runs: the burst reports None
IDLE_SETTLE_S = 20


def add_dag(project: Path) -> None:
    shutil.copy(REPO / "tests" / "dags" / f"{DAG}_dag.py", project / "dags")


def token(url: str, password: str) -> str:
    answer = httpx.post(f"{url}/auth/token", json={"username": "admin", "password": password}, timeout=30)
    answer.raise_for_status()
    return answer.json()["access_token"]


def wait_registered(url: str, password: str, within: float = 300) -> None:
    deadline = time.monotonic() + within
    while True:
        headers = {"Authorization": f"Bearer {token(url, password)}"}
        if httpx.get(f"{url}/api/v2/dags/{DAG}", headers=headers, timeout=30).status_code == 200:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{DAG} not registered at {url} after {within} s")
        time.sleep(2)


def run_states(url: str, password: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token(url, password)}"}
    states, offset = {}, 0
    while True:
        page = httpx.get(
            f"{url}/api/v2/dags/{DAG}/dagRuns", params={"limit": 100, "offset": offset}, headers=headers, timeout=60
        ).json()
        states |= {run["dag_run_id"]: run["state"] for run in page["dag_runs"]}
        offset += len(page["dag_runs"])
        if not page["dag_runs"] or offset >= page["total_entries"]:
            return states


def wait_ended(url: str, password: str, run_ids: set[str], within: float) -> tuple[dict[str, str], bool]:
    deadline = time.monotonic() + within
    while True:
        try:
            states = run_states(url, password)
        except (httpx.HTTPError, ValueError, KeyError):
            states = {}
        if run_ids and all(states.get(r) in ("success", "failed") for r in run_ids):
            return states, True
        if time.monotonic() > deadline:
            return states, False
        time.sleep(5)


def unpause(env: dict, project: Path, name: str = "mlwf") -> None:
    unpaused = subprocess.run([MLWF, "unpause", DAG], cwd=project, env=env, capture_output=True, text=True)
    if unpaused.returncode != 0:
        raise RuntimeError(f"{name}: unpause failed: {unpaused.stderr}")


def sample_status(project: Path, env: dict, stop: threading.Event) -> list[tuple[float, float, int, float]]:
    """`mlwf status` and, just before it, `mlwf --help` (the bare start), one pair a second
    until `stop`, each in a session of its own as from an operator's terminal (autogroup
    scheduling shares the CPU between sessions first): (status seconds, --help seconds, status
    exit code, seconds into the burst) each."""
    samples = []
    started = time.monotonic()
    while not stop.is_set():
        bare, _ = timed([MLWF, "--help"], cwd=project, env=env, timeout=120, start_new_session=True)
        at = time.monotonic() - started
        elapsed, result = timed([MLWF, "status"], cwd=project, env=env, timeout=120, start_new_session=True)
        samples.append((elapsed, bare, result.returncode, at))
        stop.wait(1)
    return samples


def status_figures(samples: list[tuple[float, float, int, float]]) -> dict:
    walls = sorted(s[0] for s in samples)
    return {
        "status_samples": len(samples),
        "status_p50_s": round(statistics.median(walls), 2),
        "status_max_s": round(walls[-1], 2),
        "status_over_2s": sum(1 for w in walls if w > 2.0),
        "status_nonzero_exits": sum(1 for s in samples if s[2] != 0),
        "help_p50_s": round(statistics.median(s[1] for s in samples), 2),
        "status_over_2s_at": [f"{s[0]:.2f} s at +{s[3]:.0f} s" for s in samples if s[0] > 2.0],
    }


def burst(
    name: str, project: Path, env: dict, url: str, password: str, triggers: int, clients: int, *, status: bool = False
) -> dict:
    """`triggers` calls of `mlwf trigger` from `clients` threads, then the wait for every run;
    with `status`, `mlwf status` sampled beside the triggers (mlwf's own stack only)."""
    wait_registered(url, password)
    unpause(env, project, name)

    def trigger(_index: int) -> tuple[float, int, str | None, str]:
        elapsed, result = timed([MLWF, "trigger", DAG, "--json"], cwd=project, env=env, timeout=600)
        run_id = json.loads(result.stdout)["run_id"] if result.returncode == 0 else None
        return elapsed, result.returncode, run_id, result.stderr.strip()[-200:]

    started = time.monotonic()
    stop = threading.Event()
    with ThreadPoolExecutor(clients + 1) as pool:
        sampled = pool.submit(sample_status, project, env, stop) if status else None
        calls = list(pool.map(trigger, range(triggers)))
        stop.set()
        samples = sampled.result() if sampled else []
    run_ids = {c[2] for c in calls if c[2]}
    states, ended = wait_ended(url, password, run_ids, RUNS_END_WITHIN_S)
    all_ended_s = time.monotonic() - started
    times = sorted(c[0] for c in calls)
    failed = [c for c in calls if c[1] != 0]
    return {
        "triggers": triggers,
        "clients": clients,
        "triggers_failed": len(failed),
        "failure_codes": sorted({c[1] for c in failed}),
        "failure_samples": [c[3] for c in failed[:3]],
        "runs_created": len(states),
        "runs_succeeded": sum(1 for s in states.values() if s == "success"),
        "distinct_run_ids": len(run_ids),
        "trigger_p50_s": round(times[len(times) // 2], 2),
        "trigger_p95_s": round(times[min(len(times) - 1, int(len(times) * 0.95))], 2),
        "every_run_ended_s": round(all_ended_s, 1) if ended else None,
        "load_after": round(os.getloadavg()[0], 1),
    } | (status_figures(samples) if samples else {})


def mlwf_unhealthy(project: Path, env: dict) -> list[str]:
    answer = subprocess.run([MLWF, "status", "--json"], cwd=project, env=env, capture_output=True, text=True)
    services = json.loads(answer.stdout)["services"] if answer.stdout.startswith("{") else []
    return [f"{s['name']} ({s['state']})" for s in services if s["state"] != "healthy"] or (
        [] if services else ["status answered nothing"]
    )


def standalone_unhealthy(port: int) -> list[str]:
    try:
        health = httpx.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=30).json()
    except (httpx.HTTPError, ValueError):
        return ["api-server (not answering)"]
    return [f"{k} ({(health.get(k) or {}).get('status')})" for k in HEALTH_KEYS if (health.get(k) or {}).get("status") != "healthy"]


def mlwf_password(env: dict) -> str:
    return json.loads((Path(env["MLWF_HOME"]) / "secrets.json").read_text())["admin_password"]


def mlwf_burst(project: Path, env: dict, ports: dict, args) -> dict:
    url = f"http://127.0.0.1:{ports['airflow_port']}"
    result = burst("mlwf", project, env, url, mlwf_password(env), args.triggers, args.clients, status=True)
    result["unhealthy_after"] = mlwf_unhealthy(project, env)
    logs = Path(env["MLWF_HOME"]) / "logs"
    result["locked_or_deadlock_lines"] = sum(
        1
        for path in logs.rglob("*.log")
        for line in open(path, errors="replace")
        if "database is locked" in line.lower() or "deadlock" in line.lower()
    )
    return result


def standalone_burst(root: Path, project: Path, args) -> dict:
    home = root / "standalone"
    env = standalone_env(home, project)
    port = int(env["AIRFLOW__API__PORT"])
    url = f"http://127.0.0.1:{port}"
    log = root / "standalone.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [AIRFLOW, "standalone"], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while not all_healthy(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"airflow standalone did not become healthy; see {log}")
            time.sleep(0.5)
        password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        client_env = {
            k: v for k, v in env.items() if not k.startswith("AIRFLOW")
        } | {"MLWF_AIRFLOW_URL": url, "MLWF_AIRFLOW_PASSWORD": password, "MLWF_HOME": str(root / "standalone-client")}
        result = burst("standalone", project, client_env, url, password, args.triggers, args.clients)
        result["unhealthy_after"] = standalone_unhealthy(port)
        result["locked_or_deadlock_lines"] = sum(
            1 for line in open(log, errors="replace") if "database is locked" in line.lower() or "deadlock" in line.lower()
        )
        result["pss_mib"] = round(group_pss(process.pid) / 2**20, 1)
        return result
    finally:
        stop_standalone(process)


def soak(project: Path, env: dict, ports: dict, minutes: float) -> dict:
    """One trigger a second through the REST API; PSS of the stack every 10 s."""
    url = f"http://127.0.0.1:{ports['airflow_port']}"
    password = mlwf_password(env)
    home = env["MLWF_HOME"]
    count = int(minutes * 60)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), stack_pss(home) / 2**20))
            stop.wait(10)

    wait_registered(url, password)
    unpause(env, project)  # a paused DAG's runs stay queued: the soak would measure nothing
    sampler = threading.Thread(target=sample, daemon=True)
    started = time.monotonic()
    sampler.start()
    run_ids, failed = set(), 0
    headers = {"Authorization": f"Bearer {token(url, password)}"}
    with httpx.Client(base_url=f"{url}/api/v2", headers=headers, timeout=30, trust_env=False) as client:
        for index in range(count):
            due = started + index
            time.sleep(max(0.0, due - time.monotonic()))
            if time.monotonic() - started > minutes * 60 + 120:
                break  # bounded in time as well as in count
            run_id = f"soak__{index:05d}"
            try:
                answer = client.post(f"/dags/{DAG}/dagRuns", json={"dag_run_id": run_id, "logical_date": None})
                ok = answer.status_code in (200, 201)
            except httpx.HTTPError:
                ok = False
            if ok:
                run_ids.add(run_id)
            else:
                failed += 1
    states, ended = wait_ended(url, password, run_ids, 600)
    stop.set()
    sampler.join(30)
    first = [p for t, p in samples if t - started <= 60]
    last = [p for t, p in samples if t - started >= samples[-1][0] - started - 60]
    growth = (statistics.mean(last) / statistics.mean(first) - 1) * 100
    return {
        "minutes": minutes,
        "triggered": len(run_ids),
        "trigger_failed": failed,
        "every_run_ended": ended,
        "runs_succeeded": sum(1 for r in run_ids if states.get(r) == "success"),
        "pss_first_minute_mib": round(statistics.mean(first), 1),
        "pss_last_minute_mib": round(statistics.mean(last), 1),
        "pss_growth_pct": round(growth, 1),
        "pss_max_mib": round(max(p for _, p in samples), 1),
        "load_after": round(os.getloadavg()[0], 1),
    }


def up_and_idle(project: Path, env: dict, rounds: int) -> dict:
    """Warm `mlwf up` (median of `rounds`, the database made once before) and the idle PSS."""
    subprocess.run([MLWF, "up"], cwd=project, env=env, check=True, capture_output=True)
    subprocess.run([MLWF, "down"], cwd=project, env=env, check=True, capture_output=True)
    ups = []
    for _ in range(rounds):
        elapsed, result = timed([MLWF, "up"], cwd=project, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"mlwf up failed: {result.stderr}")
        ups.append(elapsed)
        subprocess.run([MLWF, "down"], cwd=project, env=env, check=True, capture_output=True)
    subprocess.run([MLWF, "up"], cwd=project, env=env, check=True, capture_output=True)
    time.sleep(IDLE_SETTLE_S)
    pss = stack_pss(env["MLWF_HOME"]) / 2**20
    return {"up_median_s": round(statistics.median(ups), 2), "up_s": [round(u, 2) for u in ups], "idle_pss_mib": round(pss, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--triggers", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--soak-minutes", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip", action="append", default=[], choices=["burst", "standalone", "soak", "cost"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mlwf-load-bench-"))
    (root / "pg").mkdir()
    (root / "sqlite").mkdir()
    project, ports, env = make_project(root / "pg")
    add_dag(project)
    results: dict[str, object] = {
        "cpus": os.cpu_count(), "load_before": round(os.getloadavg()[0], 1),
        "triggers": args.triggers, "clients": args.clients,
    }
    projects = [(project, env)]
    try:
        if "cost" not in args.skip:
            results["postgres"] = up_and_idle(project, env, args.rounds)
            sqlite_project, _, sqlite_env = make_project(root / "sqlite")
            sqlite_env["MLWF_DATABASE"] = "sqlite"
            projects.append((sqlite_project, sqlite_env))
            results["sqlite"] = up_and_idle(sqlite_project, sqlite_env, args.rounds)
            subprocess.run([MLWF, "down"], cwd=sqlite_project, env=sqlite_env, capture_output=True)
            print(json.dumps({"postgres": results["postgres"], "sqlite": results["sqlite"]}), flush=True)
        subprocess.run([MLWF, "up"], cwd=project, env=env, check=True, capture_output=True)
        if "burst" not in args.skip:
            results["mlwf_burst"] = mlwf_burst(project, env, ports, args)
            print(json.dumps(results["mlwf_burst"]), flush=True)
        if "soak" not in args.skip and args.soak_minutes > 0:
            results["soak"] = soak(project, env, ports, args.soak_minutes)
            print(json.dumps(results["soak"]), flush=True)
        subprocess.run([MLWF, "down"], cwd=project, env=env, capture_output=True)
        if "standalone" not in args.skip:
            results["standalone_burst"] = standalone_burst(root, project, args)
            print(json.dumps(results["standalone_burst"]), flush=True)
    finally:
        for each_project, each_env in projects:
            subprocess.run([MLWF, "down"], cwd=each_project, env=each_env, capture_output=True)
        results["load_after"] = round(os.getloadavg()[0], 1)
    print(json.dumps(results, indent=2))
    finish(results, args.json, root)


if __name__ == "__main__":
    main()
