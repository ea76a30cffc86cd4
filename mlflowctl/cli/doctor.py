"""`mlwf doctor`: check this machine and project before `mlwf up` (mlflowctl/doctor.py does the checks).

Exit 0 when nothing blocks `up` (warnings allowed), 19 when something does, 2 for a bad setting.
"""

from __future__ import annotations

import json

import typer

from mlflowctl.cli.context import App
from mlflowctl.cli.options import Home, Json, Quiet, Wide
from mlflowctl.cli.stack import Backend
from mlflowctl.errors import DoctorFoundError


def doctor(
    ctx: typer.Context,
    as_json: Json = False,
    backend: Backend = None,
    home: Home = None,
    quiet: Quiet = False,
    wide: Wide = False,
) -> None:
    """Check Python and Airflow, ports, binaries, disk, memory, the DAG folder, the state directory and the clock."""
    from mlflowctl import doctor as checks
    from mlflowctl.render.doctor import findings_json, findings_table

    app: App = ctx.obj
    config = app.config(backend=backend, home=home)
    findings = checks.examine(config, app.backend(config, announce=False))
    if as_json:
        app.echo(json.dumps(findings_json(findings), indent=2))
    else:
        app.show(findings_table(findings, width=app.width))
    blocking = checks.blocking(findings)
    if blocking:
        first = blocking[0]
        more = f" (and {len(blocking) - 1} more)" if len(blocking) > 1 else ""
        raise DoctorFoundError(f"{first.check}: {first.detail}{more}", hint=first.fix or None)


COMMANDS = {"doctor": doctor}
