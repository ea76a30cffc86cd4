"""mlwf's fixes to Airflow (mlflowctl/backends/airflow_fixes.py): the task supervisor on Airflow's
own ActivitySubprocess watching a real child process, and its requests over real HTTP; now()
on a real SQLite database."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

import psutil
import pytest
import structlog

from mlflowctl.backends import airflow_fixes

supervisor = pytest.importorskip("airflow.sdk.execution_time.supervisor")


@pytest.fixture(scope="module", autouse=True)
def fixed():
    upstream = supervisor.ActivitySubprocess._service_subprocess
    assert airflow_fixes.fix_task_supervisor(), "Airflow's supervisor no longer has the shape the fix was written for"
    assert airflow_fixes.fix_task_supervisor(), "applying twice must be harmless"
    yield
    supervisor.ActivitySubprocess._service_subprocess = upstream


def _watch(command: str) -> tuple[supervisor.ActivitySubprocess, subprocess.Popen, socket.socket]:
    child = subprocess.Popen([sys.executable, "-c", command])
    ours, theirs = socket.socketpair()
    theirs.close()
    watched = supervisor.ActivitySubprocess(
        id=uuid.uuid4(),
        pid=child.pid,
        stdin=ours,
        process=supervisor.PsutilTracker(psutil.Process(child.pid)),
        process_log=structlog.get_logger(),
        client=None,
    )
    return watched, child, ours


def test_a_process_whose_sockets_are_all_closed_is_seen_exiting_at_once():
    """Airflow's own loop would sleep the whole 30 s wait on an empty selector."""
    watched, child, ours = _watch("import time; time.sleep(0.5)")
    try:
        started = time.monotonic()
        assert watched._service_subprocess(max_wait_time=30) == 0
        assert time.monotonic() - started < 10
        assert watched._exit_code == 0
    finally:
        child.kill()
        child.wait()
        ours.close()


def test_while_a_socket_is_open_the_supervisor_still_waits_on_its_sockets():
    """Output to read wakes the supervisor (the running process is not waited on), and a process
    that outlives a short wait is reported alive, not blocked on."""
    watched, child, ours = _watch("import time; time.sleep(30)")
    reader, writer = socket.socketpair()
    seen = []
    watched.selector.register(reader, 1, (lambda sock: seen.append(sock.recv(10)) or True, lambda sock: None))
    try:
        writer.send(b"line")
        started = time.monotonic()
        assert watched._service_subprocess(max_wait_time=30) is None
        assert seen == [b"line"]
        assert time.monotonic() - started < 10
        watched.selector.unregister(reader)
        assert watched._service_subprocess(max_wait_time=0.2) is None  # alive: the wait timed out
    finally:
        child.kill()
        child.wait()
        for sock in (ours, reader, writer):
            sock.close()


class _RecordingExecutionApi(http.server.BaseHTTPRequestHandler):
    """Answers a task's start with a run context, anything else with `{}`; records each request."""

    seen: list[tuple[str, str]] = []
    RUN_CONTEXT = json.dumps({
        "dag_run": {"dag_id": "d", "run_id": "r", "logical_date": None, "data_interval_start": None,
                    "data_interval_end": None, "run_after": "2026-01-01T00:00:00Z", "start_date": None,
                    "end_date": None, "run_type": "manual", "state": "running", "consumed_asset_events": [],
                    "partition_key": None},
        "max_tries": 0,
    }).encode()

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path))
        body = self.RUN_CONTEXT if self.path.endswith("/run") else b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PATCH = do_PUT = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("fix", [True, False], ids=["fixed", "airflow as it is"])
