"""Every question of `mlwf health` at once on one thread pool: Prometheus queries, Airflow API calls,
and the one number neither knows, the live Celery workers (the backend counts them, remote ones too).

A source that does not answer is recorded (why, and whether it answered wrongly), not raised:
the judges decide what a missing answer means. Only bad credentials raise.
"""

from __future__ import annotations

import datetime as dt
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from mlflowctl.errors import ApiError, AuthError, MlwfError, UnreachableError
from mlflowctl.health.queries import instant_queries, range_queries, trend_step

if TYPE_CHECKING:  # both client modules import httpx
    from mlflowctl.api.airflow import AirflowClient
    from mlflowctl.api.prometheus import PrometheusClient, Sample, Series
    from mlflowctl.backends.base import CeleryWorkers


@dataclass
class Gathered:
    """What the sources answered: results by query or call name, or the error each raised."""

    instant: dict[str, list[Sample] | MlwfError] = field(default_factory=dict)
    ranges: dict[str, list[Series] | MlwfError] = field(default_factory=dict)
    health: dict | MlwfError | None = None
    runs: list | MlwfError | None = None
    running: list | MlwfError | None = None
    failed: list | MlwfError | None = None
    import_errors: list | MlwfError | None = None
    prometheus: str = "ok"
    api: str = "ok"
    workers: CeleryWorkers | None = None  # None: the stack runs no Celery workers
    answered_wrongly: bool = False  # a source answered, but not as its API does (redirect, HTML, ...)


def _outcome(future: Future) -> Any:
    """A future's result, or the mlwf error it raised; an AuthError is re-raised (bad setup, not health)."""
    try:
        return future.result()
    except AuthError:
        raise
    except MlwfError as exc:
        return exc


def _why(exc: MlwfError) -> str:
    text = str(exc)
    match = re.search(r"\(([^()]*)\)\s*$", text)
    return match.group(1) if isinstance(exc, UnreachableError) and match else text


def gather(
    airflow: AirflowClient | None,
    prometheus: PrometheusClient | None,
    window_s: float,
    now: dt.datetime,
    *,
    count_workers: Callable[[], CeleryWorkers | None] | None = None,
    threads: int = 8,
) -> Gathered:
    """Every query at once: Prometheus and the worker count on the pool; Airflow's health first
    (it logs in at most once), then its other calls on the pool too."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mlwf-health") as pool:
        try:
            return _ask(pool, airflow, prometheus, window_s, now, count_workers)
        except KeyboardInterrupt:  # Ctrl-C (`health --watch`): the queries not yet sent are dropped, not waited for
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _ask(pool: ThreadPoolExecutor, airflow, prometheus, window_s: float, now: dt.datetime, count_workers) -> Gathered:
    got = Gathered()
    since = now - dt.timedelta(seconds=window_s)
    counted = pool.submit(count_workers) if count_workers is not None else None
    prom: dict[str, Future] = {}
    ranges: dict[str, Future] = {}
    ready: Future | None = None
    if prometheus is not None:
        ready = pool.submit(prometheus.ready)
        prom = {name: pool.submit(prometheus.query, expr, at=now) for name, expr in instant_queries(window_s).items()}
        step = trend_step(window_s)
        ranges = {
            name: pool.submit(prometheus.query_range, expr, since, now, step)
            for name, expr in range_queries(window_s).items()
        }
    else:
        got.prometheus = "not configured"
    calls: dict[str, Future] = {}
    if airflow is not None:
        try:
            got.health = airflow.health()
        except AuthError:
            raise
        except MlwfError as exc:
            got.health = exc
            got.api = _why(exc)
            got.answered_wrongly |= isinstance(exc, ApiError)
        if got.api == "ok":
            calls = {
                "runs": pool.submit(airflow.runs_since, since),
                "running": pool.submit(airflow.runs_since, state="running"),
                "failed": pool.submit(airflow.failed_tasks_since, since),
                "import_errors": pool.submit(airflow.import_errors),
            }
    else:
        got.api = "not configured"
    for name, future in calls.items():
        setattr(got, name, _outcome(future))
    if ready is not None:
        state = _outcome(ready)
        if isinstance(state, MlwfError):
            got.prometheus = _why(state)
            got.answered_wrongly |= isinstance(state, ApiError)
        elif state is False:
            got.prometheus = "not ready"
    got.instant = {name: _outcome(f) for name, f in prom.items()}
    got.ranges = {name: _outcome(f) for name, f in ranges.items()}
    got.workers = counted.result() if counted is not None else None
    return got

