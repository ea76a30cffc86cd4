"""A small client for Prometheus's HTTP API: instant queries, range queries, readiness.

One method per endpoint, results parsed into dataclasses, and one place (`_get`) where
connection errors and HTTP/API errors become mlwf exceptions:

    connection refused, DNS, reset     -> UnreachableError (5)
    no answer within the timeout       -> TimeoutExpired (6)
    400 bad_data (a malformed query)   -> UsageError (2)
    anything else (422, 503, non-JSON) -> ApiError (13)

No retries: `mlwf health` asks once and reports a Prometheus that does not answer as
degraded rather than waiting for it. httpx is thread-safe, so one client serves the
concurrent queries of a health report. This module imports httpx at the top: the CLI
imports it inside command functions only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, TypeVar

import httpx

from mlflowctl.errors import ApiError, TimeoutExpired, UnreachableError, UsageError

DEFAULT_TIMEOUT_S = 5.0
T = TypeVar("T")


def _number(text: str) -> float:
    """A sample value as Prometheus sends it ("1.5", "NaN", "+Inf")."""
    return float(text)


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector (or a scalar, with no labels)."""

    labels: dict[str, str]
    value: float
    timestamp: float

    @property
    def finite(self) -> bool:
        return math.isfinite(self.value)


@dataclass(frozen=True)
class Series:
    """One series of a range query: its labels and (timestamp, value) points."""

    labels: dict[str, str]
    points: list[tuple[float, float]] = field(default_factory=list)

    @property
    def values(self) -> list[float]:
        return [v for _, v in self.points]


def _labels(item: dict) -> dict[str, str]:
    return {str(name): str(value) for name, value in (item.get("metric") or {}).items()}


def _parse_instant(data: dict) -> list[Sample]:
    kind, result = data.get("resultType"), data.get("result")
    if kind in ("scalar", "string"):
        ts, value = result
        return [Sample({}, _number(value), float(ts))] if kind == "scalar" else []
    if kind != "vector" or not isinstance(result, list):
        raise ApiError(f"Prometheus answered an instant query with a {kind!r} result, not a vector")
    return [Sample(_labels(item), _number(item["value"][1]), float(item["value"][0])) for item in result]


def _parse_range(data: dict) -> list[Series]:
    kind, result = data.get("resultType"), data.get("result")
    if kind != "matrix" or not isinstance(result, list):
        raise ApiError(f"Prometheus answered a range query with a {kind!r} result, not a matrix")
    return [
        Series(_labels(item), [(float(ts), _number(v)) for ts, v in item.get("values") or []])
        for item in result
    ]


def _ts(when: datetime | float) -> str:
    return f"{when.timestamp() if isinstance(when, datetime) else float(when):.3f}"


class PrometheusClient:
    """Prometheus at `url` (e.g. http://127.0.0.1:9090); `transport` for tests' fake servers."""

    def __init__(
        self, url: str, *, transport: httpx.BaseTransport | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http = httpx.Client(
            base_url=self.url,
            transport=transport,
            # A plain-http URL never uses TLS: skip building an SSL context (~30-50 ms of CPU).
            verify=not self.url.startswith("http://"),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
            headers={"Accept": "application/json"},
            trust_env=False,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the one place errors are mapped -------------------------------------------------

    def _send(self, path: str, params: dict | None = None) -> httpx.Response:
        try:
            return self.http.get(path, params=params)
        except httpx.ConnectTimeout:
            raise self._unreachable("connection timed out") from None
        except httpx.TimeoutException:
            raise TimeoutExpired(f"Prometheus at {self.url} did not answer {path} within {self.timeout:g} s") from None
        except httpx.TransportError as exc:
            text = str(exc) or type(exc).__name__
            reason = "connection refused" if "refused" in text.lower() else text.splitlines()[0][:200]
            raise self._unreachable(reason) from None
        except httpx.HTTPError as exc:  # e.g. a body that does not decode as its Content-Encoding says
            raise ApiError(f"Prometheus at {self.url} answered {path} unreadably: {exc}") from None

    def _unreachable(self, reason: str) -> UnreachableError:
        return UnreachableError(
            f"cannot reach Prometheus at {self.url} ({reason})",
            hint="is the stack's monitoring group up? `mlwf status`, `mlwf up`, or pass --prometheus-url",
        )

    def _get(self, path: str, params: dict, parse: Callable[[dict], T]) -> T:
        """GET an /api/v1 endpoint and return its `data` through `parse`, or raise the mapped error
        (a `data` of the wrong shape too)."""
        response = self._send(path, params)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ApiError(
                f"Prometheus at {self.url} answered HTTP {response.status_code} to {path} with a body that is not a JSON object"
            )
        if response.status_code == 200 and body.get("status") == "success":
            try:
                data = body.get("data") or {}
                if not isinstance(data, dict):
                    raise TypeError(f"its data is a JSON {type(data).__name__}, not an object")
                return parse(data)
            except (LookupError, TypeError, ValueError, AttributeError) as exc:
                raise ApiError(
                    f"Prometheus at {self.url} answered {path} with HTTP 200 and a result mlwf cannot read ({exc})"
                ) from None
        error = " ".join(str(body.get("error") or response.text).split())[:300]
        query = params.get("query", "")
        if response.status_code == 400 or body.get("errorType") == "bad_data":
            raise UsageError(f"Prometheus refused the query {query!r}: {error}")
        raise ApiError(
            f"Prometheus answered HTTP {response.status_code} ({body.get('errorType') or 'error'}) "
            f"to the query {query!r}: {error}"
        )

    # -- endpoints -----------------------------------------------------------------------

    def ready(self) -> bool:
        """True when /-/ready says so; False while it starts (503); unreachable or any other answer raises."""
        status = self._send("/-/ready").status_code
        if status not in (200, 503):
            raise ApiError(f"Prometheus at {self.url} answered /-/ready with HTTP {status}, not 200 or 503")
        return status == 200

    def query(self, expr: str, *, at: datetime | float | None = None) -> list[Sample]:
        """An instant query: one sample per series (a scalar comes back as one unlabelled sample)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = _ts(at)
        return self._get("/api/v1/query", params, _parse_instant)

    def query_range(
        self, expr: str, start: datetime | float, end: datetime | float, step: float
    ) -> list[Series]:
        """A range query from `start` to `end` every `step` seconds."""
        if step <= 0:
            raise UsageError(f"range query step must be > 0 seconds, got {step!r}")
        params = {"query": expr, "start": _ts(start), "end": _ts(end), "step": f"{step:g}"}
        return self._get("/api/v1/query_range", params, _parse_range)
