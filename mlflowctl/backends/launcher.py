"""Start Airflow components from one pre-imported interpreter (run as a script: stdlib, Airflow, pydantic).

Every `airflow <component>` process spends ~4 s of CPU importing Airflow before it does
anything; four components and `db migrate` cost ~20 s of CPU, ~10 s of wall time on two
cores. This launcher imports Airflow and its CLI once, then forks each component, which
then runs `airflow <args>` exactly as the command line would (Airflow disposes of the
inherited database engine in forked children itself: `settings.py` registers an at-fork
hook). The children share the imported pages copy-on-write, which also lowers the
stack's memory (PSS).

Before forking, it applies mlwf's fixes to Airflow (airflow_fixes.py), which every child
inherits. Each child becomes the leader of its own session, restores default SIGINT/SIGTERM,
reads stdin from /dev/null and appends its output to its own log file. The launcher prints one
JSON line per event on stdout, waits for nothing but the migration, and exits.

Usage (by mlwf): <runtime python> launcher.py '<json plan>'
plan = {"migrate": bool, "migrate_log": path,
        "services": [{"name": str, "args": [str], "log": path}],
        "executor": "local" | "celery", "task_preload": [module],
        "spawner": {"name": str, "log": path, "env": digest} (optional, see _start_spawner)}
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import selectors
import signal
import sys
import time


# What each component imports beyond Airflow's core and CLI, imported here only for the
# components of this plan: every page the launcher imports is in each child's memory, so a
# lone Celery worker added by `mlwf scale` must not carry the scheduler's modules.
PRELOAD = {
    "scheduler": ("airflow.utils.serve_logs.log_server", "airflow.jobs.scheduler_job_runner"),
    "triggerer": ("airflow.utils.serve_logs.log_server", "airflow.jobs.triggerer_job_runner"),
    "dag-processor": ("airflow.dag_processing.manager",),
    "celery": (
        "airflow.providers.celery.executors.celery_executor_utils",
        "airflow.providers.celery.cli.celery_command",
        # What running a task imports after the worker's fork: the supervisor (once per pool
        # process), and in every task process the DagBag that parses the task's DAG file and
        # what `@task` brings in: ~0.15 s of CPU per task otherwise, for which queued tasks waited.
        "airflow.sdk.execution_time.supervisor",
        "airflow.dag_processing.dagbag",
        "airflow.providers.standard.decorators.python",
    ),
}


def preloads(plan: dict) -> list[str]:
    """The modules the plan's components share, in first-needed order, without repeats."""
    modules: dict[str, None] = {}
    for service in plan["services"]:
        modules.update(dict.fromkeys(PRELOAD.get(service["args"][0], ())))
    return list(modules)


_events = None  # the event channel: the launcher's original stdout, kept from what imports print


def _emit(**event) -> None:
    _events.write(json.dumps(event) + "\n")
    _events.flush()


def _detach(log: str, *, new_session: bool, inherited: tuple[int, ...]) -> None:
    """In a forked process: close what it must not hold, lead its own session, read
    /dev/null, append its output to `log`."""
    for fd in inherited:  # the event pipe (else mlwf waits for every child to close it), sockets
        os.close(fd)
    if new_session:
        os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)


