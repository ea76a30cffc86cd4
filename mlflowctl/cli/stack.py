"""Stack lifecycle commands: up, down, status, logs, config.

Each command loads the effective config, picks the backend (saying which), calls one
backend method and renders its dataclasses. `status DAG` and `logs DAG TASK` hand over
to the API commands in `mlflowctl.cli.runs`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, List, Optional

import typer

from mlflowctl.cli.options import Home, Json, Url, User
from mlflowctl.errors import NotAvailableError, StackDownError, UnhealthyError, UsageError

Backend = Annotated[
    Optional[str], typer.Option("--backend", help="auto, local or docker (env MLWF_BACKEND).")
]


def _config(**overrides):
    from mlflowctl.config import load_config

    return load_config(overrides)


def _backend(config, *, announce: bool = True):
    from mlflowctl.backends.select import make_backend
    from mlflowctl.render.console import stderr

    backend, why = make_backend(config)
    if announce:
        stderr().print(why, style="dim", markup=False, highlight=False)
    return backend


def holding_state(config, command: str, *, create: bool = True):
    """The state directory's lock for a command that changes the stack (up, down, scale)."""
    from mlflowctl.render.console import stderr
    from mlflowctl.state import locked

    return locked(
        config.home_dir,
        config.project_root,
        command=command,
        wait=config.lock_wait,
        on_wait=lambda message: stderr().print(message, markup=False, highlight=False),
        create=create,
    )


def _print_notes(notes: list[str]) -> None:
    from mlflowctl.render.console import stderr

    for note in notes:
        stderr().print(note, markup=False, highlight=False)


