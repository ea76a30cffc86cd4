"""The Celery executor on the local backend: a Redis broker and N workers.

`LocalBackend` asks this module for the extra services when the stack's executor is
`celery`; each is an ordinary service of the stack (pid file, log, health, `down`). The
metadata database is the stack's own, as for the LocalExecutor (postgres.py); Celery
on SQLite is refused (record.check_switch).

    redis        mlwf's own Redis (unless `broker_url` is set), no persistence: a
                 fresh, empty broker each time it starts, so stale queued messages of
                 an earlier stack never run; a generated password in its 0600 config
    worker-<i>   `airflow celery worker -H w<i>@%h --skip-serve-logs`: distinct Celery
                 hostnames; no log server (the task logs are files on this machine that
                 the api-server reads directly; two log servers would clash on 8793)
    spawner      the launcher's fork server: `scale` forks new workers from it, so they
                 share Airflow's imported pages with the rest of the stack (see
                 launcher.py); when it is gone, `scale` uses a new launcher

The stack's executor and worker count are recorded in <home>/executor.json, so `status`,
`down` and `scale` see the stack as it was started, whatever the config says now.

The local backend finds this module by the executor's name (`<executor>_local`) and calls
`before_airflow`, `after_airflow` and `environment` (see `LocalBackend._executor_plugin`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from mlflowctl.backends.local.record import write_record
from mlflowctl.backends.local.postgres import wait_ready
from mlflowctl.config import Config
from mlflowctl.errors import MissingDependencyError, StackDownError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from mlflowctl.backends.local.backend import LocalBackend, ServiceSpec
    from mlflowctl.secrets import Secrets

WORKER_PREFIX = "worker-"
WORKER_CONCURRENCY = 2
WARM_SHUTDOWN_TIMEOUT = 600.0
REDIS_DIRS = ("/usr/bin", "/usr/local/bin", "/opt/homebrew/bin", "/usr/sbin")


# --------------------------------------------------------------------- binaries


def find_redis() -> str:
    found = shutil.which("redis-server") or next(
        (str(Path(d) / "redis-server") for d in REDIS_DIRS if os.access(Path(d) / "redis-server", os.X_OK)), None
    )
    if found is None:
        raise MissingDependencyError(
            "redis-server not found (needed by the celery executor): install it (apt-get install redis-server, "
            "brew install redis) or set broker_url to an existing broker"
        )
    return found


# --------------------------------------------------------------------- redis


def redis_password(secrets: "Secrets") -> str:
    from mlflowctl.airflow_settings import derived_secret

    return derived_secret(secrets, "redis-broker")


def broker_url(config: Config, secrets: "Secrets") -> str:
    return f"redis://:{redis_password(secrets)}@127.0.0.1:{config.redis_port}/0"


def write_redis_config(config: Config, secrets: "Secrets") -> Path:
    """A 0600 config file (the password stays out of `ps`): loopback, no persistence."""
    from mlflowctl.secrets import write_private

    folder = config.home_dir / "redis"
    path = folder / "redis.conf"
    write_private(
        path,
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {config.redis_port}",
                "protected-mode yes",
                'save ""',
                "appendonly no",
                f"dir {folder}",
                f"requirepass {redis_password(secrets)}",
                "daemonize no",
                "",
            ]
        ),
    )
    return path


def redis_ping(port: int, password: str | None, timeout: float = 1.0) -> tuple[bool, str]:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            if password:
                sock.sendall(f"AUTH {password}\r\n".encode())
                if not sock.recv(64).startswith(b"+OK"):
                    return False, "refused the password"
            sock.sendall(b"PING\r\n")
            answer = sock.recv(64)
    except OSError as exc:
        return False, f"not answering on port {port} ({exc.strerror or exc})"
    return answer.startswith(b"+PONG"), "" if answer.startswith(b"+PONG") else f"answered {answer[:40]!r}"


def queue_length(url: str, queue: str = "default", timeout: float = 1.0) -> int | None:
    """Messages waiting in a Redis broker's queue (LLEN), or None when it cannot be asked."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or parts.scheme == "rediss":
        return None
    database = (parts.path or "/0").lstrip("/") or "0"
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=timeout) as sock:
            commands = []
            if parts.password:
                commands.append(["AUTH", unquote(parts.password)] if not parts.username else ["AUTH", unquote(parts.username), unquote(parts.password)])
            commands += [["SELECT", database], ["LLEN", queue]]
            sock.sendall(b"".join(_resp(c) for c in commands))
            data = b""
            while data.count(b"\r\n") < len(commands):
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    last = data.split(b"\r\n")[len(commands) - 1]
    return int(last[1:]) if last.startswith(b":") else None


