"""The Celery executor on the local backend: a Redis broker, a PostgreSQL database, N workers.

`LocalBackend` asks this module for the extra services when the stack's executor is
`celery`; each is an ordinary service of the stack (pid file, log, health, `down`):

    postgres     mlwf's own PostgreSQL (unless `database_url` is set), data in
                 <home>/postgres/data, on 127.0.0.1:<postgres_port>, password auth
                 (scram) with the generated `postgres_password`; run as the `postgres`
                 system user when mlwf runs as root (PostgreSQL refuses root)
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
Moving an existing SQLite stack to Celery (or back) is refused: mlwf never switches
databases under a user's data.

The local backend finds this module by the executor's name (`<executor>_local`) and calls
`before_airflow`, `after_airflow` and `environment` (see `LocalBackend._executor_plugin`).

Run as a script (`python -m mlflowctl.backends.celery_local supervise ...`) it is the small
supervisor that runs PostgreSQL: it drops to the `postgres` user for the server and turns
the TERM of `mlwf down` into PostgreSQL's fast shutdown (TERM alone is a "smart" shutdown
that waits for every client to leave).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from mlflowctl.backends.executors import read_record, write_record
from mlflowctl.config import Config
from mlflowctl.errors import MissingDependencyError, MlwfError, StackDownError, UsageError
from mlflowctl.state import is_ours, mark, remove_tree

if TYPE_CHECKING:  # pragma: no cover
    from mlflowctl.backends.base import Deadline
    from mlflowctl.backends.local import LocalBackend, ServiceSpec
    from mlflowctl.secrets import Secrets

WORKER_PREFIX = "worker-"
WORKER_CONCURRENCY = 2
DATABASE = "airflow"
DATABASE_USER = "airflow"
POSTGRES_SYSTEM_USER = "postgres"
WARM_SHUTDOWN_TIMEOUT = 600.0
#: Where PostgreSQL is installed when its binaries are not on PATH.
POSTGRES_GLOBS = (
    "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
    "/usr/pgsql-*/bin",  # RHEL, Fedora (PGDG)
    "/opt/homebrew/opt/postgresql*/bin",
    "/usr/local/opt/postgresql*/bin",
    "/usr/local/pgsql/bin",
)
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


def find_postgres_bin() -> Path:
    """The folder with initdb, postgres and pg_isready: PATH first, then the usual places (newest)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(on_path).resolve().parent
    candidates = [Path(p) for pattern in POSTGRES_GLOBS for p in glob.glob(pattern)]
    candidates = [c for c in candidates if (c / "initdb").is_file() and (c / "postgres").is_file()]

    def version(path: Path) -> tuple:
        return tuple(int(n) for n in re.findall(r"\d+", str(path))) or (0,)

    if not candidates:
        raise MissingDependencyError(
            "PostgreSQL (initdb, postgres) not found (needed by the celery executor): install it "
            "(apt-get install postgresql, brew install postgresql) or set database_url to an existing database"
        )
    return max(candidates, key=version)


