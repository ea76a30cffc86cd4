"""How the services of a local stack start, and how a failed start is undone.

Three ways, in `Start`:
- `detached`: a service that is not Airflow (PostgreSQL, Redis, the exporter, Prometheus)
  as a detached session of its own (processes.start_detached), its configuration written
  first and, for what the next ones connect to at once, a wait until it accepts connections;
- `airflow`, by default: Airflow's components forked from one pre-imported interpreter
  (launcher.py), or from the running stack's spawner when there is one (`mlwf scale`);
- `airflow` with MLWF_LAUNCHER=0: one `airflow <component>` process each (slower; to compare).
Every started service gets its pid file at once, so `undo` stops exactly what this `up` started.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import psutil

from mlflowctl.backends import processes
from mlflowctl.backends.base import Deadline, Progress, ProgressKind, StartFailed
from mlflowctl.backends.local import services
from mlflowctl.backends.local.probes import Prober
from mlflowctl.backends.local.services import LAUNCHER
from mlflowctl.backends.local.state import SPAWNER, ServiceSpec, Stack

# Run launcher.py by path without putting its folder on sys.path (its siblings, e.g. docker.py,
# would shadow modules of those names).
LAUNCH_CODE = "import runpy, sys; sys.path.pop(0); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def one_by_one() -> bool:
    """MLWF_LAUNCHER=0: one `airflow <component>` process each, no launcher (slower; to compare)."""
    return os.environ.get("MLWF_LAUNCHER", "1") == "0"


def airflow_env_digest(env: dict[str, str], task_preload: list[str]) -> str:
    """What the spawner's children inherit: the settings Airflow reads and the modules it
    imported; a spawner started with others refuses the request."""
    import hashlib

    relevant = sorted((k, v) for k, v in env.items() if k.startswith("AIRFLOW") or k == "PYTHONPATH")
    return hashlib.sha256(json.dumps([relevant, task_preload]).encode()).hexdigest()


def clean_leftovers(stack: Stack, spec: ServiceSpec) -> None:
    """Stop the service's whole session: a live one, or what a dead leader left (its workers
    and tasks still hold ports)."""
    record = stack.record(spec.name)
    if record is None:
        return
    processes.stop_session(record, grace=3.0, second_grace=1.0)
    stack.pid_file(spec.name).unlink(missing_ok=True)


# --------------------------------------------------------------------- the migration marker


def needs_migration(stack: Stack) -> bool:
    """False when this Airflow version already migrated this very database (`up` stays quick);
    always True for the user's `database_url`, which mlwf cannot tell apart."""
    marker = stack.home / "airflow" / ".migrated"
    expected = _migration_marker(stack)
    try:
        return expected is None or marker.read_text().strip() != expected
    except OSError:
        return True


def _migration_marker(stack: Stack) -> str | None:
    """The marker's text once this database is migrated: the runtime's version (SQLite, as
    before), plus the cluster's identity for mlwf's PostgreSQL; None when it cannot be known."""
    from mlflowctl.backends.local import postgres

    config, version = stack.config, stack.runtime.version
    if config.database_url:
        return None
    if config.database == "sqlite":
        return version if (stack.home / "airflow" / "airflow.db").exists() else None
    identity = postgres.cluster_identity(config)
    return f"{version} {identity}" if identity else None


def _migration_done(stack: Stack) -> None:
    from mlflowctl.state import write_durably

    write_durably(stack.home / "airflow" / ".migrated", _migration_marker(stack) or "")


def _migration_failed(stack: Stack, code: int) -> StartFailed:
    return StartFailed(f"`airflow db migrate` failed (exit {code})", service="migrate", log_tail=stack.log_tail("migrate"))


# --------------------------------------------------------------------- one start


