"""Options shared by several commands, spelled the same everywhere."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mlflowctl.cli.context import current


def _wide(value: bool) -> None:
    if value:
        current().wide = True


def _quiet(value: bool) -> None:
    if value:
        current().quiet = True


Json = Annotated[bool, typer.Option("--json", help="Print JSON (the same data as the table) for scripts.")]
Url = Annotated[
    Optional[str],
    typer.Option("--url", help="Airflow API server, e.g. http://127.0.0.1:8080 (env MLWF_AIRFLOW_URL)."),
]
User = Annotated[Optional[str], typer.Option("--user", help="Airflow user (env MLWF_AIRFLOW_USER).")]
Home = Annotated[Optional[str], typer.Option("--home", help="State directory (env MLWF_HOME).")]
# Output, set on the App (cli/context.py) as the option is parsed: the command never reads them.
Wide = Annotated[
    bool,
    typer.Option("--wide", callback=_wide, expose_value=False, help="Every column, whole, however wide the terminal."),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", callback=_quiet, expose_value=False,
        help="Print only what a script needs: the result (e.g. the run id) and why it failed.",
    ),
]
