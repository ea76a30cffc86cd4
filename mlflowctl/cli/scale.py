"""`mlwf scale workers N`: add or remove Celery workers of the running stack, on either backend."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mlflowctl.cli.context import App
from mlflowctl.cli.options import Home, Json, Quiet, Wide, finite
from mlflowctl.errors import NotAvailableError, UnhealthyError, UsageError


def scale(
    ctx: typer.Context,
    what: Annotated[str, typer.Argument(help="What to scale: workers.")],
    count: Annotated[int, typer.Argument(help="How many there should be (at least 1).")],
    backend: Annotated[
        Optional[str], typer.Option("--backend", help="auto, local or docker (env MLWF_BACKEND).")
    ] = None,
    home: Home = None,
    timeout: Annotated[float, typer.Option("--timeout", callback=finite, min=0.1, help="Seconds to wait for new workers to be healthy.")] = 120.0,
    as_json: Json = False,
    quiet: Quiet = False,
    wide: Wide = False,
) -> None:
    """Add or remove Celery workers of the running stack; removed workers finish their running tasks first."""
    from mlflowctl.cli.stack import holding_state, stack_result, watch_start
    from mlflowctl.config import MAX_WORKERS

    if what != "workers":
        raise UsageError(f"cannot scale {what!r}: only `mlwf scale workers N`")
    if count < 1:
        raise UsageError("workers must be at least 1 (`mlwf down` stops the stack)")
    if count > MAX_WORKERS:
        raise UsageError(f"{count} workers is more than one machine runs (at most {MAX_WORKERS}); nothing was started")
    app: App = ctx.obj
    config = app.config(backend=backend, home=home)
    chosen = app.backend(config)
    watch, report = watch_start(app, chosen.name)
    with holding_state(app, config, f"mlwf scale workers {count}", create=False), watch:
        status = _scaler(chosen)(count, progress=report, timeout=timeout)
    stack_result(app, status, as_json=as_json)
    if not status.healthy:
        raise UnhealthyError("scaled, but not every service is healthy")


def _scaler(backend):
    """The backend's `scale` when it implements `Scaling`; others cannot scale."""
    from mlflowctl.backends.base import Scaling

    if isinstance(backend, Scaling):
        return backend.scale
    raise NotAvailableError(f"the {backend.name} backend cannot scale workers")


COMMANDS = {"scale": scale}
