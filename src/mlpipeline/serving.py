"""The model server: the registry's production model over HTTP, following every promotion.

    python -m mlpipeline.serving --port 8085 [--registry DIR] [--host 127.0.0.1]

``POST /predict`` ``{"rows": [{column: number, ...}, ...]}`` answers ``{"version",
"predictions", "probabilities", "classes"}``, one entry per row, in order; ``GET /model`` the
served version, its feature columns, classes and metadata; ``GET /health``; ``GET /metrics``
for Prometheus. Starlette on uvicorn (both come with Airflow's api-server), one process.

It follows the registry (`mlpipeline.model_deployment`): a thread polls the production
pointer's inode and mtime (one ``stat`` per poll; the pointer is replaced by rename, so every
change shows), loads a new version beside the served one, then swaps one reference. A request
reads that reference once, so requests in flight finish on the model they started with and no
request fails because of a swap. A version whose sha256 does not match, or that skops refuses
(the allow-list of `model_training.load_model`: loading runs no code), is never served: the
previous model keeps answering and ``/health`` says 503 with the reason until production
changes, or the files do.

Predictions are ``classes_[argmax(predict_proba)]``, which is what ``predict`` computes for
the pipeline's estimators (logistic regression, random forest, histogram gradient boosting;
the tests hold them equal), in one call instead of two; the rows go to the model as a numpy
array in the model's own column order, since a one-row DataFrame costs ~3 ms here against
~0.2 ms for the prediction itself. Bad requests get a 4xx with a one-line JSON error.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("mlpipeline.serving")

#: At most this many rows in one request (422 beyond).
MAX_ROWS = 1000
#: At most this many bytes of request body (413 beyond; ~1,000 rows of 30 features fit).
MAX_BODY_BYTES = 1024 * 1024
#: Seconds between two looks at the production pointer.
POLL_S = 0.25


class BadRequest(Exception):
    """A request the server refuses, with its HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def version_number(version: str | None) -> int:
    """v0007 -> 7, for Prometheus, which holds numbers only; 0 when there is none."""
    return int(version[1:]) if version else 0


# ---------------------------------------------------------------- the served model


@dataclass(frozen=True)
class Served:
    """One loaded model version; never changed once built (a swap replaces the whole object)."""

    version: str
    model: Any
    features: tuple[str, ...]
    metadata: dict[str, Any]
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def build(cls, version: str, model: Any, metadata: dict[str, Any]) -> Served:
        names = getattr(model, "feature_names_in_", None)
        if names is None:
            raise ValueError(f"model {version} was fitted without column names; the server needs them to read rows")
        if not hasattr(model, "predict_proba"):
            raise ValueError(f"model {version} ({type(model).__name__}) gives no probabilities")
        return cls(version, model, tuple(str(n) for n in names), metadata)

    @property
    def classes(self) -> list[Any]:
        return self.model.classes_.tolist()

    def matrix(self, rows: list[Any]) -> Any:
        """The rows as a float matrix in the model's column order, or BadRequest naming the first fault."""
        import numpy as np

        wanted = set(self.features)
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise BadRequest(422, f"row {i} is not an object of column: value")
            if row.keys() != wanted:
                missing, unknown = sorted(wanted - row.keys()), sorted(row.keys() - wanted)
                parts = [f"lacks {', '.join(missing[:5])}" if missing else "", f"has unknown {', '.join(unknown[:5])}" if unknown else ""]
                raise BadRequest(422, f"row {i} {' and '.join(p for p in parts if p)} (GET /model lists the columns)")
            for name in self.features:
                value = row[name]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise BadRequest(422, f"row {i} column {name!r}: expected a finite number, got {json.dumps(value)[:40]}")
        return np.array([[row[name] for name in self.features] for row in rows], dtype=float)

    def predict(self, matrix: Any) -> tuple[list[Any], list[list[float]]]:
        probabilities = self.model.predict_proba(matrix)
        return self.model.classes_[probabilities.argmax(axis=1)].tolist(), probabilities.tolist()


# ---------------------------------------------------------------- following the registry


