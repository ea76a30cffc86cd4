"""The web UIs: open them, and show the generated password (issue: browser)."""

from __future__ import annotations

from mlflowctl.errors import NotAvailableError


def _not_yet(name: str):
    def command() -> None:
        raise NotAvailableError(f"`mlwf {name}` is not implemented yet")

    command.__doc__ = f"{name} (not implemented yet)."
    return command


COMMANDS = {name: _not_yet(name) for name in ("open", "password")}
