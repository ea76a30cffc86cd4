"""Celery workers on other hosts: the join file the head writes, and the workers it starts there.

On the head (`mlwf up --executor celery --listen ADDR`), `mlwf worker token` writes the join
file, 0600, one JSON object:

    format        FORMAT; another one is refused
    head          ADDR
    broker_url    rediss://:<password>@ADDR:<redis_port>/0           (TLS only, see broker.py)
    database_url  postgresql+psycopg2://airflow:<password>@ADDR:<postgres_port>/airflow  (hostssl)
    execution_api_url  https://ADDR:<airflow_port>/execution/         (tls_front.py)
    jwt_secret, fernet_key   what every Airflow process of the stack shares
    ca            the head's CA certificate (tls.py), PEM: workers verify all three against it
    files         {"dags/<path>": sha256, "tasks/<path>": sha256} of the DAG and task folders
    digest        sha256 over `files`

On another host, `mlwf worker join FILE` checks the file, that broker, database and API answer
and accept its credentials over verified TLS, and that this project's folders have the same
files; then mlwf's launcher forks N `airflow celery worker -H r<i>@%h` processes, as on the
head, as detached sessions with pid files in its own state directory, recorded as joined in
executor.json. From then on that
state directory is the workers only: `status`, `logs`, `down` see them; `mlwf worker leave`
stops them with Celery's warm shutdown. Task logs stay on the worker's host.
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from mlflowctl.errors import AuthError, JoinError, UnreachableError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from mlflowctl.backends.local.state import ServiceSpec, Stack
    from mlflowctl.config import Config

FORMAT = 1
KEYS = ("format", "head", "broker_url", "database_url", "execution_api_url", "jwt_secret", "fernet_key", "ca",
        "files", "digest")
#: Celery hostnames of joined workers (the head's are w<i>@host): r1@host, r2@host, ...
HOSTNAME = "r{index}@%h"
#: For the launcher to import Airflow, Celery and the task_preload modules and fork the workers.
JOIN_START_TIMEOUT_S = 180.0
CA_FILE = "head-ca.pem"
CHECK_TIMEOUT = 5.0
SKIPPED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache"}


# --------------------------------------------------------------------- the DAG and task folders


def folder_files(config: Config) -> dict[str, str]:
    """sha256 of every file of the DAG and task folders, by `dags/` or `tasks/` and the path inside."""
    found = {}
    for label, folder in (("dags", config.dags_dir), ("tasks", config.tasks_dir)):
        root = Path(folder)
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if not path.is_file() or SKIPPED_PARTS & set(relative.parts) or path.suffix == ".pyc":
                continue
            found[f"{label}/{relative.as_posix()}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def differing(head: dict[str, str], here: dict[str, str]) -> list[str]:
    """Files that differ, are missing here or exist only here, sorted."""
    return sorted(name for name in head.keys() | here.keys() if head.get(name) != here.get(name))


# --------------------------------------------------------------------- the head: the join file


def token(stack: Stack) -> dict:
    """The join file's contents for a running head that listens."""
    from mlflowctl.backends.local import broker, postgres, tls

    c = stack.config
    if not c.listen:
        raise JoinError(
            "this stack was not started with --listen: other hosts cannot reach its broker, database or API",
            hint="mlwf down, then mlwf up --executor celery --listen ADDR (an address of this host the workers reach)",
        )
    scheduler = stack.live("scheduler")
    if scheduler is None:
        from mlflowctl.errors import StackDownError

        raise StackDownError("the stack is not running", hint="start it with `mlwf up --executor celery --listen ADDR`")
    secrets = stack.secrets()
    files = folder_files(c)
    from mlflowctl.config import local_url

    return {
        "format": FORMAT,
        "head": c.listen,
        "broker_url": broker.shared_url(c, secrets, c.listen),
        "database_url": postgres.database_url(c, secrets, c.listen),
        "execution_api_url": local_url(c.airflow_port, "/execution/", scheme="https", host=c.listen),
        "jwt_secret": secrets.jwt_secret,
        "fernet_key": secrets.fernet_key,
        "ca": tls.files(c.home_dir).ca.read_text(),
        "files": files,
        "digest": digest(files),
    }


def write_token(path: Path, data: dict) -> None:
    from mlflowctl.state import write_durably

    write_durably(path, json.dumps(data, indent=2) + "\n", mode=0o600)


# --------------------------------------------------------------------- the joining host


