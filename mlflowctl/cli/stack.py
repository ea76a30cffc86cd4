"""Stack lifecycle commands: up, restart, down, status, logs, config.

Each command takes the App (cli/context.py), loads the effective config, picks the backend
(saying which), calls one backend method and renders its dataclasses. `status DAG` and
`logs DAG TASK` hand over to the API commands in `mlflowctl.cli.runs`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Annotated, List, Optional

import typer

from mlflowctl.cli.context import App
from mlflowctl.cli.options import Home, Json, Quiet, Url, User, Wide, finite
from mlflowctl.errors import NotAvailableError, StackDownError, UnhealthyError, UsageError

DAGS_TIMEOUT_S = 5.0  # `status`: the DAGs table is a glance, not worth a long wait
Backend = Annotated[
    Optional[str], typer.Option("--backend", help="auto, local or docker (env MLWF_BACKEND).")
]


def holding_state(app: App, config, command: str, *, create: bool = True):
    """The state directory's lock for a command that changes the stack (up, restart, down, scale)."""
    from mlflowctl.state import locked

    return locked(
        config.home_dir,
        config.project_root,
        command=command,
        wait=config.lock_wait,
        on_wait=app.say,
        create=create,
    )


def print_notes(app: App, notes: list[str]) -> None:
    for note in notes:
        app.say(note)


def stack_result(app: App, status, *, as_json: bool, applied=None) -> None:
    """What `up` and `scale` print when done: the notes and the services table, or the JSON;
    for `up`, what became of the project's connections, variables and pools."""
    from mlflowctl.render.objects import applied_json, summary
    from mlflowctl.render.stack import services_table, status_json

    if as_json:
        app.echo(json.dumps({**status_json(status, None), **(applied_json(applied) if applied else {})}, indent=2))
        return
    print_notes(app, status.notes)
    if applied:
        app.say(summary(applied))
    app.show(services_table(status.services, backend=status.backend, database=status.database, width=app.width))


def watch_start(app: App, backend: str):
    """A live display of `up` or `scale` (cli/live.py) and the Progress a backend reports to."""
    import time

    from mlflowctl.backends.base import ProgressKind
    from mlflowctl.cli.live import Watch
    from mlflowctl.render.stack import Starting, starting_changes, starting_view

    began = time.monotonic()
    watch = Watch(app, starting_view, starting_changes)

    def report(message: str, services, kind=None) -> None:
        step = ProgressKind.of(services, kind) is ProgressKind.STEP
        known = services or (watch.last.services if watch.last else [])
        watch.show(Starting(backend, message, list(known), step, time.monotonic() - began))

    return watch, report


@contextlib.contextmanager
def showing_log_tail(app: App):
    """`up` and `restart`: a service that failed to start shows the end of its log before the error."""
    from mlflowctl.backends.base import StartFailed

    try:
        yield
    except StartFailed as failure:
        if failure.log_tail:  # a migration that waits on a lock writes nothing
            app.err.print(f"last lines of {failure.service}'s log:", style="bold red", markup=False)
        for line in failure.log_tail:
            app.alert(f"  {line}")
        raise


def starting(app: App, config, backend: str, command: str, start, declarations, *, as_json: bool, create: bool = True):
    """What `up` and `restart` share: `start(report)` under the state lock with the live view,
    a failed service's log tail, then the project's objects applied to a healthy stack and the
    result shown. The backend's status, for the caller's verdict."""
    from mlflowctl.cli.objects import apply_declared

    watch, report = watch_start(app, backend)
    with showing_log_tail(app):
        with holding_state(app, config, command, create=create), watch:
            status = start(report)
        applied = apply_declared(app, config, declarations) if status.healthy else []
    stack_result(app, status, as_json=as_json, applied=applied)
    return status


def ui_lines(config) -> list[str]:
    """Where the Airflow UI is and how to log in; each line short, the URL and commands whole."""
    return [f"Airflow UI: {config.api_url}  (user {config.airflow_user}; the password: `mlwf password`)"]


