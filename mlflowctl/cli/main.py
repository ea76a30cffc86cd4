"""The root `mlwf` app: builds the context commands take (cli/context.py), composes the command
modules and maps errors to exit codes.

Command modules import nothing heavy at module level (no httpx, docker, Airflow,
pandas): `mlwf --help` must stay instant. Each command function is wrapped so a
`MlwfError` becomes one line on stderr and its documented exit code, and any other
exception one line too (exit 1), its traceback kept in a crash file for a bug report.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import typer

from mlflowctl.cli import doctor, health, models, objects, runs, scale, stack, web
from mlflowctl.cli.context import App, current
from mlflowctl.cli.options import OUTPUT_OPTIONS
from mlflowctl.errors import MlwfError

app = typer.Typer(
    name="mlwf",
    help="Run and watch ML pipelines on Apache Airflow 3.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def root(ctx: typer.Context) -> None:
    # The one context object every command takes; a test passes its own with `invoke(obj=...)`.
    if ctx.obj is None:
        ctx.obj = App()


def _say(line: str) -> None:
    current().alert(line)


def with_error_handling(command: Callable) -> Callable:
    """Turn `MlwfError` into a one-line message and its exit code; anything else into one line,
    a crash file and exit 1. Typer's own exits and usage errors pass through as they are."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        given = getattr(kwargs.get("ctx"), "obj", None)  # typer's context (its own click, not `click`'s)
        app = given if isinstance(given, App) else current()
        for name in OUTPUT_OPTIONS:
            if kwargs.pop(name, False):
                setattr(app, name, True)
        try:
            return command(*args, **kwargs)
        except MlwfError as exc:
            _say(f"error: {exc}")
            if exc.hint:
                _say(f"hint: {exc.hint}")
            raise typer.Exit(exc.exit_code) from None
        except (typer.Exit, typer.Abort, typer.TyperException, BrokenPipeError):
            raise
        except Exception as exc:
            where = _write_crash(command.__name__, kwargs.get("home"))
            summary = (str(exc).splitlines() or [""])[0][:200]
            _say(f"error: unexpected {type(exc).__name__}{f': {summary}' if summary else ''} (a bug in mlwf)")
            _say(f"hint: the traceback is in {where}; please attach it to a bug report" if where else
                 "hint: the traceback could not be written to a file either; please report the command")
            raise typer.Exit(1) from None

    return wrapper


def _write_crash(command: str, home: str | None) -> str | None:
    """The traceback being handled, in a new private file: in the state directory when it exists
    and is writable, else in the temp directory. Its path, or None when neither could be written."""
    import datetime
    import tempfile
    import traceback

    from mlflowctl import __version__

    text = (
        f"mlwf {__version__}, command {command}, {datetime.datetime.now(datetime.timezone.utc).isoformat()}\n\n"
        f"{traceback.format_exc()}"
    )
    folders: list[str | None] = [None]
    try:
        from mlflowctl.config import load_config

        state = load_config({"home": home}).home_dir
        if state.is_dir() and os.access(state, os.W_OK):
            folders.insert(0, str(state))
    except Exception:  # the configuration may be what failed: the temp directory will do
        pass
    for folder in folders:
        try:
            descriptor, path = tempfile.mkstemp(prefix="mlwf-crash-", suffix=".txt", dir=folder)
            with os.fdopen(descriptor, "w", encoding="utf-8", errors="backslashreplace") as handle:
                handle.write(text)
            return path
        except OSError:
            continue
    return None


def register(module) -> None:
    for name, function in module.COMMANDS.items():
        app.command(name)(with_error_handling(function))


for _module in (stack, runs, health, web, scale, doctor):
    register(_module)
app.add_typer(models.group())
app.add_typer(objects.group())


def main() -> None:
    app()
