"""Fixes to Airflow 3.3 and two adjustments: four fixes and an adjustment the launcher applies
to the processes it forks, one fix every Airflow process of the environment gets through
mlwf's Airflow plugin (airflow_plugin.py), and one adjustment `mlwf test`'s child makes to
`dag.test()`.

No setting reaches what these fixes change, and each is applied only to the code it was
written for: a refused fix leaves Airflow as it is.

The task supervisor (`fix_task_supervisor`): a task's supervisor (`ActivitySubprocess`, in a
LocalExecutor or Celery worker) waits in select() on its task process's sockets for at most
`[workers] min_heartbeat_interval`, then looks whether the process has exited. The process's
last socket closes while it exits, tens of microseconds before the kernel reports the exit: a
supervisor that wakes for that last EOF and looks at once sees a live process, then sleeps on
no sockets at all for the whole interval while the executor slot stays taken. Traced here
(strace of a Celery pool process, 2 s tasks): one task in three held its slot 1.0 s after its
process had exited. The interval is an integer setting (0 would make every supervisor
heartbeat the API server a hundred times a second). Fixed: once no socket is left to read,
the supervisor waits on the process itself (psutil's wait: a pidfd on Linux).

The task's first heartbeat (`skip_start_heartbeat`): the supervisor tells the API server its
task started (`PATCH .../run`, which records a heartbeat in the same update), then heartbeats
again on its first look at the process, milliseconds later: its last heartbeat *attempt* starts
at 0, not at the start. One API request and one database commit per task, at the moment a wave
of tasks starts together and the api-server and database are busiest (a py-spy profile of a
remote worker over a burst: the supervisor's heartbeat calls took more of its time than its
start calls). Fixed: the successful start counts as the first attempt, so the next heartbeat
comes `[workers] min_heartbeat_interval` after it, as every later one does.

SQLite's `now()` (`fix_sqlite_now`): the scheduler starts a queued run, or creates a
scheduled one, only when `run_after <= now()`; SQLAlchemy renders now() on SQLite as
CURRENT_TIMESTAMP, whole seconds, while Airflow stores microseconds, so a run triggered at
12:00:00.4 waits for 12:00:01 (every manual run waited 0.2-1.2 s). Fixed: now() as the
current time with fractions, in the format Airflow's timestamps are stored in. PostgreSQL's
now() already has them.

StatsD on loopback (`fix_statsd_loopback`): the `statsd` client Airflow sends metrics with
never binds its UDP socket, so the kernel binds it to 0.0.0.0 at the first send and every
component holds a UDP port open on every interface. Fixed: a client whose target is a
loopback address binds its socket to that address first.

Task processes at a lower CPU priority (`lower_task_priority`): a burst of runs (issue 22)
fills both cores with task processes, and every `mlwf status` or `trigger` then waited several
seconds for CPU behind them, as did the api-server and the scheduler. Each task process (the
supervisor's forked child that runs the task's code) lowers its own priority to the stack's
`task_nice` (MLWF_TASK_NICE): tasks still get every idle cycle, the control plane and the
user's shell come first. The supervisor, which heartbeats for the task, keeps its priority.

The deadline lookup of `dag.test()` (`fix_dag_test_deadline`): when a run of a DAG with a
Deadline Alert succeeds, `DagRun.update_state` looks each of `dag.deadline` up with
`DeadlineAlertModel.get_by_id`. The scheduler's DAG, read from the database, holds the alerts'
row ids there; the DAG `dag.test()` builds (serialized and deserialized in memory) holds the
serialized alerts themselves, so `airflow dags test` crashed after its last task with
`'dict' object has no attribute 'hex'` and exited 1 although the run succeeded. Fixed: a
serialized alert is read as an unsaved row of its own (the caller only asks its reference's
kind); ids are looked up as before, so the scheduler's path does not change.

`dag.test()`'s in-process Execution API for the one version its client speaks
(`newest_execution_api`, `mlwf test`'s child only): `dag.test()` answers its tasks' Execution
API calls with an in-process copy of the API server's FastAPI/Cadwyn application, which Cadwyn
builds at the first call with a router for each of the API's nine versions: 2.4 s of CPU here
(3.7 s in a run's log before the first task got its answer), while the in-process client only
ever speaks the newest (the Task SDK's `API_VERSION`), which Cadwyn serves from the head
routes unchanged. Made before the run with that version alone (0.3 s to build): the same
routes, handlers and database. Refused when the Task SDK speaks another version than the newest.
The stack's api-server pays the same on its first Execution API request (2.3 s of CPU in which
it answers nothing else, and ~50 MiB): where every client of it is this runtime's Task SDK (a
local stack that does not `--listen`: MLWF_EXECUTION_API_NEWEST=1), the launcher makes its
Execution API for the newest version alone too (`api_server_newest_execution_api`).

Loaded by path by launcher.py and dagcheck/child.py (not on its sys.path): stdlib, SQLAlchemy and Airflow only.
"""

