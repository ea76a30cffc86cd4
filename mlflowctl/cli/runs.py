"""Commands that drive Airflow through its REST API v2: trigger, backfill, dags, pause, unpause.

`show_dag_status` and `show_task_logs` are the DAG forms of `mlwf status DAG` and
`mlwf logs DAG TASK`; the `status` and `logs` commands (cli/stack.py) call them.
Nothing heavy is imported at module level: httpx and the client load inside commands.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from mlflowctl.cli.context import App
from mlflowctl.cli.options import Home, Json, Quiet, Url, User, Wide, finite
from mlflowctl.errors import RunFailedError, UsageError

if TYPE_CHECKING:
    from mlflowctl.api.airflow import AirflowClient

DagId = Annotated[str, typer.Argument(metavar="DAG", help="DAG id.", show_default=False)]


# -- connection and output ----------------------------------------------------------------


def connect(app: App, url: str | None = None, user: str | None = None, home: str | None = None) -> AirflowClient:
    """A client for the configured server; the password is resolved when the first request is sent."""
    return app.client(app.config(airflow_url=url, airflow_user=user, home=home))


def _print_json(app: App, data) -> None:
    import json

    app.echo(json.dumps(data, indent=2, default=str))


def _interrupted(app: App, what: str) -> typer.Exit:
    app.say(f"stopped watching; {what} goes on in Airflow")
    return typer.Exit(130)


# -- dags, pause, unpause -----------------------------------------------------------------


def dags(
    ctx: typer.Context,
    as_json: Json = False,
    url: Url = None,
    user: User = None,
    home: Home = None,
    wide: Wide = False,
) -> None:
    """List the DAGs: paused state, schedule, last run and its state, import errors."""
    from mlflowctl import runs as service
    from mlflowctl.render import runs as render

    app: App = ctx.obj
    with connect(app, url, user, home) as client:
        overview = service.dags_overview(client)
    if as_json:
        _print_json(app, render.dags_json(overview))
        return
    app.show(render.dags_table(overview, width=app.width))
    if overview.import_errors:
        app.show(render.import_errors_table(overview, width=app.width))


def _set_paused(app: App, dag_id: str, paused: bool, as_json: bool, url, user, home) -> None:
    from mlflowctl.render.runs import jsonable

    with connect(app, url, user, home) as client:
        dag = client.set_paused(dag_id, paused)
    if as_json:
        _print_json(app, jsonable(dag))
    else:
        app.echo(f"DAG {dag.dag_id} is {'paused' if dag.is_paused else 'unpaused'}")


def pause(
    ctx: typer.Context, dag_id: DagId, as_json: Json = False, url: Url = None, user: User = None, home: Home = None
) -> None:
    """Pause a DAG: the scheduler creates no new runs of it."""
    _set_paused(ctx.obj, dag_id, True, as_json, url, user, home)


def unpause(
    ctx: typer.Context, dag_id: DagId, as_json: Json = False, url: Url = None, user: User = None, home: Home = None
) -> None:
    """Unpause a DAG (a scheduled DAG may start its latest due run at once)."""
    _set_paused(ctx.obj, dag_id, False, as_json, url, user, home)


# -- trigger ------------------------------------------------------------------------------


def trigger(
    ctx: typer.Context,
    dag_id: DagId,
    conf: Annotated[
        Optional[str], typer.Option("--conf", help="Run conf as a JSON object, or @file.json.", show_default=False)
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Watch the run's tasks until it ends; exit by its outcome.")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", callback=finite, min=0.1, help="With --wait: stop waiting after S seconds (exit 6).")
    ] = 3600.0,
    unpause: Annotated[bool, typer.Option("--unpause", help="Unpause the DAG first if it is paused.")] = False,
    junit: Annotated[
        Optional[Path],
        typer.Option("--junit", help="Write the run's tasks as a JUnit XML report (implies --wait).", show_default=False),
    ] = None,
    as_json: Json = False,
    url: Url = None,
    user: User = None,
    home: Home = None,
    quiet: Quiet = False,
    wide: Wide = False,
) -> None:
    """Trigger a DAG run and print its run id; with --wait, follow it to the end."""
    from mlflowctl import runs as service
    from mlflowctl.render import runs as render

    app: App = ctx.obj
    payload = service.parse_conf(conf)  # bad JSON is refused before anything is sent
    if junit:
        check_writable(junit, "--junit")
    with connect(app, url, user, home) as client:
        run, unpaused = service.trigger(client, dag_id, payload, unpause=unpause)
        if unpaused is not None:
            app.say(
                f"unpaused {dag_id}"
                + (f"; a scheduled run ({unpaused.schedule}) may start now too" if unpaused.schedule else "")
            )
        if not (wait or junit) or app.quiet:
            if as_json:
                _print_json(app, render.jsonable(run))
            else:
                app.echo(run.run_id)
            if not (wait or junit):
                return
        elif not as_json:
            app.echo(f"triggered {dag_id} run {run.run_id}")
        snapshot = watch_to_end(
            app, service.watch_run(client, dag_id, run.run_id, timeout=timeout), junit=junit, live=not as_json,
            interrupted=f"stopped watching; run {run.run_id} goes on in Airflow",
        )
        failed = service.failures(client, snapshot) if snapshot.run.state != "success" else []
    finish_run(app, snapshot, failed, junit=junit, as_json=as_json, hint=f"full log: mlwf logs {dag_id} TASK --run '{run.run_id}'")


def watch_to_end(app: App, snapshots, *, junit: Path | None, live: bool, interrupted: str):
    """The last snapshot of a run watched to its end (`trigger --wait`, `test`): Ctrl-C says
    `interrupted` and exits 130; a wait that gives up still writes the JUnit report, the
    unfinished tasks marked so."""
    from mlflowctl.runs import RunWaitTimedOut

    try:
        return _watch(app, snapshots, shown=live)
    except KeyboardInterrupt:
        app.say(interrupted)
        raise typer.Exit(130) from None
    except RunWaitTimedOut as late:
        if junit:
            from mlflowctl.junit import write_junit

            write_junit(junit, late.snapshot, [], timed_out=True)
        raise


def finish_run(app: App, snapshot, failed: list, *, junit: Path | None, as_json: bool, hint: str) -> None:
    """The end of a run as `trigger --wait` and `test` show it: the JUnit report, the JSON or the
    failed tasks' log tails, and exit 7 unless the run succeeded."""
    from mlflowctl.render import runs as render

    run = snapshot.run
    if junit:
        from mlflowctl.junit import write_junit

        write_junit(junit, snapshot, failed)
    if as_json:
        _print_json(app, render.run_json(snapshot, failed))
    elif not app.quiet:
        for failure in failed:
            app.echo(f"\ntask {failure.task.task_id} failed (try {failure.task.try_number}); end of its log:")
            for line in failure.log_tail:
                app.echo(f"  {line}")
    if run.state != "success":
        names = ", ".join(f.task.task_id for f in failed) or "no task failed"
        raise RunFailedError(f"run {run.run_id} of DAG {run.dag_id} ended {run.state} (failed: {names})", hint=hint)


