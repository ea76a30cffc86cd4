"""Which backend runs the stack: the flag or config, else the one that started it, else auto.

`auto` picks docker only where a Docker daemon answers its ping, and always says which
backend it picked and why. The ping is a raw HTTP request on the daemon's socket, so
`mlwf status` pays no docker SDK import.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from mlflowctl.config import Config
from mlflowctl.errors import NotAvailableError

BACKEND_FILE = "backend"


def _ping(address: str | tuple[str, int], timeout: float) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return sock.recv(64).split(b" ")[1:2] == [b"200"]
    except (OSError, IndexError):
        return False


def docker_answers(timeout: float = 1.0) -> bool:
    """True when a Docker daemon answers GET /_ping (DOCKER_HOST, else the usual sockets)."""
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return _ping(host[len("unix://") :], timeout)
    if host.startswith("tcp://"):
        name, _, port = host[len("tcp://") :].rstrip("/").partition(":")
        return _ping((name, int(port or 2375)), timeout)
    candidates = ["/var/run/docker.sock", str(Path.home() / ".docker" / "run" / "docker.sock")]
    return any(Path(path).exists() and _ping(path, timeout) for path in candidates)


def recorded_backend(config: Config) -> str | None:
    try:
        name = (config.home_dir / BACKEND_FILE).read_text().strip()
    except OSError:
        return None
    return name if name in ("local", "docker") else None


def record_backend(config: Config, name: str) -> None:
    config.home_dir.mkdir(parents=True, exist_ok=True)
    (config.home_dir / BACKEND_FILE).write_text(name + "\n")


def choose(config: Config) -> tuple[str, str]:
    """(backend name, why) without building the backend."""
    if config.backend != "auto":
        return config.backend, f"backend={config.backend} from {config.sources.get('backend', 'default')}"
    recorded = recorded_backend(config)
    if recorded:
        return recorded, f"the stack in {config.home} was started with it"
    if docker_answers():
        return "docker", "auto: a Docker daemon answers"
    return "local", "auto: no Docker daemon answers"


def make_backend(config: Config):
    """(backend instance, 'backend: NAME (why)')."""
    name, why = choose(config)
    if name == "docker":
        try:
            from mlflowctl.backends.docker import DockerBackend  # type: ignore[import-not-found]
        except ImportError:
            raise NotAvailableError("the docker backend is not available in this mlwf version") from None
        return DockerBackend(config), f"backend: docker ({why})"
    from mlflowctl.backends.local.backend import LocalBackend

    return LocalBackend(config), f"backend: local ({why})"
