"""One exception hierarchy; each class carries the exit code scripts can rely on.

Nothing below `mlflowctl.cli` prints or exits: it raises one of these, and the
command wrapper in `mlflowctl.cli.main` turns it into a one-line message and
its exit code. The codes are documented in the README; never renumber them.
"""

from __future__ import annotations


class MlwfError(Exception):
    """Base class: an error with a one-line message meant for the user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(MlwfError):
    """Bad input caught before anything was sent: malformed date, bad JSON, bad flag."""

    exit_code = 2


class AuthError(MlwfError):
    """The server refused the credentials."""

    exit_code = 3


class NotFoundError(MlwfError):
    """Unknown DAG, run, task or service."""

    exit_code = 4


class UnreachableError(MlwfError):
    """The server did not answer (connection refused, DNS, reset) within the retry budget."""

    exit_code = 5


class TimeoutExpired(MlwfError):
    """A wait ran out of time (a run, a stack start)."""

    exit_code = 6


class RunFailedError(MlwfError):
    """A DAG run or backfill ended in failure."""

    exit_code = 7


class StackDownError(MlwfError):
    """The stack is not running at all."""

    exit_code = 8


class UnhealthyError(MlwfError):
    """The stack runs but a component is unhealthy or stopped, or a report is degraded."""

    exit_code = 9


class PortInUseError(MlwfError):
    """A port the stack needs is already taken."""

    exit_code = 10


class MissingDependencyError(MlwfError):
    """A binary or runtime the operation needs is missing (docker, redis-server, Airflow)."""

    exit_code = 11


class HealthThresholdError(MlwfError):
    """`mlwf health --fail-on` found findings at or above the given severity."""

    exit_code = 12


class ApiError(MlwfError):
    """The server answered with an error that fits no narrower class."""

    exit_code = 13


class NotAvailableError(MlwfError):
    """The chosen backend cannot do this operation."""

    exit_code = 14


class StateBusyError(MlwfError):
    """Another `mlwf up`, `restart`, `down` or `scale` held the state directory for longer than the wait allows."""

    exit_code = 15


class DamagedStateError(MlwfError):
    """A file in the state directory is damaged or unreadable; the message names it and what to do."""

    exit_code = 16


class PromotionRefusedError(MlwfError):
    """`mlwf models promote`: the promotion gate refused the version and `--force` was not given."""

    exit_code = 17


class ObjectRejectedError(MlwfError):
    """A connection, variable or pool of the project could not be applied: the server refused it."""

    exit_code = 18


class DoctorFoundError(MlwfError):
    """`mlwf doctor` found something that would stop `mlwf up`."""

    exit_code = 19


class DagFileError(MlwfError):
    """`mlwf parse` or `mlwf test`: a DAG file does not import, or a DAG in it was refused (a DAG
    id another file has, a cycle)."""

    exit_code = 20


class JoinError(MlwfError):
    """`mlwf worker token/join/leave`: the join file is missing, damaged, of another format or
    readable by others; the head does not listen or its certificate is not the file's CA's; this
    host's DAG or task files differ from the head's; or this host runs a stack of its own."""

    exit_code = 21
