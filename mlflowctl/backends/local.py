"""The embedded local backend: a real Airflow 3 stack as detached process groups, no Docker.

Layout of the state directory (`config.home`):

    secrets.json, simple_auth_manager_passwords.json   generated once, 0600
    airflow/        AIRFLOW_HOME (the SQLite metadata database, for `database = "sqlite"`)
    postgres/       mlwf's PostgreSQL, the default metadata database (see postgres_local.py)
    run/<service>.pid   pid, start time and command of each service's group leader
    logs/<service>.log  one log per service; logs/tasks/ the task logs
    data/           the pipeline's data root (MLWF_DATA_ROOT)

`up` starts only what is not running, `down` stops process groups (TERM, TERM, KILL)
and sweeps any process still carrying the stack's marker. Nothing here prints: progress
goes through the `progress(message, services)` callback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import psutil

from mlflowctl.backends import processes
from mlflowctl.backends.base import (
    Deadline, Progress, ProgressKind, ServiceStatus, StackStatus, StartFailed, no_progress,
)
from mlflowctl.backends.ports import PortNeed, check_free
from mlflowctl.config import Config
from mlflowctl.errors import DamagedStateError, MlwfError, NotAvailableError, NotFoundError, UsageError
from mlflowctl.state import ensure_home, remove_tree, write_durably

CORE = "core"
MONITORING = "monitoring"
#: Pools the DAGs use: name -> (slots, description).
POOLS = {"ml_training": (1, "model training, one at a time (ml_pipeline_dag)")}
DEFAULT_TIMEOUT = 120.0
LOG_TAIL_LINES = 25
# How long `status` waits for the api-server's health answer. A busy api-server is not a dead
# one: under a burst of 8 clients on a loaded 2-core machine it answered in 0.5-1.5 s, once
# in 12 s, and at 2 s `status` called every Airflow component unhealthy (exit 9).
HEALTH_TIMEOUT_S = 5.0
EXCLUDE_FILE = "excluded.json"  # in run/: what the last `up` left out, so `status` ignores it
__all__ = ["LocalBackend", "StartFailed", "LOG_TAIL_LINES"]
LAUNCHER = Path(__file__).with_name("launcher.py")
SPAWNER = "spawner"
# Run launcher.py by path without putting its folder on sys.path (its siblings, e.g. docker.py,
# would shadow modules of those names).
LAUNCH_CODE = "import runpy, sys; sys.path.pop(0); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


@dataclass
class ServiceSpec:
    """One process group of the stack."""

    name: str
    argv: list[str]
    group: str = CORE
    port: int | None = None
    url: str | None = None
    health_key: str | None = None  # key in /api/v2/monitor/health
    probe_url: str | None = None  # else: healthy when this URL answers 200
    check: Callable[[], tuple[bool, str]] | None = None  # else: a custom probe -> (healthy, detail)
    ports: list[PortNeed] = field(default_factory=list)
    env: dict[str, str] | None = None  # None: the stack's Airflow environment
    airflow_args: list[str] | None = None  # an Airflow component: `airflow <args>`, forked by the launcher
    spawner: bool = False  # the launcher's fork server for later components (see launcher.py)
    prepare: Callable[[], None] | None = None  # runs before the service starts (writes its config)
    ready: Callable[[Deadline], None] | None = None  # blocks after the start until it serves (a database before migrate)
    database: bool = False  # the metadata database: `down` stops it after everything that writes to it


class LocalBackend:
    name = "local"

    def __init__(self, config: Config, *, runtime=None) -> None:
        from mlflowctl.backends.executors import effective_config

        self.requested = config  # as the user gave it: `up` refuses another database than the stack's
        self.config = effective_config(config)  # the executor, workers and database the stack was started with
        self.home = config.home_dir
        self.run_dir = self.home / "run"
        self.logs_dir = self.home / "logs"
        self._runtime = runtime
        self._notes: list[str] = []
        self._client = None

    # ----------------------------------------------------------------- services

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.airflow_port}"

    def runtime(self, progress: Progress | None = None):
        if self._runtime is None:
            from mlflowctl.backends.runtime import find_runtime

            self._runtime = find_runtime(
                self.config.project_root, lambda line: progress(f"runtime: {line}", []) if progress else None
            )
        return self._runtime

    def services(self, exclude: frozenset[str] = frozenset()) -> list[ServiceSpec]:
        """Every service of the stack, in start order, minus excluded groups or names."""
        from mlflowctl.backends import postgres_local, serving_local

        plugin = self._executor_plugin()
        c = self.config
        core = [
            self._airflow_service(
                "api-server",
                ["api-server", "--host", "127.0.0.1", "--port", str(c.airflow_port)],
                port=c.airflow_port,
                url=self.url,
                ports=[PortNeed("api-server", "airflow_port", c.airflow_port)],
            ),
            # No log servers: they listen on every interface, and on one host the api-server
            # reads task and trigger logs from the files.
            self._airflow_service("scheduler", ["scheduler", "--skip-serve-logs"], health_key="scheduler"),
            self._airflow_service("dag-processor", ["dag-processor"], health_key="dag_processor"),
            self._airflow_service("triggerer", ["triggerer", "--skip-serve-logs"], health_key="triggerer"),
            *self._monitoring_services(),
            *serving_local.services(self),
        ]
        # The database first; an executor's services (celery: the broker, then the workers) around the core.
        specs = [
            *postgres_local.services(self),
            *(plugin.before_airflow(self) if plugin else []),
            *core,
            *(plugin.after_airflow(self) if plugin else []),
        ]
        return [s for s in specs if s.group not in exclude and s.name not in exclude]

    def _airflow_service(self, name: str, args: list[str], **details) -> ServiceSpec:
        airflow = self._runtime.airflow if self._runtime is not None else "airflow"
        return ServiceSpec(name, [airflow, *args], airflow_args=args, **details)

    def spawner_services(self) -> list[ServiceSpec]:
        """The spawner, for stacks that add Airflow processes later (Celery workers by `scale`)."""
        if _one_by_one():
            return []
        python = self._runtime.python if self._runtime is not None else "python"
        return [ServiceSpec(SPAWNER, [python, str(LAUNCHER), "spawner"], spawner=True, check=self._spawner_check)]

    def _spawner_check(self) -> tuple[bool, str]:
        path = self._spawner_socket()
        if path is None or not path.exists():
            return False, "its socket is gone: `mlwf scale` starts workers from a new launcher"
        return True, "forks the workers `mlwf scale` adds"

    @property
    def _spawner_record(self) -> Path:
        """run/spawner.socket: the path of the running spawner's socket."""
        return self.run_dir / f"{SPAWNER}.socket"

    def _forget_spawner_socket(self) -> None:
        """Remove the recorded socket's folder: a spawner that was killed could not."""
        path = self._spawner_socket()
        if path is not None and path.parent.name.startswith("mlwf-spawner-"):
            shutil.rmtree(path.parent, ignore_errors=True)
        self._spawner_record.unlink(missing_ok=True)

    def _spawner_socket(self) -> Path | None:
        try:
            return Path(self._spawner_record.read_text().strip())
        except OSError:
            return None

    def _executor_plugin(self):
        """The module adding an executor's services and settings; None for the local executor.

        A plugin (`mlflowctl.backends.<executor>_local`) provides `before_airflow(backend)` and
        `after_airflow(backend)` -> list[ServiceSpec] and `environment(backend)` -> keyword
        arguments for `local_environment` (broker_url).
        """
        if self.config.executor == "local":
            return None
        import importlib

        try:
            return importlib.import_module(f"mlflowctl.backends.{self.config.executor}_local")
        except ImportError:
            raise NotAvailableError(
                f"executor {self.config.executor!r} is not available on the local backend in this mlwf version"
            ) from None

    def _stack_dir(self) -> Path:
        """The project's stack/ folder (mapping, Prometheus template), else mlwf's own."""
        from mlflowctl.metrics.prometheus_config import STACK_DIR

        own = self.config.project_root / "stack"
        return own if (own / "statsd" / "mapping.yml").is_file() else STACK_DIR

    def _monitoring_services(self) -> list[ServiceSpec]:
        """The embedded StatsD exporter and, when its binary is on PATH, Prometheus."""
        c = self.config
        stack_dir = self._stack_dir()
        specs = [
            ServiceSpec(
                "exporter",
                [
                    sys.executable, "-m", "mlflowctl.metrics.exporter",
                    "--mapping", str(stack_dir / "statsd" / "mapping.yml"),
                    "--statsd-host", "127.0.0.1", "--statsd-port", str(c.statsd_port),
                    "--http-host", "127.0.0.1", "--http-port", str(c.exporter_port),
                ],
                group=MONITORING,
                port=c.exporter_port,
                url=f"http://127.0.0.1:{c.exporter_port}/metrics",
                check=lambda: self._exporter_flow(f"http://127.0.0.1:{c.exporter_port}/status"),
                ports=[
                    PortNeed("exporter", "exporter_port", c.exporter_port),
                    PortNeed("exporter (StatsD)", "statsd_port", c.statsd_port, udp=True),
                ],
            )
        ]
        binary = shutil.which("prometheus")
        if binary is None:
            note = "prometheus is not on PATH: metrics are received but not stored (apt-get install prometheus)"
            if note not in self._notes:
                self._notes.append(note)
            return specs
        data = self.home / "prometheus"
        specs.append(
            ServiceSpec(
                "prometheus",
                [
                    binary,
                    f"--config.file={data / 'prometheus.yml'}",
                    f"--storage.tsdb.path={data / 'data'}",
                    f"--web.listen-address=127.0.0.1:{c.prometheus_port}",
                ],
                group=MONITORING,
                port=c.prometheus_port,
                url=f"http://127.0.0.1:{c.prometheus_port}",
                probe_url=f"http://127.0.0.1:{c.prometheus_port}/-/ready",
                ports=[PortNeed("prometheus", "prometheus_port", c.prometheus_port)],
                prepare=lambda: self._write_prometheus_config(stack_dir),
            )
        )
        return specs

    def _write_prometheus_config(self, stack_dir: Path) -> None:
        from mlflowctl.metrics.prometheus_config import write_local_config

        write_local_config(
            self.home / "prometheus" / "prometheus.yml",
            exporter_port=self.config.exporter_port,
            prometheus_port=self.config.prometheus_port,
            serving_port=self.config.serving_port,
            stack_dir=stack_dir,
        )

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def _live(self, spec: ServiceSpec) -> processes.PidRecord | None:
        record = processes.read_pid_file(self._pid_file(spec.name))
        return record if record is not None and record.process() is not None else None

    # ----------------------------------------------------------------- health

    def _http(self):
        """One plain-HTTP client for every probe (a new client per call costs ~30 ms of CPU)."""
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=2.0, verify=False, trust_env=False)
        return self._client

    def _health(self) -> dict | None:
        import httpx

        try:
            response = self._http().get(f"{self.url}/api/v2/monitor/health", timeout=HEALTH_TIMEOUT_S)
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def _probe(self, url: str) -> bool:
        import httpx

        try:
            return self._http().get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _service_status(self, spec: ServiceSpec, record, health: dict | None, *, waiting: bool) -> ServiceStatus:
        status = ServiceStatus(name=spec.name, state="stopped", port=spec.port, url=spec.url)
        if record is None:
            stale = processes.read_pid_file(self._pid_file(spec.name))
            if stale is not None:
                status.detail = f"stale pid file: pid {stale.pid} is gone or belongs to another program"
            return status
        status.pid = record.pid
        status.uptime_seconds = round(time.time() - record.create_time, 1)
        not_ready = "starting" if waiting else "unhealthy"
        if spec.name == "api-server":
            healthy = health is not None
            status.detail = "" if healthy else "not answering /api/v2/monitor/health"
        elif spec.health_key is not None:
            component = (health or {}).get(spec.health_key) or {}
            healthy = component.get("status") == "healthy"
            if health is None:
                status.detail = "health unknown: the api-server is not answering"
            elif not healthy:
                status.detail = f"health: {component.get('status') or 'no heartbeat yet'}"
        elif spec.check is not None:
            healthy, status.detail = spec.check()
        elif spec.probe_url is not None:
            healthy = self._probe(spec.probe_url)
            status.detail = "" if healthy else f"not answering {spec.probe_url}"
        else:
            healthy = True  # nothing to ask: a live process is all we know
        status.state = "healthy" if healthy else not_ready
        return status

    def _exporter_flow(self, status_url: str) -> tuple[bool, str]:
        """Healthy once the scheduler's StatsD heartbeat arrived in the last minute: metrics flow."""
        import httpx

        try:
            facts = self._http().get(status_url, timeout=1.0).json()
        except (httpx.HTTPError, ValueError):
            return False, f"not answering {status_url}"
        beat = (facts.get("heartbeats") or {}).get("scheduler")
        if not isinstance(beat, (int, float)):
            return False, "no scheduler heartbeat received yet"
        age = time.time() - beat
        if age > 60:
            return False, f"metrics not flowing: last scheduler heartbeat {age:.0f} s ago"
        return True, f"metrics flowing: {facts.get('lines', 0)} lines, heartbeat {age:.0f} s ago"

    def _snapshot(self, specs: list[ServiceSpec], *, waiting: bool = False) -> list[ServiceStatus]:
        """Every service's state; the HTTP probes run concurrently (status must stay quick)."""
        from concurrent.futures import ThreadPoolExecutor

        records = {spec.name: self._live(spec) for spec in specs}
        with ThreadPoolExecutor(max_workers=4) as pool:
            health = pool.submit(self._health) if records.get("api-server") is not None else None
            probed = {
                spec.name: pool.submit(self._service_status, spec, records[spec.name], {}, waiting=waiting)
                for spec in specs
                if spec.probe_url is not None or spec.check is not None
            }
            health_data = health.result() if health is not None else None
            return [
                probed[spec.name].result()
                if spec.name in probed
                else self._service_status(spec, records[spec.name], health_data, waiting=waiting)
                for spec in specs
            ]

    # ----------------------------------------------------------------- status

    def status(self) -> StackStatus:
        """The services of the stack as last started: groups `up --exclude`d are left out."""
        specs = self.services(self._recorded_exclude())
        return StackStatus(backend=self.name, services=self._snapshot(specs), database=self.database_name())

    def database_name(self) -> str:
        """Which metadata database the stack runs on, as `status` says it."""
        return "database_url" if self.config.database_url else self.config.database

    def _recorded_exclude(self) -> frozenset[str]:
        try:
            return frozenset(json.loads((self.run_dir / EXCLUDE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return frozenset()

    # ----------------------------------------------------------------- up

    def up(
        self,
        *,
        exclude: frozenset[str] = frozenset(),
        progress: Progress | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> StackStatus:
        from mlflowctl.backends import postgres_local, serving_local
        from mlflowctl.backends.airflow_env import local_environment
        from mlflowctl.secrets import load_or_create

        if sys.platform == "win32":
            raise NotAvailableError(
                "Airflow does not run natively on Windows", hint="run mlwf inside WSL, or use --backend docker"
            )
        from mlflowctl.backends.executors import check_switch, read_record, write_record

        check_switch(self.requested)
        report = progress or no_progress
        ensure_home(self.home, self.config.project_root)
        secrets = load_or_create(self.home)
        runtime = self.runtime(progress)  # building one is the one phase that may take longer
        postgres_local.check_ready(self, runtime)  # binaries and (root) the system user, before anything starts
        deadline = Deadline.start(timeout)
        specs = self.services(exclude)
        notes: list[str] = []

        self.run_dir.mkdir(parents=True, exist_ok=True)
        running = {spec.name for spec in specs if self._live(spec) is not None}
        recorded = read_record(self.home).get("executor", self.config.executor)
        if recorded != self.config.executor and "scheduler" in running:
            raise UsageError(
                f"the stack runs with the {recorded} executor; stop it with `mlwf down` first to start it "
                f"with the {self.config.executor} executor"
            )
        write_durably(self.run_dir / EXCLUDE_FILE, json.dumps(sorted(exclude)))
        to_start = [spec for spec in specs if spec.name not in running]
        if not to_start:
            status = StackStatus(backend=self.name, services=self._snapshot(specs), database=self.database_name())
            status.notes.append("the stack is already running; nothing changed")
            return status

        if any(spec.database for spec in to_start):
            # Components that outlived their database keep failing, or die while this `up`
            # waits for them: restart them with it.
            survivors = [spec for spec in specs if spec.airflow_args is not None and spec.name in running]
            for spec in survivors:
                self._clean_leftovers(spec)
                running.discard(spec.name)
            to_start = [spec for spec in specs if spec.name not in running]
        for spec in to_start:
            self._clean_leftovers(spec)
        check_free([need for spec in to_start for need in spec.ports])

        plugin = self._executor_plugin()
        env = local_environment(
            self.config,
            secrets,
            supervisor_fixed=not _one_by_one(),
            database_url=postgres_local.database_url(self.config, secrets) if postgres_local.runs_own(self.config) else None,
            **(plugin.environment(self) if plugin else {}),
        )
        env["PATH"] = f"{runtime.bin_dir}:{env.get('PATH', '')}"
        env.update(serving_local.task_environment(specs))
        write_record(self.home, executor=self.config.executor, workers=self.config.workers, database=self.config.database)
        for folder in ("data", "airflow", "logs"):
            (self.home / folder).mkdir(mode=0o700, exist_ok=True)
        # Migrate only when no Airflow component runs (never under a live scheduler).
        airflow_running = any(spec.airflow_args is not None and spec.name in running for spec in specs)
        migrate = not airflow_running and self._needs_migration(runtime)

        started: dict[str, subprocess.Popen | None] = {}
        try:
            for spec in to_start:
                if spec.airflow_args is None:
                    if spec.prepare is not None:
                        spec.prepare()
                    popen, record = processes.start_detached(
                        spec.argv, env=spec.env or env, cwd=self.config.project_root, log_path=self._log_file(spec.name)
                    )
                    processes.write_pid_file(self._pid_file(spec.name), record)
                    started[spec.name] = popen
                    if spec.ready is not None:
                        report(f"waiting for {spec.name}", [])
                        spec.ready(deadline)
            airflow_specs = [spec for spec in to_start if spec.airflow_args is not None or spec.spawner]
            if _one_by_one():
                self._start_one_by_one(airflow_specs, env, runtime, migrate, started, report, deadline)
            else:
                self._launch(airflow_specs, env, runtime, migrate, started, report, deadline)
            self._wait_healthy(specs, started, report, deadline)
            report("creating pools", self._snapshot(specs, waiting=True), ProgressKind.STEP)
            self._ensure_pools(secrets, deadline)
        except BaseException:
            self._stop_started(specs, started)
            raise
        if running:
            notes.append(f"restarted {', '.join(started)}; {', '.join(sorted(running))} kept running")
        status = StackStatus(backend=self.name, services=self._snapshot(specs), database=self.database_name())
        status.notes.extend(notes + self._notes)
        return status

    def _needs_migration(self, runtime) -> bool:
        """False when this Airflow version already migrated this very database (`up` stays quick);
        always True for the user's `database_url`, which mlwf cannot tell apart."""
        marker = self.home / "airflow" / ".migrated"
        expected = self._migration_marker(runtime)
        try:
            return expected is None or marker.read_text().strip() != expected
        except OSError:
            return True

    def _migration_marker(self, runtime) -> str | None:
        """The marker's text once this database is migrated: the runtime's version (SQLite, as
        before), plus the cluster's identity for mlwf's PostgreSQL; None when it cannot be known."""
        from mlflowctl.backends import postgres_local

        if self.config.database_url:
            return None
        if self.config.database == "sqlite":
            return runtime.version if (self.home / "airflow" / "airflow.db").exists() else None
        identity = postgres_local.cluster_identity(self.config)
        return f"{runtime.version} {identity}" if identity else None

    def _migration_done(self, runtime) -> None:
        from mlflowctl.state import write_durably

        write_durably(self.home / "airflow" / ".migrated", self._migration_marker(runtime) or "")

    def _migration_failed(self, code: int) -> StartFailed:
        return StartFailed(
            f"`airflow db migrate` failed (exit {code})",
            service="migrate",
            log_tail=tail_lines(self._log_file("migrate"), LOG_TAIL_LINES),
        )

    def _launch(
        self, specs: list[ServiceSpec], env, runtime, migrate: bool, started: dict, report: Progress, deadline: Deadline
    ) -> None:
        """Fork the Airflow components from one pre-imported interpreter (see launcher.py): the
        stack's spawner when it runs, else a new launcher. On any failure, the timeout
        included, the launcher is stopped with everything it forked."""
        services = [
            {"name": s.name, "args": s.airflow_args, "log": str(self._log_file(s.name))} for s in specs if not s.spawner
        ]
        task_preload = list(self.config.task_preload)
        digest = _airflow_env_digest(env, task_preload)
        if not migrate and not any(s.spawner for s in specs):
            for event in self._ask_spawner({"env": digest, "services": services}, deadline):
                self._record_started(specs, event, started)
            services = [service for service in services if service["name"] not in started]
            if not services:
                return
        plan = {
            "migrate": migrate,
            "migrate_log": str(self._log_file("migrate")),
            "services": services,
            "executor": self.config.executor,
            "task_preload": task_preload,
        }
        spawner = next((s for s in specs if s.spawner), None)
        if spawner is not None:
            plan["spawner"] = {"name": spawner.name, "log": str(self._log_file(spawner.name)), "env": digest}
        phase, service = "loading Airflow", "launcher"
        report(phase, [])
        launcher_log = self._log_file("launcher")
        with processes.open_log(launcher_log) as errors:
            launcher = subprocess.Popen(
                [runtime.python, "-c", LAUNCH_CODE, str(LAUNCHER), json.dumps(plan)],
                env=env,
                cwd=self.config.project_root,
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
                    self._migration_done(runtime)
                    phase, service = "starting the components", "launcher"
                    report(phase, [])
                elif kind == "migrate_failed":
                    raise self._migration_failed(event["code"])
                elif kind == "started":
                    self._record_started(specs, event, started)
            phase = "waiting for the launcher to exit"
            code = launcher.wait(deadline.left())
        except (TimeoutError, subprocess.TimeoutExpired):
            raise deadline.expired(
                phase, service=service, log_tail=tail_lines(self._log_file(service), LOG_TAIL_LINES)
            ) from None
        finally:
            if launcher.poll() is None:
                processes.stop_forker(launcher)
            launcher.stdout.close()
        if code != 0 or len([s for s in specs if s.name in started]) != len(specs):
            raise StartFailed(
                f"the Airflow launcher failed (exit {code})",
                service="launcher",
                log_tail=tail_lines(launcher_log, LOG_TAIL_LINES),
            )

    def _record_started(self, specs: list[ServiceSpec], event: dict, started: dict) -> None:
        """A launcher's or the spawner's `started` event: write the service's pid file."""
        pid = event["pid"]
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            created = time.time()  # already gone: the wait for health reports it
        spec = next(s for s in specs if s.name == event["name"])
        processes.write_pid_file(self._pid_file(spec.name), processes.PidRecord(pid, created, spec.argv))
        if event.get("socket"):
            self._forget_spawner_socket()
            self._spawner_record.write_text(event["socket"])
        started[spec.name] = None

    def _ask_spawner(self, request: dict, deadline: Deadline) -> list[dict]:
        """The services the running spawner forked for this request; none when there is no
        spawner, it is unreachable, or it runs another Airflow environment."""
        import socket

        path = self._spawner_socket()
        record = processes.read_pid_file(self._pid_file(SPAWNER))
        if path is None or record is None or record.process() is None or not deadline.left():
            return []
        events = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(min(30.0, deadline.left()))
                connection.connect(str(path))
                connection.sendall((json.dumps(request) + "\n").encode())
                for line in connection.makefile():
                    event = json.loads(line)
                    if event.get("event") == "started":
                        events.append(event)
        except (OSError, ValueError):
            pass  # what it started is recorded; a new launcher starts the rest
        return events

    def _start_one_by_one(
        self, specs, env, runtime, migrate: bool, started: dict, report: Progress, deadline: Deadline
    ) -> None:
        """One `airflow <component>` process each (MLWF_LAUNCHER=0): slower, for comparison."""
        if migrate:
            phase = "migrating the metadata database"
            report(phase, [])
            popen, record = processes.start_detached(
                [runtime.airflow, "db", "migrate"],
                env=env,
                cwd=self.config.project_root,
                log_path=self._log_file("migrate"),
            )
            try:
                code = popen.wait(deadline.left())
            except subprocess.TimeoutExpired:
                processes.stop_session(record, grace=3.0, second_grace=1.0, popen=popen)
                raise deadline.expired(
                    phase, service="migrate", log_tail=tail_lines(self._log_file("migrate"), LOG_TAIL_LINES)
                ) from None
            if code != 0:
                raise self._migration_failed(code)
            self._migration_done(runtime)
        for spec in specs:
            popen, record = processes.start_detached(
                spec.argv, env=env, cwd=self.config.project_root, log_path=self._log_file(spec.name)
            )
            processes.write_pid_file(self._pid_file(spec.name), record)
            started[spec.name] = popen

    def _wait_healthy(self, specs, started: dict, report: Progress, deadline: Deadline) -> None:
        by_name = {spec.name: spec for spec in specs}
        while True:
            for name, popen in started.items():
                code = popen.poll() if popen is not None else None  # reaps our own children
                if code is not None or self._live(by_name[name]) is None:
                    how = f"exited with code {code}" if code is not None else "exited"
                    raise StartFailed(
                        f"{name} {how} while starting",
                        service=name,
                        log_tail=tail_lines(self._log_file(name), LOG_TAIL_LINES),
                    )
            services = self._snapshot(specs, waiting=True)
            waiting = [s.name for s in services if s.state != "healthy"]
            report(f"waiting for {', '.join(waiting)}" if waiting else "all healthy", services,
                   ProgressKind.WAITING if waiting else ProgressKind.READY)
            if not waiting:
                return
            if not deadline.left():
                name = waiting[0]
                raise deadline.expired(
                    f"waiting for {name} to be healthy",
                    service=name,
                    log_tail=tail_lines(self._log_file(name), LOG_TAIL_LINES),
                )
            time.sleep(0.25)

    def _ensure_pools(self, secrets, deadline: Deadline) -> None:
        from mlflowctl.api.airflow import AirflowClient

        timeout = max(1.0, min(10.0, deadline.left()))  # healthy already: the API answers at once
        password = secrets.admin_password
        with AirflowClient(self.url, secrets.admin_user, lambda: password, home=self.home, timeout=timeout,
                           retry_for=timeout) as client:
            for name, (slots, description) in POOLS.items():
                client.ensure_pool(name, slots, description)  # one that exists keeps the user's slots

    def _stop_started(self, specs: list[ServiceSpec], started: dict) -> None:
        """Undo this `up`: stop what it started, leave what was running before."""
        for spec in specs:
            if spec.name in started:
                record = processes.read_pid_file(self._pid_file(spec.name))
                if record is not None:
                    processes.stop_session(record, grace=5.0, second_grace=3.0, popen=started[spec.name])
                self._pid_file(spec.name).unlink(missing_ok=True)

    def _clean_leftovers(self, spec: ServiceSpec) -> None:
        """Stop the service's whole session: a live one, or what a dead leader left (its workers
        and tasks still hold ports)."""
        record = processes.read_pid_file(self._pid_file(spec.name))
        if record is None:
            return
        processes.stop_session(record, grace=3.0, second_grace=1.0)
        self._pid_file(spec.name).unlink(missing_ok=True)

    # ----------------------------------------------------------------- down

    def down(self, *, volumes: bool = False) -> StackStatus:
        from concurrent.futures import ThreadPoolExecutor

        specs = self.services()
        records, damaged = {}, []
        for spec in specs:
            try:
                record = processes.read_pid_file(self._pid_file(spec.name))
            except DamagedStateError:
                damaged.append(self._pid_file(spec.name).name)  # its processes go with the marker sweep
                continue
            if record is not None and record.process() is not None:
                records[spec.name] = record
            else:
                self._clean_leftovers(spec)
        # Every group gets its TERM at once (the triggerer alone takes ~10 s to stop), the
        # database last: the components' final writes still reach it.
        databases = {spec.name for spec in specs if spec.database}
        outcomes = {}
        for wave in ([n for n in records if n not in databases], [n for n in records if n in databases]):
            with ThreadPoolExecutor(max_workers=max(1, len(wave))) as pool:
                outcomes.update(zip(wave, pool.map(processes.stop_session, [records[n] for n in wave])))
        strays = processes.marked_processes(str(self.home))
        processes.kill_processes(strays)
        for spec in specs:
            self._pid_file(spec.name).unlink(missing_ok=True)
        self._forget_spawner_socket()
        status = StackStatus(backend=self.name, services=self._snapshot(specs))
        if not records:
            status.notes.append("nothing was running")
        for name, outcome in outcomes.items():
            if outcome != "terminated":
                status.notes.append(f"{name}: {outcome}")
        if strays:
            status.notes.append(f"stopped {len(strays)} stray process(es) of this stack")
        if damaged:
            status.notes.append(f"removed damaged pid file(s) {', '.join(damaged)}; their processes were swept by marker")
        if volumes and self.home.exists():
            from mlflowctl.backends.postgres_local import remove_data

            removed = remove_data(self.config)
            if removed:
                status.notes.append(removed)
            if remove_tree(self.home, self.config.project_root):
                status.notes.append(f"deleted {self.home}")
        return status

    # ----------------------------------------------------------------- logs

    def log_names(self) -> list[str]:
        names = [spec.name for spec in self.services()]
        extra = sorted(p.stem for p in self.logs_dir.glob("*.log") if p.stem not in names)
        return names + extra

    def logs(self, service: str | None = None, *, tail: int = 100, follow: bool = False) -> Iterator[str]:
        names = self.log_names()
        if service is not None and service not in names:
            raise NotFoundError(f"no service {service!r}; services: {', '.join(names)}")
        chosen = [service] if service else [n for n in names if self._log_file(n).exists()]
        prefix = service is None
        return follow_logs(
            {name: self._log_file(name) for name in chosen}, tail=tail, follow=follow, prefix=prefix
        )


def _one_by_one() -> bool:
    """MLWF_LAUNCHER=0: one `airflow <component>` process each, no launcher (slower; to compare)."""
    return os.environ.get("MLWF_LAUNCHER", "1") == "0"


def _airflow_env_digest(env: dict[str, str], task_preload: list[str]) -> str:
    """What the spawner's children inherit: the settings Airflow reads and the modules it
    imported; a spawner started with others refuses the request."""
    import hashlib

    relevant = sorted((k, v) for k, v in env.items() if k.startswith("AIRFLOW") or k == "PYTHONPATH")
    return hashlib.sha256(json.dumps([relevant, task_preload]).encode()).hexdigest()


def tail_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines of a file, read from its end (logs can be large)."""
    if count <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            block, data = 8192, b""
            while size > 0 and data.count(b"\n") <= count:
                step = min(block, size)
                size -= step
                handle.seek(size)
                data = handle.read(step) + data
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-count:]


def follow_logs(files: dict[str, Path], *, tail: int, follow: bool, prefix: bool) -> Iterator[str]:
    """The last `tail` lines of each file (interleaved by their leading timestamps), then new lines."""
    width = max((len(n) for n in files), default=0)

    def label(name: str, line: str) -> str:
        return f"{name.ljust(width)} | {line}" if prefix else line

    collected: list[tuple[str, int, str, str]] = []
    for name, path in files.items():
        last_stamp = ""
        for index, line in enumerate(tail_lines(path, tail)):
            stamp = _leading_timestamp(line) or last_stamp
            last_stamp = stamp
            collected.append((stamp, index, name, line))
    if len(files) > 1:
        collected.sort(key=lambda item: (item[0], item[2], item[1]))
    for _stamp, _index, name, line in collected:
        yield label(name, line)
    if not follow:
        return
    handles = {}
    for name, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        handle = open(path, "r", errors="replace")
        handle.seek(0, 2)
        handles[name] = handle
    try:
        while True:
            quiet = True
            for name, handle in handles.items():
                for line in handle.readlines():
                    quiet = False
                    yield label(name, line.rstrip("\n"))
            if quiet:
                time.sleep(0.2)
    finally:
        for handle in handles.values():
            handle.close()


def _leading_timestamp(line: str) -> str:
    """An ISO-like timestamp at the start of a log line ('2026-11-25T08:41:10.1Z' or '[2026-11-25 ...')."""
    text = line.lstrip("[")
    if len(text) >= 19 and text[4] == "-" and text[7] == "-" and text[10] in "T " and text[13] == ":":
        return text[:26].replace("T", " ")
    return ""