def up(
    exclude: Annotated[
        Optional[List[str]],
        typer.Option("--exclude", help="Skip an optional service group or a service (repeatable), e.g. monitoring."),
    ] = None,
    backend: Backend = None,
    home: Home = None,
    executor: Annotated[Optional[str], typer.Option("--executor", help="local or celery (env MLWF_EXECUTOR).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Celery workers (env MLWF_WORKERS).")] = None,
    database: Annotated[
        Optional[str],
        typer.Option("--database", help="postgres or sqlite, for a new stack; an existing one keeps its own (env MLWF_DATABASE)."),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=0.1, help="Seconds for the whole start: migration, launcher, health (a runtime build not counted)."
        ),
    ] = 120.0,
    as_json: Json = False,
) -> None:
    """Start the stack (idempotent: only what is not running) and wait until it is healthy."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from mlflowctl.backends.base import StartFailed
    from mlflowctl.backends.select import record_backend
    from mlflowctl.render.console import stderr, stdout
    from mlflowctl.render.stack import services_table, status_json

    config = _config(backend=backend, home=home, executor=executor, workers=workers, database=database)
    chosen = _backend(config)
    console = stderr()
    live = Live(console=console, transient=True, refresh_per_second=8) if console.is_terminal else None

    def progress(message: str, services) -> None:
        if live is not None:
            parts = [Text(message, style="bold")]
            if services:
                parts.append(services_table(services, backend=chosen.name, title="starting"))
            live.update(Group(*parts))
        elif not services or message.startswith(("migrating", "runtime", "creating")):
            console.print(message, markup=False, highlight=False)

    try:
        with holding_state(config, "mlwf up"):
            if live is not None:
                live.start()
            status = chosen.up(exclude=frozenset(exclude or ()), progress=progress, timeout=timeout)
            record_backend(config, chosen.name)
    except StartFailed as failure:
        if live is not None:
            live.stop()
        if failure.log_tail:  # a migration that waits on a lock writes nothing
            console.print(f"last lines of {failure.service}'s log:", style="bold red", markup=False)
        for line in failure.log_tail:
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
        raise
    finally:
        if live is not None:
            live.stop()
    if as_json:
        print(json.dumps(status_json(status, None), indent=2))
    else:
        _print_notes(status.notes)
        stdout().print(services_table(status.services, backend=chosen.name, database=status.database))
        stdout().print(
            f"Airflow UI: {config.api_url}  user: {config.airflow_user}  password: kept in "
            f"{config.home_dir / 'secrets.json'} (show it with `mlwf config --show-password`)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if not status.healthy:
        raise UnhealthyError("the stack started but not every service is healthy")


def down(
    volumes: Annotated[
        bool, typer.Option("--volumes", help="Also delete the state directory: database, logs, data, secrets.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before deleting with --volumes.")] = False,
    backend: Backend = None,
    home: Home = None,
) -> None:
    """Stop every service (TERM, TERM again, then KILL); data is kept unless --volumes."""
    config = _config(backend=backend, home=home)
    if volumes:
        from mlflowctl.state import check_removable

        check_removable(config.home_dir, config.project_root)  # refused before anything stops
    if volumes and not yes:
        if not sys.stdin.isatty():
            raise UsageError("--volumes deletes all state and data; confirm with --yes when not interactive")
        if not typer.confirm(f"Delete {config.home} (metadata database, logs, pipeline data, secrets)?"):
            raise UsageError("nothing deleted")
    with holding_state(config, "mlwf down", create=False):
        status = _backend(config).down(volumes=volumes)
    _print_notes(status.notes)
    from mlflowctl.render.console import stdout

    stdout().print("stack stopped", markup=False)


def status(
    dag: Annotated[Optional[str], typer.Argument(help="A DAG: its recent runs and task durations.")] = None,
    as_json: Json = False,
    backend: Backend = None,
    home: Home = None,
    url: Url = None,
    user: User = None,
) -> None:
    """Services (state, pid, uptime, port) and DAGs (paused, last run, next run); exit 0 only when healthy."""
    if dag is not None:
        try:
            from mlflowctl.cli.runs import show_dag_status  # type: ignore[attr-defined]
        except ImportError:
            raise NotAvailableError("`mlwf status DAG` is not available in this mlwf version") from None
        return show_dag_status(dag, url=url, user=user, as_json=as_json, home=home)

    from mlflowctl.render.console import stdout
    from mlflowctl.render.stack import dags_table, services_table, status_json

    from concurrent.futures import ThreadPoolExecutor

    # As in `mlwf health`: httpcore's optional trio import costs ~80 ms CPU and is never used here.
    sys.modules.setdefault("trio", None)  # type: ignore[arg-type]
    config = _config(backend=backend, home=home, airflow_url=url, airflow_user=user)
    chosen = _backend(config, announce=False)
    with ThreadPoolExecutor(max_workers=2) as pool:  # the DAGs table does not wait for the probes
        dags_future = pool.submit(_dags, config)
        stack = chosen.status()
        dags, dags_error = dags_future.result()
    if not any(s.name == "api-server" and s.state == "healthy" for s in stack.services):
        dags, dags_error = None, None
    if as_json:
        print(json.dumps(status_json(stack, dags, dags_error), indent=2))
    else:
        console = stdout()
        console.print(services_table(stack.services, backend=stack.backend, database=stack.database))
        if dags is not None:
            console.print(dags_table(dags))
        elif dags_error:
            console.print(f"DAGs: {dags_error}", markup=False)
    if not stack.running:
        raise StackDownError("the stack is not running", hint="start it with `mlwf up`")
    if not stack.healthy:
        bad = [f"{s.name} {s.state}" for s in stack.services if s.state != "healthy"]
        raise UnhealthyError(f"not every service is healthy: {', '.join(bad)}", hint="`mlwf up` restarts stopped services")


def _dags(config):
    from mlflowctl.backends.overview import dag_overview
    from mlflowctl.cli.runs import _warn
    from mlflowctl.credentials import known_password, no_password
    from mlflowctl.errors import MlwfError

    password = known_password(config)
    if not password:
        error = no_password(config)
        return None, f"{error} ({error.hint})"
    try:
        return dag_overview(config.api_url, config.airflow_user, password, home=config.home_dir, warn=_warn), None
    except MlwfError as exc:
        return None, str(exc)


def logs(
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
    if tail < 0:
        raise UsageError("--tail must be 0 or more")
    if task is not None:
        try:
            from mlflowctl.cli.runs import show_task_logs  # type: ignore[attr-defined]
        except ImportError:
            raise NotAvailableError("`mlwf logs DAG TASK` is not available in this mlwf version") from None
        return show_task_logs(
            service, task, run=run, try_number=try_number, follow=follow, url=url, user=user, home=home
        )
    config = _config(backend=backend, home=home)
    lines = _backend(config, announce=False).logs(service, tail=tail, follow=follow)
    out = sys.stdout
    try:
        for line in lines:
            out.write(line + "\n")
            if follow:
                out.flush()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `mlwf logs | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def config(
    as_json: Json = False,
    home: Home = None,
    show_password: Annotated[
        bool, typer.Option("--show-password", help="Print only the admin password of this project's stack.")
    ] = False,
) -> None:
    """The effective configuration and where each value came from (secrets masked)."""
    from mlflowctl.render.console import stdout
    from mlflowctl.render.stack import config_table, mask

    settings = _config(home=home)
    if show_password:
        from mlflowctl.errors import NotFoundError
        from mlflowctl.secrets import read_admin_password

        password = read_admin_password(settings.home_dir)
        if password is None:
            raise NotFoundError(f"no generated password in {settings.home}: run `mlwf up` first")
        print(password)
        return
    items = settings.items()
    if as_json:
        data = {
            name: {"value": mask(value) if secret else value, "source": source} for name, value, source, secret in items
        }
        data["project_root"] = {"value": str(settings.project_root), "source": "found"}
        print(json.dumps(data, indent=2))
        return
    console = stdout()
    console.print(f"project: {settings.project_root}", markup=False, highlight=False)
    console.print(config_table(items))


COMMANDS = {"up": up, "down": down, "status": status, "logs": logs, "config": config}
