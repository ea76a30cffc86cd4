"""The backend interface the lifecycle commands talk to, and the plain data it returns.

Commands never know which backend runs the stack: they call these four methods (and
`Scaling`'s or `Restarting`'s, where a backend has them) and render the dataclasses (as a
table, or as JSON through `asdict`). An operation a backend cannot do raises `NotAvailableError`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterator, Protocol, runtime_checkable

from mlflowctl.errors import MlwfError, TimeoutExpired, UnhealthyError

#: How many lines of a failed service's log its error shows.
LOG_TAIL_LINES = 25


@dataclass
class ServiceStatus:
    """One service of the stack as `status` shows it."""

    name: str
    state: str  # "healthy" | "unhealthy" | "starting" | "stopped"
    pid: int | None = None
    port: int | None = None
    url: str | None = None
    uptime_seconds: float | None = None
    detail: str = ""


@dataclass
class StackStatus:
    backend: str
    services: list[ServiceStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what `up`/`down` did, said once to the user
    database: str = ""  # the metadata database: postgres, sqlite, database_url (the user's); "" unknown

    @property
    def running(self) -> bool:
        return any(s.state != "stopped" for s in self.services)

    @property
    def healthy(self) -> bool:
        return bool(self.services) and all(s.state == "healthy" for s in self.services)


@dataclass
class CeleryWorkers:
    """The live Celery workers of a stack, for `mlwf health` (Airflow's metrics do not count them).

    `here`: this state directory's workers whose process runs. `remote`: Celery hostname -> tasks
    running, of the workers other hosts joined (a head started with --listen); None when its
    broker could not be asked. `listening`: other hosts can join at all."""

    here: int
    remote: dict[str, int] | None = field(default_factory=dict)
    listening: bool = False

    @property
    def total(self) -> int:
        return self.here + len(self.remote or {})


class StartFailed(MlwfError):
    """A service died or did not become healthy while `up` waited; carries its log tail."""

    exit_code = UnhealthyError.exit_code

    def __init__(self, message: str, *, service: str, log_tail: list[str], timed_out: bool = False) -> None:
        super().__init__(message, hint=f"mlwf logs {service} --tail 100")
        self.service = service
        self.log_tail = log_tail
        if timed_out:
            self.exit_code = TimeoutExpired.exit_code


@dataclass(frozen=True)
class Deadline:
    """`up --timeout`: one budget that every phase of a start draws from, so no phase (a
    migration behind a locked database, a launcher that never answers) can outlast it."""

    seconds: float
    ends: float

    @classmethod
    def start(cls, seconds: float) -> "Deadline":
        return cls(seconds, time.monotonic() + seconds)

    def left(self) -> float:
        return max(0.0, self.ends - time.monotonic())

    def expired(self, phase: str, *, service: str, log_tail: list[str]) -> StartFailed:
        """The error for a phase that ran out of time; `service` names the log to read."""
        return StartFailed(
            f"timed out after {self.seconds:g} s (--timeout) while {phase}",
            service=service,
            log_tail=log_tail,
            timed_out=True,
        )


class ProgressKind(Enum):
    """What a progress report is, so the CLI decides how to show it without reading its words."""

    STEP = "step"  # a phase begins, or a tool it runs says a line: worth a line in any log
    WAITING = "waiting"  # the services' states while waiting: a live view redraws them
    READY = "ready"  # every service is healthy

    @classmethod
    def of(cls, services: list[ServiceStatus], kind: ProgressKind | None) -> ProgressKind:
        """The kind a backend gave, else: a report with the services' states is a wait, one without a step."""
        return kind or (cls.WAITING if services else cls.STEP)


class Progress(Protocol):
    """`up` and `scale` report while they work: a one-line message, the services' current
    states (may be empty) and, where the default of `ProgressKind.of` is not what it is, the kind."""

    def __call__(self, message: str, services: list[ServiceStatus], kind: ProgressKind | None = None) -> None: ...


def no_progress(message: str, services: list[ServiceStatus], kind: ProgressKind | None = None) -> None:
    """The Progress of a caller that wants no reports."""


class Backend(Protocol):
    name: str

    def up(
        self, *, exclude: frozenset[str] = frozenset(), progress: Progress | None = None, timeout: float = 120.0
    ) -> StackStatus:
        """Start what is not running, wait until healthy (at most `timeout` s); idempotent."""

    def down(self, *, volumes: bool = False) -> StackStatus:
        """Stop every service; with volumes, also delete state and data."""

    def status(self) -> StackStatus:
        """What runs now, checked against reality (pid files are never trusted alone)."""

    def logs(self, service: str | None = None, *, tail: int = 100, follow: bool = False) -> Iterator[str]:
        """Lines of one service's log, or all services' interleaved with a prefix."""


@runtime_checkable
class Scaling(Protocol):
    """What a backend that can add and remove Celery workers has besides `Backend` (`mlwf scale`)."""

    def scale(self, workers: int, *, progress: Progress | None = None, timeout: float = 120.0) -> StackStatus:
        """Make it `workers` workers; removed ones finish their running tasks first."""


@runtime_checkable
class Restarting(Protocol):
    """What a backend that can restart one service, or all of them, has besides `Backend` (`mlwf restart`)."""

    def restart(
        self, service: str | None = None, *, progress: Progress | None = None, timeout: float = 120.0
    ) -> StackStatus:
        """Stop `service` (None: every service) and start it again as `up` would, waiting until
        healthy; `timeout` bounds the stop and the start together."""