def read_token(path: Path) -> dict:
    """The join file, refused when missing, readable by others, damaged or of another format."""
    try:
        st = path.stat()
        text = path.read_text()
    except FileNotFoundError:
        raise JoinError(f"join file {path} not found", hint="on the head: mlwf worker token --out FILE") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JoinError(f"join file {path} cannot be read ({exc})") from None
    if st.st_mode & 0o077:
        raise JoinError(
            f"join file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): it holds the stack's passwords",
            hint=f"chmod 600 {path}, and ask whoever could read it whether the head's secrets must change",
        )
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or "format" not in data:
        raise JoinError(f"join file {path} is damaged: not the JSON object `mlwf worker token` writes")
    if data["format"] != FORMAT:
        raise JoinError(
            f"join file {path} has format {data['format']!r}; this mlwf reads format {FORMAT}",
            hint="write it again with the head's `mlwf worker token`, from the same mlwf version as this host's",
        )
    missing = [key for key in KEYS if not data.get(key)]
    schemes = {"broker_url": "rediss://", "database_url": "postgresql", "execution_api_url": "https://"}
    missing += [key for key, scheme in schemes.items() if not str(data.get(key, "")).startswith(scheme)]
    if missing or not isinstance(data["files"], dict) or digest(data["files"]) != data["digest"]:
        raise JoinError(f"join file {path} is damaged: {', '.join(sorted(set(missing))) or 'files and digest disagree'}")
    return data


def worker_urls(data: dict, ca: Path) -> tuple[str, str]:
    """(broker URL, database URL) that verify the head against the join file's CA."""
    from mlflowctl.backends.local import broker, postgres

    return broker.verified_url(data["broker_url"], str(ca)), postgres.verified_url(data["database_url"], str(ca))


def check_head(data: dict, ca: Path, python: str) -> None:
    """Broker, database and execution API answer over verified TLS and take the credentials;
    one line per failure, naming which. Raises with the gravest: credentials (3), the CA (21),
    unreachable (5)."""
    from concurrent.futures import ThreadPoolExecutor

    broker_url, database_url = worker_urls(data, ca)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda check: check(), [
            lambda: ("broker", *_check_broker(broker_url)),
            lambda: ("database", *_check_database(database_url, python)),
            lambda: ("execution API", *_check_api(data["execution_api_url"], ca)),
        ]))
    failures = [(name, kind, detail) for name, kind, detail in results if kind]
    if not failures:
        return
    lines = [f"{name} at {data['head']}: {detail}" for name, _kind, detail in failures]
    kinds = {kind for _name, kind, _detail in failures}
    error = AuthError if "auth" in kinds else JoinError if "tls" in kinds else UnreachableError
    raise error("\n".join(lines), hint="nothing was started; check the join file, the head (`mlwf status`) and the network")


def _check_broker(url: str) -> tuple[str, str]:
    from mlflowctl.backends.local import broker

    ok, detail = broker.ping(url, timeout=CHECK_TIMEOUT)
    if ok:
        return "", ""
    return ("auth" if "password" in detail else "tls" if "certificate" in detail else "unreachable"), detail


#: Run in the Airflow runtime's python (psycopg2 lives there, not in the CLI).
_DATABASE_CHECK = """
import sys, psycopg2
from sqlalchemy.engine import make_url
u = make_url(sys.argv[1])
try:
    psycopg2.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database,
                     connect_timeout=int(sys.argv[2]), **u.query).close()
except psycopg2.Error as exc:
    print(str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
    sys.exit(1)
"""


def _check_database(url: str, python: str) -> tuple[str, str]:
    import subprocess

    try:
        done = subprocess.run([python, "-c", _DATABASE_CHECK, url, str(int(CHECK_TIMEOUT))], capture_output=True,
                              text=True, timeout=CHECK_TIMEOUT * 4)
    except subprocess.TimeoutExpired:
        return "unreachable", "no answer"
    if done.returncode == 0:
        return "", ""
    said = (done.stdout.strip() or done.stderr.strip()).splitlines()
    detail = said[-1] if said else f"the check failed (exit {done.returncode})"
    lowered = detail.lower()
    kind = "auth" if "password" in lowered else "tls" if "certificate" in lowered or "ssl" in lowered else "unreachable"
    return kind, detail


def _check_api(url: str, ca: Path) -> tuple[str, str]:
    import ssl

    import httpx

    health = url.rstrip("/").rsplit("/execution", 1)[0] + "/api/v2/monitor/health"
    try:
        answer = httpx.get(health, verify=ssl.create_default_context(cafile=str(ca)), timeout=CHECK_TIMEOUT)
    except httpx.ConnectError as exc:
        if "CERTIFICATE" in str(exc).upper():
            return "tls", f"its certificate was not signed by the join file's CA ({str(exc)[:100]})"
        return "unreachable", f"not answering ({str(exc)[:100]})"
    except httpx.HTTPError as exc:
        return "unreachable", f"not answering ({str(exc)[:100]})"
    if answer.status_code != 200:
        return "unreachable", f"answered HTTP {answer.status_code}"
    return "", ""


def is_joined(home: Path) -> bool:
    from mlflowctl.backends.local.record import read_record

    return bool(read_record(home).get("joined"))


def worker_name(index: int) -> str:
    from mlflowctl.backends.local import workers

    return workers.name(index)


def services(stack: Stack) -> list[ServiceSpec]:
    """The joined workers of this state directory, as services (`status`, `logs`, `down`):
    the head's worker services under this host's Celery names."""
    from mlflowctl.backends.local import workers

    return workers.services(stack, HOSTNAME)