def _redis_status(config: Config, secrets: "Secrets") -> tuple[bool, str]:
    """Healthy when it answers PING with our password; the detail says how many tasks wait in the queue."""
    healthy, detail = redis_ping(config.redis_port, redis_password(secrets))
    if not healthy:
        return healthy, detail
    waiting = queue_length(broker_url(config, secrets))
    return True, "" if waiting is None else f"{waiting} task{'s' if waiting != 1 else ''} queued"


def _resp(parts: list[str]) -> bytes:
    out = f"*{len(parts)}\r\n"
    for part in parts:
        out += f"${len(part.encode())}\r\n{part}\r\n"
    return out.encode()


# --------------------------------------------------------------------- services


def urls(config: Config, secrets: "Secrets") -> dict[str, str]:
    """The broker URL the stack's Airflow runs with: the user's as is, else mlwf's own."""
    if config.executor != "celery":
        return {}
    return {"broker_url": config.broker_url or broker_url(config, secrets)}


def worker_indices(backend: "LocalBackend") -> list[int]:
    """1..workers, plus any worker that still has a pid file (so `down` stops it too)."""
    found = set()
    for path in backend.run_dir.glob(f"{WORKER_PREFIX}*.pid"):
        suffix = path.stem[len(WORKER_PREFIX):]
        if suffix.isdigit():
            found.add(int(suffix))
    return sorted(found | set(range(1, backend.config.workers + 1)))


def broker_services(backend: "LocalBackend") -> list["ServiceSpec"]:
    """Redis (when mlwf runs it itself), started before Airflow."""
    from mlflowctl.backends.local.backend import ServiceSpec
    from mlflowctl.backends.ports import PortNeed

    c = backend.config
    specs = []
    if not c.broker_url:
        try:
            redis = find_redis()
        except MissingDependencyError:
            redis = "redis-server"
        config_path = c.home_dir / "redis" / "redis.conf"
        specs.append(
            ServiceSpec(
                "redis",
                [redis, str(config_path)],
                port=c.redis_port,
                url=f"redis://127.0.0.1:{c.redis_port}/0",
                ports=[PortNeed("redis", "redis_port", c.redis_port)],
                prepare=lambda: write_redis_config(c, _secrets(backend)),
                ready=lambda deadline: wait_ready(
                    backend, "redis", lambda: redis_ping(c.redis_port, redis_password(_secrets(backend)))[0], deadline
                ),
                check=lambda: _redis_status(c, _secrets(backend)),
            )
        )
    return specs


def worker_services(backend: "LocalBackend") -> list["ServiceSpec"]:
    from mlflowctl.backends import processes

    specs = []
    for index in worker_indices(backend):
        name = f"{WORKER_PREFIX}{index}"
        args = [
            "celery", "worker", "-H", f"w{index}@%h",
            "--concurrency", str(WORKER_CONCURRENCY), "--skip-serve-logs",
        ]
        spec = backend._airflow_service(name, args)
        spec.check = lambda name=name: worker_check(processes.read_pid_file(backend.run_dir / f"{name}.pid"))
        specs.append(spec)
    return specs


def _secrets(backend: "LocalBackend") -> "Secrets":
    from mlflowctl.secrets import load_or_create

    return load_or_create(backend.home)


# --------------------------------------------------------------------- plugin interface


def before_airflow(backend: "LocalBackend") -> list["ServiceSpec"]:
    return broker_services(backend)


def after_airflow(backend: "LocalBackend") -> list["ServiceSpec"]:
    return [*worker_services(backend), *backend.spawner_services()]