def check_writable(path: Path, flag: str) -> None:
    """Refuse an output file that could not be written, before the run, not after it."""
    if path.parent.exists() and not path.parent.is_dir():
        raise UsageError(f"{flag} {path}: {path.parent} is not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot create its folder ({exc.strerror})") from None
    if path.is_dir() or not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path}: not a writable file")


def _last(items):
    last = None
    for last in items:
        pass
    return last


def _watch(app: App, snapshots, *, shown: bool):
    """Follow a watch_run generator (cli/live.py), then print the final tasks table once; the last snapshot."""
    from mlflowctl.cli.live import Watch
    from mlflowctl.render.runs import run_changes, run_table

    if not shown:
        return _last(snapshots)

    def view(snapshot, width: int, height: int):
        return run_table(snapshot, width=width, height=height - 1)

    with Watch(app, view, run_changes) as watch:
        last = watch.drain(snapshots)
    app.show(run_table(last, width=app.width))
    return last


# -- backfill -----------------------------------------------------------------------------


def backfill(
    ctx: typer.Context,
    dag_id: DagId,
    start_date: Annotated[str, typer.Option("--start-date", help="First logical date, YYYY-MM-DD or ISO 8601 (UTC if no zone).", show_default=False)],
    end_date: Annotated[str, typer.Option("--end-date", help="Last logical date (inclusive).", show_default=False)],
    max_active_runs: Annotated[int, typer.Option("--max-active-runs", help="Runs at the same time.")] = 2,
    reprocess: Annotated[
        str, typer.Option("--reprocess", help="Dates that already have a run: none, failed or completed.")
    ] = "none",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the logical dates and the estimated wall time only.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until every run ended; exit by the outcome.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", callback=finite, min=0.1, help="With --wait: stop waiting after S seconds (exit 6).")] = 6 * 3600.0,
    as_json: Json = False,
    url: Url = None,
    user: User = None,
    home: Home = None,
    quiet: Quiet = False,
    wide: Wide = False,
) -> None:
    """Run a DAG for every logical date between two dates (Airflow 3 backfill)."""
    from mlflowctl import runs as service
    from mlflowctl.render import runs as render

    app: App = ctx.obj
    if reprocess not in service.REPROCESS:
        raise UsageError(f"--reprocess {reprocess!r}: use one of {', '.join(service.REPROCESS)}")
    if max_active_runs < 1:
        raise UsageError(f"--max-active-runs must be at least 1, not {max_active_runs}")
    start, end = service.backfill_range(start_date, end_date)
    with connect(app, url, user, home) as client:
        plan = service.plan_backfill(client, dag_id, start, end, reprocess=reprocess, max_active_runs=max_active_runs)
        service.require_dates(plan)
        if dry_run:
            if as_json:
                _print_json(app, render.backfill_plan_json(plan))
            else:
                app.show(render.backfill_plan_table(plan, width=app.width))
            return
        created = service.start_backfill(client, plan)
        if app.quiet and not as_json:
            app.echo(str(created.id))
        elif not as_json:
            app.echo(f"backfill {created.id} of {dag_id} created: {len(plan.dates)} runs")
        if not wait:
            if as_json:
                _print_json(app, {"backfill": render.jsonable(created), **render.backfill_plan_json(plan)})
            return
        try:
            snapshots = service.watch_backfill(client, plan, timeout=timeout)
            progress = _watch_backfill(app, snapshots, shown=not as_json)
        except KeyboardInterrupt:
            raise _interrupted(app, f"backfill {created.id}") from None
    if as_json:
        _print_json(app, {"backfill": render.jsonable(created), "runs": render.jsonable(progress.runs), "total": progress.total})
    else:
        app.show(render.backfill_summary_table(progress, width=app.width))
    if progress.failed:
        raise RunFailedError(
            f"backfill {created.id} of DAG {dag_id}: {len(progress.failed)} of {progress.total} runs failed",
            hint=f"see `mlwf status {dag_id}` and `mlwf logs {dag_id} TASK --run RUN_ID`",
        )