def worker_environment(config: Config, data: dict, ca: Path) -> dict[str, str]:
    """The stack's Airflow settings, pointed at the head over verified TLS."""
    import dataclasses

    from mlflowctl.backends.local.environment import local_environment
    from mlflowctl.backends.local.starting import one_by_one
    from mlflowctl.secrets import ADMIN_USER, Secrets

    broker_url, database_url = worker_urls(data, ca)
    # Only what the head's workers share with it; no admin or database password of this host's own.
    secrets = Secrets(ADMIN_USER, "", data["jwt_secret"], data["fernet_key"], "", "")
    env = local_environment(
        dataclasses.replace(config, executor="celery"),
        secrets,
        database_url=database_url,
        broker_url=broker_url,
        supervisor_fixed=not one_by_one(),  # the launcher forks them, with its fixes, as on the head
    )
    env.update({
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": data["execution_api_url"],
        "AIRFLOW__API__SSL_CA_FILE": str(ca),  # the task SDK's client verifies the API against it
        "AIRFLOW__API__CLIENT_USE_PUBLIC_CERTS": "False",
    })
    return env


def join(stack: Stack, path: Path, count: int, *, head_running: bool) -> tuple[str, list[str]]:
    """Check everything, then start `count` workers; returns the head's address and their
    names. Nothing starts on a refusal."""
    import dataclasses

    from mlflowctl.backends.base import Deadline, no_progress
    from mlflowctl.backends.local.probes import Prober
    from mlflowctl.backends.local.record import write_record
    from mlflowctl.backends.local.starting import Start
    from mlflowctl.secrets import write_private
    from mlflowctl.state import ensure_home

    data = read_token(path)
    if head_running:
        raise JoinError(
            f"this host's own stack runs in {stack.home}: a host is a head or joins one, not both",
            hint="mlwf down first, or join from another state directory (MLWF_HOME=.mlwf-worker)",
        )
    if any(stack.live(worker_name(i)) for i in range(1, 33)):
        raise UsageError("workers joined from this state directory are running", hint="mlwf worker leave first")
    here = folder_files(stack.config)
    changed = differing(data["files"], here)
    if changed:
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        raise JoinError(
            f"this host's DAG and task folders differ from the head's: {shown}",
            hint="copy the head's dags and tasks folders here (same files, same contents), then join again",
        )
    ensure_home(stack.home, stack.config.project_root)
    ca = stack.home / "tls" / CA_FILE
    write_private(ca, data["ca"])
    check_head(data, ca, stack.python)
    env = worker_environment(stack.config, data, ca)
    env["PATH"] = f"{stack.runtime.bin_dir}:{env.get('PATH', '')}" if stack.runtime else env.get("PATH", "")
    for folder in ("logs", "airflow", "data"):
        (stack.home / folder).mkdir(mode=0o700, exist_ok=True)
    write_record(stack.home, joined=data["head"], executor="celery", workers=count)
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    # Forked by the launcher as the head's workers are: Airflow imported once, the task
    # supervisor fixed (a task's slot is free when its process exits, not up to a second
    # later), the project's task_preload imported for every task.
    stack.config = dataclasses.replace(stack.config, executor="celery", workers=count)
    specs = services(stack)
    start = Start(stack, Prober(stack), env, no_progress, Deadline.start(JOIN_START_TIMEOUT_S))
    try:
        start.airflow(specs, migrate=False)
    except BaseException:
        start.undo(specs)
        raise
    return data["head"], [spec.name for spec in specs]


def leave(stack: Stack, drain_timeout: float) -> dict[str, str]:
    """Warm shutdown of every joined worker (running tasks finish first): name -> outcome."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflowctl.backends.local import workers
    from mlflowctl.backends.local.record import write_record

    if not is_joined(stack.home):
        raise JoinError(f"no workers joined from {stack.home}", hint="mlwf worker join FILE")
    names = [worker_name(i) for i in workers.indices(stack)]
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        outcomes = dict(zip(names, pool.map(lambda n: workers.warm_stop(stack, n, drain_timeout), names)))
    write_record(stack.home, joined="", workers=0)
    return outcomes


# --------------------------------------------------------------------- the head: every worker


#: Run in the Airflow runtime's python, where Celery lives (the CLI's own environment need not
#: have it); the broker URL comes on stdin, out of `ps`.
_BROADCAST = """
import json, sys
from celery import Celery
app = Celery(broker=sys.stdin.read().strip(), set_as_current=False)
try:
    answers = app.control.inspect(timeout=float(sys.argv[1])).active() or {}
finally:
    app.close()
print(json.dumps({name: len(tasks or []) for name, tasks in answers.items()}))
"""


def cluster_workers(broker_url: str, python: str, timeout: float = 1.0) -> dict[str, int] | None:
    """Celery hostname -> tasks running, for every worker that answers on the broker (this
    host's and other hosts'); None when the broker could not be asked."""
    import subprocess

    try:
        done = subprocess.run([python, "-c", _BROADCAST, str(timeout)], input=broker_url, capture_output=True,
                              text=True, timeout=timeout + 30)
        found = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    return found if isinstance(found, dict) else None