from __future__ import annotations

import contextlib
import inspect
import socket

TASK_NICE_VARIABLE = "MLWF_TASK_NICE"  # the stack's task_nice setting, as the launcher's env carries it
NEWEST_API_VARIABLE = "MLWF_EXECUTION_API_NEWEST"  # "1": the stack's api-server serves the newest version alone
FIXED = "_mlwf_fixed"  # marks what a fix replaced, so applying twice is harmless
SQLITE_NOW = "STRFTIME('%Y-%m-%d %H:%M:%f000', 'now')"  # 2026-01-02 03:04:05.678000, UTC


def _supervisor_fields():
    """Airflow's ActivitySubprocess and its attrs fields by name, or None without the Task SDK."""
    try:
        import attrs
        from airflow.sdk.execution_time.supervisor import ActivitySubprocess
    except ImportError:
        return None
    return ActivitySubprocess, attrs.fields_dict(ActivitySubprocess)


def _install(owner, name: str, replacement, upstream) -> None:
    """Put `replacement` where `upstream` was (`owner.name`), marked so a second apply sees it."""
    setattr(replacement, FIXED, True)
    replacement.__doc__ = upstream.__doc__
    setattr(owner, name, replacement)


def fix_task_supervisor() -> bool:
    """Replace ActivitySubprocess._service_subprocess; False when Airflow's differs from the
    one this fix was written for (then nothing is changed)."""
    found = _supervisor_fields()
    if found is None:
        return False
    ActivitySubprocess, fields = found
    upstream = ActivitySubprocess._service_subprocess
    if getattr(upstream, FIXED, False):
        return True
    if list(inspect.signature(upstream).parameters) != [
        "self",
        "max_wait_time",
        "raise_on_timeout",
        "expect_signal",
    ] or not {"_process", "_exit_code", "selector"} <= fields.keys():
        return False

    def _service_subprocess(self, max_wait_time, raise_on_timeout=False, expect_signal=None):
        registered = self.selector.get_map()
        if self._exit_code is None and registered is not None and not registered:
            try:
                self._process.wait(timeout=max_wait_time)
            except self._process.TimeoutExpired:
                pass
            max_wait_time = 0  # Airflow's own select then sleeps its minimum (10 ms), not the interval
        return upstream(self, max_wait_time, raise_on_timeout=raise_on_timeout, expect_signal=expect_signal)

    _install(ActivitySubprocess, "_service_subprocess", _service_subprocess, upstream)
    return True


def skip_start_heartbeat() -> bool:
    """Count a task's start as its supervisor's first heartbeat attempt; False when the
    supervisor no longer keeps `_last_heartbeat_attempt` and `_last_successful_heartbeat`."""
    found = _supervisor_fields()
    if found is None:
        return False
    ActivitySubprocess, fields = found
    upstream = ActivitySubprocess._on_child_started
    if getattr(upstream, FIXED, False):
        return True
    if not {"_last_heartbeat_attempt", "_last_successful_heartbeat"} <= fields.keys():
        return False

    def _on_child_started(self, *args, **kwargs):
        upstream(self, *args, **kwargs)
        self._last_heartbeat_attempt = self._last_successful_heartbeat  # set by the start call's answer

    _install(ActivitySubprocess, "_on_child_started", _on_child_started, upstream)
    return True


def fix_sqlite_now() -> bool:
    """Render now() on SQLite with fractions of a second; False when SQLAlchemy's SQLite
    dialect no longer renders it as CURRENT_TIMESTAMP (then nothing is changed)."""
    from sqlalchemy import func, select
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.ext.compiler import compiles
    from sqlalchemy.sql import functions

    rendered = str(select(func.now()).compile(dialect=sqlite.dialect()))
    if SQLITE_NOW in rendered:
        return True
    if "CURRENT_TIMESTAMP" not in rendered:
        return False

    @compiles(functions.now, "sqlite")
    def _now_with_fractions(element, compiler, **kw):
        return SQLITE_NOW

    return True


def fix_statsd_loopback() -> bool:
    """Bind `statsd.StatsClient`'s socket to loopback when it sends to loopback; False when the
    client no longer keeps its socket and address as `_sock` and `_addr`."""
    import ipaddress

    try:
        from statsd import StatsClient
    except ImportError:
        return True  # no StatsD client, no socket
    upstream = StatsClient.__init__
    if getattr(upstream, FIXED, False):
        return True
    probe = StatsClient("127.0.0.1", 8125)
    shaped = isinstance(getattr(probe, "_sock", None), socket.socket) and isinstance(
        getattr(probe, "_addr", None), tuple
    )
    probe.close()
    if not shaped:
        return False

    def __init__(self, *args, **kwargs):
        upstream(self, *args, **kwargs)
        if ipaddress.ip_address(self._addr[0]).is_loopback:
            self._sock.bind((self._addr[0], 0))

    _install(StatsClient, "__init__", __init__, upstream)
    return True


