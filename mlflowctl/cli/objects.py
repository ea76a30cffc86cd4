"""`mlwf objects export | import`: the connections, variables and pools of any Airflow 3 server,
in Astronomer's `airflow_settings.yaml` format, through the REST API.

`up` applies the project's own declarations with `apply_declared` (mlflowctl/objects.py holds
the logic). Exit codes: 2 a malformed file; 18 the server refused an object; 3, 5, 13 as every
API command.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from mlflowctl.cli.context import App
from mlflowctl.cli.options import Home, Json, Quiet, Url, User, Wide

if TYPE_CHECKING:
    from mlflowctl.config import Config
    from mlflowctl.objects import Applied, Declared


def apply_declared(app: App, config: Config, items: list[Declared]) -> list[Applied]:
    """`up`: the project's objects onto the local stack it just started (never another --url)."""
    from mlflowctl import objects

    if not items:
        return []
    app.say(f"applying {len(items)} Airflow object(s) from the project")
    with app.client(replace(config, airflow_url=""), interactive=False) as client:
        return objects.apply(client, items)


def export(
    ctx: typer.Context,
    file: Annotated[Optional[Path], typer.Argument(help="Where to write (default: stdout).")] = None,
    include_secrets: Annotated[
        bool, typer.Option("--include-secrets", help="Write passwords and secret values as the server shows them (file mode 0600).")
    ] = False,
    as_json: Json = False,
    url: Url = None,
    user: User = None,
    home: Home = None,
    quiet: Quiet = False,
) -> None:
    """Write the server's connections, variables and pools as an airflow_settings.yaml (secrets masked)."""
    from mlflowctl import objects
    from mlflowctl.cli.runs import connect

    app: App = ctx.obj
    with connect(app, url, user, home) as client:
        found = objects.export(client, include_secrets=include_secrets)
    summary = {"file": str(file) if file else None, "counts": found.counts, "masked": found.masked}
    if file is None:
        app.echo(json.dumps(found.data, indent=2) if as_json else objects.to_yaml(found.data).rstrip("\n"))
    else:
        objects.write_file(file, objects.to_yaml(found.data), private=include_secrets)
        if as_json:
            app.echo(json.dumps(summary, indent=2))
        else:
            counts = ", ".join(f"{n} {kind}" for kind, n in found.counts.items())
            app.say(f"wrote {counts} to {file}")
    if found.masked:
        why = "the server hides them" if include_secrets else "without --include-secrets"
        app.say(f"{found.masked} secret value(s) written as '***' ({why}); importing keeps the target's own values for them")


def import_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="An airflow_settings.yaml (astro's format).")],
    as_json: Json = False,
    url: Url = None,
    user: User = None,
    home: Home = None,
    quiet: Quiet = False,
    wide: Wide = False,
) -> None:
    """Create or update the file's connections, variables and pools on a running server (idempotent)."""
    from mlflowctl import objects
    from mlflowctl.cli.runs import connect
    from mlflowctl.render.objects import applied_json, applied_table, summary

    app: App = ctx.obj
    items = objects.read_astro_file(file)
    with connect(app, url, user, home) as client:
        applied = objects.apply(client, items)
    if as_json:
        app.echo(json.dumps(applied_json(applied), indent=2))
        return
    app.show(applied_table(applied, width=app.width))
    app.say(summary(applied))


COMMANDS = {"export": export, "import": import_}


#: `mlwf objects ...`: the sub-app main.py makes of COMMANDS (name, help).
GROUP = ("objects", "Connections, variables and pools: export and import (astro's format).")
