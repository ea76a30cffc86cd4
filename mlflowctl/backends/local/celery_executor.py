"""The Celery executor on the local backend: a Redis broker (broker.py) and N workers (workers.py).

Each is an ordinary service of the stack (pid file, log, health, `down`). The metadata
database is the stack's own, as for the LocalExecutor (postgres.py); Celery on SQLite is
refused (record.check_switch). The spawner, the launcher's fork server, comes along: `scale`
forks new workers from it, so they share Airflow's imported pages with the rest of the stack
(see launcher.py); when it is gone, `scale` uses a new launcher.

The stack's executor and worker count are recorded in <home>/executor.json (record.py), so
`status`, `down` and `scale` see the stack as it was started, whatever the config says now.
"""

from __future__ import annotations

from mlflowctl.backends.base import Progress
from mlflowctl.backends.local import broker, workers
from mlflowctl.backends.local.state import ServiceSpec, Stack
from mlflowctl.config import Config
from mlflowctl.secrets import Secrets


def urls(config: Config, secrets: Secrets) -> dict[str, str]:
    """The broker URL the stack's Airflow runs with: the user's as is, else mlwf's own."""
    if config.executor != "celery":
        return {}
    return {"broker_url": config.broker_url or broker.broker_url(config, secrets)}


class CeleryExecutor:
    name = "celery"

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def before_airflow(self) -> list[ServiceSpec]:
        return broker.services(self.stack)

    def after_airflow(self) -> list[ServiceSpec]:
        from mlflowctl.backends.local.services import spawner_services

        return [*workers.services(self.stack), *spawner_services(self.stack)]

    def environment(self) -> dict[str, str]:
        if not self.stack.config.broker_url:
            broker.find_redis()
        return urls(self.stack.config, self.stack.secrets())

    def remove_workers(self, keep: int, report: Progress, drain_timeout: float) -> dict[str, str]:
        from concurrent.futures import ThreadPoolExecutor

        names = [workers.name(i) for i in workers.indices(self.stack) if i > keep]
        if not names:
            return {}
        report(f"warm shutdown of {', '.join(names)} (running tasks finish first)", [])
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            return dict(zip(names, pool.map(lambda n: workers.warm_stop(self.stack, n, drain_timeout), names)))
