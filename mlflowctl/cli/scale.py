"""`mlwf scale workers N`: add or remove Celery workers of the running stack, on either backend."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from mlflowctl.cli.options import Home, Json
from mlflowctl.errors import UnhealthyError, UsageError


def scale(
    what: Annotated[str, typer.Argument(help="What to scale: workers.")],
    count: Annotated[int, typer.Argument(help="How many there should be (at least 1).")],
    backend: Annotated[
        Optional[str], typer.Option("--backend", help="auto, local or docker (env MLWF_BACKEND).")
    ] = None,
    home: Home = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for new workers to be healthy.")] = 120.0,
    as_json: Json = False,
) -> None:
    """Add or remove Celery workers of the running stack; removed workers finish their running tasks first."""
    from mlflowctl.cli.stack import _backend, _config, _print_notes, holding_state
    from mlflowctl.render.console import stderr, stdout
    from mlflowctl.render.stack import services_table, status_json

    if what != "workers":
        raise UsageError(f"cannot scale {what!r}: only `mlwf scale workers N`")
    if count < 1:
        raise UsageError("workers must be at least 1 (`mlwf down` stops the stack)")
    from mlflowctl.config import MAX_WORKERS

    if count > MAX_WORKERS:
        raise UsageError(f"{count} workers is more than one machine runs (at most {MAX_WORKERS}); nothing was started")
    config = _config(backend=backend, home=home)
    chosen = _backend(config)
    console = stderr()

    def progress(message: str, services) -> None:
        if not services or message.startswith(("warm", "all healthy")):
            console.print(message, markup=False, highlight=False)

    with holding_state(config, f"mlwf scale workers {count}", create=False):
        if hasattr(chosen, "scale"):
            status = chosen.scale(count, progress=progress, timeout=timeout)
        else:  # the local backend: its celery plugin does it
            from mlflowctl.backends.celery_local import scale as scale_local

            status = scale_local(chosen, count, progress=progress, timeout=timeout)
    if as_json:
        print(json.dumps(status_json(status, None), indent=2))
    else:
        _print_notes(status.notes)
        stdout().print(services_table(status.services, backend=status.backend))
    if not status.healthy:
        raise UnhealthyError("scaled, but not every service is healthy")


COMMANDS = {"scale": scale}
