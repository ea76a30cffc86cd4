"""The docker backend: stack/docker-compose.yml behind the same up/down/status/logs.

The compose CLI (`docker compose`, falling back to `docker-compose`) does the lifecycle;
the docker SDK reads the state and health of the project's containers (labels
`com.docker.compose.project` / `.service`). Nothing here prints: `up` reports through the
`progress(message, services)` callback, and errors are MlwfErrors with one-line messages:
no compose -> MissingDependencyError, a daemon that does not answer -> UnreachableError.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import deque
from datetime import datetime, timezone
from typing import Callable, Iterator, Mapping

from mlflowctl.backends import compose
from mlflowctl.backends.base import Progress, ProgressKind, ServiceStatus, StackStatus, no_progress
from mlflowctl.state import ensure_home, remove_tree
from mlflowctl.config import Config, local_url
from mlflowctl.errors import MlwfError, NotFoundError, StackDownError, UnreachableError, UsageError

DEFAULT_TIMEOUT = 300.0  # a first start pulls and builds images
POLL_SECONDS = 2.0
SDK_TIMEOUT = 5


class ComposeFailed(MlwfError):
    """A compose command exited non-zero; the message carries its last output line."""


def _state(container) -> ServiceStatus:
    """One container as a ServiceStatus (state, health, pid, uptime, published port)."""
    attrs = container.attrs
    labels = attrs.get("Config", {}).get("Labels") or {}
    service = labels.get(compose.SERVICE_LABEL, container.name)
    if service == compose.WORKER:
        service = f"{service}-{labels.get(compose.NUMBER_LABEL, '1')}"
    state = attrs.get("State") or {}
    status = ServiceStatus(name=service, state="stopped")
    running = state.get("Status") == "running"
    health = (state.get("Health") or {}).get("Status")
    if running:
        status.state = {"healthy": "healthy", "unhealthy": "unhealthy", "starting": "starting"}.get(health, "healthy")
        status.pid = state.get("Pid") or None
        status.uptime_seconds = _uptime(state.get("StartedAt"))
        if health == "unhealthy":
            log = (state.get("Health") or {}).get("Log") or []
            status.detail = f"health check: {(log[-1].get('Output') or '').strip()[:120]}" if log else "health check failing"
    else:
        status.detail = f"{state.get('Status', 'unknown')} (exit {state.get('ExitCode', '?')})"
    for bindings in (attrs.get("NetworkSettings", {}).get("Ports") or {}).values():
        for binding in bindings or []:
            if binding.get("HostPort"):
                status.port = int(binding["HostPort"])
                status.url = local_url(status.port, host=binding.get("HostIp") or "127.0.0.1")
                break
    return status


_REASONS = (
    ("Connection refused", "connection refused"),
    ("No such file or directory", "no such socket"),
    ("Permission denied", "permission denied: is your user in the docker group?"),
    ("timed out", "timed out"),
)


def _reason(exc: Exception) -> str:
    """The short cause of a failed connection, instead of urllib3's nested repr."""
    text = str(exc)
    for needle, reason in _REASONS:
        if needle.lower() in text.lower():
            return reason
    return (text.splitlines()[0] if text else type(exc).__name__)[:120]


def _uptime(started_at: str | None) -> float | None:
    if not started_at or started_at.startswith("0001-"):
        return None
    try:
        # Docker gives nanoseconds (2026-11-25T08:40:32.123456789Z); keep microseconds.
        head, _, fraction = started_at.rstrip("Z").partition(".")
        started = datetime.fromisoformat(f"{head}.{(fraction + '000000')[:6]}").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return round(max(0.0, (datetime.now(timezone.utc) - started).total_seconds()), 1)