class Follower:
    """Keeps the registry's production model loaded, swapping it when the pointer moves.

    ``served`` and ``problem`` are plain attributes replaced whole, so readers on other
    threads need no lock. A failed version is tried again only when the pointer or the
    version's files change (their stat signature), not on every poll."""

    def __init__(self, registry_root: str | os.PathLike[str], *, poll_s: float = POLL_S, metrics: Metrics | None = None) -> None:
        from mlpipeline.model_deployment import ModelRegistry

        self.registry = ModelRegistry(registry_root)
        self.poll_s = poll_s
        self.metrics = metrics
        self.served: Served | None = None
        self.production: str | None = None
        self.problem: str | None = None
        self._seen: tuple[Any, ...] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _signature(self, version: str | None) -> tuple[Any, ...]:
        paths = [self.registry.pointer_path]
        if version is not None:
            folder = self.registry.versions_dir / version
            paths += [folder / "metadata.json", folder / "model.skops"]
        out: list[Any] = []
        for path in paths:
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def check(self) -> None:
        """One look at the registry; loads and swaps when production names another version."""
        failed = self.problem is not None
        signature = self._signature(self.production if failed else None)
        if signature == self._seen:
            return
        try:
            production = self.registry.production_version()
        except Exception as exc:  # noqa: BLE001 - a damaged pointer: keep serving, say why
            self._refuse(f"production pointer unreadable: {exc}", signature)
            return
        self.production = production
        if production is None or (self.served is not None and production == self.served.version):
            self._settle(signature)
            return
        started = time.perf_counter()
        try:
            model, metadata = self.registry.load(production)
            fresh = Served.build(production, model, metadata)
        except Exception as exc:  # noqa: BLE001 - sha256 mismatch, skops refusal, unreadable: never served
            self._refuse(f"{production} refused: {exc}", self._signature(production))
            return
        self.served = fresh  # the swap: one reference; requests in flight keep the old object
        log.warning("serving %s (loaded in %.2f s)", production, time.perf_counter() - started)
        if self.metrics is not None:
            self.metrics.swaps.inc()
        self._settle(signature)

    def _settle(self, signature: tuple[Any, ...]) -> None:
        self.problem, self._seen = None, signature
        self._publish()

    def _refuse(self, why: str, signature: tuple[Any, ...]) -> None:
        if why != self.problem:
            log.error("%s; still serving %s", why, self.served.version if self.served else "nothing")
            if self.metrics is not None:
                self.metrics.load_failures.inc()
        self.problem, self._seen = why, signature
        self._publish()

    def _publish(self) -> None:
        if self.metrics is not None:
            self.metrics.versions(self.served.version if self.served else None, self.production, self.problem is None)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive any surprise
                log.exception("watching the registry failed; trying again")
            self._stop.wait(self.poll_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="registry-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


# ---------------------------------------------------------------- metrics


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (plus the process collector)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        p = "mlpipeline_serving_"
        self.requests = Counter(p + "requests", "Prediction requests by HTTP status.", ["code"], registry=self.registry)
        self.errors = Counter(p + "errors", "Prediction requests refused or failed, by kind.", ["kind"], registry=self.registry)
        self.latency = Histogram(
            p + "request_seconds", "Time to answer a prediction request.", registry=self.registry,
            buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.rows = Counter(p + "rows", "Rows predicted.", registry=self.registry)
        self.served = Gauge(p + "served_version", "Model version served (7 for v0007; 0 none).", registry=self.registry)
        self.production = Gauge(p + "production_version", "Version the registry names production (0 none).", registry=self.registry)
        self.healthy = Gauge(p + "healthy", "1 unless the production version was refused.", registry=self.registry)
        self.swaps = Counter(p + "model_swaps", "Models swapped in.", registry=self.registry)
        self.load_failures = Counter(p + "model_load_failures", "Versions refused (sha256, skops, unreadable).", registry=self.registry)

    def versions(self, served: str | None, production: str | None, healthy: bool) -> None:
        self.served.set(version_number(served))
        self.production.set(version_number(production))
        self.healthy.set(1 if healthy else 0)


# ---------------------------------------------------------------- the app


def _error(status: int, message: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Any, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is (or claims to be) larger than ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BadRequest(413, f"body over {limit} bytes" if declared.isdigit() else "bad Content-Length")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"body over {limit} bytes")
    return bytes(body)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_rows(body: bytes, max_rows: int) -> list[Any]:
    """The ``rows`` of a request body, or BadRequest saying what is wrong with it."""
    try:
        payload = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(400, f"body is not JSON: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("rows"), list):
        raise BadRequest(422, 'expected {"rows": [{column: value, ...}, ...]}')
    rows = payload["rows"]
    if not rows:
        raise BadRequest(422, "rows is empty")
    if len(rows) > max_rows:
        raise BadRequest(422, f"{len(rows)} rows; at most {max_rows} per request")
    return rows


def create_app(
    registry_root: str | os.PathLike[str],
    *,
    poll_s: float = POLL_S,
    max_rows: int = MAX_ROWS,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Any:
    """The Starlette app; its lifespan starts and stops the registry follower."""
    import contextlib
    import warnings

    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)
    metrics = Metrics()
    follower = Follower(registry_root, poll_s=poll_s, metrics=metrics)
    sklearn_configured = False

    def configure_sklearn() -> None:
        """Rows are checked finite above, and sent as an array in the model's column order (see
        the module docstring): skip scikit-learn's repeat of both checks. Done at the first
        prediction, in the thread that serves them (scikit-learn's settings are per thread),
        so that a server with no model yet holds no scikit-learn (~120 MiB, issue 22)."""
        nonlocal sklearn_configured
        import sklearn

        sklearn.set_config(assume_finite=True)
        sklearn_configured = True

    async def predict(request: Any) -> Any:
        started = time.perf_counter()
        served = follower.served  # read once: this request finishes on this model, whatever swaps
        try:
            rows = parse_rows(await _read_body(request, max_body_bytes), max_rows)
            if served is None:
                raise BadRequest(503, follower.problem or "no production model to serve yet")
            if not sklearn_configured:
                configure_sklearn()
            predictions, probabilities = served.predict(served.matrix(rows))
            response = JSONResponse(
                {"version": served.version, "predictions": predictions, "probabilities": probabilities,
                 "classes": served.classes}
            )
            metrics.rows.inc(len(rows))
        except BadRequest as exc:
            metrics.errors.labels("no_model" if exc.status == 503 else "bad_request").inc()
            response = _error(exc.status, str(exc))
        except Exception as exc:  # noqa: BLE001 - a server fault: one JSON line, the server lives on
            log.exception("prediction failed")
            metrics.errors.labels("internal").inc()
            response = _error(500, f"prediction failed: {type(exc).__name__}")
        metrics.requests.labels(str(response.status_code)).inc()
        metrics.latency.observe(time.perf_counter() - started)
        return response

    async def model(request: Any) -> Any:
        served = follower.served
        if served is None:
            return _error(503, follower.problem or "no production model to serve yet")
        return JSONResponse(
            {"version": served.version, "features": list(served.features), "classes": served.classes,
             "loaded_at": served.loaded_at, "production": follower.production, "metadata": served.metadata},
        )

    async def health(request: Any) -> Any:
        served, problem = follower.served, follower.problem
        body = {"served": served.version if served else None, "production": follower.production}
        if problem is not None:
            return JSONResponse({"status": "unhealthy", "reason": problem, **body}, status_code=503)
        status = "ok" if served else "waiting" if follower.production is None else "loading"
        return JSONResponse({"status": status, **body})

    async def prometheus(request: Any) -> Any:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Any, exc: Any) -> Any:
        return _error(exc.status_code, exc.detail)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        follower.check()  # the current production model is served from the first request on
        follower.start()
        try:
            yield
        finally:
            follower.stop()

    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/model", model, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.follower = follower
    return app


def main(argv: list[str] | None = None) -> None:
    from mlpipeline.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m mlpipeline.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--registry", type=Path, help="default: MLWF_REGISTRY_DIR, else <MLWF_DATA_ROOT>/registry")
    parser.add_argument("--poll", type=float, default=POLL_S, help="seconds between looks at the production pointer")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # the *_created series only double the scrape
    root = args.registry or load_settings().registry_dir
    uvicorn.run(
        create_app(root, poll_s=args.poll), host=args.host, port=args.port, loop="uvloop", http="httptools",
        access_log=False, log_level="warning", lifespan="on", timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