def up(
    ctx: typer.Context,
    exclude: Annotated[
        Optional[List[str]],
        typer.Option("--exclude", help="Skip an optional service group or a service (repeatable), e.g. monitoring."),
    ] = None,
    backend: Backend = None,
    home: Home = None,
    executor: Annotated[Optional[str], typer.Option("--executor", help="local or celery (env MLWF_EXECUTOR).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Celery workers (env MLWF_WORKERS).")] = None,
    listen: Annotated[
        Optional[str],
        typer.Option("--listen", help="Celery: also serve broker, database and API on this address, with TLS, "
                     "for `mlwf worker join` (env MLWF_LISTEN)."),
    ] = None,
    database: Annotated[
        Optional[str],
        typer.Option("--database", help="postgres or sqlite, for a new stack; an existing one keeps its own (env MLWF_DATABASE)."),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", callback=finite, min=0.1, help="Seconds for the whole start: migration, launcher, health (a runtime build not counted)."
        ),
    ] = 120.0,
    as_json: Json = False,
    quiet: Quiet = False,
    wide: Wide = False,
) -> None:
    """Start the stack (idempotent: only what is not running) and wait until it is healthy."""
    from mlflowctl.backends.choose import record_backend
    from mlflowctl.objects import declared
    from mlflowctl.render.layout import whole

    app: App = ctx.obj
    config = app.config(backend=backend, home=home, executor=executor, workers=workers, database=database,
                        listen=listen)
    declarations = declared(config)  # a malformed file stops `up` before anything starts
    chosen = app.backend(config)

    def start(report):
        status = chosen.up(exclude=frozenset(exclude or ()), progress=report, timeout=timeout)
        record_backend(config, chosen.name)
        return status

    status = starting(app, config, chosen.name, "mlwf up", start, declarations, as_json=as_json)
    if not as_json:
        for line in ui_lines(config):
            app.show(whole(line))
    if not status.healthy:
        raise UnhealthyError("the stack started but not every service is healthy")


def restart(
    ctx: typer.Context,
    service: Annotated[
        Optional[str], typer.Argument(help="A service (scheduler, postgres, ...); without one, the whole stack.")
    ] = None,
    backend: Backend = None,
    home: Home = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", callback=finite, min=0.1, help="Seconds for the whole restart: the stop and the start."),
    ] = 120.0,
    as_json: Json = False,
    quiet: Quiet = False,
    wide: Wide = False,
) -> None:
    """Restart one service, or the whole stack, and wait until every service is healthy (as `up`)."""
    from mlflowctl.backends.base import Restarting
    from mlflowctl.objects import declared

    app: App = ctx.obj
    config = app.config(backend=backend, home=home)
    # The whole stack comes back as `up` leaves it, with the project's objects; one service needs none.
    declarations = declared(config) if service is None else []
    chosen = app.backend(config)
    if not isinstance(chosen, Restarting):
        raise NotAvailableError(f"the {chosen.name} backend cannot restart services")
    status = starting(
        app, config, chosen.name, f"mlwf restart {service or ''}".rstrip(),
        lambda report: chosen.restart(service, progress=report, timeout=timeout), declarations,
        as_json=as_json, create=False,
    )
    if not status.healthy:
        raise UnhealthyError("restarted, but not every service is healthy")


def down(
    ctx: typer.Context,
    volumes: Annotated[
        bool, typer.Option("--volumes", help="Also delete the state directory: database, logs, data, secrets.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before deleting with --volumes.")] = False,
    backend: Backend = None,
    home: Home = None,
    quiet: Quiet = False,
) -> None:
    """Stop every service (TERM, TERM again, then KILL); data is kept unless --volumes."""
    app: App = ctx.obj
    config = app.config(backend=backend, home=home)
    if volumes:
        from mlflowctl.state import check_removable

        check_removable(config.home_dir, config.project_root)  # refused before anything stops
    if volumes and not yes:
        if not sys.stdin.isatty():
            raise UsageError("--volumes deletes all state and data; confirm with --yes when not interactive")
        if not typer.confirm(f"Delete {config.home} (metadata database, logs, pipeline data, secrets)?"):
            raise UsageError("nothing deleted")
    with holding_state(app, config, "mlwf down", create=False):
        status = app.backend(config).down(volumes=volumes)
    print_notes(app, status.notes)
    if not app.quiet:
        app.echo("stack stopped")


