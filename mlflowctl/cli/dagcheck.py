"""`mlwf parse` and `mlwf test`: the DAGs checked in the Airflow runtime, no server, no stack.

For CI before anything is started: do the DAG files import, and does a DAG run green. Both
run in a fresh Airflow interpreter with the project's settings (mlflowctl/dagcheck/); `test`
shows, reports and exits as `trigger --wait` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mlflowctl.cli.context import App
from mlflowctl.cli.options import Home, Json
from mlflowctl.cli.runs import DagId, check_writable, finish_run, watch_to_end
from mlflowctl.errors import DagFileError

Junit = Annotated[Optional[Path], typer.Option("--junit", help="Write a JUnit XML report to FILE.", show_default=False)]


def _runtime(app: App, config):
    from mlflowctl.backends.runtime import find_runtime

    return find_runtime(config.project_root, lambda line: app.say(f"runtime: {line}"))


def parse(ctx: typer.Context, junit: Junit = None, as_json: Json = False, home: Home = None) -> None:
    """Import every DAG file as Airflow's dag-processor would: import errors (file, line, error),
    duplicate DAG ids, cycles and each file's parse time. Exit 20 when a file has a problem."""
    from mlflowctl.dagcheck import runner
    from mlflowctl.render import dagcheck as render

    app: App = ctx.obj
    if junit:
        check_writable(junit, "--junit")
    config = app.config(home=home)
    report = runner.parse(config, _runtime(app, config))
    if junit:
        from mlflowctl.junit import parse_junit_xml, write_report

        write_report(junit, parse_junit_xml(report))
    if as_json:
        import json

        app.echo(json.dumps(render.parse_json(report), indent=2))
    else:
        app.out.print(render.parse_table(report, app.width))
    if not report.files:
        app.warn(f"no DAG files in {report.dags_folder}")
    if report.problems:
        first = report.problems[0]
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise DagFileError(f"{runner.describe(first)}{more}", hint="the whole error: mlwf parse --json")


def test(
    ctx: typer.Context,
    dag_id: DagId,
    conf: Annotated[
        Optional[str], typer.Option("--conf", help="Run conf as a JSON object, or @file.json.", show_default=False)
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Stop the run after S seconds (exit 6).")] = 3600.0,
    junit: Junit = None,
    as_json: Json = False,
    home: Home = None,
) -> None:
    """Run a DAG once in the Airflow runtime, no stack needed: its own throwaway database and data
    under the state directory. The live task table, exit codes and JUnit report of `trigger --wait`."""
    from mlflowctl import runs as service
    from mlflowctl.dagcheck import runner

    app: App = ctx.obj
    payload = service.parse_conf(conf)  # refused before anything starts
    if junit:
        check_writable(junit, "--junit")
    config = app.config(home=home)
    run = runner.InProcessRun(config, _runtime(app, config), dag_id, payload, timeout=timeout)
    snapshot = watch_to_end(
        app, run.snapshots(), junit=junit, live=not as_json, interrupted=f"stopped the test run of {dag_id}"
    )
    for parsed in run.broken:
        app.warn(f"another DAG file does not import: {runner.describe(parsed)}")
    finish_run(app, snapshot, run.failures, junit=junit, as_json=as_json, hint=f"the run's whole log: {run.log_path}")


COMMANDS = {"parse": parse, "test": test}