def lower_task_priority() -> bool:
    """Make each task process lower its CPU priority by MLWF_TASK_NICE as it starts; False when
    the supervisor no longer forks tasks through `_fork_main` with `_subprocess_main` as target."""
    import os

    try:
        from airflow.sdk.execution_time import supervisor
    except ImportError:
        return False
    niceness = int(os.environ.get(TASK_NICE_VARIABLE) or 0)
    upstream = getattr(supervisor, "_fork_main", None)
    if niceness <= 0 or getattr(upstream, FIXED, False):
        return True
    if upstream is None or not hasattr(supervisor, "_subprocess_main") or list(
        inspect.signature(upstream).parameters
    ) != ["requests", "child_stdout", "child_stderr", "log_fd", "target"]:
        return False

    def _fork_main(requests, child_stdout, child_stderr, log_fd, target):
        if target is supervisor._subprocess_main:  # a task (the DAG processor and triggerer pass their own)
            os.nice(niceness)
        upstream(requests, child_stdout, child_stderr, log_fd, target)

    _install(supervisor, "_fork_main", _fork_main, upstream)
    return True


def fix_dag_test_deadline() -> bool:
    """Let `DeadlineAlertModel.get_by_id` take a serialized alert (a dict) as `dag.test()` hands
    it; False when the model no longer has the columns that dict fills (then nothing is changed)."""
    try:
        from airflow.models.deadline_alert import DeadlineAlert
    except ImportError:
        return True  # no Deadline Alerts, nothing to look up
    upstream = DeadlineAlert.__dict__["get_by_id"]
    if getattr(upstream.__func__, FIXED, False):
        return True
    columns = DeadlineAlert.__table__.columns.keys()
    if not {"reference", "interval", "callback_def", "name"} <= set(columns) or not hasattr(DeadlineAlert, "reference_class"):
        return False
    lookup = upstream.__func__

    def get_by_id(cls, deadline_alert_id, *args, **kwargs):
        if isinstance(deadline_alert_id, dict):
            alert = deadline_alert_id
            return cls(
                name=alert.get("name"),
                reference=alert["reference"],
                interval=alert["interval"],
                callback_def=alert["callback"],
            )
        return lookup(cls, deadline_alert_id, *args, **kwargs)

    setattr(get_by_id, FIXED, True)
    get_by_id.__doc__ = lookup.__doc__
    DeadlineAlert.get_by_id = classmethod(get_by_id)
    return True


@contextlib.contextmanager
def _newest_version_only():
    """While inside, Airflow's Execution API version bundle and router are the newest version
    alone (an app made inside keeps them); yields False, changing nothing, when the Task SDK's
    client speaks another version or Cadwyn differs."""
    from copy import copy

    try:
        from cadwyn import HeadVersion, Version, VersionBundle
        from cadwyn.route_generation import _DELETED_ROUTE_TAG

        from airflow.api_fastapi.execution_api import routes, versions
        from airflow.sdk.api.datamodels._generated import API_VERSION
    except ImportError:
        yield False
        return
    full_bundle, full_router = versions.bundle, routes.execution_api_router
    if full_bundle.versions[0].value != API_VERSION:
        yield False
        return
    newest = copy(full_router)  # without the routes that only older versions have
    newest.routes = [r for r in full_router.routes if _DELETED_ROUTE_TAG not in getattr(r, "tags", ())]
    versions.bundle, routes.execution_api_router = VersionBundle(HeadVersion(), Version(API_VERSION)), newest
    try:
        yield True
    finally:
        versions.bundle, routes.execution_api_router = full_bundle, full_router


def newest_execution_api() -> bool:
    """Build (and cache) the in-process Execution API `dag.test()` uses with the newest API
    version alone; False, leaving Airflow to build it itself, when its client speaks another."""
    try:
        from airflow.sdk.execution_time.supervisor import in_process_api_server
    except ImportError:
        return False
    with _newest_version_only() as applied:
        if applied:
            in_process_api_server().app  # cached: made now, with the newest version alone
    return applied


def api_server_newest_execution_api() -> bool:
    """The api-server's Execution API made for the newest version alone (the launcher applies it
    in the api-server's process when NEWEST_API_VARIABLE is "1"): see the module's docstring."""
    try:
        from airflow.api_fastapi import app as api_app
    except ImportError:
        return False
    upstream = api_app.create_task_execution_api_app
    if getattr(upstream, FIXED, False):
        return True
    if list(inspect.signature(upstream).parameters) != ["lifespan"]:
        return False

    def create_task_execution_api_app(*args, **kwargs):
        with _newest_version_only():
            return upstream(*args, **kwargs)

    _install(api_app, "create_task_execution_api_app", create_task_execution_api_app, upstream)
    return True


def apply_all() -> list[str]:
    """Apply every fix; the names of those refused."""
    fixes = (fix_task_supervisor, skip_start_heartbeat, fix_sqlite_now, fix_statsd_loopback, lower_task_priority)
    return [fix.__name__ for fix in fixes if not fix()]