def environment(backend: "LocalBackend") -> dict[str, str]:
    """Called by `up` before anything starts: a missing binary fails here, with nothing left half-up."""
    config = backend.config
    if not config.broker_url:
        find_redis()
    return urls(config, _secrets(backend))


# --------------------------------------------------------------------- workers


def worker_tasks(record) -> tuple[int, int] | None:
    """(pool processes, tasks running) of a live worker, from its process tree.

    Cheap (no broker round trip; `celery inspect active` broadcasts and waits a second or
    more): a pool process is titled `[celeryd: w1@host:ForkPoolWorker-N]` while idle and
    `airflow supervisor: <task id>` once it supervised a task (the title stays); a task runs
    while that pool process has a live child (the task process the supervisor forked).
    """
    import psutil

    process = record.process() if record is not None else None
    if process is None:
        return None
    pool = running = 0
    try:
        children = process.children()
    except psutil.Error:
        return None
    for child in children:
        try:
            title = " ".join(child.cmdline())
            if "ForkPoolWorker" in title:
                pool += 1
            elif "supervisor:" in title:  # the title stays after the task: a live child is the proof
                pool += 1
                if any(grandchild.status() != psutil.STATUS_ZOMBIE for grandchild in child.children()):
                    running += 1
        except psutil.Error:
            continue
    return pool, running


def worker_check(record) -> tuple[bool, str]:
    counted = worker_tasks(record)
    if counted is None:
        return False, "not running"
    pool, running = counted
    if pool == 0:
        return False, "no pool processes yet"
    return True, f"{running} of {pool} slots busy ({running} task{'s' if running != 1 else ''} running)"


def _warm_stop(backend: "LocalBackend", name: str, timeout: float) -> str:
    """SIGTERM to the worker's main process only: Celery's warm shutdown stops taking tasks
    and lets the running ones finish; then whatever is left of its session is stopped."""
    from mlflowctl.backends import processes

    path = backend.run_dir / f"{name}.pid"
    record = processes.read_pid_file(path)
    if record is None:
        return "not running"
    process = record.process()
    outcome = "stopped"
    if process is not None:
        try:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout)
        except Exception:  # psutil.TimeoutExpired or gone
            outcome = "killed after the warm-shutdown timeout"
    processes.stop_session(record, grace=5.0, second_grace=3.0)
    path.unlink(missing_ok=True)
    return outcome


def scale(backend: "LocalBackend", workers: int, *, progress=None, timeout: float = 120.0,
          drain_timeout: float = WARM_SHUTDOWN_TIMEOUT):
    """Add or remove workers of a running celery stack; removal waits for running tasks."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflowctl.backends import processes

    if workers < 1:
        raise UsageError("workers must be at least 1")
    config = backend.config
    if config.executor != "celery":
        raise UsageError(
            "scaling workers needs the celery executor: this stack runs the local executor "
            "(start one with `mlwf up --executor celery`)"
        )
    scheduler = processes.read_pid_file(backend.run_dir / "scheduler.pid")  # kept when stale: `up` cleans its session
    if scheduler is None or scheduler.process() is None:
        raise StackDownError("the stack is not running", hint="start it with `mlwf up --executor celery`")
    report = progress or (lambda _message, _services: None)
    extra = [i for i in worker_indices(backend) if i > workers]
    stopped = {}
    if extra:
        names = [f"{WORKER_PREFIX}{i}" for i in extra]
        report(f"warm shutdown of {', '.join(names)} (running tasks finish first)", [])
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            stopped = dict(zip(names, pool.map(lambda n: _warm_stop(backend, n, drain_timeout), names)))
    write_record(config.home_dir, workers=workers)
    backend.config = dataclasses.replace(config, workers=workers)
    # Start the missing workers, leaving out what the stack's last `up --exclude` left out.
    status = backend.up(exclude=backend._recorded_exclude(), progress=progress, timeout=timeout)
    status.notes = [n for n in status.notes if "nothing changed" not in n]
    for name, outcome in stopped.items():
        status.notes.append(f"{name}: {outcome}")
    status.notes.append(f"{workers} worker{'s' if workers != 1 else ''}")
    return status