def test_a_task_start_counts_as_its_supervisors_first_heartbeat(fix, monkeypatch):
    """Airflow's supervisor heartbeats at its first look at the task, just after the start call
    recorded one; fixed, the next heartbeat comes a heartbeat interval after the start. Real
    HTTP between Airflow's own supervisor and client and a server that records the requests."""
    monkeypatch.setattr(supervisor.ActivitySubprocess, "_on_child_started", supervisor.ActivitySubprocess._on_child_started)
    if fix:
        assert airflow_fixes.skip_start_heartbeat(), "the supervisor no longer has the shape the fix was written for"
        assert airflow_fixes.skip_start_heartbeat(), "applying twice must be harmless"
    from airflow.sdk.api.client import Client
    from airflow.sdk.api.datamodels._generated import BundleInfo, TaskInstance

    _RecordingExecutionApi.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingExecutionApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    watched, child, ours = _watch("import time; time.sleep(30)")
    watched.client = Client(base_url=f"http://127.0.0.1:{server.server_port}/", token="test")
    ti = TaskInstance(id=watched.id, task_id="t", dag_id="d", run_id="r", try_number=1, dag_version_id=uuid.uuid4())
    try:
        watched._on_child_started(ti=ti, dag_rel_path="d.py", bundle_info=BundleInfo(name="b"), sentry_integration="")
        watched._send_heartbeat_if_needed()
        heartbeat = ("PUT", f"/task-instances/{watched.id}/heartbeat")
        start = ("PATCH", f"/task-instances/{watched.id}/run")
        assert _RecordingExecutionApi.seen == ([start] if fix else [start, heartbeat])
        watched._last_heartbeat_attempt -= supervisor.MIN_HEARTBEAT_INTERVAL  # the interval has passed
        watched._send_heartbeat_if_needed()
        assert _RecordingExecutionApi.seen[-1] == heartbeat
    finally:
        server.shutdown()
        server.server_close()
        child.kill()
        child.wait()
        ours.close()


def test_sqlite_now_has_the_fractions_airflow_stores():
    """A run created 2 ms ago is due: `run_after <= now()`, as the scheduler asks, on SQLite with
    Airflow's own timestamp type (now() has milliseconds). CURRENT_TIMESTAMP (whole seconds)
    would make it wait for the next second."""
    import sqlalchemy as sa
    from airflow.utils.sqlalchemy import UtcDateTime
    from sqlalchemy.ext.compiler import deregister
    from sqlalchemy.sql import functions

    assert airflow_fixes.fix_sqlite_now() and airflow_fixes.fix_sqlite_now()
    try:
        engine = sa.create_engine("sqlite://")
        runs = sa.Table("runs", sa.MetaData(), sa.Column("run_after", UtcDateTime))
        runs.metadata.create_all(engine)
        with engine.begin() as connection:
            for _ in range(20):  # whole seconds would miss each one but at most the one that crosses a second
                connection.execute(runs.delete())
                connection.execute(runs.insert().values(run_after=datetime.now(timezone.utc)))
                time.sleep(0.002)
                due = connection.execute(sa.select(runs.c.run_after).where(runs.c.run_after <= sa.func.now())).all()
                assert len(due) == 1
    finally:
        deregister(functions.now)


def test_statsd_client_sends_from_loopback_when_it_sends_to_loopback():
    """Airflow's StatsD client held a UDP socket bound to 0.0.0.0 in every component."""
    from statsd import StatsClient

    upstream = StatsClient.__init__
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        unfixed = StatsClient("127.0.0.1", receiver.getsockname()[1])
        unfixed.incr("before")
        assert unfixed._sock.getsockname()[0] == "0.0.0.0"  # what the fix is for
        unfixed.close()
        try:
            assert airflow_fixes.fix_statsd_loopback() and airflow_fixes.fix_statsd_loopback()
            client = StatsClient("127.0.0.1", receiver.getsockname()[1])
            client.incr("after")
            assert client._sock.getsockname()[0] == "127.0.0.1"
            received = {receiver.recv(100) for _ in range(2)}
            assert received == {b"before:1|c", b"after:1|c"}
            client.close()
        finally:
            StatsClient.__init__ = upstream


NICENESS_PROBE = """
import os, socket, sys
from mlflowctl.backends import airflow_fixes
from airflow.sdk.execution_time import supervisor

assert airflow_fixes.lower_task_priority() and airflow_fixes.lower_task_priority()
read_end, write_end = os.pipe()

def report():
    os.write(write_end, f"{os.nice(0)} ".encode())

def task_main():  # stands for the task runner's entry point, which the fix recognises by identity
    report()

supervisor._subprocess_main = task_main
for target in (task_main, report):  # a task, then another child (the DAG processor's, the triggerer's)
    sockets = [socket.socketpair() for _ in range(3)]
    pid = os.fork()
    if pid == 0:
        supervisor._fork_main(sockets[0][1], sockets[1][1], sockets[2][1], 0, target)
    os.waitpid(pid, 0)
os.close(write_end)
print(os.read(read_end, 100).decode().split(), os.nice(0))
"""


