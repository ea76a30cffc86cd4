"""The web UIs: `mlwf open [airflow|prometheus|grafana]` and `mlwf password`.

`open` opens the service's URL in the default browser where there is a display (or an
explicit $BROWSER), else prints it; `--print` only prints it, for scripts. The password
is never printed unless asked for with `mlwf password`.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Annotated, Mapping
from urllib.parse import urlsplit

import typer

from mlflowctl.cli.options import Home
from mlflowctl.errors import NotAvailableError, NotFoundError, UnreachableError, UsageError

SERVICES = ("airflow", "prometheus", "grafana")
#: Which secret logs a user into which UI (key in secrets.json).
PASSWORD_KEYS = {"airflow": "admin_password", "grafana": "grafana_password"}


def _config(home: str | None):
    from mlflowctl.config import load_config

    return load_config({"home": home})


def service_url(config, service: str) -> str:
    """The URL a user opens for `service` on the backend that runs (or would run) the stack."""
    if service not in SERVICES:
        raise UsageError(f"unknown service {service!r}: choose one of {', '.join(SERVICES)}")
    if service == "airflow":
        return config.api_url
    if service == "grafana":
        from mlflowctl.backends.choose import choose

        backend, why = choose(config)
        if backend != "docker":
            raise NotAvailableError(
                f"Grafana does not run on the {backend} backend ({why})",
                hint="the docker backend runs it (`mlwf up --backend docker`); "
                "here use Prometheus: `mlwf open prometheus`",
            )
        return f"http://127.0.0.1:{config.grafana_port}"
    return f"http://127.0.0.1:{config.prometheus_port}"


def answers(url: str, timeout: float = 1.0) -> bool:
    """True when something accepts a TCP connection at the URL's host and port."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def has_display(environ: Mapping[str, str] = os.environ, platform: str = sys.platform) -> bool:
    """Whether a graphical browser can be started: an explicit $BROWSER, macOS/Windows, or X/Wayland."""
    if environ.get("BROWSER"):
        return True
    if platform == "darwin" or platform.startswith("win"):
        return True
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def _note(text: str) -> None:
    """A line for the user on stderr: stdout carries only the URL, for scripts."""
    from mlflowctl.render.console import stderr

    stderr().print(text, markup=False, highlight=False, soft_wrap=True)


def open_(
    service: Annotated[str, typer.Argument(help="airflow, prometheus or grafana.")] = "airflow",
    print_only: Annotated[bool, typer.Option("--print", help="Only print the URL; never start a browser.")] = False,
    home: Home = None,
) -> None:
    """Open a web UI of the stack in your browser, or print its URL where there is no display."""
    service = service.lower()
    config = _config(home)
    url = service_url(config, service)
    up = answers(url)
    if print_only:
        print(url)
        if not up:
            _note(f"note: nothing answers at {url} now (`mlwf status` shows what runs)")
        return
    if not up:
        raise UnreachableError(
            f"nothing answers at {url}: {service} is not running",
            hint="`mlwf status` shows what runs; `mlwf up` starts what is missing",
        )
    print(url)
    if service == "airflow":
        _note(f"log in as {config.airflow_user}; the password: `mlwf password`")
    if not has_display():
        _note("no display here: open the URL above in a browser yourself")
        return
    import webbrowser

    if not webbrowser.open(url):
        _note("no browser could be started: open the URL above yourself")


def password(
    service: Annotated[str, typer.Argument(help="airflow (the admin user) or grafana.")] = "airflow",
    home: Home = None,
) -> None:
    """Print the generated password of this project's stack (Airflow's admin user by default)."""
    import json

    from mlflowctl.secrets import SECRETS_FILE

    service = service.lower()
    if service not in PASSWORD_KEYS:
        raise UsageError(f"no password for {service!r}: choose one of {', '.join(PASSWORD_KEYS)}")
    path = _config(home).home_dir / SECRETS_FILE
    try:
        value = json.loads(path.read_text())[PASSWORD_KEYS[service]]
    except (OSError, ValueError, LookupError, TypeError):
        raise NotFoundError(
            f"no generated password in {path}", hint="`mlwf up` generates it; run in the project whose stack this is"
        ) from None
    print(value)


COMMANDS = {"open": open_, "password": password}
