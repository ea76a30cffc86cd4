"""Celery workers on another host, across a real network link (issue 18).

Two network namespaces made by the test, joined by a veth pair that carries only
10.231.0.1/30 (the head) and 10.231.0.2/30 (the worker host). The head runs `mlwf up
--executor celery --listen 10.231.0.1` in its namespace; the worker host, with its own project
copy and state directory, runs `mlwf worker join` in the other. Checked: the join file's
refusals (permissions, damage, format, a changed DAG file, a wrong password, a wrong CA) each
one line, nothing started; the fan-out DAG's tasks run on the remote workers too (the Celery
hostname each task returns); a plain-text connection to the broker from the worker host is
refused; status on both hosts; `mlwf health` on the head counts the remote workers; cutting
the link in the middle of a run (`ip link set ... down` on the worker host's end) fails the
remote workers' tasks after the task heartbeat timeout and retries them on the head's workers,
so the run succeeds, and once the link is back the remote workers rejoin and take tasks again;
leave. Everything is stopped and both namespaces are deleted at the end, also on failure.
Needs root and `ip` (CI runs as root); skipped otherwise.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple
from urllib.parse import quote

import pytest

from conftest import MLWF, REPO, Stack
from mlflowctl.airflow_settings import TASK_INSTANCE_HEARTBEAT_TIMEOUT_SECONDS

pytestmark = [pytest.mark.stack, pytest.mark.slow]

HEAD_IP, WORKER_IP = "10.231.0.1", "10.231.0.2"
DAG = "mlwf_fanout"
RUN_TIMEOUT_S = 420
CLONE_NEWNET = 0x40000000
#: The link-cut run's tasks sleep this long: the remote workers are still running theirs when
#: the link goes down, and the head's workers get through theirs well within RUN_TIMEOUT_S.
CUT_SLEEP_S = 30
#: How long the remote workers may take to answer the head again once the link is back (Celery
#: retries its broker connection with growing pauses).
REJOIN_TIMEOUT_S = 180


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Link(NamedTuple):
    head: str  # the namespaces
    worker: str
    worker_dev: str  # the worker host's end of the veth pair

    def cut(self, up: bool) -> None:
        _ip("-n", self.worker, "link", "set", self.worker_dev, "up" if up else "down")

    def restore(self) -> None:
        """The link up again, quietly (teardown: the namespaces may be half made)."""
        subprocess.run(["ip", "-n", self.worker, "link", "set", self.worker_dev, "up"], capture_output=True, timeout=30)


@contextmanager
def linked_namespaces() -> Iterator[Link]:
    """Two namespaces joined by a veth pair, 10.231.0.1 and .2; deleted at the end, also on failure."""
    tag = f"{os.getpid() % 100000}"
    head, worker = f"mlwf-h{tag}", f"mlwf-w{tag}"
    try:
        _ip("netns", "add", head)
        _ip("netns", "add", worker)
        _ip("link", "add", f"mlwfh{tag}", "type", "veth", "peer", "name", f"mlwfw{tag}")
        _ip("link", "set", f"mlwfh{tag}", "netns", head)
        _ip("link", "set", f"mlwfw{tag}", "netns", worker)
        for ns, dev, address in ((head, f"mlwfh{tag}", HEAD_IP), (worker, f"mlwfw{tag}", WORKER_IP)):
            _ip("-n", ns, "addr", "add", f"{address}/30", "dev", dev)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        yield Link(head, worker, f"mlwfw{tag}")
    finally:
        for ns in (head, worker):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        assert not {head, worker} & set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


@pytest.fixture
def namespaces():
    """Link(head namespace, worker namespace, the worker's veth end); skipped without root."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (CI runs as root)")
    with linked_namespaces() as link:
        yield link


def _mlwf(ns: str, stack: Stack, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`mlwf ARGS` inside namespace `ns`, in the stack's project, as a user there would run it."""
    return subprocess.run(["ip", "netns", "exec", ns, MLWF, *args], cwd=stack.project, env=stack.env,
                          capture_output=True, text=True, timeout=timeout)


def _in_namespace(ns: str, function):
    """Run `function` in a thread that entered namespace `ns` (setns is per thread): its sockets are there."""
    result: dict = {}

    def body():
        libc = ctypes.CDLL(None, use_errno=True)
        with open(f"/var/run/netns/{ns}") as handle:
            if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                result["error"] = OSError(ctypes.get_errno(), "setns failed")
                return
        try:
            result["value"] = function()
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(RUN_TIMEOUT_S + 60)
    if "error" in result:
        raise result["error"]
    return result["value"]


class HeadApi:
    """The head's REST API on its loopback, from inside the head's namespace."""

    def __init__(self, ns: str, stack: Stack) -> None:
        self.ns, self.stack = ns, stack
        self.headers = _in_namespace(ns, lambda: {"Authorization": f"Bearer {stack.token()}"})

    def call(self, method: str, path: str, **kwargs):
        import httpx

        return _in_namespace(self.ns, lambda: httpx.request(method, f"{self.stack.url}{path}", headers=self.headers,
                                                            timeout=60, **kwargs))

    def trigger(self, run_id: str, sleep: float) -> None:
        made = self.call("post", f"/api/v2/dags/{DAG}/dagRuns",
                         json={"logical_date": None, "dag_run_id": run_id, "conf": {"sleep": sleep}})
        assert made.status_code in (200, 201), made.text

    def run(self, run_id: str, sleep: float) -> dict[str, str]:
        """Trigger the fan-out DAG, wait for its end, return task id -> Celery hostname."""
        self.trigger(run_id, sleep)
        return self.finished(run_id)

    def tries(self, run_id: str) -> dict[str, int]:
        """Task id -> try number of the run's task instances."""
        listed = self.call("get", f"/api/v2/dags/{DAG}/dagRuns/{quote(run_id, safe='')}/taskInstances").json()
        return {task["task_id"]: task["try_number"] for task in listed["task_instances"]}

    def finished(self, run_id: str) -> dict[str, str]:
        """Wait for the run's end (it must succeed); task id -> Celery hostname of its last try."""
        base = f"/api/v2/dags/{DAG}/dagRuns/{quote(run_id, safe='')}"
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while (state := self.call("get", base).json()["state"]) not in ("success", "failed"):
            assert time.monotonic() < deadline, f"run {run_id} still {state} after {RUN_TIMEOUT_S} s"
            time.sleep(2)
        assert state == "success", state
        names = {}
        for task in self.call("get", f"{base}/taskInstances").json()["task_instances"]:
            entry = self.call("get", f"{base}/taskInstances/{task['task_id']}/xcomEntries/return_value")
            names[task["task_id"]] = str(entry.json()["value"]).strip('"')
        return names


def _one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _system_postgres() -> str:
    """The system's PostgreSQL (the embedded wheel's has no SSL, which --listen needs)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        pytest.skip("--listen needs PostgreSQL with SSL: apt-get install postgresql")
    return str(found[-1].parent)


def _project(tmp_path: Path, name: str) -> Stack:
    stack = Stack.create(tmp_path / name, postgres_bin=_system_postgres())
    shutil.copy(REPO / "tests" / "dags" / f"{DAG}_dag.py", stack.project / "dags")
    return stack


def test_remote_worker_across_a_network(namespaces, tmp_path):
    head_ns, worker_ns = namespaces.head, namespaces.worker
    head, remote = _project(tmp_path, "head"), _project(tmp_path, "worker")
    try:
        _scenario(namespaces, head, remote, tmp_path)
    finally:
        namespaces.restore()  # after a failure while the link was down
        _mlwf(worker_ns, remote, "down", timeout=180)
        _mlwf(head_ns, head, "down", "--volumes", "--yes", timeout=180)


def _remote_busy(head_ns: str, head: Stack) -> dict[str, int]:
    """The head's `status`: remote worker -> tasks it runs now."""
    seen = _mlwf(head_ns, head, "status", "--json", timeout=60)
    return {s["name"].removeprefix("remote "): int(s["detail"].split(" of ")[0])
            for s in json.loads(seen.stdout)["services"] if s["name"].startswith("remote r")}


def _worker_row(head_ns: str, head: Stack) -> dict:
    """The head's `mlwf health --json` row that counts the Celery workers."""
    said = _mlwf(head_ns, head, "health", "--json", timeout=60)
    assert said.returncode in (0, 9), said.stderr  # 9: degraded, the monitoring group is excluded
    return next(r for r in json.loads(said.stdout)["sections"]["executor"] if r["name"] == "celery workers")


def _scenario(link: Link, head: Stack, remote: Stack, tmp_path: Path) -> None:
    head_ns, worker_ns = link.head, link.worker
    up = _mlwf(head_ns, head, "up", "--executor", "celery", "--workers", "2", "--listen", HEAD_IP,
               "--exclude", "monitoring", "--timeout", "220", timeout=260)
    assert up.returncode == 0, up.stdout + up.stderr
    join_file = tmp_path / "join.json"
    made = _mlwf(head_ns, head, "worker", "token", "--out", str(join_file))
    assert made.returncode == 0, made.stderr
    assert join_file.stat().st_mode & 0o777 == 0o600
    token = json.loads(join_file.read_text())
    assert token["broker_url"].startswith(f"rediss://:") and HEAD_IP in token["execution_api_url"]
    for key in ("server.key", "ca.key"):
        assert (head.home / "tls" / key).stat().st_mode & 0o777 == 0o600

    # Refusals, each one line, nothing started.
    def refused(path: Path, code: int, words: str) -> None:
        result = _mlwf(worker_ns, remote, "worker", "join", str(path), "--workers", "1", timeout=120)
        assert result.returncode == code, (code, result.stdout, result.stderr)
        assert words in _one_line(result), result.stderr
        assert not list((remote.home / "run").glob("worker-*.pid")) if (remote.home / "run").exists() else True

    refused(tmp_path / "missing.json", 21, "not found")
    loose = tmp_path / "loose.json"
    shutil.copy(join_file, loose)
    loose.chmod(0o644)
    refused(loose, 21, "readable by others")
    damaged = tmp_path / "damaged.json"
    damaged.write_text(join_file.read_text()[:100])
    damaged.chmod(0o600)
    refused(damaged, 21, "damaged")
    future = tmp_path / "future.json"
    future.write_text(json.dumps({**token, "format": 99}))
    future.chmod(0o600)
    refused(future, 21, "format 99")
    wrong_password = tmp_path / "password.json"
    wrong_password.write_text(json.dumps({**token, "broker_url": token["broker_url"].replace("://:", "://:x")}))
    wrong_password.chmod(0o600)
    refused(wrong_password, 3, "broker at 10.231.0.1: refused the password")
    other_ca = tmp_path / "other-ca"
    other_ca.mkdir()
    from mlflowctl.backends.local import tls

    wrong_ca = tmp_path / "ca.json"
    wrong_ca.write_text(json.dumps({**token, "ca": tls.ensure(other_ca, HEAD_IP).ca.read_text()}))
    wrong_ca.chmod(0o600)
    result = _mlwf(worker_ns, remote, "worker", "join", str(wrong_ca), "--workers", "1", timeout=120)
    assert result.returncode == 21, result.stderr
    assert "certificate" in result.stderr and "broker" in result.stderr and "execution API" in result.stderr

    changed = remote.project / "dags" / f"{DAG}_dag.py"
    original = changed.read_text()
    changed.write_text(original + "\n# changed on the worker host\n")
    refused(join_file, 21, f"dags/{DAG}_dag.py")
    changed.write_text(original)

    # The remote traffic is TLS: a plain-text client gets no Redis answer from the worker host.
    def plain_ping() -> bytes:
        with socket.create_connection((HEAD_IP, head.ports["redis_port"]), timeout=10) as sock:
            sock.sendall(b"PING\r\n")
            try:
                return sock.recv(100)
            except (ConnectionResetError, socket.timeout):
                return b""

    answer = _in_namespace(worker_ns, plain_ping)
    assert not answer.startswith((b"+", b"-")), answer

    joined = _mlwf(worker_ns, remote, "worker", "join", str(join_file), "--workers", "2", timeout=200)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    deadline = time.monotonic() + 120
    while True:
        seen = _mlwf(worker_ns, remote, "status", "--json", timeout=60)
        services = {s["name"]: s for s in json.loads(seen.stdout)["services"]}
        if set(services) == {"worker-1", "worker-2"} and all(s["state"] == "healthy" for s in services.values()):
            break
        assert time.monotonic() < deadline, services
        time.sleep(2)

    api = HeadApi(head_ns, head)
    deadline = time.monotonic() + 300
    while DAG not in {d["dag_id"] for d in api.call("get", "/api/v2/dags").json()["dags"]}:
        assert time.monotonic() < deadline, "the DAG processor did not register the fan-out DAG"
        time.sleep(2)
    assert api.call("patch", f"/api/v2/dags/{DAG}", json={"is_paused": False}).status_code == 200
    names = api.run("spread", sleep=4)
    assert len(names) == 12
    ran_on = {name.split("@", 1)[0] for name in names.values()}
    assert {"r1", "r2"} & ran_on, names  # the remote host's workers took tasks
    assert {"w1", "w2"} & ran_on, names

    seen = _mlwf(head_ns, head, "status", "--json", timeout=60)
    remote_rows = [s for s in json.loads(seen.stdout)["services"] if s["name"].startswith("remote r")]
    assert len(remote_rows) == 2 and all("slots busy" in s["detail"] for s in remote_rows), seen.stdout
    row = _worker_row(head_ns, head)
    remote_names = sorted(s["name"].removeprefix("remote ") for s in remote_rows)
    assert (row["status"], row["value"]) == ("ok", 4), row
    assert row["detail"] == f"4 live Celery worker(s): 2 on this host, 2 joined from other hosts ({', '.join(remote_names)})"

    _cut_the_link_mid_run(link, head, api)

    left = _mlwf(worker_ns, remote, "worker", "leave", timeout=200)
    assert left.returncode == 0, left.stderr
    assert "worker-1: stopped" in left.stderr + left.stdout


def _cut_the_link_mid_run(link: Link, head: Stack, api: HeadApi) -> None:
    """The worker host drops off the network while its workers run tasks: the head fails those
    tasks after the heartbeat timeout and retries them on its own workers; the run succeeds.
    Once the link is back the remote workers answer the head again and take new tasks."""
    api.trigger("cut", sleep=CUT_SLEEP_S)
    deadline = time.monotonic() + 120
    while not sum((busy := _remote_busy(link.head, head)).values()):
        assert time.monotonic() < deadline, f"no remote worker took a task of the run: {busy}"
        time.sleep(1)
    cut_at = time.monotonic()
    link.cut(up=False)
    try:
        row = _worker_row(link.head, head)  # the broadcast no longer reaches them: not counted
        assert (row["value"], row["detail"]) == (2, "2 live Celery worker(s): 2 on this host, 0 joined from other hosts")
        names = api.finished("cut")
        took = time.monotonic() - cut_at
        tries = api.tries("cut")
        print(f"link cut with {busy} busy; the run ended {took:.0f} s later; tries {tries}")
    finally:
        link.cut(up=True)
    retried = {task: names[task] for task, number in tries.items() if number >= 2}
    assert len(retried) >= sum(busy.values()), (busy, tries, names)
    assert all(name.startswith(("w1@", "w2@")) for name in retried.values()), retried  # on the head's workers
    assert not [name for name in names.values() if name.startswith("r")], names  # nothing ran on past the cut
    # Failed by the heartbeat timeout, not before: the retried tasks waited it out.
    assert took >= TASK_INSTANCE_HEARTBEAT_TIMEOUT_SECONDS, took

    deadline = time.monotonic() + REJOIN_TIMEOUT_S
    while len(_remote_busy(link.head, head)) < 2:
        assert time.monotonic() < deadline, "the remote workers did not answer the head again after the link came back"
        time.sleep(3)
    again = api.run("rejoined", sleep=4)
    assert {name.split("@", 1)[0] for name in again.values()} & {"r1", "r2"}, again  # they take tasks again
