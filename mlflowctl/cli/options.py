"""Options shared by several commands, spelled the same everywhere."""

from __future__ import annotations

from typing import Annotated, Optional

import typer


Json = Annotated[bool, typer.Option("--json", help="Print JSON (the same data as the table) for scripts.")]
Url = Annotated[
    Optional[str],
    typer.Option("--url", help="Airflow API server, e.g. http://127.0.0.1:8080 (env MLWF_AIRFLOW_URL)."),
]
User = Annotated[Optional[str], typer.Option("--user", help="Airflow user (env MLWF_AIRFLOW_USER).")]
Home = Annotated[Optional[str], typer.Option("--home", help="State directory (env MLWF_HOME).")]
# How output looks: taken off by the root's wrapper (cli/main.py) and set on the App
# (`app.wide`, `app.quiet`); the command itself never reads them.
OUTPUT_OPTIONS = ("wide", "quiet")
Wide = Annotated[bool, typer.Option("--wide", help="Every column, whole, however wide the terminal.")]
Quiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Print only what a script needs: the result (e.g. the run id) and why it failed."),
]


def finite(value: float | None) -> float | None:
    """The callback of every number-of-seconds option: click's FloatRange lets `nan` through
    (every comparison with it is false), and `inf` where no maximum is set."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter("must be a finite number")
    return value