def _watch_backfill(app: App, snapshots, *, shown: bool):
    from mlflowctl.cli.live import Watch
    from mlflowctl.render.runs import backfill_changes, backfill_summary_table

    if not shown:
        return _last(snapshots)

    def view(progress, width: int, height: int):
        return backfill_summary_table(progress, width=width, height=height - 1)

    with Watch(app, view, backfill_changes) as watch:
        return watch.drain(snapshots)


# -- the DAG forms of `status` and `logs` (called from cli/stack.py) ------------------------


def show_dag_status(
    app: App,
    dag_id: str,
    *,
    url: str | None = None,
    user: str | None = None,
    as_json: bool = False,
    home: str | None = None,
) -> None:
    """`mlwf status DAG`: recent runs (state, start, duration) and the latest run's task durations."""
    from mlflowctl import runs as service
    from mlflowctl.render import runs as render

    with connect(app, url, user, home) as client:
        status = service.dag_status(client, dag_id)
    if as_json:
        _print_json(app, render.dag_status_json(status))
        return
    for table in render.dag_status_tables(status, width=app.width):
        app.show(table)


def show_task_logs(
    app: App,
    dag_id: str,
    task_id: str,
    *,
    run: str = "latest",
    try_number: int | None = None,
    follow: bool = False,
    url: str | None = None,
    user: str | None = None,
    home: str | None = None,
) -> None:
    """`mlwf logs DAG TASK`: a task's log as text; `follow` keeps printing until the task ends."""
    from mlflowctl import runs as service

    with connect(app, url, user, home) as client:
        target = service.log_target(client, dag_id, task_id, run=run, try_number=try_number)
        app.say(f"# {dag_id} / {target.run.run_id} / {task_id} try {target.try_number} ({target.task.state})")
        try:
            for records in service.follow_log(client, target, follow=follow):
                for line in service.log_text(records):
                    app.echo(line)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except BrokenPipeError:  # `mlwf logs DAG TASK | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


COMMANDS = {"dags": dags, "trigger": trigger, "backfill": backfill, "pause": pause, "unpause": unpause}