class DockerBackend:
    name = "docker"

    def __init__(self, config: Config, *, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.environ = dict(os.environ if environ is None else environ)
        self.stack = compose.stack_dir(config)
        self.project = compose.project_name(config)
        self._flavour: compose.Flavour | None = None
        self.poll_seconds = POLL_SECONDS

    # ----------------------------------------------------------------- plumbing

    @property
    def celery(self) -> bool:
        return self.config.executor == "celery"

    def commands(self) -> compose.ComposeCommands:
        if self._flavour is None:
            self._flavour = compose.detect_flavour(self.environ)
        return compose.ComposeCommands(
            flavour=self._flavour,
            project=self.project,
            file=self.stack / "docker-compose.yml",
            env_file=compose.docker_dir(self.config) / "compose.env",
        )

    def client(self):
        """A docker SDK client for DOCKER_HOST (or the default socket) that answered a ping."""
        import docker

        where = self.environ.get("DOCKER_HOST") or "the default socket (unix:///var/run/docker.sock)"
        try:
            client = docker.from_env(environment=self.environ, timeout=SDK_TIMEOUT)
            client.ping()
        except Exception as exc:  # DockerException, or requests' errors before docker wraps them
            raise UnreachableError(
                f"the Docker daemon at {where} is not answering ({_reason(exc)})",
                hint="start Docker, or use --backend local",
            ) from None
        return client

    def expected(self, exclude: frozenset[str] = frozenset()) -> list[str]:
        """The long-running services of this stack, in start order, minus excluded groups/names."""
        names = list(compose.CORE)
        if self.celery:
            names.insert(1, "redis")
            names.append(compose.WORKER)
        names += [*compose.MONITORING, *compose.SERVING]
        dropped = set(exclude) | {n for group in exclude for n in compose.GROUPS.get(group, ())}
        unknown = set(exclude) - set(names) - set(compose.GROUPS) - set(compose.CELERY)
        if unknown:
            raise UsageError(
                f"cannot exclude {', '.join(sorted(unknown))}: groups are {', '.join(compose.GROUPS)}, "
                f"services {', '.join(names)}"
            )
        return [n for n in names if n not in dropped]

    def _run(self, argv: list[str], progress: Callable[[str], None] | None, variables: Mapping[str, str]) -> None:
        """Run one compose command, streaming its output lines; non-zero exit -> ComposeFailed."""
        env = {**self.environ, **variables}
        last: deque[str] = deque(maxlen=3)
        try:
            process = subprocess.Popen(
                argv, env=env, cwd=self.stack, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            )
        except OSError as exc:
            raise ComposeFailed(f"cannot run {argv[0]}: {exc}") from None
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line:
                last.append(line)
                if progress:
                    progress(line)
        if process.wait() != 0:
            operation = next((a for a in argv if a in {"up", "down", "build", "stop", "logs", "ps", "rm", "restart"}), "command")
            raise ComposeFailed(
                f"`{' '.join(self.commands().flavour.prefix)} {operation}` failed (exit {process.returncode}): "
                f"{last[-1] if last else 'no output'}",
                hint=f"see the full output with: {' '.join(argv)}",
            )

    # ----------------------------------------------------------------- status

    def _containers(self, client) -> list:
        return client.containers.list(all=True, filters={"label": f"{compose.PROJECT_LABEL}={self.project}"})

    def _snapshot(self, client, exclude: frozenset[str] = frozenset()) -> list[ServiceStatus]:
        found = [_state(c) for c in self._containers(client)]
        services: list[ServiceStatus] = []
        for name in self.expected(exclude):
            if name == compose.WORKER:
                workers = sorted((s for s in found if s.name.startswith(f"{compose.WORKER}-")),
                                 key=lambda s: int(s.name.rsplit("-", 1)[1]))
                services += workers or [ServiceStatus(name=f"{compose.WORKER}-1", state="stopped")]
                continue
            match = next((s for s in found if s.name == name), None)
            services.append(match or ServiceStatus(name=name, state="stopped", detail="no container"))
        for init in (s for s in found if s.name in compose.ONE_SHOT):
            if init.state == "stopped" and not init.detail.endswith("(exit 0)"):
                init.state = "unhealthy"  # the migration failed: nothing else can start
                services.insert(0, init)
        known = {s.name for s in services} | set(compose.ONE_SHOT)
        services += [s for s in found if s.name not in known and s.state != "stopped"]
        return services

    def status(self) -> StackStatus:
        return StackStatus(backend=self.name, services=self._snapshot(self.client()), database=self.database_name())

    def database_name(self) -> str:
        """The compose stack always has its PostgreSQL container, unless the user gave a database_url."""
        return "database_url" if self.config.database_url else "postgres"

    def _refuse_sqlite(self) -> None:
        """SQLite cannot be shared by containers: the setting is the local backend's only."""
        if self.config.database != "postgres" and not self.config.database_url:
            origin = self.config.sources.get("database", "default")
            raise UsageError(
                f"database={self.config.database} (from {origin}): the docker backend keeps its metadata in a "
                "PostgreSQL container",
                hint="drop --database / MLWF_DATABASE, or run the local backend (--backend local)",
            )

    # ----------------------------------------------------------------- up

    def up(
        self,
        *,
        exclude: frozenset[str] = frozenset(),
        progress: Progress | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> StackStatus:
        from mlflowctl.secrets import load_or_create

        report = progress or no_progress
        self._refuse_sqlite()
        expected = self.expected(exclude)
        commands = self.commands()  # MissingDependencyError before anything is written
        client = self.client()  # UnreachableError likewise
        before = self._snapshot(client, exclude)
        leftovers = not self.celery and any(
            s.name == "redis" or s.name.startswith(f"{compose.WORKER}-") for s in before if s.state != "stopped"
        )
        if all(s.state == "healthy" for s in before) and not leftovers:
            status = StackStatus(backend=self.name, services=before, database=self.database_name())
            status.notes.append("the stack is already running; nothing changed")
            return status

        ensure_home(self.config.home_dir, self.config.project_root)
        secrets = load_or_create(self.config.home_dir)
        files = compose.write_env_files(self.config, secrets, self.stack)
        image = files.variables["MLWF_AIRFLOW_IMAGE"]
        notes = [f"compose: {commands.flavour.label}, project {self.project}"]
        if not self._image_exists(client, image):
            report(f"building {image} (first time: a few minutes)", [])
            self._run(commands.build(), lambda line: report(f"build: {line}", []), files.variables)
            notes.append(f"built {image}")
        services = [n for n in expected if n != compose.WORKER]
        if self.celery:
            services.append(compose.WORKER)
        elif leftovers:
            # The stack ran with the celery executor before: its broker and workers go first.
            report("removing the celery broker and workers of the previous executor", before, ProgressKind.STEP)
            self._run(commands.remove(list(compose.CELERY)), lambda line: report(line, []), files.variables)
            notes.append("removed the celery broker and workers (executor is now local)")
        report(f"starting {len(services)} services with {commands.flavour.label}", before, ProgressKind.STEP)
        self._run(
            commands.up(["airflow-init", *services], workers=self.config.workers if self.celery else None),
            lambda line: report(line, []),
            files.variables,
        )
        try:
            services_now = self._wait_healthy(client, exclude, report, timeout)
        except MlwfError:
            if not any(s.state != "stopped" for s in before):
                # Nothing ran before this `up`: leave nothing half-up, keep the containers for `logs`.
                self._run(commands.stop(), None, files.variables)
            raise
        self._warm_execution_api(timeout)
        if "grafana" in expected:
            notes.append(
                f"Grafana: {local_url(self.config.grafana_port)} (user admin, password `grafana_password` "
                f"in {self.config.home_dir / 'secrets.json'})"
            )
        notes.append(f"compose env files (0600): {files.compose.parent}")
        return StackStatus(backend=self.name, services=services_now, notes=notes, database=self.database_name())

    @staticmethod
    def _image_exists(client, image: str) -> bool:
        from docker.errors import ImageNotFound

        try:
            client.images.get(image)
            return True
        except ImageNotFound:
            return False

    def _warm_execution_api(self, within: float) -> None:
        import httpx

        from mlflowctl.api.airflow import warm_execution_api

        with httpx.Client(trust_env=False) as http:
            warm_execution_api(http, local_url(self.config.airflow_port), within)

    def _wait_healthy(self, client, exclude, report: Progress, timeout: float) -> list[ServiceStatus]:
        """Poll the containers until every expected one is healthy; StartFailed with a log tail if not."""
        deadline = time.monotonic() + timeout
        while True:
            services = self._snapshot(client, exclude)
            waiting = [s for s in services if s.state != "healthy"]
            if not waiting:
                report("all services healthy", services, ProgressKind.READY)
                return services
            failed = next((s for s in waiting if s.name in compose.ONE_SHOT), None)
            if failed is not None:
                raise self._start_failed(
                    f"airflow-init failed ({failed.detail}): the database migration or pool setup did not finish",
                    failed.name,
                )
            if time.monotonic() >= deadline:
                worst = next((s for s in waiting if s.state != "starting"), waiting[0])
                detail = f": {worst.detail}" if worst.detail else ""
                raise self._start_failed(
                    f"{worst.name} not healthy after {timeout:.0f} s ({worst.state}{detail})",
                    worst.name, timed_out=True,
                )
            report(f"waiting for {', '.join(s.name for s in waiting)}", services)
            time.sleep(self.poll_seconds)

    def _start_failed(self, message: str, name: str, *, timed_out: bool = False) -> MlwfError:
        """The local backend's StartFailed (the CLI prints its log tail), from `compose logs`."""
        from mlflowctl.backends.base import LOG_TAIL_LINES, StartFailed

        service = compose.WORKER if name.startswith(f"{compose.WORKER}-") else name
        try:
            tail = list(self._stream(self.commands().logs(service, tail=LOG_TAIL_LINES), self._read_variables()))
        except (MlwfError, OSError):
            tail = []
        return StartFailed(message, service=service, log_tail=tail[-LOG_TAIL_LINES:], timed_out=timed_out)

    # ----------------------------------------------------------------- scale, down, logs

    def scale(self, workers: int, *, progress: Progress | None = None, timeout: float = DEFAULT_TIMEOUT) -> StackStatus:
        """`mlwf scale workers N` on a running celery stack."""
        if not self.celery:
            raise UsageError("scaling workers needs the celery executor (mlwf up --backend docker --executor celery)")
        if workers < 1:
            raise UsageError("workers must be at least 1")
        report = progress or no_progress
        commands = self.commands()
        client = self.client()
        files = compose.EnvFiles(
            compose=compose.docker_dir(self.config) / "compose.env",
            airflow=compose.docker_dir(self.config) / "airflow.env",
            variables=self._read_variables(),
        )
        self._run(commands.scale_workers(workers), lambda line: report(line, []), files.variables)
        return StackStatus(backend=self.name, services=self._wait_healthy(client, frozenset(), report, timeout))

    def restart(self, service: str | None = None, *, progress: Progress | None = None,
                timeout: float = DEFAULT_TIMEOUT) -> StackStatus:
        """`compose restart` of one service, or of every service that has a container, then the
        wait for health of `up`. With compose v2 the services that depend on SERVICE restart
        too (postgres: the Airflow components); v1 restarts SERVICE alone."""
        began = time.monotonic()
        report = progress or no_progress
        known = self.expected()
        if service is not None and service not in known:
            raise NotFoundError(f"no service {service!r}; services: {', '.join(known)}")
        variables = self._read_variables()  # StackDownError for a stack never started
        commands = self.commands()
        client = self.client()
        before = self._snapshot(client)
        if not any(s.state != "stopped" for s in before):
            raise StackDownError("the stack is not running", hint="start it with `mlwf up --backend docker`")
        absent = frozenset(s.name for s in before if s.detail == "no container")  # left out by `up --exclude`
        if service in absent:
            raise UsageError(f"{service} has no container: it is not part of the running stack",
                             hint="`mlwf up` without --exclude starts it")
        chosen = [service] if service else [n for n in known if n not in absent]
        report(f"restarting {service or 'every service'} with {commands.flavour.label}", before, ProgressKind.STEP)
        self._run(commands.restart(chosen), lambda line: report(line, []), variables)
        left = max(0.0, timeout - (time.monotonic() - began))
        services = self._wait_healthy(client, absent, report, left)
        return StackStatus(backend=self.name, services=services, database=self.database_name())

    def _read_variables(self) -> dict[str, str]:
        path = compose.docker_dir(self.config) / "compose.env"
        try:
            lines = path.read_text().splitlines()
        except OSError:
            raise StackDownError(
                f"no docker stack was started with the state directory {self.config.home_dir} (no {path.name})",
                hint="mlwf up --backend docker",
            ) from None
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def down(self, *, volumes: bool = False) -> StackStatus:
        commands = self.commands()
        client = self.client()  # a clear UnreachableError rather than compose's traceback
        env_file = compose.docker_dir(self.config) / "compose.env"
        notes: list[str] = []
        if env_file.exists():
            variables = self._read_variables()
        elif any(s.state != "stopped" for s in self._snapshot(client)):
            # The env files are gone but containers of this project run: regenerate them to stop those.
            from mlflowctl.secrets import load_or_create

            ensure_home(self.config.home_dir, self.config.project_root)
            files = compose.write_env_files(self.config, load_or_create(self.config.home_dir), self.stack)
            variables = files.variables
        else:
            variables = None
            notes.append("nothing was running")
        if variables is not None:
            self._run(commands.down(volumes=volumes), None, variables)
        if volumes:
            if variables is not None:
                notes.append("deleted the stack's Docker volumes (database, Prometheus, Grafana, logs, data)")
            if remove_tree(self.config.home_dir, self.config.project_root):
                notes.append(f"deleted {self.config.home_dir}")
        return StackStatus(backend=self.name, services=self._snapshot(client), notes=notes)

    def logs(self, service: str | None = None, *, tail: int = 100, follow: bool = False) -> Iterator[str]:
        names = [*compose.ONE_SHOT, *compose.CORE, *compose.CELERY, *compose.MONITORING, *compose.SERVING]
        if service is not None and service not in names:
            raise NotFoundError(f"no service {service!r}; services: {', '.join(names)}")
        argv = self.commands().logs(service, tail=tail, follow=follow)
        variables = self._read_variables()
        return self._stream(argv, variables)

    def _stream(self, argv: list[str], variables: Mapping[str, str]) -> Iterator[str]:
        process = subprocess.Popen(
            argv, env={**self.environ, **variables}, cwd=self.stack, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        )
        assert process.stdout is not None
        try:
            for line in process.stdout:
                yield line.rstrip("\n")
        finally:
            if process.poll() is None:
                process.terminate()
            process.wait()
