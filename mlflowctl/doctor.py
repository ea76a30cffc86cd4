"""`mlwf doctor`: what on this machine and in this project would stop `mlwf up`, found before it.

Each check returns Findings: ok, warn (up works, something is worse), block (up would fail)
or skip (not checked, and why). Every finding that is not ok carries a one-line fix. Nothing
is started or changed; Airflow is never imported here (its runtime's own python is asked).
The thresholds come from BENCHMARKS.md: an idle stack takes ~0.9 GiB PSS (Celery with two
workers ~1.4 GiB), a run of ml_pipeline_dag ~1 GiB more at its peak; a managed runtime ~0.7 GB.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mlflowctl.errors import MlwfError

if TYPE_CHECKING:
    from mlflowctl.backends.base import Backend
    from mlflowctl.config import Config

GIB = 1024**3
MEMORY_BLOCK_GIB = {"local": 1.0, "celery": 1.5}  # the idle stack itself
MEMORY_WARN_GIB = {"local": 2.0, "celery": 2.5}  # plus a pipeline run
DISK_BLOCK_GIB = 1.0  # a managed runtime (~0.7 GB) and the database
DISK_WARN_GIB = 3.0  # plus pipeline data and logs
RUNTIME_PROBE_S = 30.0
DAG_PARSE_TIMEOUT_S = 120.0  # `mlwf parse` in the runtime: importing Airflow alone takes ~1.5 s


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # ok | warn | block | skip
    detail: str
    fix: str = ""


def ok(check: str, detail: str) -> Finding:
    return Finding(check, "ok", detail)


# ----------------------------------------------------------------------------- the checks


def python_versions(config: Config) -> list[Finding]:
    """This interpreter, and the Airflow runtime `up` would use (without building one)."""
    from mlflowctl.backends import runtime

    found = [ok("python", f"mlwf runs on Python {sys.version.split()[0]}")]
    current = runtime.current_runtime()
    if current is not None:
        return found + [ok("airflow runtime", f"apache-airflow {current.version} in this interpreter")]
    target = runtime.cache_root() / runtime.runtime_key(runtime.requirements_text(config.project_root))
    if not (target / runtime.COMPLETE_MARKER).is_file():
        return found + [Finding(
            "airflow runtime", "warn", "no Airflow runtime yet: `mlwf up` builds one (~1 min, needs the package index)",
            "build it now: pip install -e '.[pipeline]' (or let `mlwf up` do it)",
        )]
    python = target / "bin" / "python"
    probe = "import sys, importlib.metadata as m; print(sys.version.split()[0], m.version('apache-airflow'))"
    try:
        out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=RUNTIME_PROBE_S)
        py, airflow = out.stdout.split()
    except (OSError, subprocess.SubprocessError, ValueError):
        return found + [Finding("airflow runtime", "block", f"the managed runtime in {target} does not run",
                                f"delete {target}; `mlwf up` builds it again")]
    if not airflow.startswith(runtime.SUPPORTED):
        return found + [Finding("airflow runtime", "block", f"apache-airflow {airflow} in {target}; mlwf needs 3.3",
                                "pin apache-airflow==3.3.2 in requirements/runtime.txt")]
    return found + [ok("airflow runtime", f"apache-airflow {airflow} on Python {py} ({target})")]


def ports(backend: Backend) -> list[Finding]:
    """Every port the local stack would listen on; one held by its own running service is fine."""
    from mlflowctl.backends.ports import holder, is_free

    if backend.name != "local":
        return [Finding("ports", "skip", f"the {backend.name} backend's ports are published by compose")]
    try:
        specs = backend.services()
    except MlwfError as exc:  # e.g. no redis-server: said by the binaries check
        return [Finding("ports", "skip", f"not checked: {exc}")]
    running = {s.name for s in backend.status().services if s.state != "stopped"}
    found = []
    for spec in specs:
        for need in spec.ports:
            protocol = "UDP" if need.udp else "TCP"
            check = f"port {need.port}/{protocol}"
            if spec.name in running:
                found.append(ok(check, f"{need.setting}: this stack's {spec.name} runs there"))
            elif is_free(need):
                found.append(ok(check, f"{need.setting} ({need.service}) is free"))
            else:
                who = holder(need.port, udp=need.udp)
                found.append(Finding(
                    check, "block", f"{need.setting} ({need.service}) is held by {who or 'another process'}",
                    f"stop it, or set another {need.setting} (mlwf.toml, or env MLWF_{need.setting.upper()})",
                ))
    return found


def binaries(config: Config, backend: Backend) -> list[Finding]:
    """What each configured part needs: docker compose; prometheus; redis-server; PostgreSQL; chromium."""
    found = []
    if backend.name == "docker":
        from mlflowctl.backends.compose import detect_flavour

        found.append(_needed("docker compose", lambda: f"{detect_flavour().name} found"))
        return found
    prometheus = shutil.which("prometheus")
    found.append(ok("prometheus", prometheus) if prometheus else Finding(
        "prometheus", "warn", "not on PATH: metrics are received but not stored",
        "apt-get install --no-install-recommends prometheus (or `mlwf up --exclude monitoring`)",
    ))
    if config.executor == "celery" and not config.broker_url:
        from mlflowctl.backends.local.broker import find_redis

        found.append(_needed("redis-server", find_redis))
    from mlflowctl.backends.local import postgres

    if postgres.runs_own(config):
        from mlflowctl.backends.runtime import current_runtime

        current = current_runtime()
        found.append(_needed("postgresql", lambda: str(
            postgres.find_postgres_bin(config, current.bin_dir if current else None)
        )))
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    found.append(ok("chromium", f"{browser}, {driver}") if browser and driver else Finding(
        "chromium", "warn", "chromium or chromedriver missing: only the browser tests need them (they skip)",
        "apt-get install chromium chromium-driver",
    ))
    return found


def _needed(check: str, find: Callable[[], str]) -> Finding:
    try:
        return ok(check, find())
    except MlwfError as exc:
        return Finding(check, "block", str(exc).split(": ", 1)[0], exc.hint or str(exc).split(": ", 1)[-1])


def resources(config: Config, stack_running: bool) -> list[Finding]:
    """Free disk where the state lives, and available memory against what the stack takes."""
    import psutil

    place = config.home_dir
    while not place.exists():
        place = place.parent
    free = shutil.disk_usage(place).free / GIB
    disk = f"{free:.1f} GiB free at {place}"
    found = [
        Finding("disk", "block", disk, "free space there, or set home to another disk (MLWF_HOME)")
        if free < DISK_BLOCK_GIB else
        Finding("disk", "warn", disk, f"free {DISK_WARN_GIB:g} GiB for pipeline data and logs")
        if free < DISK_WARN_GIB else ok("disk", disk)
    ]
    available = psutil.virtual_memory().available / GIB
    memory = f"{available:.1f} GiB available"
    if stack_running:
        found.append(ok("memory", f"{memory} (the stack is already running)"))
    elif available < MEMORY_BLOCK_GIB[config.executor]:
        found.append(Finding("memory", "block", f"{memory}; the idle stack takes ~{MEMORY_BLOCK_GIB[config.executor]:g} GiB",
                             "close programs, or lower parallelism / workers"))
    elif available < MEMORY_WARN_GIB[config.executor]:
        found.append(Finding("memory", "warn", f"{memory}; a pipeline run needs ~1 GiB more than the idle stack",
                             "close programs before running ml_pipeline_dag"))
    else:
        found.append(ok("memory", memory))
    return found


def dag_folder(config: Config) -> list[Finding]:
    folder = Path(config.dags_dir)
    if not folder.is_dir():
        return [Finding("dag folder", "block", f"{folder} does not exist", "create it, or set dags_dir (mlwf.toml)")]
    files = len(list(folder.glob("*.py")))
    return [ok("dag folder", f"{files} Python file(s) in {folder}"), *dag_parse(config)]


def dag_parse(config: Config) -> list[Finding]:
    """`mlwf parse`'s verdict, in the runtime `up` would use; skipped while there is none yet
    (doctor never builds one). A DAG file that does not import does not stop `up`: a warning."""
    from mlflowctl.backends.runtime import installed_runtime
    from mlflowctl.dagcheck import runner

    runtime = installed_runtime(config.project_root)
    if runtime is None:
        return [Finding("dag parse", "skip", "no Airflow runtime yet to import the DAG files with", "")]
    try:
        report = runner.parse(config, runtime, timeout=DAG_PARSE_TIMEOUT_S)
    except MlwfError as exc:
        return [Finding("dag parse", "warn", str(exc), "mlwf parse")]
    if report.problems:
        first = runner.describe(report.problems[0])
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        return [Finding("dag parse", "warn", f"{first}{more}", "mlwf parse: each file's error")]
    return [ok("dag parse", f"{len(report.dag_ids)} DAG(s) import in {report.seconds:.1f} s")]


def state_directory(config: Config) -> list[Finding]:
    """The state directory: ours to write, not open to others, and its lock free."""
    home = config.home_dir
    if not home.exists():
        parent = next(p for p in home.parents if p.exists())
        if os.access(parent, os.W_OK | os.X_OK):
            return [ok("state directory", f"{home} will be created")]
        return [Finding("state directory", "block", f"cannot create {home}: {parent} is not writable",
                        "set home to a folder you own (MLWF_HOME)")]
    if not os.access(home, os.R_OK | os.W_OK | os.X_OK):
        return [Finding("state directory", "block", f"{home} is not writable by this user",
                        f"chown -R {os.getuid()} {home}, or set another home")]
    found = [ok("state directory", str(home))]
    if home.stat().st_mode & 0o022:
        found.append(Finding("state permissions", "warn", f"{home} is writable by others",
                             f"chmod go-w {home}"))
    lock = home / ".lock"
    if lock.exists():
        descriptor = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            found.append(ok("state lock", "free"))
        except OSError:
            try:
                who = json.loads(lock.read_text()).get("command", "another mlwf command")
            except (OSError, ValueError, AttributeError):
                who = "another mlwf command"
            found.append(Finding("state lock", "warn", f"held by {who}: `up` waits for it (lock_wait)",
                                 "wait for it to finish"))
        finally:
            os.close(descriptor)
    return found


def clock() -> list[Finding]:
    """A clock behind the files just installed breaks tokens (issued in the future) and schedules."""
    import mlflowctl

    installed = Path(mlflowctl.__file__).stat().st_mtime
    now = time.time()
    if now < installed - 3600:
        behind = (installed - now) / 3600
        return [Finding("clock", "block", f"the system clock is {behind:.0f} h behind the files mlwf was installed with",
                        "set the clock: timedatectl set-ntp true")]
    try:
        out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    if out == "no":
        return [Finding("clock", "warn", "not synchronised (NTP)", "timedatectl set-ntp true")]
    return [ok("clock", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)))]


def examine(config: Config, backend: Backend) -> list[Finding]:
    """Every check, in the order `up` would meet the problems."""
    stack_running = backend.name == "local" and backend.status().running
    return [
        *python_versions(config),
        *state_directory(config),
        *ports(backend),
        *binaries(config, backend),
        *resources(config, stack_running),
        *dag_folder(config),
        *clock(),
    ]


def blocking(findings: list[Finding]) -> list[Finding]:
    return [finding for finding in findings if finding.status == "block"]
