"""The embedded local backend: a real Airflow 3 stack as detached process groups, no Docker.

Layout of the state directory (`config.home`):

    secrets.json, simple_auth_manager_passwords.json   generated once, 0600
    airflow/        AIRFLOW_HOME: SQLite metadata database
    run/<service>.pid   pid, start time and command of each service's group leader
    logs/<service>.log  one log per service; logs/tasks/ the task logs
    data/           the pipeline's data root (MLWF_DATA_ROOT)

`up` starts only what is not running, `down` stops process groups (TERM, TERM, KILL)
and sweeps any process still carrying the stack's marker. Nothing here prints: progress
goes through the `progress(message, services)` callback.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mlflowctl.backends import processes
from mlflowctl.backends.base import Progress, ServiceStatus, StackStatus
from mlflowctl.backends.ports import PortNeed, check_free
from mlflowctl.config import Config
from mlflowctl.errors import MlwfError, NotAvailableError, NotFoundError, TimeoutExpired, UnhealthyError

CORE = "core"
MONITORING = "monitoring"
#: Pools the DAGs use: name -> (slots, description).
POOLS = {"ml_training": (1, "model training, one at a time (ml_pipeline_dag)")}
DEFAULT_TIMEOUT = 120.0
LOG_TAIL_LINES = 25


class StartFailed(MlwfError):
    """A service died or did not become healthy while `up` waited; carries its log tail."""

    exit_code = UnhealthyError.exit_code

    def __init__(self, message: str, *, service: str, log_tail: list[str], timed_out: bool = False) -> None:
        super().__init__(message, hint=f"mlwf logs {service} --tail 100")
        self.service = service
        self.log_tail = log_tail
        if timed_out:
            self.exit_code = TimeoutExpired.exit_code


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
    ports: list[PortNeed] = field(default_factory=list)
    env: dict[str, str] | None = None  # None: the stack's Airflow environment


class LocalBackend:
    name = "local"

    def __init__(self, config: Config, *, runtime=None) -> None:
        self.config = config
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
        if self.config.executor != "local":
            raise NotAvailableError(f"executor {self.config.executor!r} is not available on the local backend yet")
        c = self.config
        airflow = self._airflow_command()
        specs = [
            ServiceSpec(
                "api-server",
                [*airflow, "api-server", "--host", "127.0.0.1", "--port", str(c.airflow_port)],
                port=c.airflow_port,
                url=self.url,
                ports=[PortNeed("api-server", "airflow_port", c.airflow_port)],
            ),
            ServiceSpec(
                "scheduler",
                [*airflow, "scheduler"],
                port=c.log_server_port,
                health_key="scheduler",
                ports=[PortNeed("scheduler log server", "log_server_port", c.log_server_port, wildcard=True)],
            ),
            ServiceSpec("dag-processor", [*airflow, "dag-processor"], health_key="dag_processor"),
            ServiceSpec(
                "triggerer",
                [*airflow, "triggerer"],
                port=c.trigger_log_server_port,
                health_key="triggerer",
                ports=[
                    PortNeed("triggerer log server", "trigger_log_server_port", c.trigger_log_server_port, wildcard=True)
                ],
            ),
            *self._monitoring_services(),
        ]
        return [s for s in specs if s.group not in exclude and s.name not in exclude]

    def _airflow_command(self) -> list[str]:
        runtime = self._runtime
        return [runtime.airflow] if runtime is not None else ["airflow"]

    def _monitoring_services(self) -> list[ServiceSpec]:
        """The StatsD exporter and Prometheus, once mlflowctl.metrics provides them."""
        try:
            from mlflowctl.metrics import local_services  # type: ignore[attr-defined]
        except ImportError:
            return []
        return [ServiceSpec(group=MONITORING, **spec) for spec in local_services.specs(self.config)]

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
            response = self._http().get(f"{self.url}/api/v2/monitor/health")
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
        if spec.health_key is None and spec.probe_url is None:  # the api-server itself
            healthy = health is not None
            status.detail = "" if healthy else "not answering /api/v2/monitor/health"
        elif spec.health_key is not None:
            component = (health or {}).get(spec.health_key) or {}
            healthy = component.get("status") == "healthy"
            if health is None:
                status.detail = "health unknown: the api-server is not answering"
            elif not healthy:
                status.detail = f"health: {component.get('status') or 'no heartbeat yet'}"
        else:
            healthy = self._probe(spec.probe_url)
            status.detail = "" if healthy else f"not answering {spec.probe_url}"
        status.state = "healthy" if healthy else not_ready
        return status

    def _snapshot(self, specs: list[ServiceSpec], *, waiting: bool = False) -> list[ServiceStatus]:
        records = {spec.name: self._live(spec) for spec in specs}
        health = self._health() if records.get("api-server") is not None else None
        return [self._service_status(spec, records[spec.name], health, waiting=waiting) for spec in specs]

    # ----------------------------------------------------------------- status

    def status(self) -> StackStatus:
        specs = self.services()
        return StackStatus(backend=self.name, services=self._snapshot(specs))

    # ----------------------------------------------------------------- up

    def up(
        self,
        *,
        exclude: frozenset[str] = frozenset(),
        progress: Progress | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> StackStatus:
        from mlflowctl.backends.airflow_env import local_environment
        from mlflowctl.secrets import load_or_create

        report = progress or (lambda _message, _services: None)
        self.home.mkdir(parents=True, exist_ok=True)
        secrets = load_or_create(self.home)
        runtime = self.runtime(progress)
        specs = self.services(exclude)
        notes: list[str] = []

        running = {spec.name for spec in specs if self._live(spec) is not None}
        to_start = [spec for spec in specs if spec.name not in running]
        if not to_start:
            status = StackStatus(backend=self.name, services=self._snapshot(specs))
            status.notes.append("the stack is already running; nothing changed")
            return status

        for spec in to_start:
            self._clean_leftovers(spec)
        check_free([need for spec in to_start for need in spec.ports])

        env = local_environment(self.config, secrets)
        env["PATH"] = f"{runtime.bin_dir}:{env.get('PATH', '')}"
        (self.home / "data").mkdir(exist_ok=True)
        (self.home / "airflow").mkdir(exist_ok=True)
        if not running:
            report("migrating the metadata database", [])
            self._migrate(env, runtime)

        started: dict[str, object] = {}
        try:
            for spec in to_start:
                popen, record = processes.start_detached(
                    spec.argv, env=spec.env or env, cwd=self.config.project_root, log_path=self._log_file(spec.name)
                )
                processes.write_pid_file(self._pid_file(spec.name), record)
                started[spec.name] = popen
            self._wait_healthy(specs, started, report, timeout)
            report("creating pools", self._snapshot(specs, waiting=True))
            self._ensure_pools(secrets)
        except BaseException:
            self._stop_started(specs, started)
            raise
        if running:
            notes.append(f"restarted {', '.join(started)}; {', '.join(sorted(running))} kept running")
        status = StackStatus(backend=self.name, services=self._snapshot(specs))
        status.notes.extend(notes + self._notes)
        return status

    def _migrate(self, env: dict[str, str], runtime) -> None:
        """`airflow db migrate`, skipped when this Airflow version already migrated this database."""
        marker = self.home / "airflow" / ".migrated"
        database = self.home / "airflow" / "airflow.db"
        if self.config.database_url == "" and database.exists() and marker.exists():
            if marker.read_text().strip() == runtime.version:
                return
        import subprocess

        log_path = self._log_file("migrate")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            result = subprocess.run(
                [runtime.airflow, "db", "migrate"],
                env=env,
                cwd=self.config.project_root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if result.returncode != 0:
            raise StartFailed(
                f"`airflow db migrate` failed (exit {result.returncode})",
                service="migrate",
                log_tail=tail_lines(log_path, LOG_TAIL_LINES),
            )
        marker.write_text(runtime.version)

    def _wait_healthy(self, specs, started: dict, report: Progress, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name, popen in started.items():
                code = popen.poll()
                if code is not None:
                    raise StartFailed(
                        f"{name} exited with code {code} while starting",
                        service=name,
                        log_tail=tail_lines(self._log_file(name), LOG_TAIL_LINES),
                    )
            services = self._snapshot(specs, waiting=True)
            waiting = [s.name for s in services if s.state != "healthy"]
            report(f"waiting for {', '.join(waiting)}" if waiting else "all healthy", services)
            if not waiting:
                return
            if time.monotonic() >= deadline:
                name = waiting[0]
                raise StartFailed(
                    f"{name} was not healthy after {timeout:.0f} s",
                    service=name,
                    log_tail=tail_lines(self._log_file(name), LOG_TAIL_LINES),
                    timed_out=True,
                )
            time.sleep(0.25)

    def _ensure_pools(self, secrets) -> None:
        from mlflowctl.backends.overview import api_client

        with api_client(self.url, secrets.admin_user, secrets.admin_password, self.home, timeout=10.0) as client:
            for name, (slots, description) in POOLS.items():
                response = client.post(
                    "/api/v2/pools",
                    json={"name": name, "slots": slots, "description": description, "include_deferred": False},
                )
                if response.status_code not in (200, 201, 409):  # 409: it exists, keep the user's slots
                    raise MlwfError(f"could not create pool {name} (HTTP {response.status_code}: {response.text[:200]})")

    def _stop_started(self, specs: list[ServiceSpec], started: dict) -> None:
        """Undo this `up`: stop what it started, leave what was running before."""
        for spec in specs:
            if spec.name in started:
                record = processes.read_pid_file(self._pid_file(spec.name))
                if record is not None:
                    processes.stop_group(record.pid, grace=5.0, second_grace=3.0, popen=started[spec.name])
                self._pid_file(spec.name).unlink(missing_ok=True)

    def _clean_leftovers(self, spec: ServiceSpec) -> None:
        """A dead leader's children (log server, task runners) still hold ports: stop them."""
        record = processes.read_pid_file(self._pid_file(spec.name))
        if record is None:
            return
        marker = str(self.home)
        strays = [
            p for p in processes.group_members(record.pid) if _environ(p).get(processes.STACK_MARKER) == marker
        ]
        processes.kill_processes(strays)
        self._pid_file(spec.name).unlink(missing_ok=True)

    # ----------------------------------------------------------------- down

    def down(self, *, volumes: bool = False) -> StackStatus:
        from concurrent.futures import ThreadPoolExecutor

        specs = self.services()
        records = {}
        for spec in specs:
            record = processes.read_pid_file(self._pid_file(spec.name))
            if record is not None and record.process() is not None:
                records[spec.name] = record
            else:
                self._clean_leftovers(spec)
        # Every group gets its TERM at once: the triggerer alone takes ~10 s to stop.
        with ThreadPoolExecutor(max_workers=max(1, len(records))) as pool:
            outcomes = dict(zip(records, pool.map(lambda r: processes.stop_group(r.pid), records.values())))
        strays = processes.marked_processes(str(self.home))
        processes.kill_processes(strays)
        for spec in specs:
            self._pid_file(spec.name).unlink(missing_ok=True)
        status = StackStatus(backend=self.name, services=self._snapshot(specs))
        if not records:
            status.notes.append("nothing was running")
        for name, outcome in outcomes.items():
            if outcome != "terminated":
                status.notes.append(f"{name}: {outcome}")
        if strays:
            status.notes.append(f"stopped {len(strays)} stray process(es) of this stack")
        if volumes and self.home.exists():
            shutil.rmtree(self.home)
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


def _environ(process) -> dict:
    try:
        return process.environ()
    except Exception:
        return {}


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
