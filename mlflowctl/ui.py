"""The stack's web UIs, for `mlwf open` and `mlwf password`: which URL serves which UI, whether
it answers, whether a browser can be shown here, and which generated password logs into it."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Mapping
from urllib.parse import urlsplit

from mlflowctl.errors import NotAvailableError, NotFoundError, UsageError

if TYPE_CHECKING:
    from mlflowctl.config import Config

SERVICES = ("airflow", "prometheus", "grafana")
#: Which secret logs a user into which UI (key in secrets.json).
PASSWORD_KEYS = {"airflow": "admin_password", "grafana": "grafana_password"}


def service_url(config: Config, service: str) -> str:
    """The URL a user opens for `service` on the backend that runs (or would run) the stack."""
    from mlflowctl.config import local_url

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
        return local_url(config.grafana_port)
    return local_url(config.prometheus_port)


def answers(url: str, timeout: float = 1.0) -> bool:
    """True when something accepts a TCP connection at the URL's host and port."""
    from mlflowctl.backends.ports import answers as tcp_answers

    parts = urlsplit(url)
    return tcp_answers(parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80), timeout)


def has_display(environ: Mapping[str, str] = os.environ, platform: str = sys.platform) -> bool:
    """Whether a graphical browser can be started: an explicit $BROWSER, macOS/Windows, or X/Wayland."""
    if environ.get("BROWSER"):
        return True
    if platform == "darwin" or platform.startswith("win"):
        return True
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def password(config: Config, service: str) -> str:
    """The generated password that logs into `service`'s UI on this project's stack."""
    from mlflowctl.secrets import SECRETS_FILE, read_password

    if service not in PASSWORD_KEYS:
        raise UsageError(f"no password for {service!r}: choose one of {', '.join(PASSWORD_KEYS)}")
    value = read_password(config.home_dir, PASSWORD_KEYS[service])
    if value is None:
        raise NotFoundError(
            f"no generated password in {config.home_dir / SECRETS_FILE}",
            hint="`mlwf up` generates it; run in the project whose stack this is",
        )
    return value