class Start:
    """One `up`: what it started, with the progress callback and the deadline it runs under."""

    def __init__(self, stack: Stack, prober: Prober, env: dict[str, str], report: Progress, deadline: Deadline) -> None:
        self.stack = stack
        self.prober = prober
        self.env = env
        self.report = report
        self.deadline = deadline
        self.started: dict[str, subprocess.Popen | None] = {}

    def detached(self, spec: ServiceSpec) -> None:
        """A service that is not Airflow: its configuration, its session, then (when the next
        ones connect to it at once) a wait until it accepts connections."""
        services.prepare(self.stack, spec)
        popen, record = processes.start_detached(
            spec.argv, env=self.env, cwd=self.stack.config.project_root, log_path=self.stack.log_file(spec.name)
        )
        processes.write_pid_file(self.stack.pid_file(spec.name), record)
        self.started[spec.name] = popen
        ready = services.readiness(self.stack, spec)
        if ready is not None:
            self.report(f"waiting for {spec.name}", [])
            self._wait_ready(spec.name, ready)

    def _wait_ready(self, name: str, condition) -> None:
        """Block until `condition()`; StartFailed with the log's tail when the service dies or
        `up --timeout` runs out."""
        while not condition():
            record = self.stack.record(name)
            dead = record is None or record.process() is None
            if dead or not self.deadline.left():
                if dead:
                    raise StartFailed(f"{name} exited while starting", service=name, log_tail=self.stack.log_tail(name))
                raise self.deadline.expired(
                    f"waiting for {name} to accept connections", service=name, log_tail=self.stack.log_tail(name)
                )
            time.sleep(0.1)

    def airflow(self, specs: list[ServiceSpec], migrate: bool) -> None:
        """Airflow's components (and the spawner), after `airflow db migrate` when `migrate`."""
        if one_by_one():
            self._one_by_one(specs, migrate)
        else:
            self._launch(specs, migrate)

    def _launch(self, specs: list[ServiceSpec], migrate: bool) -> None:
        """Fork the Airflow components from one pre-imported interpreter (see launcher.py): the
        stack's spawner when it runs, else a new launcher. On any failure, the timeout
        included, the launcher is stopped with everything it forked."""
        stack, deadline, report = self.stack, self.deadline, self.report
        planned = [
            {"name": s.name, "args": s.airflow_args, "log": str(stack.log_file(s.name))} for s in specs if not s.spawner
        ]
        task_preload = list(stack.config.task_preload)
        digest = airflow_env_digest(self.env, task_preload)
        if not migrate and not any(s.spawner for s in specs):
            for event in self._ask_spawner({"env": digest, "services": planned}):
                self._record_started(specs, event)
            planned = [service for service in planned if service["name"] not in self.started]
            if not planned:
                return
        plan = {
            "migrate": migrate,
            "migrate_log": str(stack.log_file("migrate")),
            "services": planned,
            "executor": stack.config.executor,
            "task_preload": task_preload,
        }
        spawner = next((s for s in specs if s.spawner), None)
        if spawner is not None:
            plan["spawner"] = {"name": spawner.name, "log": str(stack.log_file(spawner.name)), "env": digest}
        phase, service = "loading Airflow", "launcher"
        report(phase, [])
        with processes.open_log(stack.log_file("launcher")) as errors:
            launcher = subprocess.Popen(
                [stack.python, "-c", LAUNCH_CODE, str(LAUNCHER), json.dumps(plan)],
                env=self.env,
                cwd=stack.config.project_root,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                umask=processes.PRIVATE_UMASK,
                start_new_session=True,  # its session holds the migration: stopped as one on failure
            )
        try:
            assert launcher.stdout is not None
            for line in processes.read_lines(launcher.stdout, deadline.ends):
                event = json.loads(line)
                kind = event["event"]
                if kind == "imported" and migrate:
                    phase, service = "migrating the metadata database", "migrate"
                    report(phase, [])
                elif kind == "migrated":
                    _migration_done(stack)
                    phase, service = "starting the components", "launcher"
                    report(phase, [])
                elif kind == "migrate_failed":
                    raise _migration_failed(stack, event["code"])
                elif kind == "started":
                    self._record_started(specs, event)
            phase = "waiting for the launcher to exit"
            code = launcher.wait(deadline.left())
        except (TimeoutError, subprocess.TimeoutExpired):
            raise deadline.expired(phase, service=service, log_tail=stack.log_tail(service)) from None
        finally:
            if launcher.poll() is None:
                processes.stop_forker(launcher)
            launcher.stdout.close()
        if code != 0 or len([s for s in specs if s.name in self.started]) != len(specs):
            raise StartFailed(
                f"the Airflow launcher failed (exit {code})", service="launcher", log_tail=stack.log_tail("launcher")
            )

    def _record_started(self, specs: list[ServiceSpec], event: dict) -> None:
        """A launcher's or the spawner's `started` event: write the service's pid file."""
        pid = event["pid"]
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            created = time.time()  # already gone: the wait for health reports it
        spec = next(s for s in specs if s.name == event["name"])
        processes.write_pid_file(self.stack.pid_file(spec.name), processes.PidRecord(pid, created, spec.argv))
        if event.get("socket"):
            self.stack.record_spawner_socket(event["socket"])
        self.started[spec.name] = None

    def _ask_spawner(self, request: dict) -> list[dict]:
        """The services the running spawner forked for this request; none when there is no
        spawner, it is unreachable, or it runs another Airflow environment."""
        import socket

        path = self.stack.spawner_socket()
        record = self.stack.record(SPAWNER)
        if path is None or record is None or record.process() is None or not self.deadline.left():
            return []
        events = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(min(30.0, self.deadline.left()))
                connection.connect(str(path))
                connection.sendall((json.dumps(request) + "\n").encode())
                for line in connection.makefile():
                    event = json.loads(line)
                    if event.get("event") == "started":
                        events.append(event)
        except (OSError, ValueError):
            pass  # what it started is recorded; a new launcher starts the rest
        return events

    def _one_by_one(self, specs: list[ServiceSpec], migrate: bool) -> None:
        """One `airflow <component>` process each (MLWF_LAUNCHER=0): slower, for comparison."""
        stack = self.stack
        if migrate:
            phase = "migrating the metadata database"
            self.report(phase, [])
            popen, record = processes.start_detached(
                [stack.airflow, "db", "migrate"],
                env=self.env,
                cwd=stack.config.project_root,
                log_path=stack.log_file("migrate"),
            )
            try:
                code = popen.wait(self.deadline.left())
            except subprocess.TimeoutExpired:
                processes.stop_session(record, grace=3.0, second_grace=1.0, popen=popen)
                raise self.deadline.expired(phase, service="migrate", log_tail=stack.log_tail("migrate")) from None
            if code != 0:
                raise _migration_failed(stack, code)
            _migration_done(stack)
        for spec in specs:
            popen, record = processes.start_detached(
                spec.argv, env=self.env, cwd=stack.config.project_root, log_path=stack.log_file(spec.name)
            )
            processes.write_pid_file(stack.pid_file(spec.name), record)
            self.started[spec.name] = popen

    def wait_healthy(self, specs: list[ServiceSpec]) -> None:
        while True:
            for name, popen in self.started.items():
                code = popen.poll() if popen is not None else None  # reaps our own children
                if code is not None or self.stack.live(name) is None:
                    how = f"exited with code {code}" if code is not None else "exited"
                    raise StartFailed(f"{name} {how} while starting", service=name, log_tail=self.stack.log_tail(name))
            states = self.prober.snapshot(specs, waiting=True)
            waiting = [s.name for s in states if s.state != "healthy"]
            self.report(f"waiting for {', '.join(waiting)}" if waiting else "all healthy", states,
                        ProgressKind.WAITING if waiting else ProgressKind.READY)
            if not waiting:
                return
            if not self.deadline.left():
                name = waiting[0]
                raise self.deadline.expired(
                    f"waiting for {name} to be healthy", service=name, log_tail=self.stack.log_tail(name)
                )
            time.sleep(0.25)

    def undo(self, specs: list[ServiceSpec]) -> None:
        """Stop what this `up` started, leave what was running before."""
        for spec in specs:
            if spec.name in self.started:
                record = self.stack.record(spec.name)
                if record is not None:
                    processes.stop_session(record, grace=5.0, second_grace=3.0, popen=self.started[spec.name])
                self.stack.pid_file(spec.name).unlink(missing_ok=True)
