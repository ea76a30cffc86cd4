"""Whether each service of a local stack is healthy, asked by its kind (see state.ServiceSpec).

Airflow's components answer in the api-server's /api/v2/monitor/health; the others are
asked one by one, concurrently (`status` must stay quick): the exporter whether metrics
flow, Prometheus whether it is ready, PostgreSQL whether it accepts TCP, Redis whether it
answers our password, a Celery worker how many pool processes it has, the spawner whether
its socket is there. A service of no kind here is healthy while its process runs.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from mlflowctl.backends.base import ServiceStatus
from mlflowctl.backends.local.state import ServiceSpec, Stack
from mlflowctl.config import local_url
from mlflowctl.backends.processes import PidRecord

# How long `status` waits for the api-server's health answer. A busy api-server is not a dead
# one: under a burst of 8 clients on a loaded 2-core machine it answered in 0.5-1.5 s, once
# in 12 s, and at 2 s `status` called every Airflow component unhealthy (exit 9).
HEALTH_TIMEOUT_S = 5.0

#: A probe: (healthy, detail) of a running service.
Probe = Callable[["Prober", ServiceSpec, PidRecord], "tuple[bool, str]"]


class Prober:
    """Asks the services of one stack; keeps one HTTP client for every probe (a new client
    per call costs ~30 ms of CPU)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._client = None

    def http(self):
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=2.0, verify=False, trust_env=False)
        return self._client

    def health(self) -> dict | None:
        """The api-server's health answer, None when it gives none."""
        import httpx

        url = local_url(self.stack.config.airflow_port, "/api/v2/monitor/health")
        try:
            response = self.http().get(url, timeout=HEALTH_TIMEOUT_S)
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def answers(self, url: str) -> bool:
        import httpx

        try:
            return self.http().get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def snapshot(self, specs: list[ServiceSpec], *, waiting: bool = False) -> list[ServiceStatus]:
        """Every service's state; the probes of their own run concurrently."""
        records = {spec.name: self.stack.live(spec.name) for spec in specs}
        with ThreadPoolExecutor(max_workers=4) as pool:
            health = pool.submit(self.health) if records.get("api-server") is not None else None
            probed = {
                spec.name: pool.submit(self.service_status, spec, records[spec.name], {}, waiting=waiting)
                for spec in specs
                if spec.kind in PROBES
            }
            health_data = health.result() if health is not None else None
            return [
                probed[spec.name].result()
                if spec.name in probed
                else self.service_status(spec, records[spec.name], health_data, waiting=waiting)
                for spec in specs
            ]

    def service_status(self, spec: ServiceSpec, record, health: dict | None, *, waiting: bool) -> ServiceStatus:
        status = ServiceStatus(name=spec.name, state="stopped", port=spec.port, url=spec.url)
        if record is None:
            stale = self.stack.record(spec.name)
            if stale is not None:
                status.detail = f"stale pid file: pid {stale.pid} is gone or belongs to another program"
            return status
        status.pid = record.pid
        status.uptime_seconds = round(time.time() - record.create_time, 1)
        if spec.kind == "api-server":
            healthy = health is not None
            status.detail = "" if healthy else "not answering /api/v2/monitor/health"
        elif spec.kind == "airflow":
            component = (health or {}).get(spec.health_key) or {}
            healthy = component.get("status") == "healthy"
            if health is None:
                status.detail = "health unknown: the api-server is not answering"
            elif not healthy:
                status.detail = f"health: {component.get('status') or 'no heartbeat yet'}"
        elif spec.kind in PROBES:
            healthy, status.detail = PROBES[spec.kind](self, spec, record)
        else:
            healthy = True  # nothing to ask: a live process is all we know
        status.state = "healthy" if healthy else ("starting" if waiting else "unhealthy")
        return status


def _exporter(prober: Prober, spec: ServiceSpec, _record) -> tuple[bool, str]:
    """Healthy once the scheduler's StatsD heartbeat arrived in the last minute: metrics flow."""
    import httpx

    try:
        facts = prober.http().get(spec.probe_url, timeout=1.0).json()
    except (httpx.HTTPError, ValueError):
        return False, f"not answering {spec.probe_url}"
    beat = (facts.get("heartbeats") or {}).get("scheduler")
    if not isinstance(beat, (int, float)):
        return False, "no scheduler heartbeat received yet"
    age = time.time() - beat
    if age > 60:
        return False, f"metrics not flowing: last scheduler heartbeat {age:.0f} s ago"
    return True, f"metrics flowing: {facts.get('lines', 0)} lines, heartbeat {age:.0f} s ago"


def _answers_http(prober: Prober, spec: ServiceSpec, _record) -> tuple[bool, str]:
    healthy = prober.answers(spec.probe_url)
    return healthy, "" if healthy else f"not answering {spec.probe_url}"


def _answers_tcp(_prober: Prober, spec: ServiceSpec, _record) -> tuple[bool, str]:
    from mlflowctl.backends.ports import answers

    return (True, "") if answers("127.0.0.1", spec.port) else (False, f"not answering on port {spec.port}")


def _tls_front(prober: Prober, spec: ServiceSpec, _record) -> tuple[bool, str]:
    from mlflowctl.backends.ports import answers

    host = prober.stack.config.listen
    return (True, "") if answers(host, spec.port) else (False, f"not answering on {host}:{spec.port}")


def _redis(prober: Prober, _spec: ServiceSpec, _record) -> tuple[bool, str]:
    from mlflowctl.backends.local import broker

    return broker.status(prober.stack.config, prober.stack.secrets())


def _celery_worker(_prober: Prober, _spec: ServiceSpec, record) -> tuple[bool, str]:
    from mlflowctl.backends.local import workers

    return workers.check(record)


def _spawner(prober: Prober, _spec: ServiceSpec, _record) -> tuple[bool, str]:
    path = prober.stack.spawner_socket()
    if path is None or not path.exists():
        return False, "its socket is gone: `mlwf scale` starts workers from a new launcher"
    return True, "forks the workers `mlwf scale` adds"


def _serving(prober: Prober, spec: ServiceSpec, _record) -> tuple[bool, str]:
    from mlflowctl.backends.local import serving

    return serving.probe(prober.http(), spec.url)


#: The probe of each kind that is not in the api-server's health answer.
PROBES: dict[str, Probe] = {
    "exporter": _exporter,
    "prometheus": _answers_http,
    "postgres": _answers_tcp,
    "redis": _redis,
    "tls-front": _tls_front,
    "celery-worker": _celery_worker,
    "spawner": _spawner,
    "serving": _serving,
}
