"""Which password goes to which Airflow server, and when sending it deserves a warning.

The password `mlwf up` generated belongs to the local stack: it is sent only to that stack's
own URL (http on loopback at `airflow_port`), never to a server named by `--url` /
`MLWF_AIRFLOW_URL`, which gets `MLWF_AIRFLOW_PASSWORD` or what the user types. Light on
imports: the CLI loads this module for every API command.
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Callable, Mapping
from urllib.parse import urlsplit

from mlflowctl.errors import AuthError

if TYPE_CHECKING:
    from mlflowctl.config import Config

PASSWORD_ENV = "MLWF_AIRFLOW_PASSWORD"


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 and `localhost` (which resolves to loopback by convention, RFC 6761)."""
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


DEFAULT_PORTS = {"http": 80, "https": 443}


def _parts(url: str) -> tuple[str, str | None, int | None]:
    """(scheme, host, port) of `url`, the port defaulted by scheme; a malformed URL has no host."""
    try:
        split = urlsplit(url)
        scheme = split.scheme.lower()
        return scheme, split.hostname, split.port or DEFAULT_PORTS.get(scheme)
    except ValueError:  # a bad port or a broken [IPv6] literal
        return "", None, None


def is_local_stack_url(url: str, airflow_port: int) -> bool:
    """True for the local stack's own api-server: http on a loopback address at `airflow_port`."""
    scheme, host, port = _parts(url)
    return scheme == "http" and is_loopback(host) and port == airflow_port


def plain_http_warning(url: str) -> str | None:
    """A warning when a password would cross the network unencrypted: http to a non-loopback host."""
    scheme, host, _ = _parts(url)
    if scheme != "http" or is_loopback(host):
        return None
    return f"sending the password to {host} over plain HTTP: anyone on the network path can read it; use https"


def known_password(config: Config, environ: Mapping[str, str] | None = None) -> str | None:
    """MLWF_AIRFLOW_PASSWORD, else the generated admin password when talking to the local stack."""
    from pathlib import Path

    from mlflowctl.secrets import ADMIN_USER, read_password

    environ = os.environ if environ is None else environ
    if environ.get(PASSWORD_ENV):
        return environ[PASSWORD_ENV]
    if config.airflow_user == ADMIN_USER and is_local_stack_url(config.api_url, config.airflow_port):
        return read_password(Path(config.home))
    return None


def resolve_password(
    config: Config, ask: Callable[[str], str | None] | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """The one rule for the password sent to `config`'s server: the known one, else what `ask`
    returns for the prompt (None: no terminal, or the user gave up), else the no-password error."""
    password = known_password(config, environ)
    if password:
        return password
    typed = ask(f"Airflow password for {config.airflow_user} at {config.api_url}") if ask else None
    if typed is None:
        raise no_password(config)
    return typed


def no_password(config: Config) -> AuthError:
    """The error for a server we have no password for (and cannot ask: no terminal, or none typed)."""
    from pathlib import Path

    from mlflowctl.config import local_url
    from mlflowctl.secrets import read_password

    if is_local_stack_url(config.api_url, config.airflow_port):
        hint = f"set {PASSWORD_ENV}, or run from the project whose stack `mlwf up` started (or pass --home)"
    elif read_password(Path(config.home)):
        own = local_url(config.airflow_port)
        hint = f"set {PASSWORD_ENV} (the password of this project's stack is sent only to its own URL, {own})"
    else:
        hint = f"set {PASSWORD_ENV}"
    return AuthError(f"no password for Airflow user '{config.airflow_user}' at {config.api_url}", hint=hint)
