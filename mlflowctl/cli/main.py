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
from pathlib import Path
from typing import Annotated, Callable

import typer

from mlflowctl.cli import dagcheck, doctor, health, models, objects, runs, scale, stack, web, worker
from mlflowctl.cli.context import App, current
from mlflowctl.cli.options import OUTPUT_OPTIONS
from mlflowctl.errors import MlwfError

COMMAND_MODULES = (stack, runs, dagcheck, health, web, scale, doctor)
GROUP_MODULES = (models, objects, worker)  # each a sub-app `mlwf <name>` its GROUP (name, help) names


def _show_version(value: bool) -> None:
    if not value:
        return
    from mlflowctl import __version__
    from mlflowctl.backends.runtime import installed_runtime
    from mlflowctl.config import find_project_root

    runtime = installed_runtime(find_project_root() or Path.cwd())
    typer.echo(f"mlwf {__version__}")
    if runtime is None:
        typer.echo("Airflow: no runtime yet (`mlwf up` or `mlwf test` builds it from requirements/runtime.txt)")
    else:
        kind = "managed" if runtime.managed else "this interpreter's"
        typer.echo(f"Airflow {runtime.version or 'unknown'} ({kind} runtime, {runtime.bin_dir})")
    raise typer.Exit()


def root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_show_version, help="Show mlwf's and the Airflow runtime's versions."
        ),
    ] = False,
) -> None:
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


def register(module, into: typer.Typer, only: str | None = None) -> None:
    """The module's COMMANDS (or just `only`) on `into`, each wrapped like every other command."""
    for name, function in module.COMMANDS.items():
        if only in (None, name):
            into.command(name)(with_error_handling(function))


def group(module) -> typer.Typer:
    """The module's COMMANDS as the sub-app its GROUP (name, help) names."""
    name, help_text = module.GROUP
    sub = typer.Typer(name=name, help=help_text, no_args_is_help=True, rich_markup_mode=None)
    register(module, sub)
    return sub


def build(only: str | None = None) -> typer.Typer:
    """The `mlwf` app: every command, or with `only` just that command or group. Typer turns
    the registered commands into click's on every run: ~50 ms of CPU for all of mlwf's, 3 ms
    for one, in each of the twenty `mlwf trigger` of a burst (issue 22)."""
    built = typer.Typer(
        name="mlwf",
        help="Run and watch ML pipelines on Apache Airflow 3.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )
    built.callback()(root)
    for module in COMMAND_MODULES:
        register(module, built, only)
    for module in GROUP_MODULES:
        if only in (None, module.GROUP[0]):
            built.add_typer(group(module))
    return built


app = build()
NAMES = {name for module in COMMAND_MODULES for name in module.COMMANDS} | {m.GROUP[0] for m in GROUP_MODULES}


def main() -> None:
    """Run the command named first on the command line, built alone; the whole app for help,
    an unknown name (click suggests the near ones) and shell completion (it lists them all).

    At the end the garbage collector is told to leave every object alone: the interpreter's
    last collections walk all of them as the process exits (~40 ms of a 0.3 s `status`), and
    mlwf leaves nothing that needs finalizing in a reference cycle (files and clients are
    closed by `with`)."""
    import gc
    import sys

    named = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    alone = named in NAMES and "_MLWF_COMPLETE" not in os.environ
    try:
        (build(named) if alone else app)()
    finally:
        gc.freeze()
