"""The root `mlwf` app: composes the command modules and maps errors to exit codes.

Command modules import nothing heavy at module level (no httpx, docker, Airflow,
pandas): `mlwf --help` must stay instant. Each command function is wrapped so a
`MlwfError` becomes one line on stderr and its documented exit code.
"""

from __future__ import annotations

import functools
from typing import Callable

import typer

from mlflowctl.cli import health, runs, scale, stack, web
from mlflowctl.errors import MlwfError

app = typer.Typer(
    name="mlwf",
    help="Run and watch ML pipelines on Apache Airflow 3.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def with_error_handling(command: Callable) -> Callable:
    """Turn `MlwfError` into a one-line message and its exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MlwfError as exc:
            from mlflowctl.render.console import stderr

            stderr().print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            if exc.hint:
                stderr().print(f"hint: {exc.hint}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def register(module) -> None:
    for name, function in module.COMMANDS.items():
        app.command(name)(with_error_handling(function))


for _module in (stack, runs, health, web, scale):
    register(_module)


def main() -> None:
    app()
