"""`mlwf health`: gather Prometheus and the Airflow API at once, judge, return plain data.

`collect()` is the whole service: `gather` sends every Prometheus query (`queries`) on a
thread pool together with the Airflow calls, `judge` applies the rules of
`mlpipeline.monitoring` (the same functions `monitoring_dag` applies) with the limits of
`mlpipeline.thresholds`, and the result is a `report.HealthReport`. Nothing here prints.

Degraded: when Prometheus or the API does not answer, the report still comes from the
other one, with a note saying what is missing; `report.exit_error()` turns that into exit 9
(UnhealthyError) unless `--fail-on` finds findings at its level (exit 12).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Callable

from mlflowctl.errors import ApiError, UnreachableError, UsageError
from mlflowctl.health.gather import gather
from mlflowctl.health.judge import judge
from mlflowctl.health.report import HealthReport

if TYPE_CHECKING:  # both client modules import httpx
    from mlflowctl.api.airflow import AirflowClient
    from mlflowctl.api.prometheus import PrometheusClient
    from mlflowctl.backends.base import CeleryWorkers

MIN_WINDOW_S, MAX_WINDOW_S = 60.0, 90 * 86400.0
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_WINDOW_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_window(text: str) -> float:
    """`30m`, `1h`, `2d`, `1w` -> seconds; between 1 minute and 90 days."""
    match = _WINDOW_RE.match(text or "")
    if not match:
        raise UsageError(f"--window {text!r} is not a duration: use a number and s, m, h, d or w (e.g. 1h, 30m)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not MIN_WINDOW_S <= seconds <= MAX_WINDOW_S:
        raise UsageError(f"--window {text}: must be between 1m and 90d")
    return seconds


def collect(
    airflow: AirflowClient | None,
    prometheus: PrometheusClient | None,
    *,
    window: str = "1h",
    now: Callable[[], dt.datetime] | None = None,
    workers: Callable[[], CeleryWorkers | None] | None = None,
) -> HealthReport:
    """One health report; raises only on bad input, bad credentials, or when no source answered.

    `workers` counts the live Celery workers, remote ones included, where the stack can tell
    (None: no Celery workers known); Airflow's metrics do not report them."""
    import time

    seconds = parse_window(window)
    started = time.perf_counter()
    moment = (now or (lambda: dt.datetime.now(dt.timezone.utc)))()
    report = HealthReport(
        generated_at=moment.isoformat(timespec="seconds"),
        window=window.strip(),
        window_seconds=seconds,
        airflow_url=getattr(airflow, "url", "") or "",
        prometheus_url=getattr(prometheus, "url", "") or "",
        sources={},
    )
    got = gather(airflow, prometheus, seconds, moment, count_workers=workers)
    if got.api != "ok" and got.prometheus != "ok":
        error = ApiError if got.answered_wrongly else UnreachableError
        raise error(
            f"neither the Airflow API ({report.airflow_url}: {got.api}) nor Prometheus "
            f"({report.prometheus_url}: {got.prometheus}) answered"
            + (" as its API does" if got.answered_wrongly else ""),
            hint="is the stack up? `mlwf status`, `mlwf up`, or pass --url / --prometheus-url",
        )
    judge(got, report, moment)
    report.elapsed_seconds = time.perf_counter() - started
    return report
