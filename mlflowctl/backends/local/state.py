"""A local stack's state: its folders and pid records, and its services as plain data.

Layout of the state directory (`config.home`):

    secrets.json, simple_auth_manager_passwords.json   generated once, 0600
    executor.json   what the stack was started with (record.py)
    airflow/        AIRFLOW_HOME (the SQLite metadata database, for `database = "sqlite"`)
    postgres/       mlwf's PostgreSQL, the default metadata database (see postgres.py)
    run/<service>.pid   pid, start time and command of each service's group leader
    run/excluded.json   what the last `up --exclude` left out, so `status` ignores it
    run/spawner.socket  the path of the running spawner's socket
    logs/<service>.log  one log per service; logs/tasks/ the task logs
    data/           the pipeline's data root (MLWF_DATA_ROOT)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlflowctl.backends import processes
from mlflowctl.backends.base import LOG_TAIL_LINES
from mlflowctl.backends.local.logs import tail_lines
from mlflowctl.backends.ports import PortNeed
from mlflowctl.config import Config
from mlflowctl.state import write_durably

if TYPE_CHECKING:  # pragma: no cover
    from mlflowctl.backends.runtime import Runtime
    from mlflowctl.secrets import Secrets

#: Service groups `up --exclude` takes besides service names.
CORE = "core"
MONITORING = "monitoring"
SPAWNER = "spawner"
EXCLUDE_FILE = "excluded.json"


@dataclass
class ServiceSpec:
    """One process group of the stack: what runs, where it listens, what it is.

    Plain data: `kind` says what the service is, and so how `status` probes it (probes.py)
    and what `up` does around its start (services.py: its configuration before, a wait
    until it accepts connections after). Kinds: api-server, airflow (a component in the
    api-server's health answer, under `health_key`), exporter, prometheus, postgres, redis,
    celery-worker, spawner, serving; a `process` is healthy while it runs.
    """

    name: str
    argv: list[str]
    kind: str = "process"
    group: str = CORE
    port: int | None = None
    url: str | None = None
    health_key: str | None = None  # key in /api/v2/monitor/health (kind airflow)
    probe_url: str | None = None  # what the probe asks (kinds exporter, prometheus)
    ports: list[PortNeed] = field(default_factory=list)
    airflow_args: list[str] | None = None  # an Airflow component: `airflow <args>`, forked by the launcher
    spawner: bool = False  # the launcher's fork server for later components (see launcher.py)
    database: bool = False  # the metadata database: `down` stops it after everything that writes to it


@dataclass
class Stack:
    """What every part of a local stack reads: the configuration it runs with, its folders
    and pid records, and (once `up` found it) the Airflow runtime."""

    config: Config
    runtime: Runtime | None = None

    @property
    def home(self) -> Path:
        return self.config.home_dir

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def log_tail(self, name: str) -> list[str]:
        """The end of a service's log, for the error that says it failed."""
        return tail_lines(self.log_file(name), LOG_TAIL_LINES)

    def record(self, name: str) -> processes.PidRecord | None:
        """The service's pid record, stale or not (a damaged file raises DamagedStateError)."""
        return processes.read_pid_file(self.pid_file(name))

    def live(self, name: str) -> processes.PidRecord | None:
        """The service's pid record when its process runs; a stale file stays for `status` to name."""
        record = self.record(name)
        return record if record is not None and record.process() is not None else None

    def secrets(self) -> Secrets:
        from mlflowctl.secrets import load_or_create

        return load_or_create(self.home)

    @property
    def airflow(self) -> str:
        """The `airflow` command of the runtime (a bare name until `up` found the runtime)."""
        return self.runtime.airflow if self.runtime is not None else "airflow"

    @property
    def python(self) -> str:
        return self.runtime.python if self.runtime is not None else "python"

    # -- what the last `up` left out -------------------------------------------------------

    def recorded_exclude(self) -> frozenset[str]:
        try:
            return frozenset(json.loads((self.run_dir / EXCLUDE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return frozenset()

    def record_exclude(self, exclude: frozenset[str]) -> None:
        write_durably(self.run_dir / EXCLUDE_FILE, json.dumps(sorted(exclude)))

    # -- the spawner's socket --------------------------------------------------------------

    @property
    def _spawner_record(self) -> Path:
        return self.run_dir / f"{SPAWNER}.socket"

    def spawner_socket(self) -> Path | None:
        try:
            return Path(self._spawner_record.read_text().strip())
        except OSError:
            return None

    def record_spawner_socket(self, path: str) -> None:
        self.forget_spawner_socket()
        self._spawner_record.write_text(path)

    def forget_spawner_socket(self) -> None:
        """Remove the recorded socket's folder: a spawner that was killed could not."""
        path = self.spawner_socket()
        if path is not None and path.parent.name.startswith("mlwf-spawner-"):
            shutil.rmtree(path.parent, ignore_errors=True)
        self._spawner_record.unlink(missing_ok=True)
