"""`LocalBackend`: a real Airflow 3 stack on this machine as detached process groups, no Docker.

`up` starts only what is not running, `down` stops process groups (TERM, TERM, KILL)
and sweeps any process still carrying the stack's marker, `restart` stops one service or
all and calls `up`, `scale` adds or removes Celery workers. Nothing here prints: progress
goes through the `progress(message, services)` callback. The rooms: state.py (folders, pid
records, ServiceSpec), services.py (the catalogue), probes.py (health), starting.py (launcher,
spawner, one by one), executors.py (the executor interface), postgres.py, broker.py and
workers.py (what they run), record.py (what the stack was started with), environment.py
(what its processes run with), logs.py.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Iterator

from mlflowctl.backends import processes
from mlflowctl.backends.base import Deadline, Progress, ProgressKind, StackStatus, no_progress
from mlflowctl.backends.local import serving, services as catalogue
from mlflowctl.backends.local.executors import Executor, WorkerPool, executor_for
from mlflowctl.backends.local.logs import follow_logs
from mlflowctl.backends.local.probes import Prober
from mlflowctl.backends.local.starting import Start, clean_leftovers, needs_migration, one_by_one
from mlflowctl.backends.local.state import ServiceSpec, Stack
from mlflowctl.backends.ports import check_free, check_own_address
from mlflowctl.config import Config, local_url
from mlflowctl.errors import DamagedStateError, NotAvailableError, NotFoundError, StackDownError, UsageError
from mlflowctl.state import ensure_home, remove_tree

DEFAULT_TIMEOUT = 120.0


class LocalBackend:
    name = "local"

    def __init__(self, config: Config, *, runtime=None) -> None:
        from mlflowctl.backends.local.record import effective_config

        self.requested = config  # as the user gave it: `up` refuses another database than the stack's
        # The executor, workers and database the stack was started with.
        self.stack = Stack(effective_config(config), runtime=runtime)
        self.prober = Prober(self.stack)
        self._notes: list[str] = []

    @property
    def config(self) -> Config:
        return self.stack.config

    @property
    def home(self):
        return self.stack.home

    @property
    def url(self) -> str:
        return local_url(self.config.airflow_port)

    def runtime(self, progress: Progress | None = None):
        if self.stack.runtime is None:
            from mlflowctl.backends.runtime import find_runtime

            self.stack.runtime = find_runtime(
                self.config.project_root, lambda line: progress(f"runtime: {line}", []) if progress else None
            )
        return self.stack.runtime

    def executor(self) -> Executor:
        return executor_for(self.stack)

    def services(self, exclude: frozenset[str] = frozenset()) -> list[ServiceSpec]:
        """Every service of the stack, in start order, minus excluded groups or names."""
        from mlflowctl.backends.local import joining

        if joining.is_joined(self.home):  # this state directory is workers joined to another host's stack
            return joining.services(self.stack)
        specs = catalogue.catalogue(self.stack, self.executor(), self._notes)
        return [s for s in specs if s.group not in exclude and s.name not in exclude]

    def database_name(self) -> str:
        """Which metadata database the stack runs on, as `status` says it."""
        return "database_url" if self.config.database_url else self.config.database

    # ----------------------------------------------------------------- status

    def status(self) -> StackStatus:
        """The services of the stack as last started: groups `up --exclude`d are left out."""
        specs = self.services(self.stack.recorded_exclude())
        status = StackStatus(backend=self.name, services=self.prober.snapshot(specs), database=self.database_name())
        status.services.extend(self.remote_workers(status))
        return status

    def remote_workers(self, status: StackStatus) -> list:
        """The workers other hosts joined, as Celery's broadcast finds them (workers.remote, which
        finds none on a stack they cannot join); none asked for while the broker is unhealthy."""
        from mlflowctl.backends.base import ServiceStatus
        from mlflowctl.backends.local import broker, workers

        if not any(s.name == broker.SERVICE and s.state == "healthy" for s in status.services):
            return []
        return [
            ServiceStatus(f"remote {name}", "healthy",
                          detail=f"{busy} of {workers.CONCURRENCY} slots busy ({busy} task{'s' if busy != 1 else ''} running)")
            for name, busy in (workers.remote(self.stack) or {}).items()
        ]

    # ----------------------------------------------------------------- other hosts

    def worker_token(self) -> dict:
        """The join file's contents for workers on other hosts (the stack must listen and run)."""
        from mlflowctl.backends.local import joining

        return joining.token(self.stack)

    def worker_join(self, path, count: int, *, progress: Progress | None = None) -> StackStatus:
        """Start `count` workers here for the head named in the join file."""
        from mlflowctl.backends.local import joining

        self.runtime(progress)
        head_running = not joining.is_joined(self.home) and self.stack.live("scheduler") is not None
        head, names = joining.join(self.stack, path, count, head_running=head_running)
        status = self.status()
        status.notes.append(f"started {', '.join(names)}, joined to {head}")
        return status

    def worker_leave(self, drain_timeout: float) -> StackStatus:
        from mlflowctl.backends.local import joining

        outcomes = joining.leave(self.stack, drain_timeout)
        status = StackStatus(backend=self.name)
        status.notes.extend(f"{name}: {outcome}" for name, outcome in outcomes.items())
        return status

    # ----------------------------------------------------------------- up

    def up(
        self,
        *,
        exclude: frozenset[str] = frozenset(),
        progress: Progress | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: Deadline | None = None,
    ) -> StackStatus:
        """`deadline`: a budget already running (`restart`: its stop counts against --timeout)."""
        from mlflowctl.backends.local import postgres
        from mlflowctl.backends.local.environment import local_environment
        from mlflowctl.backends.local.record import check_switch, read_record, write_record

        if sys.platform == "win32":
            raise NotAvailableError(
                "Airflow does not run natively on Windows", hint="run mlwf inside WSL, or use --backend docker"
            )
        check_switch(self.requested)
        from mlflowctl.backends.local import joining

        if joining.is_joined(self.home):
            raise UsageError(
                f"{self.home} holds workers joined to another host's stack, not a stack of its own",
                hint="mlwf worker leave first, or use another state directory (MLWF_HOME=...)",
            )
        if self.config.listen and (self.config.executor != "celery" or self.config.broker_url or
                                   not postgres.runs_own(self.config)):
            raise UsageError(
                "--listen serves mlwf's own broker and database to other hosts: it needs the celery executor "
                "without broker_url or database_url",
                hint="mlwf up --executor celery --listen ADDR",
            )
        if self.config.listen:
            check_own_address(self.config.listen)
        report = progress or no_progress
        ensure_home(self.home, self.config.project_root)
        secrets = self.stack.secrets()
        self.runtime(progress)  # building one is the one phase that may take longer
        postgres.check_ready(self.stack)  # binaries and (root) the system user, before anything starts
        deadline = deadline or Deadline.start(timeout)
        specs = self.services(exclude)
        notes: list[str] = []

        self.stack.run_dir.mkdir(parents=True, exist_ok=True)
        running = {spec.name for spec in specs if self.stack.live(spec.name) is not None}
        record = read_record(self.home)
        recorded = record.get("executor", self.config.executor)
        if recorded != self.config.executor and "scheduler" in running:
            raise UsageError(
                f"the stack runs with the {recorded} executor; stop it with `mlwf down` first to start it "
                f"with the {self.config.executor} executor"
            )
        if record.get("listen", "") != self.config.listen and "scheduler" in running:
            raise UsageError(
                f"the stack runs listening on {record.get('listen') or 'loopback only'}; stop it with `mlwf down` "
                f"first to start it on {self.config.listen or 'loopback only'}"
            )
        self.stack.record_exclude(exclude)
        to_start = [spec for spec in specs if spec.name not in running]
        if not to_start:
            status = StackStatus(backend=self.name, services=self.prober.snapshot(specs), database=self.database_name())
            status.notes.append("the stack is already running; nothing changed")
            return status

        if any(spec.database for spec in to_start):
            # Components that outlived their database keep failing, or die while this `up`
            # waits for them: restart them with it.
            survivors = [spec for spec in specs if spec.airflow_args is not None and spec.name in running]
            for spec in survivors:
                clean_leftovers(self.stack, spec)
                running.discard(spec.name)
            to_start = [spec for spec in specs if spec.name not in running]
        for spec in to_start:
            clean_leftovers(self.stack, spec)
        check_free([need for spec in to_start for need in spec.ports])

        env = local_environment(
            self.config,
            secrets,
            supervisor_fixed=not one_by_one(),
            database_url=postgres.database_url(self.config, secrets) if postgres.runs_own(self.config) else None,
            **self.executor().environment(),
        )
        env["PATH"] = f"{self.stack.runtime.bin_dir}:{env.get('PATH', '')}"
        env.update(serving.task_environment(specs))
        write_record(self.home, executor=self.config.executor, workers=self.config.workers, database=self.config.database,
                     listen=self.config.listen)
        for folder in ("data", "airflow", "logs"):
            (self.home / folder).mkdir(mode=0o700, exist_ok=True)
        # Migrate only when no Airflow component runs (never under a live scheduler).
        airflow_running = any(spec.airflow_args is not None and spec.name in running for spec in specs)
        migrate = not airflow_running and needs_migration(self.stack)

        start = Start(self.stack, self.prober, env, report, deadline)
        try:
            for spec in to_start:
                if spec.airflow_args is None and not spec.spawner:
                    start.detached(spec)
            start.airflow([spec for spec in to_start if spec.airflow_args is not None or spec.spawner], migrate)
            start.wait_healthy(specs)
            report("creating pools", self.prober.snapshot(specs, waiting=True), ProgressKind.STEP)
            from mlflowctl.api.airflow import warm_execution_api

            warm_execution_api(self.prober.http(), self.url, deadline.left())
            self._ensure_pools(secrets, deadline)
        except BaseException:
            start.undo(specs)
            raise
        if running:
            notes.append(f"restarted {', '.join(start.started)}; {', '.join(sorted(running))} kept running")
        status = StackStatus(backend=self.name, services=self.prober.snapshot(specs), database=self.database_name())
        status.notes.extend(notes + self._notes)
        return status

    def _ensure_pools(self, secrets, deadline: Deadline) -> None:
        from mlpipeline.pools import POOLS

        from mlflowctl.api.airflow import AirflowClient

        timeout = max(1.0, min(10.0, deadline.left()))  # healthy already: the API answers at once
        password = secrets.admin_password
        with AirflowClient(self.url, secrets.admin_user, lambda: password, home=self.home, timeout=timeout,
                           retry_for=timeout) as client:
            for name, pool in POOLS.items():
                client.ensure_pool(name, pool.slots, pool.description)  # one that exists keeps the user's slots

    # ----------------------------------------------------------------- scale

    def scale(self, workers: int, *, progress: Progress | None = None, timeout: float = DEFAULT_TIMEOUT,
              drain_timeout: float | None = None) -> StackStatus:
        """Add or remove workers of a running celery stack; removal waits for running tasks."""
        from mlflowctl.backends.local import workers as worker_module
        from mlflowctl.backends.local.record import write_record

        if workers < 1:
            raise UsageError("workers must be at least 1")
        executor = self.executor()
        if not isinstance(executor, WorkerPool):
            raise UsageError(
                f"scaling workers needs the celery executor: this stack runs the {executor.name} executor "
                "(start one with `mlwf up --executor celery`)"
            )
        scheduler = self.stack.record("scheduler")  # kept when stale: `up` cleans its session
        if scheduler is None or scheduler.process() is None:
            raise StackDownError("the stack is not running", hint="start it with `mlwf up --executor celery`")
        report = progress or no_progress
        drain = worker_module.WARM_SHUTDOWN_TIMEOUT if drain_timeout is None else drain_timeout
        stopped = executor.remove_workers(workers, report, drain)
        write_record(self.home, workers=workers)
        self.stack.config = dataclasses.replace(self.config, workers=workers)
        # Start the missing workers, leaving out what the stack's last `up --exclude` left out.
        status = self.up(exclude=self.stack.recorded_exclude(), progress=progress, timeout=timeout)
        status.notes = [n for n in status.notes if "nothing changed" not in n]
        for name, outcome in stopped.items():
            status.notes.append(f"{name}: {outcome}")
        status.notes.append(f"{workers} worker{'s' if workers != 1 else ''}")
        return status

    # ----------------------------------------------------------------- restart

    def restart(
        self, service: str | None = None, *, progress: Progress | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> StackStatus:
        """Stop one service as `down` stops it (None: the whole stack, as `down`), then `up`:
        it starts what is missing the way it always does (an Airflow component through the
        spawner or a launcher), and restarts the Airflow components with a restarted database."""
        deadline = Deadline.start(timeout)
        exclude = self.stack.recorded_exclude()
        specs = self.services(exclude)
        if service is not None:
            self._check_restartable(service, [spec.name for spec in specs], exclude)
        if not any(self.stack.live(spec.name) for spec in specs):
            raise StackDownError("the stack is not running", hint="start it with `mlwf up`")
        report = progress or no_progress
        notes = []
        if service is None:
            report("stopping every service", [], ProgressKind.STEP)
            notes = [note for note in self.down().notes if note != "nothing was running"]
        else:
            record = self.stack.live(service)  # a dead one's record stays: `up` stops what it left
            if record is not None:
                report(f"stopping {service}", [], ProgressKind.STEP)
                outcome = processes.stop_session(record)
                if outcome != "terminated":
                    notes.append(f"{service}: {outcome}")
                self.stack.pid_file(service).unlink(missing_ok=True)
        status = self.up(exclude=exclude, progress=progress, timeout=timeout, deadline=deadline)
        if service is None:
            status.notes.append("restarted every service")
        status.notes[:0] = notes
        return status

    def _check_restartable(self, service: str, names: list[str], exclude: frozenset[str]) -> None:
        """NotFoundError for a name the stack does not have; UsageError for one `up --exclude` left out."""
        if service in names:
            return
        every = self.services()
        if any(spec.name == service for spec in every):
            left_out = " ".join(f"--exclude {name}" for name in sorted(exclude))
            raise UsageError(
                f"{service} was left out by `mlwf up {left_out}`: it is not part of the running stack",
                hint="`mlwf up` without --exclude starts it",
            )
        raise NotFoundError(f"no service {service!r}; services: {', '.join(names)}")

    # ----------------------------------------------------------------- down

    def down(self, *, volumes: bool = False) -> StackStatus:
        from concurrent.futures import ThreadPoolExecutor

        specs = self.services()
        records, damaged = {}, []
        for spec in specs:
            try:
                record = self.stack.record(spec.name)
            except DamagedStateError:
                damaged.append(self.stack.pid_file(spec.name).name)  # its processes go with the marker sweep
                continue
            if record is not None and record.process() is not None:
                records[spec.name] = record
            else:
                clean_leftovers(self.stack, spec)
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
            self.stack.pid_file(spec.name).unlink(missing_ok=True)
        self.stack.forget_spawner_socket()
        status = StackStatus(backend=self.name, services=self.prober.snapshot(specs))
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
            from mlflowctl.backends.local.postgres import remove_data

            removed = remove_data(self.config)
            if removed:
                status.notes.append(removed)
            if remove_tree(self.home, self.config.project_root):
                status.notes.append(f"deleted {self.home}")
        return status

    # ----------------------------------------------------------------- logs

    def log_names(self) -> list[str]:
        names = [spec.name for spec in self.services()]
        extra = sorted(p.stem for p in self.stack.logs_dir.glob("*.log") if p.stem not in names)
        return names + extra

    def logs(self, service: str | None = None, *, tail: int = 100, follow: bool = False) -> Iterator[str]:
        names = self.log_names()
        if service is not None and service not in names:
            raise NotFoundError(f"no service {service!r}; services: {', '.join(names)}")
        chosen = [service] if service else [n for n in names if self.stack.log_file(n).exists()]
        prefix = service is None
        return follow_logs(
            {name: self.stack.log_file(name) for name in chosen}, tail=tail, follow=follow, prefix=prefix
        )
