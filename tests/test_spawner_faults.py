"""The spawner (launcher.py's fork server) against bad clients, as a real process.

A launcher started with an empty plan and a spawner (Airflow imported once, ~2 s) leaves
the spawner listening on its Unix socket, as `mlwf up` does for a Celery stack. After each
bad client: the spawner still runs, exactly one socket listens on its path and only the
spawner holds it, nothing was forked, and it still answers a well-formed request.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from mlflowctl.backends import processes
from mlflowctl.backends.local.starting import LAUNCH_CODE, LAUNCHER

DIGEST = "digest-of-this-spawner"
CLIENT_TIMEOUT_S = 5.0  # launcher.CLIENT_TIMEOUT_S: how long a silent client may hold a connection


@dataclass
class Spawner:
    pid: int
    create_time: float
    socket: Path
    logs: Path

    @property
    def log(self) -> str:
        return (self.logs / "spawner.log").read_text()

    def request(self, name: str = "dag-processor", env: str = DIGEST) -> bytes:
        service = {"name": name, "args": [name], "log": str(self.logs / f"{name}.log")}
        return (json.dumps({"env": env, "services": [service]}) + "\n").encode()


@pytest.fixture(scope="module")
def spawner(tmp_path_factory):
    root = tmp_path_factory.mktemp("spawner")
    logs = root / "logs"
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLWF_"))}
    env["AIRFLOW_HOME"] = str(root / "airflow")  # an empty, unmigrated home: a forked component exits at once
    plan = {
        "migrate": False,
        "services": [],
        "executor": "local",
        "task_preload": [],
        "spawner": {"name": "spawner", "log": str(logs / "spawner.log"), "env": DIGEST},
    }
    launched = subprocess.run(
        [sys.executable, "-c", LAUNCH_CODE, str(LAUNCHER), json.dumps(plan)],
        env=env, cwd=root, capture_output=True, text=True, timeout=120,
    )
    assert launched.returncode == 0, launched.stderr[-2000:]
    event = json.loads(launched.stdout.splitlines()[-1])
    pid = event["pid"]
    handle = Spawner(pid, psutil.Process(pid).create_time(), Path(event["socket"]), logs)
    try:
        yield handle
    finally:
        record = processes.PidRecord(pid, handle.create_time, [])
        assert processes.stop_session(record, grace=5.0, second_grace=2.0) == "terminated"
        assert not handle.socket.parent.exists(), "the spawner left its socket folder"


def connect(path: Path, timeout: float = 15.0) -> socket.socket:
    """A connection to the spawner, waiting (bounded) while its backlog is full."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.connect(str(path))
            return client
        except BlockingIOError:  # EAGAIN: every backlog slot taken, the spawner accepts soon
            if time.monotonic() > deadline:
                client.close()
                raise
            time.sleep(0.05)


def ask(path: Path, data: bytes, *, close_write: bool = True) -> list[dict]:
    """Send `data`, then read the answer to EOF: one JSON object per line. A refusal that
    needs no request (busy) may arrive, and the spawner close, before `data` is sent."""
    with connect(path) as client:
        try:
            client.sendall(data)
            if close_write:
                client.shutdown(socket.SHUT_WR)
        except BrokenPipeError:
            pass
        return read_answer(client)


def read_answer(client: socket.socket) -> list[dict]:
    received = b""
    while chunk := client.recv(4096):
        received += chunk
    return [json.loads(line) for line in received.decode().splitlines()]


def listening_holders(path: Path) -> dict[int, set[int]]:
    """For each listening Unix socket bound to `path`: the pids holding it (from /proc)."""
    inodes = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == str(path) and int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON
            inodes.add(int(fields[6]))
    holders: dict[int, set[int]] = {inode: set() for inode in inodes}
    for process in psutil.process_iter():
        try:
            for fd in os.listdir(f"/proc/{process.pid}/fd"):
                target = os.readlink(f"/proc/{process.pid}/fd/{fd}")
                if target.startswith("socket:[") and int(target[8:-1]) in holders:
                    holders[int(target[8:-1])].add(process.pid)
        except OSError:
            continue
    return holders


def assert_still_serving(spawner: Spawner) -> None:
    """Alive, one listening socket held by the spawner alone, and it answers a well-formed request."""
    process = psutil.Process(spawner.pid)
    assert process.create_time() == spawner.create_time and process.status() != psutil.STATUS_ZOMBIE
    assert list(listening_holders(spawner.socket).values()) == [{spawner.pid}]
    started = time.monotonic()
    answer = ask(spawner.socket, spawner.request(env="digest-of-other-settings"))
    assert answer == [{"event": "refused", "reason": "another Airflow environment"}]
    assert time.monotonic() - started < 2.0


def test_its_socket_folder_is_private(spawner):
    folder = spawner.socket.parent.stat()
    assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.getuid()
    assert stat.S_ISSOCK(spawner.socket.stat().st_mode)


