"""Publish the pipeline's own metrics as StatsD lines, tagged the way Airflow tags its own.

`publish("rows_processed", 150, kind="counter", dag_id="ml_pipeline_dag")` sends
`mlpipeline.rows_processed,dag_id=ml_pipeline_dag:150|c` over UDP. That is the
InfluxDB tag style Airflow uses with `statsd_influxdb_enabled`, so statsd_exporter
(docker backend) and mlwf's embedded exporter (local backend) turn the tags into
labels: `mlpipeline_rows_processed_total{dag_id="ml_pipeline_dag"}`.

Where the lines go: `MLWF_STATSD_HOST` / `MLWF_STATSD_PORT`, else Airflow's own
`AIRFLOW__METRICS__STATSD_HOST` / `AIRFLOW__METRICS__STATSD_PORT` (the components
of the stack have them, and tasks inherit their environment). With neither set,
or with `AIRFLOW__METRICS__STATSD_ON` false and no MLWF_ override, publishing is
a no-op, so task code runs the same in unit tests and in a stack without metrics.

Why a plain UDP socket and not the `statsd` package: that package has no notion
of tags (we would have to smuggle them into the metric name), it resolves the
host when the client is built (an exception at construction time), and we need
the exact wire format under our control so it matches what the exporter's
mapping expects. The socket is a dozen lines and never blocks: UDP sendto on a
datagram socket returns at once, lost packets are the StatsD contract.

Metrics must never break a pipeline: every error here is swallowed (and logged
at debug level), whatever the input.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import logging
import math
import os
import re
import socket
import threading

__all__ = ["PREFIX", "format_line", "publish"]

PREFIX = "mlpipeline"

log = logging.getLogger(__name__)

_KIND_TO_TYPE = {"gauge": "g", "counter": "c", "timer": "ms"}
# Characters that would break `name,tag=v:value|type` parsing, or whitespace.
_UNSAFE = re.compile(r"[,=:|#@\s]+")

_lock = threading.Lock()
_sock: socket.socket | None = None
_addr_cache: dict[tuple[str, int], tuple] = {}


def _clean(text: object) -> str:
    return _UNSAFE.sub("_", str(text)).strip("_") or "_"


def _number(value: float) -> str:
    """Shortest faithful text for a float: `3` for 3.0, `0.25` for 0.25."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def format_line(name: str, value: float | int | bool | _dt.timedelta, kind: str = "gauge", **tags: object) -> str:
    """The StatsD payload for one publish (one or two lines joined by newlines).

    Timers take seconds (a number or a timedelta) and are sent in milliseconds, as
    StatsD wants; the exporters turn them back into seconds. A negative gauge is sent
    as `0|g` then `-x|g`, because a signed gauge value means a delta in StatsD.
    Raises ValueError on an unknown kind or a non-finite value.
    """
    try:
        stat_type = _KIND_TO_TYPE[kind]
    except KeyError:
        raise ValueError(f"unknown metric kind {kind!r}: use one of {', '.join(_KIND_TO_TYPE)}") from None
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"metric {name!r} has a non-finite value {value!r}")
    if kind == "timer":
        number *= 1000.0
    stat = f"{PREFIX}.{_clean(name)}"
    if tags:
        stat += "".join(f",{_clean(k)}={_clean(v)}" for k, v in sorted(tags.items()) if v is not None)
    if kind == "gauge" and number < 0:
        return f"{stat}:0|g\n{stat}:{_number(number)}|g"
    return f"{stat}:{_number(number)}|{stat_type}"


def _target() -> tuple[str, int] | None:
    env = os.environ
    host = env.get("MLWF_STATSD_HOST")
    port = env.get("MLWF_STATSD_PORT")
    if not host:
        if env.get("AIRFLOW__METRICS__STATSD_ON", "").strip().lower() in {"false", "0", "no", "off"}:
            return None
        host = env.get("AIRFLOW__METRICS__STATSD_HOST")
        port = port or env.get("AIRFLOW__METRICS__STATSD_PORT")
    if not host:
        return None
    try:
        return host, int(port or 8125)
    except ValueError:
        log.debug("bad StatsD port %r: metrics off", port)
        return None


def _send(payload: bytes, target: tuple[str, int]) -> None:
    global _sock
    with _lock:
        addr = _addr_cache.get(target)
        if addr is None:
            family, _, _, _, addr = socket.getaddrinfo(target[0], target[1], type=socket.SOCK_DGRAM)[0]
            if _sock is not None:
                _sock.close()
            _sock = socket.socket(family, socket.SOCK_DGRAM)
            _sock.setblocking(False)
            if ipaddress.ip_address(addr[0]).is_loopback:
                _sock.bind((addr[0], 0))  # else the kernel binds it to every interface
            _addr_cache.clear()
            _addr_cache[target] = addr
        assert _sock is not None
        _sock.sendto(payload, addr)


def publish(name: str, value: float | int | bool | _dt.timedelta, kind: str = "gauge", **tags: object) -> bool:
    """Send one metric; True if a datagram left, False if off or anything went wrong.

    `kind` is "gauge" (absolute value), "counter" (an increment) or "timer" (seconds).
    Keyword arguments become tags, then Prometheus labels; None-valued tags are left out.
    Never raises.
    """
    try:
        target = _target()
        if target is None:
            return False
        _send(format_line(name, value, kind, **tags).encode("utf-8"), target)
        return True
    except Exception as exc:  # noqa: BLE001 - metrics must never fail a task
        log.debug("metric %s not sent: %s", name, exc)
        return False
