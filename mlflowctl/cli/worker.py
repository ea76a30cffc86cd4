"""`mlwf worker token|join|leave`: Celery workers on other hosts (backends/local/joining.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from mlflowctl.cli.context import App
from mlflowctl.cli.options import Home, Json, Quiet, Wide, finite
from mlflowctl.errors import NotAvailableError, UnhealthyError


def _local(app: App, config):
    backend = app.backend(config, announce=False)
    if not hasattr(backend, "worker_token"):
        raise NotAvailableError(f"the {backend.name} backend cannot join workers from other hosts")
    return backend


def token(
    ctx: typer.Context,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the join file here (0600) instead of stdout.")] = None,
    home: Home = None,
    quiet: Quiet = False,
) -> None:
    """On the head: the join file for `mlwf worker join` (credentials, CA, DAG digest); keep it private."""
    from mlflowctl.backends.local.joining import write_token

    app: App = ctx.obj
    data = _local(app, app.config(backend="local", home=home)).worker_token()
    if out is None:
        app.echo(json.dumps(data, indent=2))
        return
    write_token(out, data)
    app.say(f"wrote {out} (mode 0600): it holds the stack's passwords; copy it to the worker host privately")


def join(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The join file from the head's `mlwf worker token`.")],
    workers: Annotated[int, typer.Option("--workers", min=1, max=32, help="Workers to start on this host.")] = 2,
    home: Home = None,
    as_json: Json = False,
    quiet: Quiet = False,
    wide: Wide = False,
) -> None:
    """On another host: check the head and this host's DAG files, then start workers for it."""
    from mlflowctl.cli.stack import holding_state, stack_result

    app: App = ctx.obj
    config = app.config(backend="local", home=home)
    backend = _local(app, config)
    with holding_state(app, config, "mlwf worker join"):
        status = backend.worker_join(file, workers)
    stack_result(app, status, as_json=as_json)


def leave(
    ctx: typer.Context,
    timeout: Annotated[
        float, typer.Option("--timeout", callback=finite, min=0.1, help="Seconds running tasks may take to finish.")
    ] = 600.0,
    home: Home = None,
    quiet: Quiet = False,
) -> None:
    """Stop this host's joined workers with a warm shutdown (running tasks finish first)."""
    from mlflowctl.cli.stack import holding_state, print_notes

    app: App = ctx.obj
    config = app.config(backend="local", home=home)
    with holding_state(app, config, "mlwf worker leave", create=False):
        status = _local(app, config).worker_leave(timeout)
    print_notes(app, status.notes)
    if any("killed" in note for note in status.notes):
        raise UnhealthyError("a worker did not finish its tasks within --timeout and was killed")


COMMANDS = {"token": token, "join": join, "leave": leave}


#: `mlwf worker ...`: the sub-app main.py makes of COMMANDS (name, help).
GROUP = ("worker", "Celery workers on other hosts: token on the head, join and leave there.")
