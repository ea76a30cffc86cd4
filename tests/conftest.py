"""Shared fixtures. `stack`: one real Airflow stack per test session, started with `mlwf up`.

The stack runs in a temporary copy of the project (dags/, src/, stack/, requirements/)
with its own state directory and a free port for every port setting, so several test
sessions and developers' stacks can run side by side. Tests drive it the way a user
does: `stack.mlwf("status", "--json")` runs the installed `mlwf` in that project.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MLWF = str(Path(sys.executable).parent / "mlwf")
PORT_SETTINGS = (
    "airflow_port",
    "prometheus_port",
    "exporter_port",
    "statsd_port",
    "grafana_port",
    "log_server_port",
    "trigger_log_server_port",
    "redis_port",
    "postgres_port",
    "serving_port",
)
UP_TIMEOUT_S = 240


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 for both TCP and UDP right now."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def stack_sessions(home: Path) -> set[int]:
    """Session ids of the stack's services, from their pid files (each service leads a session)."""
    sessions = set()
    for path in (home / "run").glob("*.pid"):
        try:
            sessions.add(int(json.loads(path.read_text())["pid"]))
        except (OSError, ValueError, KeyError):
            continue
    return sessions


def postgres_data(home: Path) -> str | None:
    """The stack's PostgreSQL data folder, from its record (it may live outside the home)."""
    try:
        base = json.loads((home / "executor.json").read_text()).get("postgres_dir")
    except (OSError, ValueError):
        return None
    return str(Path(base) / "data") if base else None


def remove_postgres_left_outside(root: Path) -> list[Path]:
    """Delete the PostgreSQL data that stacks under `root` kept outside their state directory (as
    root: a folder of its own under the temp directory, see postgres.postgres_dir), which
    deleting `root` leaves behind: ~60 MB a stack, 2 GB over one run of the suite. Only a folder
    that a state directory under `root` records, named and marked as mlwf makes it, and in
    which no process works (a stack still up keeps its data)."""
    import tempfile

    import psutil

    from mlflowctl.state import is_ours, remove_tree

    candidates = []
    for record in root.rglob("executor.json"):
        try:
            base = Path(json.loads(record.read_text()).get("postgres_dir") or "")
        except (OSError, ValueError, TypeError, AttributeError):  # the damaged records of some tests
            continue
        if base.parent == Path(tempfile.gettempdir()) and base.name.startswith("mlwf-postgres-") and is_ours(base):
            candidates.append(base)
    busy = set()
    for process in psutil.process_iter():
        try:
            busy.add(Path(process.cwd()))
        except (psutil.Error, OSError):
            continue
    removed = []
    for base in candidates:
        if not any(folder.is_relative_to(base) for folder in busy):
            remove_tree(base, REPO)  # mlwf's own guarded deletion: never /, a home or the checkout
            removed.append(base)
    return removed


@pytest.fixture(scope="session", autouse=True)
def postgres_data_removed_at_the_end(tmp_path_factory):
    yield
    remove_postgres_left_outside(tmp_path_factory.getbasetemp())