@pytest.mark.parametrize("niceness, expected", [("7", "['7', '0'] 0"), ("0", "['0', '0'] 0")])
def test_only_task_processes_lower_their_priority_by_task_nice(niceness, expected):
    """The task's own process runs at the stack's task_nice; other forked children and the
    forking process (the supervisor) keep theirs."""
    env = {**os.environ, airflow_fixes.TASK_NICE_VARIABLE: niceness}
    answer = subprocess.run([sys.executable, "-c", NICENESS_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr[-2000:]
    assert answer.stdout.strip().splitlines()[-1] == expected


def test_dag_test_deadline_lookup_takes_a_serialized_alert_and_ids_as_before():
    """dag.test() hands DeadlineAlertModel.get_by_id the serialized alert; the scheduler a row id."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import NoResultFound
    from sqlalchemy.orm import Session

    from airflow.models.deadline_alert import DeadlineAlert
    from airflow.models.serialized_dag import SerializedDagModel  # noqa: F401  (the table its key refers to)

    assert airflow_fixes.fix_dag_test_deadline(), "DeadlineAlert no longer has the shape the fix was written for"
    assert airflow_fixes.fix_dag_test_deadline(), "applying twice must be harmless"
    serialized = {
        "name": None,
        "reference": {"reference_type": "DagRunQueuedAtDeadline"},
        "interval": {"__classname__": "datetime.timedelta", "__version__": 2, "__data__": 7200.0},
        "callback": {"__classname__": "airflow.sdk.definitions.callback.SyncCallback", "__version__": 0,
                     "__data__": {"path": "mlpipeline.notifications.deadline_missed", "kwargs": {}, "executor": None}},
    }
    engine = create_engine("sqlite://")
    DeadlineAlert.__table__.create(engine)
    with Session(engine) as session:
        alert = DeadlineAlert.get_by_id(serialized, session=session)
        assert alert.reference_class.__name__ == "DagRunQueuedAtDeadline"
        assert alert.callback_def == serialized["callback"] and alert not in session
        stored = DeadlineAlert(
            serialized_dag_id=uuid.uuid4(), reference=serialized["reference"], interval=serialized["interval"],
            callback_def=serialized["callback"],
        )
        session.add(stored)
        session.commit()
        assert DeadlineAlert.get_by_id(stored.id, session=session) is stored
        assert DeadlineAlert.get_by_id(str(stored.id), session=session) is stored
        with pytest.raises(NoResultFound):
            DeadlineAlert.get_by_id(uuid.uuid4(), session=session)


NEWEST_API_PROBE = """
from starlette.testclient import TestClient
from mlflowctl.backends import airflow_fixes
from airflow.api_fastapi.execution_api import routes, versions
from airflow.api_fastapi.execution_api.app import create_task_execution_api_app
from airflow.sdk.api.datamodels._generated import API_VERSION
from airflow.sdk.execution_time.supervisor import in_process_api_server

full_bundle, full_router = versions.bundle, routes.execution_api_router
assert airflow_fixes.newest_execution_api() and airflow_fixes.newest_execution_api()
assert (versions.bundle, routes.execution_api_router) == (full_bundle, full_router), "Airflow's own left as it was"

def health(app, version):
    return TestClient(app).get("/health", headers={"Airflow-API-Version": version}).status_code

oldest = full_bundle.versions[-1].value
api = in_process_api_server()
whole = create_task_execution_api_app()  # as the API server makes it, after the fix
print(health(api.app, API_VERSION), health(api.app, oldest), health(whole, API_VERSION), health(whole, oldest))
"""


def test_dag_test_execution_api_is_built_for_the_newest_version_alone():
    """dag.test()'s in-process API answers the version its client speaks, and only that one;
    Airflow's own app, made afterwards, still has every version."""
    answer = subprocess.run([sys.executable, "-c", NEWEST_API_PROBE], capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr[-2000:]
    assert answer.stdout.strip().splitlines()[-1] == "200 404 200 200"
