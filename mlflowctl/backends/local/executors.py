"""The executors a local stack runs, behind the small interface the local backend calls.

An executor adds its own services around Airflow's (the Celery executor: the Redis broker
before, the workers and the spawner after) and the settings Airflow needs for it (a broker
URL). One that can add and remove workers is also a `WorkerPool`; `LocalBackend.scale`
asks for that, never for a name. A new executor: a class here or in its own module, and a
line in `executor_for`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from mlflowctl.backends.base import Progress
from mlflowctl.backends.local.state import ServiceSpec, Stack
from mlflowctl.errors import NotAvailableError


class Executor(Protocol):
    name: str

    def before_airflow(self) -> list[ServiceSpec]:
        """Services that start before Airflow's components (they connect to them at once)."""

    def after_airflow(self) -> list[ServiceSpec]:
        """Services that start after Airflow's components."""

    def environment(self) -> dict[str, str]:
        """Keyword arguments for `local_environment` (broker_url). Called by `up` before anything
        starts: a missing binary fails here, with nothing left half-up."""


@runtime_checkable
class WorkerPool(Protocol):
    """An executor whose workers `mlwf scale` adds and removes."""

    def remove_workers(self, keep: int, report: Progress, drain_timeout: float) -> dict[str, str]:
        """Stop the workers numbered above `keep` (their running tasks finish first): name -> outcome."""


class LocalExecutor:
    """Airflow's LocalExecutor: the scheduler runs the tasks; no services of its own."""

    name = "local"

    def before_airflow(self) -> list[ServiceSpec]:
        return []

    def after_airflow(self) -> list[ServiceSpec]:
        return []

    def environment(self) -> dict[str, str]:
        return {}


def executor_for(stack: Stack) -> Executor:
    """The executor the stack runs with (its configuration says which)."""
    if stack.config.executor == "local":
        return LocalExecutor()
    if stack.config.executor == "celery":
        from mlflowctl.backends.local.celery_executor import CeleryExecutor

        return CeleryExecutor(stack)
    raise NotAvailableError(
        f"executor {stack.config.executor!r} is not available on the local backend in this mlwf version"
    )
