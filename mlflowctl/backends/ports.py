"""Port checks: before anything starts, a taken port is named with its holder; later, whether
something answers on one."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from mlflowctl.errors import PortInUseError, UsageError


@dataclass(frozen=True)
class PortNeed:
    """A port a service will bind: `wildcard` when Airflow binds every interface (log servers)."""

    service: str
    setting: str
    port: int
    udp: bool = False
    wildcard: bool = False


def _can_bind(host: str, port: int, *, udp: bool, family: int = socket.AF_INET) -> bool:
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    with socket.socket(family, kind) as sock:
        if not udp:
            # uvicorn sets SO_REUSEADDR too: sockets in TIME_WAIT do not count as taken.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def check_own_address(address: str) -> None:
    """Refuse, before anything starts, a listen address that is not one of this machine's
    (a typo, another host's, an interface that is down): every server would fail to bind it."""
    if _can_bind(address, 0, udp=True):
        return
    import psutil

    own = sorted(
        {a.address for addresses in psutil.net_if_addrs().values() for a in addresses
         if a.family == socket.AF_INET and not a.address.startswith("127.")}
    )
    raise UsageError(
        f"{address} is not an address of this machine, so nothing could listen on it",
        hint=f"use one of its addresses: {', '.join(own)}" if own else "this machine has no address but loopback",
    )


def is_free(need: PortNeed) -> bool:
    if not _can_bind("127.0.0.1", need.port, udp=need.udp):
        return False
    if need.wildcard:
        if not _can_bind("0.0.0.0", need.port, udp=need.udp):
            return False
        if socket.has_ipv6 and not _can_bind("::", need.port, udp=need.udp, family=socket.AF_INET6):
            return False
    return True


def holder(port: int, *, udp: bool = False) -> str | None:
    """'name (pid N)' of the process bound to `port`, when the OS tells us."""
    try:
        import psutil

        connections = psutil.net_connections(kind="udp" if udp else "tcp")
    except Exception:  # AccessDenied on macOS without root, or no /proc
        return None
    for connection in connections:
        if not connection.laddr or connection.laddr.port != port:
            continue
        if not udp and connection.status != psutil.CONN_LISTEN:
            continue
        if connection.pid is None:
            return "another process (not visible to this user)"
        try:
            process = psutil.Process(connection.pid)
            command = " ".join(process.cmdline()[:3]) or process.name()
            return f"{command!r} (pid {connection.pid})"
        except psutil.Error:
            return f"pid {connection.pid}"
    return None


def check_free(needs: list[PortNeed]) -> None:
    """Raise PortInUseError for the first taken port, naming the setting and the holder."""
    for need in needs:
        if is_free(need):
            continue
        who = holder(need.port, udp=need.udp)
        protocol = "UDP" if need.udp else "TCP"
        raise PortInUseError(
            f"port {need.port}/{protocol} for {need.service} is in use"
            + (f" by {who}" if who else "")
            + f"; free it or set another {need.setting} (env MLWF_{need.setting.upper()})"
        )


def free_port() -> int:
    """A TCP port the OS says is free right now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something accepts a TCP connection at host:port within `timeout` s."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False