# --------------------------------------------------------------------- postgres


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _postgres_account() -> tuple[int, int] | None:
    """(uid, gid) of the `postgres` system user when mlwf runs as root, else None (run as ourselves)."""
    if not _as_root():
        return None
    import pwd

    try:
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        raise MissingDependencyError(
            "PostgreSQL refuses to run as root and there is no `postgres` system user to run it as: "
            "run mlwf as a normal user, create the user (apt-get install postgresql does), or set database_url"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _reachable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether `uid` can enter every folder from / down to `path` (the existing part)."""
    for folder in [*reversed(path.parents), path]:
        try:
            st = folder.stat()
        except FileNotFoundError:
            return True
        if st.st_uid == uid:
            allowed = st.st_mode & 0o100
        elif st.st_gid == gid:
            allowed = st.st_mode & 0o010
        else:
            allowed = st.st_mode & 0o001
        if not allowed:
            return False
    return True


def postgres_dir(config: Config) -> Path:
    """Where mlwf's PostgreSQL keeps its data: <home>/postgres, unless the `postgres` user
    (root case) cannot reach the state directory (e.g. a 0700 home): then a folder of its
    own under the temp directory, recorded in executor.json and deleted by `down --volumes`."""
    recorded = read_record(config.home_dir).get("postgres_dir")
    if recorded:
        return Path(recorded)
    preferred = config.home_dir / "postgres"
    account = _postgres_account()
    if account is None or _reachable_by(preferred, *account):
        return preferred
    digest = hashlib.sha256(str(config.home_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"mlwf-postgres-{digest}"


def database_url(config: Config, secrets: "Secrets") -> str:
    password = quote(secrets.postgres_password, safe="")
    return f"postgresql+psycopg2://{DATABASE_USER}:{password}@127.0.0.1:{config.postgres_port}/{DATABASE}"


def _run_as(argv: list[str], account, *, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    extra = {} if account is None else {"user": account[0], "group": account[1], "extra_groups": []}
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, cwd=str(cwd) if cwd else "/", timeout=120, **extra
    )


def init_postgres(config: Config, secrets: "Secrets") -> None:
    """initdb (once) with scram auth and the generated password, then CREATE DATABASE airflow."""
    binaries = find_postgres_bin()
    account = _postgres_account()
    base = postgres_dir(config)
    data, sockets = base / "data", base / "run"
    _private_folder(base, account, inside=config.home_dir)
    sockets.mkdir(exist_ok=True, mode=0o700)  # inside a folder only we (and postgres) can enter
    if account is not None:
        os.chown(sockets, *account)
    write_record(config.home_dir, postgres_dir=str(base))
    if (data / "PG_VERSION").is_file():
        return
    if data.exists():
        shutil.rmtree(data)  # a half-made cluster from an interrupted init
    password_file = base / ".pwfile"
    password_file.unlink(missing_ok=True)
    descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.postgres_password + "\n")
    if account is not None:
        os.chown(password_file, *account)
    try:
        made = _run_as(
            [
                str(binaries / "initdb"), "-D", str(data), "-U", DATABASE_USER, f"--pwfile={password_file}",
                "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions", "--no-sync",
            ],
            account,
        )
    finally:
        password_file.unlink(missing_ok=True)
    if made.returncode != 0:
        raise MlwfError(f"initdb failed (exit {made.returncode}): {_last_line(made.stderr or made.stdout)}")
    created = _run_as(
        [str(binaries / "postgres"), "--single", "-D", str(data), "-c", "listen_addresses=", "postgres"],
        account,
        stdin=f"CREATE DATABASE {DATABASE};\n",
    )
    if created.returncode != 0 or "ERROR" in created.stdout + created.stderr:
        shutil.rmtree(data, ignore_errors=True)
        raise MlwfError(f"creating the database failed: {_last_line(created.stderr or created.stdout)}")


def _private_folder(path: Path, account: tuple[int, int] | None, *, inside: Path) -> None:
    """Create PostgreSQL's folder 0700, or accept an existing one only when nobody else can have
    planted it: inside the (0700) state directory, or a real folder (lstat, no link) owned by us
    or `postgres`, mode 0700, carrying mlwf's marker. A predictable name under /tmp is otherwise
    a gift to any local user."""
    try:
        os.mkdir(path, 0o700)
        mark(path)
    except FileExistsError:
        if not path.is_relative_to(inside):
            st = os.lstat(path)
            owners = {os.geteuid(), *([account[0]] if account else [])}
            if not stat.S_ISDIR(st.st_mode) or st.st_uid not in owners or st.st_mode & 0o077 or not is_ours(path):
                raise MlwfError(
                    f"{path} exists but mlwf did not make it (owner, mode, link or marker differ): "
                    "remove it, or use a state directory the `postgres` user can reach",
                ) from None
    if account is not None:
        os.chown(path, *account)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def postgres_argv(config: Config) -> list[str]:
    binaries = find_postgres_bin()
    base = postgres_dir(config)
    account = _postgres_account()
    server = [
        str(binaries / "postgres"), "-D", str(base / "data"),
        "-h", "127.0.0.1", "-p", str(config.postgres_port), "-k", str(base / "run"),
        "-c", "max_connections=200", "-c", "synchronous_commit=off",
    ]
    user = ["--uid", str(account[0]), "--gid", str(account[1])] if account else []
    return [sys.executable, "-m", "mlflowctl.backends.celery_local", "supervise", *user, "--", *server]


def postgres_accepts(config: Config) -> bool:
    """pg_isready: the server accepts connections (not only listens: it may still be starting up)."""
    ready = find_postgres_bin() / "pg_isready"
    if not ready.is_file():
        return _port_answers(config.postgres_port)
    result = subprocess.run(
        [str(ready), "-q", "-h", "127.0.0.1", "-p", str(config.postgres_port), "-t", "2"], capture_output=True
    )
    return result.returncode == 0


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


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------- services


def urls(config: Config, secrets: "Secrets") -> dict[str, str]:
    """The database and broker URLs the stack's Airflow runs with: the user's as is, else mlwf's own."""
    if config.executor != "celery":
        return {}
    return {
        "database_url": config.database_url or database_url(config, secrets),
        "broker_url": config.broker_url or broker_url(config, secrets),
    }


def worker_indices(backend: "LocalBackend") -> list[int]:
    """1..workers, plus any worker that still has a pid file (so `down` stops it too)."""
    found = set()
    for path in backend.run_dir.glob(f"{WORKER_PREFIX}*.pid"):
        suffix = path.stem[len(WORKER_PREFIX):]
        if suffix.isdigit():
            found.add(int(suffix))
    return sorted(found | set(range(1, backend.config.workers + 1)))


def broker_services(backend: "LocalBackend") -> list["ServiceSpec"]:
    """PostgreSQL and Redis (the ones mlwf runs itself), started before Airflow."""
    from mlflowctl.backends.local import ServiceSpec
    from mlflowctl.backends.ports import PortNeed

    c = backend.config
    specs = []
    if not c.database_url:
        try:
            argv = postgres_argv(c)
        except MissingDependencyError:  # `status` and `down` still work; `up` says what is missing
            argv = ["postgres"]
        specs.append(
            ServiceSpec(
                "postgres",
                argv,
                port=c.postgres_port,
                url=f"postgresql://127.0.0.1:{c.postgres_port}/{DATABASE}",
                ports=[PortNeed("postgres", "postgres_port", c.postgres_port)],
                prepare=lambda: init_postgres(c, _secrets(backend)),
                ready=lambda deadline: _ready(backend, "postgres", lambda: postgres_accepts(c), deadline),
                check=lambda: (True, "") if _port_answers(c.postgres_port) else (
                    False, f"not answering on port {c.postgres_port}"
                ),
            )
        )
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
                ready=lambda deadline: _ready(
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


def _ready(backend: "LocalBackend", name: str, condition, deadline: "Deadline") -> None:
    """Block until `condition()`; StartFailed with the log's tail when the service dies or
    `up --timeout` runs out."""
    from mlflowctl.backends import processes
    from mlflowctl.backends.base import StartFailed
    from mlflowctl.backends.local import LOG_TAIL_LINES, tail_lines

    while not condition():
        record = processes.read_pid_file(backend.run_dir / f"{name}.pid")
        dead = record is None or record.process() is None
        if dead or not deadline.left():
            log_tail = tail_lines(backend.logs_dir / f"{name}.log", LOG_TAIL_LINES)
            if dead:
                raise StartFailed(f"{name} exited while starting", service=name, log_tail=log_tail)
            raise deadline.expired(f"waiting for {name} to accept connections", service=name, log_tail=log_tail)
        time.sleep(0.1)


# --------------------------------------------------------------------- plugin interface


def before_airflow(backend: "LocalBackend") -> list["ServiceSpec"]:
    return broker_services(backend)


def after_airflow(backend: "LocalBackend") -> list["ServiceSpec"]:
    return [*worker_services(backend), *backend.spawner_services()]


def environment(backend: "LocalBackend") -> dict[str, str]:
    """Called by `up` before anything starts: a missing binary fails here, with nothing left half-up."""
    config = backend.config
    if not config.database_url:
        find_postgres_bin()
        _postgres_account()
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


def remove_data(config: Config) -> str | None:
    """With `down --volumes`: delete PostgreSQL's data when it lives outside the state directory."""
    base = read_record(config.home_dir).get("postgres_dir")
    if not base:
        return None
    path = Path(base)
    if path.is_relative_to(config.home_dir):
        return None  # removed with the state directory
    if not path.exists():
        return None
    if not is_ours(path):
        return f"kept {path}: it has no mlwf marker (made by an older mlwf?); delete it yourself if it is this stack's"
    remove_tree(path, config.project_root)
    return f"deleted {path}"


# --------------------------------------------------------------------- supervisor


def _supervise(argv: list[str]) -> int:
    """Run the server (as --uid/--gid when given); TERM or INT -> SIGINT, its fast shutdown."""
    uid = gid = None
    while argv and argv[0] != "--":
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--uid":
            uid = int(value)
        elif flag == "--gid":
            gid = int(value)
    command = argv[1:]
    extra = {} if uid is None else {"user": uid, "group": gid, "extra_groups": []}
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, cwd="/", **extra)

    def forward(_signum, _frame):
        try:
            child.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return child.wait()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "supervise":
        sys.exit(_supervise(sys.argv[2:]))
    sys.exit("usage: python -m mlflowctl.backends.celery_local supervise [--uid N --gid N] -- COMMAND...")
