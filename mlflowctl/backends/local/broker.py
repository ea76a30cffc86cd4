"""mlwf's own Redis, the Celery broker of a local stack (unless `broker_url` names another).

    redis   no persistence: a fresh, empty broker each time it starts, so stale queued
            messages of an earlier stack never run; loopback only; a generated password in
            its 0600 config file (it stays out of `ps`)

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
    return f"redis://:{password(secrets)}@127.0.0.1:{config.redis_port}/0"


def write_config(config: Config, secrets: Secrets) -> Path:
    """A 0600 config file (the password stays out of `ps`): loopback, no persistence."""
    from mlflowctl.secrets import write_private

    folder = config.home_dir / "redis"
    path = folder / "redis.conf"
    write_private(
        path,
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {config.redis_port}",
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


def ping(port: int, secret: str | None, timeout: float = 1.0) -> tuple[bool, str]:
    """(answers PING with this password, why not)."""
    import redis

    client = redis.Redis(
        host="127.0.0.1", port=port, password=secret or None, socket_timeout=timeout,
        socket_connect_timeout=timeout, retry=None,
    )
    try:
        client.ping()
    except redis.AuthenticationError:
        return False, "refused the password"
    except redis.ConnectionError as exc:
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

    if not url.startswith("redis://"):
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
    healthy, detail = ping(config.redis_port, password(secrets))
    if not healthy:
        return healthy, detail
    waiting = queue_length(broker_url(config, secrets))
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
            url=local_url(c.redis_port, "/0", scheme="redis"),
            ports=[PortNeed(SERVICE, "redis_port", c.redis_port)],
        )
    ]