def status(
    ctx: typer.Context,
    dag: Annotated[Optional[str], typer.Argument(help="A DAG: its recent runs and task durations.")] = None,
    as_json: Json = False,
    backend: Backend = None,
    home: Home = None,
    url: Url = None,
    user: User = None,
    quiet: Quiet = False,
    wide: Wide = False,
) -> None:
    """Services (state, pid, uptime, port) and DAGs (paused, last run, next run); exit 0 only when healthy."""
    app: App = ctx.obj
    if dag is not None:
        from mlflowctl.cli.runs import show_dag_status

        return show_dag_status(app, dag, url=url, user=user, as_json=as_json, home=home)

    from rich.text import Text

    from mlflowctl import runs, status as service
    from mlflowctl.render.runs import dags_table
    from mlflowctl.render.stack import services_table, status_json

    config = app.config(backend=backend, home=home, airflow_url=url, airflow_user=user)

    def fetch_dags():
        # Never a prompt (status is for scripts too), and no retries: an api-server that is down
        # shows in the services table, which must not wait for it.
        with app.client(config, interactive=False, timeout=DAGS_TIMEOUT_S, retry_for=0.0) as client:
            return runs.dags_overview(client)

    found = service.overview(app.backend(config, announce=False), fetch_dags)
    stack = found.stack
    if as_json:
        app.echo(json.dumps(status_json(stack, found.dags, found.dags_error), indent=2))
    else:
        app.show(services_table(stack.services, backend=stack.backend, database=stack.database, width=app.width))
        if found.dags is not None:
            app.show(Text(""))
            app.show(dags_table(found.dags, title="DAGs", width=app.width))
        elif found.dags_error:
            app.show(Text(f"DAGs: {found.dags_error}"))
    if not stack.running:
        raise StackDownError("the stack is not running", hint="start it with `mlwf up`")
    if not stack.healthy:
        bad = [f"{s.name} {s.state}" for s in stack.services if s.state != "healthy"]
        raise UnhealthyError(f"not every service is healthy: {', '.join(bad)}", hint="`mlwf up` restarts stopped services")


def logs(
    ctx: typer.Context,
    service: Annotated[
        Optional[str], typer.Argument(help="A service (api-server, scheduler, ...), or a DAG when TASK follows.")
    ] = None,
    task: Annotated[Optional[str], typer.Argument(help="A task of DAG: its log through the API.")] = None,
    tail: Annotated[int, typer.Option("--tail", "-n", help="Lines from the end of each log.")] = 100,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    run: Annotated[str, typer.Option("--run", help="With DAG TASK: 'latest' or a run id.")] = "latest",
    try_number: Annotated[Optional[int], typer.Option("--try", help="With DAG TASK: the try number.")] = None,
    backend: Backend = None,
    home: Home = None,
    url: Url = None,
    user: User = None,
) -> None:
    """A service's log, or all services' logs interleaved; `logs DAG TASK` shows a task's log."""
    app: App = ctx.obj
    if tail < 0:
        raise UsageError("--tail must be 0 or more")
    if task is not None:
        from mlflowctl.cli.runs import show_task_logs

        return show_task_logs(
            app, service, task, run=run, try_number=try_number, follow=follow, url=url, user=user, home=home
        )
    config = app.config(backend=backend, home=home)
    lines = app.backend(config, announce=False).logs(service, tail=tail, follow=follow)
    try:
        for line in lines:
            app.echo(line)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `mlwf logs | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def config(
    ctx: typer.Context,
    as_json: Json = False,
    home: Home = None,
    show_password: Annotated[
        bool, typer.Option("--show-password", help="Print only the admin password of this project's stack.")
    ] = False,
    wide: Wide = False,
) -> None:
    """The effective configuration and where each value came from (secrets masked)."""
    from mlflowctl.render.layout import whole
    from mlflowctl.render.stack import config_table, mask

    app: App = ctx.obj
    settings = app.config(home=home)
    if show_password:
        from mlflowctl.ui import password

        app.echo(password(settings, "airflow"))
        return
    items = settings.items()
    if as_json:
        data = {
            name: {"value": mask(value) if secret else value, "source": source} for name, value, source, secret in items
        }
        data["project_root"] = {"value": str(settings.project_root), "source": "found"}
        app.echo(json.dumps(data, indent=2))
        return
    app.show(whole(f"project: {settings.project_root}"))
    app.show(config_table(items, width=app.width))


COMMANDS = {"up": up, "restart": restart, "down": down, "status": status, "logs": logs, "config": config}
