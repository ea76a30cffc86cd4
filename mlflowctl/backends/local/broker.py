"""mlwf's own Redis, the Celery broker of a local stack (unless `broker_url` names another).

    redis   no persistence: a fresh, empty broker each time it starts, so stale queued
            messages of an earlier stack never run; loopback only; a generated password in
            its 0600 config file (it stays out of `ps`). With `up --listen ADDR` it also
            binds ADDR and speaks only TLS (tls.py's certificate), on loopback too: Redis
            binds the same addresses for its plain and TLS ports, so a plain port would be
            open to the network as well.

mlwf speaks to it through the `redis` client (pinned in requirements/runtime.txt and a
dependency of the CLI), imported only when a Celery stack is asked about.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from mlflowctl.backends.ports import PortNeed
from mlflowctl.config import Config, local_url
from mlflowctl.errors import MissingDependencyError

if TYPE_CHECKING:  # pragma: no cover
    from mlflowctl.backends.local.state import ServiceSpec, Stack
    from mlflowctl.secrets import Secrets

SERVICE = "redis"
#: Where redis-server is looked for when it is not on PATH.
REDIS_DIRS = ("/usr/bin", "/usr/local/bin", "/opt/homebrew/bin", "/usr/sbin")
#: The queue Airflow's Celery executor sends tasks to.
QUEUE = "default"


def find_redis() -> str:
    found = shutil.which("redis-server") or next(
        (str(Path(d) / "redis-server") for d in REDIS_DIRS if os.access(Path(d) / "redis-server", os.X_OK)), None
    )
    if found is None:
        raise MissingDependencyError(
            "redis-server not found (needed by the celery executor): install it (apt-get install redis-server, "
            "brew install redis) or set broker_url to an existing broker"
        )
    return found


def password(secrets: Secrets) -> str:
    from mlflowctl.airflow_settings import derived_secret

    return derived_secret(secrets, "redis-broker")


def broker_url(config: Config, secrets: Secrets) -> str:
    """The URL the head's own processes use (rediss:// with the CA when the stack listens)."""
    if not config.listen:
        return f"redis://:{password(secrets)}@127.0.0.1:{config.redis_port}/0"
    from mlflowctl.backends.local import tls

    return verified_url(shared_url(config, secrets, "127.0.0.1"), str(tls.files(config.home_dir).ca))


def shared_url(config: Config, secrets: Secrets, host: str) -> str:
    """The TLS broker URL for `host`, without the CA (each host adds its own copy's path)."""
    return f"rediss://:{password(secrets)}@{host}:{config.redis_port}/0"


def verified_url(url: str, ca: str) -> str:
    """A rediss:// URL that makes Celery and the redis client verify the server against `ca`."""
    from urllib.parse import quote

    return f"{url}?ssl_cert_reqs=required&ssl_ca_certs={quote(ca, safe='/')}"


def write_config(config: Config, secrets: Secrets) -> Path:
    """A 0600 config file (the password stays out of `ps`): loopback, no persistence."""
    from mlflowctl.secrets import write_private

    folder = config.home_dir / "redis"
    path = folder / "redis.conf"
    if config.listen:
        from mlflowctl.backends.local import tls

        certs = tls.ensure(config.home_dir, config.listen)
        listening = [
            f"bind 127.0.0.1 {config.listen}",
            "port 0",
            f"tls-port {config.redis_port}",
            f"tls-cert-file {certs.cert}",
            f"tls-key-file {certs.key}",
            f"tls-ca-cert-file {certs.ca}",
            "tls-auth-clients no",  # clients prove themselves with the password
        ]
    else:
        listening = ["bind 127.0.0.1", f"port {config.redis_port}"]
    write_private(
        path,
        "\n".join(
            [
                *listening,
                "protected-mode yes",
                'save ""',
                "appendonly no",
                f"dir {folder}",
                f"requirepass {password(secrets)}",
                "daemonize no",
                "",
            ]
        ),
    )
    return path


def ping(url: str, timeout: float = 1.0) -> tuple[bool, str]:
    """(answers PING at this URL, with its password and TLS settings; why not)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=None)
    port = client.connection_pool.connection_kwargs.get("port")
    try:
        client.ping()
    except redis.AuthenticationError:
        return False, "refused the password"
    except redis.ConnectionError as exc:
        if "certificate" in str(exc).lower():
            return False, f"its certificate was not accepted ({str(exc)[:120]})"
        return False, f"not answering on port {port} ({_reason(exc)})"
    except redis.RedisError as exc:
        return False, f"answered {str(exc)[:40]!r}"
    finally:
        client.close()
    return True, ""


def _reason(exc: Exception) -> str:
    """The OS's words for a failed connection ("Connection refused"), as the socket gives them."""
    cause = exc.__cause__ or exc.__context__
    return getattr(cause, "strerror", None) or str(exc)


def queue_length(url: str, queue: str = QUEUE, timeout: float = 1.0) -> int | None:
    """Messages waiting in a Redis broker's queue (LLEN), or None when it cannot be asked."""
    import redis

    if not url.startswith(("redis://", "rediss://")):
        return None
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=None)
    except ValueError:
        return None
    try:
        return int(client.llen(queue))
    except redis.RedisError:
        return None
    finally:
        client.close()


def status(config: Config, secrets: Secrets) -> tuple[bool, str]:
    """Healthy when it answers PING with our password; the detail says how many tasks wait in the queue."""
    url = broker_url(config, secrets)
    healthy, detail = ping(url)
    if not healthy:
        return healthy, detail
    waiting = queue_length(url)
    return True, "" if waiting is None else f"{waiting} task{'s' if waiting != 1 else ''} queued"


def services(stack: Stack) -> list[ServiceSpec]:
    """Redis, when mlwf runs it itself (no `broker_url`): started before Airflow."""
    from mlflowctl.backends.local.state import ServiceSpec

    c = stack.config
    if c.broker_url:
        return []
    try:
        binary = find_redis()
    except MissingDependencyError:  # `status` and `down` still work; `up` says what is missing
        binary = "redis-server"
    return [
        ServiceSpec(
            SERVICE,
            [binary, str(c.home_dir / "redis" / "redis.conf")],
            kind="redis",
            port=c.redis_port,
            url=local_url(c.redis_port, "/0", scheme="rediss" if c.listen else "redis"),
            ports=[PortNeed(SERVICE, "redis_port", c.redis_port)],
        )
    ]
