"""What every command takes (`ctx.obj`): built once at the root, replaced whole by tests.

It holds the consoles, the configuration (loaded from a command's flags), the backend
factory and the Airflow client factory with its password resolver. A test passes its own
`App(backends=..., transport=..., ask=...)` to `CliRunner().invoke(app, args, obj=...)`: a
fake backend that satisfies `backends.base.Backend` and an `httpx.MockTransport` server.
Nothing heavy is imported here: rich, httpx and the backends load when first used.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from rich.console import Console

    from mlflowctl.api.airflow import AirflowClient
    from mlflowctl.backends.base import Backend
    from mlflowctl.config import Config

WIDE = 10_000  # the width --wide output is printed at (tables keep their natural width)
#: Builds the backend for a configuration: (backend, 'backend: NAME (why)').
BackendFactory = Callable[["Config"], "tuple[Backend, str]"]


def ask_on_terminal(prompt: str) -> str | None:
    """A hidden prompt on stderr when stdin is a terminal; None when there is none or the user gave up."""
    import typer

    if not sys.stdin.isatty():
        return None
    try:
        return typer.prompt(prompt, hide_input=True, err=True)
    except typer.Abort:  # Ctrl-C or end of input at the prompt
        return None


def _chosen_backend(config: Config):
    from mlflowctl.backends.choose import make_backend

    return make_backend(config)


class App:
    def __init__(
        self,
        *,
        backends: BackendFactory = _chosen_backend,
        transport: Any = None,
        ask: Callable[[str], str | None] | None = ask_on_terminal,
        out: Console | None = None,
        err: Console | None = None,
    ) -> None:
        self._backends = backends
        self._transport = transport  # an httpx transport for every Airflow client; None: the network
        self._ask = ask
        self._out, self._err = out, err
        self.wide = False  # --wide: every column whole, however wide the terminal
        self.quiet = False  # --quiet: only results (echo) and errors (alert)

    # -- output: tables through rich, raw text (JSON, log lines) as it is --------------------
    # Rich honours NO_COLOR and FORCE_COLOR; a live view redraws only where the console really
    # is a terminal (FORCE_COLOR in a CI log gives colours, not redraws): see `live`.

    @functools.cached_property
    def out(self) -> Console:
        from rich.console import Console

        return self._out or Console()

    @functools.cached_property
    def err(self) -> Console:
        from rich.console import Console

        return self._err or Console(stderr=True)

    def echo(self, text: str) -> None:
        """A line on stdout exactly as given (JSON, a URL, a log line): no markup, wrapping or cropping."""
        self.out.file.write(text + "\n")
        self.out.file.flush()

    @property
    def width(self) -> int | None:
        """The width tables are laid out for: stdout's, or None (every column whole) with --wide."""
        return None if self.wide else self.out.width

    def show(self, renderable: Any) -> None:
        """A table or report on stdout (not with --quiet). Never cropped: a line that holds
        something to copy stays whole, and with --wide so does every table."""
        if self.quiet:
            return
        if not self.wide:
            self.out.print(renderable, crop=False)
            return
        # --wide: laid out for no width at all; rich must not fit it to the terminal's
        width, self.out.width = self.out.width, WIDE
        try:
            self.out.print(renderable, crop=False)
        finally:
            self.out.width = width

    def say(self, text: str) -> None:
        """A line for the user on stderr (stdout carries only the command's result); not with --quiet."""
        if not self.quiet:
            self.alert(text)

    def alert(self, text: str) -> None:
        """A line on stderr even with --quiet: an error, its hint, a warning."""
        self.err.print(text, markup=False, highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.alert(f"warning: {message}")

    @staticmethod
    def live(console: Console) -> bool:
        """Whether a live view may redraw on `console`: a real terminal, not a dumb one, and
        not a file or pipe that FORCE_COLOR made look like one."""
        isatty = getattr(console.file, "isatty", None)
        return console.is_interactive and bool(isatty and isatty())

    # -- configuration, backend, Airflow client ---------------------------------------------

    def config(self, **overrides) -> Config:
        """The effective configuration: a command's flags (None: not given) over env and files."""
        from mlflowctl.config import load_config

        return load_config(overrides)

    def backend(self, config: Config, *, announce: bool = True) -> Backend:
        backend, why = self._backends(config)
        if announce and not self.quiet:
            self.err.print(why, style="dim", markup=False, highlight=False, soft_wrap=True)
        return backend

    def password(self, config: Config, *, interactive: bool = True) -> str:
        """The password for config's server (see mlflowctl.credentials); asked for only when `interactive`."""
        from mlflowctl.credentials import resolve_password

        return resolve_password(config, self._ask if interactive else None)

    def client(self, config: Config, *, interactive: bool = True, **options) -> AirflowClient:
        """A client for config's server; the password is resolved when the first request is sent.
        `options` go to AirflowClient (timeout, retry_for)."""
        from mlflowctl.api.airflow import AirflowClient

        return AirflowClient(
            config.api_url,
            config.airflow_user,
            lambda: self.password(config, interactive=interactive),
            home=config.home,
            transport=self._transport,
            warn=self.warn,
            **options,
        )


_default: App | None = None


def current() -> App:
    """The App of the command being run; where no click context is current (typer calls a
    command outside it), one default App for the process, so `--wide`/`--quiet` set on it hold."""
    import click

    global _default
    context = click.get_current_context(silent=True)
    found = context.find_object(App) if context is not None else None
    if found is not None:
        return found
    if _default is None:
        _default = App()
    return _default