def stack_processes(home: Path, sessions: set[int] = frozenset(), project: Path | None = None) -> list[int]:
    """Pids of live processes of the stack: in one of its sessions, carrying its env marker,
    working in its PostgreSQL data folder, or (for a test's temporary project) working in its
    project directory.

    (The marker alone is not enough: setproctitle, which Airflow uses, overwrites
    /proc/<pid>/environ; sessions survive it. PostgreSQL's processes leave the session, each
    leads its own, and overwrite their environment, but all work in the data folder.)
    """
    import psutil

    data = postgres_data(home)
    found = []
    for process in psutil.process_iter(["status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getsid(process.pid) in sessions or process.environ().get("MLWF_STACK_HOME") == str(home):
                found.append(process.pid)
            elif process.pid != os.getpid() and process.cwd() in ({str(project)} if project else set()) | (
                {data} if data else set()
            ):
                found.append(process.pid)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


def exposed_sockets(home: Path, project: Path | None = None) -> list[str]:
    """Every socket of the stack's processes that another host or user could reach: a TCP
    listener or bound UDP socket not on 127.0.0.1/::1, an abstract Unix socket, or a Unix
    socket whose folder others may enter. Empty when the stack keeps to itself."""
    import psutil

    loopback = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
    exposed = []
    for pid in stack_processes(home, stack_sessions(home), project):
        try:
            process = psutil.Process(pid)
            inet = process.net_connections(kind="inet")
            unix = process.net_connections(kind="unix")
            name = process.name()
        except psutil.Error:
            continue
        for conn in inet:
            bound = conn.status == psutil.CONN_LISTEN or (conn.type == socket.SOCK_DGRAM and not conn.raddr)
            if bound and conn.laddr and conn.laddr.ip not in loopback:
                exposed.append(f"{name} (pid {pid}) listens on {conn.laddr.ip}:{conn.laddr.port}")
        for conn in unix:
            path = conn.laddr or ""
            if path.startswith(("\0", "@")):
                exposed.append(f"{name} (pid {pid}) has an abstract Unix socket {path!r}")
            elif path:
                folder = Path(path).parent
                if folder.stat().st_mode & 0o077:
                    exposed.append(f"{name} (pid {pid}) has a Unix socket {path} in a folder others may enter")
    return exposed


def sigint_as_from_a_terminal() -> None:
    """preexec_fn of a command a test stops with Ctrl-C: SIGINT back to its default. A suite
    started as a background job of a non-interactive shell inherits SIGINT ignored, and so
    would the command, which then never sees the Ctrl-C."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def write_settings(path: Path, settings: dict) -> None:
    """An mlwf.toml with the repository's [tool.mlwf] settings (a copy runs what users run),
    overridden by `settings`."""
    import tomllib

    merged = {**tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mlwf"], **settings}
    path.write_text("".join(f"{name} = {json.dumps(value)}\n" for name, value in merged.items()))


def read_until(master: int, wanted: bytes, deadline: float) -> bytes:
    """What a pty shows until `wanted`, the deadline or the child closing it; never blocks past the deadline."""
    seen = b""
    while wanted not in seen and time.monotonic() < deadline:
        if select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    """A real fitted model, saved the way the training task saves it (registry tests share it)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mlpipeline.model_training import save_model

    x, y = load_breast_cancer(return_X_y=True)
    path = tmp_path_factory.mktemp("model") / "model.skops"
    save_model(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y), path)
    return path


@dataclass
class Prompted:
    returncode: int
    stdout: str
    shown: bytes  # all the terminal showed, prompt included
    prompt: bytes


def answer_prompt(argv: list[str], *, prompt: str, typed: bytes, env: dict, cwd, timeout: float = 120) -> Prompted:
    """Run `argv` with a pseudo-terminal as stdin/stderr, wait for `prompt` and type `typed`.

    The prompt's last byte comes after echo is off and type-ahead flushed, so typing only
    after it is seen is what a person does; every wait is bounded."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        argv, stdin=slave, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=cwd, start_new_session=True
    )
    os.close(slave)
    try:
        wanted = prompt.encode()
        shown = read_until(master, wanted, time.monotonic() + 60)
        assert wanted in shown, shown
        os.write(master, typed)
        out, _ = process.communicate(timeout=timeout)
        shown += read_until(master, b"\0never", time.monotonic() + 5)  # the rest it showed
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    return Prompted(process.returncode, out.decode(), shown, wanted)


@dataclass
class Stack:
    """A project copy with its own mlwf.toml, state directory and ports."""

    project: Path
    home: Path
    ports: dict[str, int]
    user: str = "admin"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['airflow_port']}"

    @property
    def password(self) -> str:
        return json.loads((self.home / "secrets.json").read_text())["admin_password"]

    @classmethod
    def create(cls, root: Path, **settings) -> "Stack":
        project = root / "project"
        project.mkdir(parents=True)
        for folder in ("dags", "src", "stack", "requirements"):
            if (REPO / folder).is_dir():
                shutil.copytree(
                    REPO / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
                )
        ports = dict(zip(PORT_SETTINGS, free_ports(len(PORT_SETTINGS))))
        write_settings(project / "mlwf.toml", {**ports, **settings})
        home = project / ".mlwf"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLWF_", "AIRFLOW__", "AIRFLOW_CONN_"))}
        env.update(
            {
                "MLWF_HOME": str(home),
                "MLWF_BACKEND": "local",
                "MLWF_AIRFLOW_URL": f"http://127.0.0.1:{ports['airflow_port']}",
                "MLWF_AIRFLOW_USER": "admin",
                "COLUMNS": "200",
            }
        )
        return cls(project=project, home=home, ports=ports, env=env)

    def mlwf(
        self,
        *args: str,
        check: bool = False,
        timeout: float = 300,
        env: dict | None = None,
        input: str | None = None,
        own_session: bool = False,
    ):
        """Run the installed `mlwf` in the project, as a user would; `own_session`: as from
        another terminal (the kernel shares CPU between sessions first, see sched(7) autogroup)."""
        result = subprocess.run(
            [MLWF, *args],
            cwd=self.project,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            start_new_session=own_session,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"mlwf {' '.join(args)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def up(self, *args: str) -> subprocess.CompletedProcess:
        result = self.mlwf("up", "--timeout", str(UP_TIMEOUT_S - 20), *args, timeout=UP_TIMEOUT_S)
        if result.returncode != 0:
            logs = self.mlwf("logs", "--tail", "40").stdout
            self.mlwf("down", timeout=120)
            raise AssertionError(
                f"mlwf up failed ({result.returncode})\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}\nlogs:\n{logs}"
            )
        return result

    def token(self) -> str:
        import httpx

        response = httpx.post(
            f"{self.url}/auth/token", json={"username": self.user, "password": self.password}, timeout=10
        )
        response.raise_for_status()
        return response.json()["access_token"]

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 120) -> None:
        """Block until the DAG processor has registered `dag_ids`; fail with the import errors."""
        import httpx

        headers = {"Authorization": f"Bearer {self.token()}"}
        deadline = time.monotonic() + timeout
        while True:
            found = httpx.get(f"{self.url}/api/v2/dags", params={"limit": 100}, headers=headers, timeout=10).json()
            missing = set(dag_ids) - {dag["dag_id"] for dag in found["dags"]}
            if not missing:
                return
            if time.monotonic() > deadline:
                errors = httpx.get(f"{self.url}/api/v2/importErrors", headers=headers, timeout=10).json()
                raise AssertionError(f"DAGs {sorted(missing)} not registered after {timeout} s; import errors: {errors}")
            time.sleep(1)

    def down_and_check(self) -> None:
        """`mlwf down`, then nothing of the stack may be left: no process, no open port."""
        sessions = stack_sessions(self.home)
        assert sessions, "no pid files: was the stack up?"
        result = self.mlwf("down", timeout=120)
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 5
        while stack_processes(self.home, sessions, self.project) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stack_processes(self.home, sessions, self.project) == [], "processes of the stack survived `mlwf down`"
        for name in ("airflow_port", "log_server_port", "trigger_log_server_port", "exporter_port", "prometheus_port", "serving_port"):
            assert not port_open(self.ports[name]), f"{name} {self.ports[name]} still open after down"


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    """The session's real stack, started once with `mlwf up` and stopped at the end."""
    handle = Stack.create(tmp_path_factory.mktemp("stack"))
    handle.up()
    try:
        handle.wait_for_dags(sorted(path.stem for path in (handle.project / "dags").glob("*_dag.py")))
        yield handle
    finally:
        handle.down_and_check()


@pytest.fixture(scope="session")
def smoke(stack) -> str:
    """The mlwf_smoke DAG (tests/dags/, about a second a run), copied into the stack's DAG folder
    and parsed by Airflow."""
    source = REPO / "tests" / "dags" / "mlwf_smoke_dag.py"
    target = stack.project / "dags" / source.name
    if not target.exists() or target.read_text() != source.read_text():
        shutil.copy(source, target)
    stack.wait_for_dags(["mlwf_smoke"], timeout=90)
    return "mlwf_smoke"


@pytest.fixture(scope="session")
def make_stack(tmp_path_factory):
    """A factory for extra short-lived stacks (destructive tests); all are stopped at the end."""
    made: list[Stack] = []

    def factory(**settings) -> Stack:
        handle = Stack.create(tmp_path_factory.mktemp("extra-stack"), **settings)
        made.append(handle)
        return handle

    yield factory
    for handle in made:
        handle.mlwf("down", timeout=120)
