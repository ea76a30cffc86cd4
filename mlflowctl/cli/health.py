"""`mlwf health`: the stack's health from Prometheus and the Airflow API, judged by the rules
of `mlpipeline.monitoring` (the same ones `monitoring_dag` applies).

Exit codes: 0 report complete (whatever its findings, unless --fail-on); 12 --fail-on LEVEL
and a finding at LEVEL or worse; 9 the report is degraded (Prometheus or the API did not
answer) and --fail-on found nothing; 5 neither answered; 13 neither answered as its API does
(and one did answer: a redirect, HTML, ...); 3 bad credentials; 2 bad input.
Nothing heavy at module level: httpx and the clients load inside the command.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from mlflowctl.cli.context import App
from mlflowctl.cli.options import Home, Json, Quiet, Url, User, Wide, finite

if TYPE_CHECKING:
    from mlflowctl.health.report import HealthReport

PROMETHEUS_ENV = "MLWF_PROMETHEUS_URL"
API_RETRY_S = 1.0
API_TIMEOUT_S = 10.0


def _clients(app: App, url: str | None, user: str | None, home: str | None, prometheus_url: str | None):
    from mlflowctl.api.prometheus import PrometheusClient
    from mlflowctl.config import local_url
    from mlflowctl.backends.local.workers import census

    config = app.config(airflow_url=url, airflow_user=user, home=home)
    airflow = app.client(config, timeout=API_TIMEOUT_S, retry_for=API_RETRY_S)
    prometheus = PrometheusClient(_prometheus_url(prometheus_url) or local_url(config.prometheus_port))
    return airflow, prometheus, lambda: census(config)


def _prometheus_url(value: str | None) -> str:
    """--prometheus-url (or MLWF_PROMETHEUS_URL) checked as the config checks airflow_url."""
    import os

    from mlflowctl.config import checked, http_url

    if value is None:
        return ""
    origin = PROMETHEUS_ENV if os.environ.get(PROMETHEUS_ENV) == value else "--prometheus-url"
    return checked("prometheus_url", http_url, value, origin)


def _json_line(app: App, report: HealthReport, *, indent: int | None) -> None:
    import json

    app.echo(json.dumps(report.to_dict(), indent=indent, default=str))


def health(
    ctx: typer.Context,
    window: Annotated[
        str, typer.Option("--window", help="Time range the runs, failures, durations and trends cover: 30m, 1h, 1d.")
    ] = "1h",
    fail_on: Annotated[
        Optional[str],
        typer.Option(
            "--fail-on",
            help="Exit 12 when a finding is at this severity or worse: warning or critical.",
            show_default=False,
        ),
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Redraw the report in place until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", callback=finite, min=1.0, max=86400.0, help="With --watch: seconds between refreshes.")
    ] = 5.0,
    prometheus_url: Annotated[
        Optional[str],
        typer.Option(
            "--prometheus-url",
            envvar=PROMETHEUS_ENV,
            help="Prometheus, default http://127.0.0.1:<prometheus_port>.",
            show_default=False,
        ),
    ] = None,
    as_json: Json = False,
    url: Url = None,
    user: User = None,
    home: Home = None,
    quiet: Quiet = False,
    wide: Wide = False,
) -> None:
    """Health of the stack and the pipeline: components, DAG runs, failures and durations by task,
    scheduler, executor, model quality. Exit 12 with --fail-on when findings reach it; exit 9 when
    Prometheus or the API did not answer (the report still comes, marked degraded)."""
    from mlflowctl import health as service
    from mlflowctl.errors import UsageError
    from mlflowctl.health.report import FAIL_ON, exit_error

    service.parse_window(window)
    if fail_on is not None and fail_on.lower() not in FAIL_ON:
        raise UsageError(f"--fail-on {fail_on!r}: use warning or critical")
    fail_on = fail_on.lower() if fail_on else None
    app: App = ctx.obj
    airflow, prometheus, workers = _clients(app, url, user, home, prometheus_url)
    def collect() -> HealthReport:
        return service.collect(airflow, prometheus, window=window, workers=workers)

    with airflow, prometheus:
        if watch:
            report = _watch(app, collect, interval, as_json)
        else:
            report = collect()
            if as_json:
                _json_line(app, report, indent=2)
            else:
                from mlflowctl.render.health import report_view

                app.show(report_view(report, width=app.width))
    error = exit_error(report, fail_on)
    if error is not None:
        raise error


def _watch(app: App, collect, interval: float, as_json: bool) -> HealthReport:
    """Refresh until Ctrl-C; returns the last report (its exit rule applies). JSON: one line per
    refresh. Otherwise a live view (cli/live.py), and the last report in full once at the end."""
    from mlflowctl.cli.live import Watch
    from mlflowctl.render.health import report_changes, report_view

    def view(report: HealthReport, width: int, height: int):
        return report_view(report, width=width, height=height - 1)

    report = None
    try:
        report = collect()
        if as_json:
            while True:
                _json_line(app, report, indent=None)
                time.sleep(interval)
                report = collect()
        with Watch(app, view, report_changes) as watch:
            while True:
                watch.show(report)
                time.sleep(interval)
                report = collect()
    except KeyboardInterrupt:
        if report is None:  # stopped before the first report came
            raise typer.Exit(130) from None
        if not as_json:
            app.show(report_view(report, width=app.width))
        return report


COMMANDS = {"health": health}