def _child(
    args: list[str], log: str, *, new_session: bool, inherited: tuple[int, ...] = (), preload: tuple[str, ...] = ()
) -> None:
    """In the forked child: detach, redirect, run `airflow <args>`, never return."""
    code = 1
    try:
        _detach(log, new_session=new_session, inherited=inherited)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        failed = import_task_modules(preload)
        if failed:
            print(failed, file=sys.stderr, flush=True)
            return
        _fix_component(args)
        sys.argv = ["airflow", *args]
        try:  # `ps` shows `airflow scheduler`, not the launcher's command line
            from setproctitle import setproctitle

            setproctitle(" ".join(sys.argv))
        except ImportError:
            pass
        from airflow.__main__ import main

        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _task_modules(plan: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The plan's task_preload, split into (here, for the scheduler): imported where task
    processes are forked from, so that every task starts with them. Celery workers fork tasks:
    the launcher imports them once for all workers (and the spawner). The LocalExecutor's
    workers are forked by the scheduler: only the scheduler imports them, after its fork,
    while the other components start."""
    modules = tuple(plan.get("task_preload") or ())
    return (modules, ()) if plan.get("executor") == "celery" else ((), modules)


def import_task_modules(names: tuple[str, ...]) -> str | None:
    """Import each module; the first failure as a one-line message (a task_preload typo must
    not silently cost every task its imports). Import-time warnings are not the component's
    business (skops alone warns ~1000 times while it scans Airflow's deprecated modules).
    Also what `mlwf test`'s child (dagcheck/child.py) starts its tasks with."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as error:
                return f"mlwf: task_preload: cannot import {name!r}: {type(error).__name__}: {error}"
    return None


_fixes = None  # airflow_fixes.py, once _fix_airflow loaded it


def _refused(name: str) -> None:
    print(f"mlwf: {name}: Airflow differs from what airflow_fixes.py was written for; left as it is", file=sys.stderr)


def _fix_airflow() -> None:
    """Apply airflow_fixes.py (next to this file, loaded by path) before any fork, so every
    component and task inherits the fixes."""
    global _fixes
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("mlwf_airflow_fixes", os.path.join(os.path.dirname(__file__), "airflow_fixes.py"))
    _fixes = module_from_spec(spec)
    spec.loader.exec_module(_fixes)
    for refused in _fixes.apply_all():
        _refused(refused)


def _fix_component(args: list[str]) -> None:
    """The fixes of one component, applied in its own process: the api-server's Execution API
    for the newest version alone, when the stack says every client speaks it."""
    if _fixes is None or args[:1] != ["api-server"] or os.environ.get(_fixes.NEWEST_API_VARIABLE) != "1":
        return
    if not _fixes.api_server_newest_execution_api():
        _refused("api_server_newest_execution_api")


def main() -> int:
    global _events
    plan = json.loads(sys.argv[1])
    # Airflow's and Celery's modules log to stdout when imported: send that to the launcher's
    # log (stderr) and keep a private copy of stdout for the events.
    _events = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    # The imports every component needs: paid once here, shared by every fork.
    import airflow  # noqa: F401  (configures settings and the ORM)
    import airflow.__main__  # noqa: F401
    import airflow.models  # noqa: F401
    from airflow.cli import cli_parser

    cli_parser.get_parser()
    for name in preloads(plan):
        try:
            importlib.import_module(name)
        except Exception:  # a preload is an optimisation only: the child imports it again
            pass
    here, for_scheduler = _task_modules(plan)
    failed = import_task_modules(here)
    if failed:
        print(failed, file=sys.stderr, flush=True)
        return 4
    _fix_airflow()
    # Keep the imported objects out of the children's garbage collections: a full collection
    # writes to every tracked object's header, which copies each shared page into each child
    # (copy-on-write) and undoes the sharing. No gc.collect() first: it costs ~0.25 s of
    # start-up to free a little import garbage.
    gc.freeze()
    _emit(event="imported")

    if plan.get("migrate"):
        pid = os.fork()
        if pid == 0:
            _child(["db", "migrate"], plan["migrate_log"], new_session=False, inherited=(_events.fileno(),))
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            _emit(event="migrate_failed", code=code)
            return 3
        _emit(event="migrated")

    for service in plan["services"]:
        pid = os.fork()
        if pid == 0:
            preload = for_scheduler if service["args"][0] == "scheduler" else ()
            _child(service["args"], service["log"], new_session=True, inherited=(_events.fileno(),), preload=preload)
        _emit(event="started", name=service["name"], pid=pid)
    if plan.get("spawner"):
        _start_spawner(plan["spawner"])
    return 0


# --------------------------------------------------------------------- the spawner
# With the Celery executor, `mlwf scale` adds workers to a running stack. A worker forked from
# a fresh launcher shares its imported pages with nobody but its own pool processes; one
# forked from this spawner, a child of the launcher that started the stack, shares them with
# every component, as the workers started by `up` do. It waits on a Unix socket in a private
# (0700) directory for a plan of services, forks them as the launcher does and answers with
# the same events; it refuses a plan made for another Airflow environment.
#
# It outlives any client: each request is checked against one shape before anything is
# forked (anything else gets one `refused` line and no fork), a client has CLIENT_TIMEOUT_S to
# send its line, and clients are read side by side, so a silent one delays nobody.

#: What the spawner forks: the stack's Airflow components (`airflow <these words> ...`).
SPAWNABLE = (("api-server",), ("scheduler",), ("dag-processor",), ("triggerer",), ("celery", "worker"))
CLIENT_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 64 * 1024
MAX_CLIENTS = 16


class Refused(Exception):
    """A request the spawner does not fork for; its message is the answer's reason."""


def _request_model():
    """The one request shape: {"env": digest, "services": [{"name", "args", "log"}]}, strict
    types, no other keys. pydantic is a dependency of Airflow, which has imported it already."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field

    Word = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")]

    class Service(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,39}$")]
        args: Annotated[list[Word], Field(min_length=1, max_length=32)]
        log: Word

    class Request(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        env: Annotated[str, Field(min_length=1, max_length=128)]
        services: Annotated[list[Service], Field(min_length=1, max_length=64)]

    return Request


def check_request(line: bytes, spec: dict, model) -> list[dict]:
    """The services a request line asks for, or Refused saying why (nothing is forked then)."""
    from pydantic import ValidationError

    try:
        request = model.model_validate_json(line)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "request"
        raise Refused(f"malformed request: {where}: {first['msg']}"[:300]) from None
    if request.env != spec["env"]:
        raise Refused("another Airflow environment")
    logs = os.path.dirname(spec["log"])
    for service in request.services:
        if not any(tuple(service.args[: len(words)]) == words for words in SPAWNABLE):
            raise Refused(f"{service.name}: not an Airflow component the spawner starts: {service.args[0]!r}")
        if service.log != os.path.join(logs, f"{service.name}.log"):
            raise Refused(f"{service.name}: its log must be {logs}/{service.name}.log")
    return [service.model_dump() for service in request.services]


def _start_spawner(spec: dict) -> None:
    import socket
    import tempfile

    folder = tempfile.mkdtemp(prefix="mlwf-spawner-")  # 0700; short: a socket path has ~100 bytes
    path = os.path.join(folder, "socket")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(MAX_CLIENTS)
    pid = os.fork()
    if pid == 0:
        _serve(server, folder, spec)
    server.close()
    _emit(event="started", name=spec["name"], pid=pid, socket=path)


def _serve(server, folder: str, spec: dict) -> None:
    """In the forked spawner: answer plans until SIGTERM, never return."""
    import shutil

    try:
        _detach(spec["log"], new_session=True, inherited=(_events.fileno(),))

        def stop(_signum, _frame):
            shutil.rmtree(folder, ignore_errors=True)
            os._exit(0)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(f"spawner pid {os.getpid()} listening on {folder}/socket", flush=True)
        _Spawner(server, spec).run()
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os._exit(1)


class _Spawner:
    """One thread, one selector: accept clients, collect each one's line (bounded in size and
    time), answer it, close it. Nothing a client sends or fails to send ends the loop."""

    def __init__(self, server, spec: dict) -> None:
        self.server, self.spec, self.model = server, spec, _request_model()
        self.selector = selectors.DefaultSelector()
        self.clients: dict = {}  # connection -> [bytes received, or None once too long; deadline]
        server.setblocking(False)
        self.selector.register(server, selectors.EVENT_READ)

    def run(self) -> None:
        while True:
            waits = [deadline for _, deadline in self.clients.values()]
            timeout = max(0.0, min(waits) - time.monotonic()) if waits else None
            for key, _ in self.selector.select(timeout):
                if key.fileobj is self.server:
                    self._accept()
                else:
                    self._receive(key.fileobj)
            now = time.monotonic()
            for connection in [c for c, (_, deadline) in self.clients.items() if deadline <= now]:
                self._finish(connection, refused=f"no complete request line within {CLIENT_TIMEOUT_S:.0f} s")

    def _accept(self) -> None:
        try:
            connection, _ = self.server.accept()
        except OSError as error:  # e.g. the client gave up already, or no descriptor left
            print(f"accept failed: {error}", flush=True)
            return
        connection.setblocking(False)
        self.clients[connection] = [b"", time.monotonic() + CLIENT_TIMEOUT_S]
        self.selector.register(connection, selectors.EVENT_READ)
        if len(self.clients) > MAX_CLIENTS:
            self._finish(connection, refused=f"busy: {MAX_CLIENTS} clients are being served")

    def _receive(self, connection) -> None:
        try:
            chunk = connection.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        state = self.clients[connection]
        line, newline, _ = ((state[0] or b"") + chunk).partition(b"\n")
        if state[0] is None or len(line) > MAX_REQUEST_BYTES:  # read to its end, keep nothing
            state[0] = None
            if newline or not chunk:
                self._finish(connection, refused=f"request longer than {MAX_REQUEST_BYTES} bytes")
        elif newline or not chunk:  # a whole line, or the client closed its side (its last line)
            self._finish(connection, request=line)
        else:
            state[0] = line

    def _finish(self, connection, *, request: bytes | None = None, refused: str | None = None) -> None:
        """Answer the client (one line per event) and close it."""
        self.selector.unregister(connection)
        del self.clients[connection]
        events = []
        with connection:
            try:
                if refused is not None:
                    raise Refused(refused)
                for service in check_request(request, self.spec, self.model):
                    events.append(self._fork(service, connection))
            except Refused as reason:
                events.append({"event": "refused", "reason": str(reason)})
            except Exception as error:  # a fork that failed: say so, keep serving
                events.append({"event": "refused", "reason": f"{type(error).__name__}: {error}"})
            if events[-1]["event"] == "refused":
                print(f"refused a request: {events[-1]['reason']}", flush=True)
            try:
                connection.settimeout(CLIENT_TIMEOUT_S)
                connection.sendall("".join(json.dumps(event) + "\n" for event in events).encode())
                _discard_unread(connection)
            except OSError:
                pass  # the client left: what was forked runs, its pid is in the log

    def _fork(self, service: dict, connection) -> dict:
        """Fork one service; it must not hold the server or any client (a client reads to EOF)."""
        open_fds = (self.server, self.selector, connection, *self.clients)
        pid = _fork_orphan(service, inherited=tuple(handle.fileno() for handle in open_fds))
        print(f"forked {service['name']} (pid {pid})", flush=True)
        return {"event": "started", "name": service["name"], "pid": pid}


def _discard_unread(connection, limit: int = 1 << 20) -> None:
    """Read what the client sent beyond its line: a socket closed with unread input resets the
    connection, and the client would lose the answer."""
    connection.setblocking(False)
    try:
        while limit > 0:
            chunk = connection.recv(65536)
            if not chunk:
                return
            limit -= len(chunk)
    except BlockingIOError:
        pass


def _fork_orphan(service: dict, inherited: tuple[int, ...]) -> int:
    """Fork the service through a short-lived middle process, so that, as with the launcher,
    the service is nobody's child (no zombies here, no signals to the spawner when it ends)."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:  # never return into the spawner's loop: that would be a second spawner
            os.close(read_end)
            pid = os.fork()
            if pid == 0:
                _child(service["args"], service["log"], new_session=True, inherited=(*inherited, write_end))
            os.write(write_end, str(pid).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(middle, 0)
    with os.fdopen(read_end) as pipe:
        return int(pipe.read())


if __name__ == "__main__":
    sys.exit(main())