BAD_REQUESTS = {
    "garbage bytes": b"\x00\xff\xfe\x80 not json at all\n",
    "a JSON list": b'[{"env": "digest-of-this-spawner", "services": []}]\n',
    "wrong types": json.dumps(
        {"env": 1, "services": [{"name": "worker-9", "args": "celery worker", "log": 5}]}
    ).encode() + b"\n",
    "an unknown key": json.dumps(
        {"env": DIGEST, "services": [{"name": "worker-9", "args": ["celery", "worker"], "log": "x", "user": "root"}]}
    ).encode() + b"\n",
    "no services": json.dumps({"env": DIGEST, "services": []}).encode() + b"\n",
    "half a line, then the client closes": b'{"env": "digest-of-this-spawner", "servi',
    "an over-long line": b'{"env": "' + b"x" * 200_000 + b'"}\n',
}


@pytest.mark.parametrize("data", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
def test_a_malformed_request_is_refused_in_one_line_and_forks_nothing(spawner, data):
    forked_before = spawner.log.count("forked ")
    answer = ask(spawner.socket, data)
    assert len(answer) == 1 and answer[0]["event"] == "refused", answer
    assert spawner.log.count("forked ") == forked_before
    assert_still_serving(spawner)


@pytest.mark.parametrize(
    "args",
    [["db", "reset", "--yes"], ["version"], ["celery", "flower"], ["tasks", "test", "some_dag", "some_task"]],
    ids=["db reset", "version", "celery flower", "tasks test"],
)
def test_only_the_stacks_components_are_forked(spawner, args):
    """Well-formed JSON is not enough: `airflow db reset` would wipe the stack's database."""
    forked_before = spawner.log.count("forked ")
    service = {"name": "worker-9", "args": args, "log": str(spawner.logs / "worker-9.log")}
    answer = ask(spawner.socket, (json.dumps({"env": DIGEST, "services": [service]}) + "\n").encode())
    assert answer == [
        {"event": "refused", "reason": f"worker-9: not an Airflow component the spawner starts: {args[0]!r}"}
    ]
    assert spawner.log.count("forked ") == forked_before and not (spawner.logs / "worker-9.log").exists()
    assert_still_serving(spawner)


def test_a_log_outside_the_stacks_logs_is_refused(spawner, tmp_path):
    """The spawner appends a child's output to the file named: only <logs>/<name>.log."""
    target = tmp_path / "elsewhere.log"
    service = {"name": "dag-processor", "args": ["dag-processor"], "log": str(target)}
    answer = ask(spawner.socket, (json.dumps({"env": DIGEST, "services": [service]}) + "\n").encode())
    assert answer[0]["event"] == "refused" and "its log must be" in answer[0]["reason"]
    assert not target.exists()
    assert_still_serving(spawner)


@pytest.mark.slow
@pytest.mark.parametrize("sent", [b"", b'{"env": "digest-of-this-spawner", "serv'], ids=["silent", "half a line"])
def test_a_silent_client_is_timed_out_and_blocks_nobody_meanwhile(spawner, sent):
    with connect(spawner.socket) as silent:
        silent.sendall(sent)
        opened = time.monotonic()
        assert_still_serving(spawner)  # answered at once while the silent client holds its connection
        answer = read_answer(silent)
        waited = time.monotonic() - opened
    assert answer == [{"event": "refused", "reason": f"no complete request line within {CLIENT_TIMEOUT_S:.0f} s"}]
    assert CLIENT_TIMEOUT_S - 1 <= waited <= CLIENT_TIMEOUT_S + 5, waited
    assert_still_serving(spawner)


@pytest.mark.slow
def test_a_crowd_of_silent_clients_is_refused_past_the_limit(spawner):
    crowd = []
    try:
        for _ in range(20):
            crowd.append(connect(spawner.socket))
        busy = ask(spawner.socket, spawner.request(env="digest-of-other-settings"))
        assert busy[0]["event"] == "refused" and busy[0]["reason"].startswith("busy"), busy
        answers = [read_answer(client) for client in crowd]
    finally:
        for client in crowd:
            client.close()
    assert all(len(answer) == 1 and answer[0]["event"] == "refused" for answer in answers), answers
    assert_still_serving(spawner)


def test_a_valid_request_forks_the_component_in_its_own_session(spawner):
    """The child holds neither the listening socket nor the client's connection (the answer
    ends at once), and leads a session of its own."""
    results: list = []
    client = threading.Thread(target=lambda: results.append(ask(spawner.socket, spawner.request(), close_write=False)))
    client.start()
    client.join(15)
    assert not client.is_alive(), "the answer did not end: the child kept the client's connection open"
    [answer] = results
    assert [event["event"] for event in answer] == ["started"] and answer[0]["name"] == "dag-processor"
    pid = answer[0]["pid"]
    assert f"forked dag-processor (pid {pid})" in spawner.log
    log = spawner.logs / "dag-processor.log"
    try:
        child = psutil.Process(pid)
        assert os.getsid(pid) == pid and child.ppid() != spawner.pid
        assert pid not in set().union(*listening_holders(spawner.socket).values())
    except (psutil.NoSuchProcess, ProcessLookupError):
        pass  # already ended (an unmigrated Airflow home, as planned): its log says so below
    try:
        deadline = time.monotonic() + 60
        while "migration required" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, log.read_text()[-2000:] if log.exists() else "no log"
            time.sleep(0.2)
    finally:
        processes.stop_session(processes.PidRecord(pid, 0.0, []), grace=5.0, second_grace=2.0)
    assert_still_serving(spawner)
