"""`mlwf models list | show | diff | promote | rollback | events`: the model registry, no server needed.

Exit codes: 4 unknown version, no registry, or nothing to roll back; 16 a damaged metadata.json
or production.json, or a model file that does not match its sha256 (`list` and `show` print
what they can first); 15 another deploy, promotion or rollback held the registry's lock past
`--wait`; 17 the promotion gate refused the version; 2 bad input.
The logic is in `mlflowctl.models`; nothing heavy is imported.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

from mlflowctl.cli.context import current
from mlflowctl.cli.options import Home, Json, Wide, finite
from mlflowctl.errors import DamagedStateError, UsageError

Registry = Annotated[
    Optional[str],
    typer.Option("--registry", help="Registry directory (default: the local stack's, or MLWF_REGISTRY_DIR)."),
]
Wait = Annotated[
    float, typer.Option("--wait", callback=finite, min=0, help="Seconds to wait for another deploy, promotion or rollback to finish.")
]
Version = Annotated[str, typer.Argument(help="A version: 3, v3 or v0003.")]


def _print_json(data: Any) -> None:
    current().echo(json.dumps(data, indent=2, default=str))


def _print(renderable: Any) -> None:
    current().show(renderable)


def _width() -> int | None:
    return current().width


def list_versions(home: Home = None, registry: Registry = None, as_json: Json = False, wide: Wide = False) -> None:
    """Every version: created, model type, headline metrics, data fingerprint, gate verdict, production."""
    from mlflowctl import models
    from mlflowctl.render.models import versions_table

    data = models.list_versions(models.open_registry(home, registry)[0])
    _print_json(data) if as_json else _print(versions_table(data, width=_width()))
    if data["damaged"]:
        raise DamagedStateError(data["damaged"][0])


def show(
    version: Version, home: Home = None, registry: Registry = None, as_json: Json = False, wide: Wide = False
) -> None:
    """All of a version's metadata; its model file is checked against the recorded sha256."""
    from mlflowctl import models
    from mlflowctl.render.models import version_detail

    data = models.show(models.open_registry(home, registry)[0], models.version_name(version))
    _print_json(data) if as_json else _print(version_detail(data, width=_width()))
    if data["integrity"] != "ok":
        raise DamagedStateError(f"model file of {data['version']} is {data['integrity']}: it is never loaded or promoted")


def diff(
    first: Version,
    second: Version,
    home: Home = None,
    registry: Registry = None,
    as_json: Json = False,
    wide: Wide = False,
) -> None:
    """Two versions side by side: metrics with deltas, parameters, data, library versions."""
    from mlflowctl import models
    from mlflowctl.render.models import diff_tables

    reg = models.open_registry(home, registry)[0]
    data = models.diff(reg, models.version_name(first), models.version_name(second))
    _print_json(data) if as_json else _print(diff_tables(data, width=_width()))


def promote(
    version: Version,
    force: Annotated[bool, typer.Option("--force", help="Promote even if the gate refuses (needs --reason).")] = False,
    reason: Annotated[Optional[str], typer.Option("--reason", help="Why it is forced; goes to the events log.")] = None,
    home: Home = None,
    registry: Registry = None,
    wait: Wait = 30.0,
    as_json: Json = False,
) -> None:
    """Make VERSION production if the promotion gate of the pipeline passes it; a tampered model never."""
    from mlflowctl import models
    from mlflowctl.render.models import change_line

    if force and not (reason or "").strip():
        raise UsageError("--force needs --reason TEXT: why the gate is overridden goes to the events log")
    if reason is not None and not force:
        raise UsageError("--reason goes with --force")
    reg, settings = models.open_registry(home, registry)
    data = models.promote(reg, settings, models.version_name(version), force_reason=reason if force else None, wait=wait)
    _print_json(data) if as_json else _print(change_line(data))


def rollback(
    to: Annotated[Optional[str], typer.Option("--to", help="The version to go back to (default: the previous one).")] = None,
    home: Home = None,
    registry: Registry = None,
    wait: Wait = 30.0,
    as_json: Json = False,
) -> None:
    """Point production back at the version it replaced last, or at --to VERSION."""
    from mlflowctl import models
    from mlflowctl.render.models import change_line

    reg = models.open_registry(home, registry)[0]
    data = models.rollback(reg, models.version_name(to) if to is not None else None, wait=wait)
    _print_json(data) if as_json else _print(change_line(data))


def events(home: Home = None, registry: Registry = None, as_json: Json = False, wide: Wide = False) -> None:
    """The registry's audit trail: registered, promoted, not_promoted, rolled_back."""
    from mlflowctl import models
    from mlflowctl.render.models import events_table

    data = models.events(models.open_registry(home, registry)[0])
    _print_json(data) if as_json else _print(events_table(data, width=_width()))


COMMANDS = {
    "list": list_versions,
    "show": show,
    "diff": diff,
    "promote": promote,
    "rollback": rollback,
    "events": events,
}


#: `mlwf models ...`: the sub-app main.py makes of COMMANDS (name, help).
GROUP = ("models", "The model registry: list, show, diff, promote, rollback, events.")
