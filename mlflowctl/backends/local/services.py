"""The service catalogue of a local stack: every process group, in start order, as plain data,
and what `up` does around the start of each kind (its configuration before, a wait after).

Start order: the metadata database (postgres.py), the executor's services that Airflow needs
first (Celery: the broker), Airflow's components, the monitoring group, the model server
(serving.py), the executor's
services that need Airflow (Celery: the workers and the spawner). Their probes are in probes.py.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mlflowctl.backends.local.state import MONITORING, SPAWNER, ServiceSpec, Stack
from mlflowctl.backends.ports import PortNeed
from mlflowctl.config import Config, local_url

if TYPE_CHECKING:  # pragma: no cover
    from mlflowctl.backends.local.executors import Executor

#: launcher.py, run by path with the runtime's Python (see starting.py).
LAUNCHER = Path(__file__).parent.parent / "launcher.py"
PROMETHEUS_MISSING = "prometheus is not on PATH: metrics are received but not stored (apt-get install prometheus)"


def catalogue(stack: Stack, executor: Executor, notes: list[str]) -> list[ServiceSpec]:
    """Every service of the stack, in start order; a note for what is left out (Prometheus)."""
    from mlflowctl.backends.local import postgres, serving

    return [
        *postgres.services(stack),
        *executor.before_airflow(),
        *airflow_services(stack),
        *tls_front_services(stack),
        *monitoring_services(stack, notes),
        *serving.services(stack),
        *executor.after_airflow(),
    ]


def airflow_service(stack: Stack, name: str, args: list[str], **details) -> ServiceSpec:
    """An Airflow component: `airflow <args>`, forked by the launcher."""
    return ServiceSpec(name, [stack.airflow, *args], airflow_args=args, **details)


def airflow_services(stack: Stack) -> list[ServiceSpec]:
    c = stack.config
    return [
        airflow_service(
            stack,
            "api-server",
            ["api-server", "--host", "127.0.0.1", "--port", str(c.airflow_port)],
            kind="api-server",
            port=c.airflow_port,
            url=local_url(c.airflow_port),
            ports=[PortNeed("api-server", "airflow_port", c.airflow_port)],
        ),
        # No log servers: they listen on every interface, and on one host the api-server
        # reads task and trigger logs from the files.
        airflow_service(stack, "scheduler", ["scheduler", "--skip-serve-logs"], kind="airflow", health_key="scheduler"),
        airflow_service(stack, "dag-processor", ["dag-processor"], kind="airflow", health_key="dag_processor"),
        airflow_service(stack, "triggerer", ["triggerer", "--skip-serve-logs"], kind="airflow", health_key="triggerer"),
    ]


def tls_front_services(stack: Stack) -> list[ServiceSpec]:
    """`api-tls`, the api-server's TLS front (tls_front.py), when the stack listens beyond loopback."""
    from mlflowctl.backends.local import tls

    c = stack.config
    if not c.listen:
        return []
    certs = tls.files(c.home_dir)
    return [
        ServiceSpec(
            "api-tls",
            [sys.executable, "-m", "mlflowctl.backends.local.tls_front", c.listen, str(c.airflow_port),
             str(c.airflow_port), str(certs.cert), str(certs.key)],
            kind="tls-front",
            port=c.airflow_port,
            url=local_url(c.airflow_port, scheme="https", host=c.listen),
        )
    ]


def spawner_services(stack: Stack) -> list[ServiceSpec]:
    """The spawner, for stacks that add Airflow processes later (Celery workers by `scale`)."""
    from mlflowctl.backends.local.starting import one_by_one

    if one_by_one():
        return []
    return [ServiceSpec(SPAWNER, [stack.python, str(LAUNCHER), "spawner"], kind="spawner", spawner=True)]


def stack_dir(config: Config) -> Path:
    """The project's stack/ folder (mapping, Prometheus template), else mlwf's own."""
    from mlflowctl.metrics.prometheus_config import STACK_DIR

    own = config.project_root / "stack"
    return own if (own / "statsd" / "mapping.yml").is_file() else STACK_DIR


def monitoring_services(stack: Stack, notes: list[str]) -> list[ServiceSpec]:
    """The embedded StatsD exporter and, when its binary is on PATH, Prometheus."""
    c = stack.config
    specs = [
        ServiceSpec(
            "exporter",
            [
                sys.executable, "-m", "mlflowctl.metrics.exporter",
                "--mapping", str(stack_dir(c) / "statsd" / "mapping.yml"),
                "--statsd-host", "127.0.0.1", "--statsd-port", str(c.statsd_port),
                "--http-host", "127.0.0.1", "--http-port", str(c.exporter_port),
            ],
            kind="exporter",
            group=MONITORING,
            port=c.exporter_port,
            url=local_url(c.exporter_port, "/metrics"),
            probe_url=local_url(c.exporter_port, "/status"),
            ports=[
                PortNeed("exporter", "exporter_port", c.exporter_port),
                PortNeed("exporter (StatsD)", "statsd_port", c.statsd_port, udp=True),
            ],
        )
    ]
    binary = shutil.which("prometheus")
    if binary is None:
        if PROMETHEUS_MISSING not in notes:
            notes.append(PROMETHEUS_MISSING)
        return specs
    data = stack.home / "prometheus"
    specs.append(
        ServiceSpec(
            "prometheus",
            [
                binary,
                f"--config.file={data / 'prometheus.yml'}",
                f"--storage.tsdb.path={data / 'data'}",
                f"--web.listen-address=127.0.0.1:{c.prometheus_port}",
            ],
            kind="prometheus",
            group=MONITORING,
            port=c.prometheus_port,
            url=local_url(c.prometheus_port),
            probe_url=local_url(c.prometheus_port, "/-/ready"),
            ports=[PortNeed("prometheus", "prometheus_port", c.prometheus_port)],
        )
    )
    return specs


# --------------------------------------------------------------------- around a start, by kind


def prepare(stack: Stack, spec: ServiceSpec) -> None:
    """What a service needs written before it starts: its configuration, its data folder."""
    if spec.kind == "prometheus":
        from mlflowctl.metrics.prometheus_config import write_local_config

        write_local_config(
            stack.home / "prometheus" / "prometheus.yml",
            exporter_port=stack.config.exporter_port,
            prometheus_port=stack.config.prometheus_port,
            serving_port=stack.config.serving_port,
            stack_dir=stack_dir(stack.config),
        )
    elif spec.kind == "postgres":
        from mlflowctl.backends.local import postgres

        postgres.prepare(stack)
    elif spec.kind == "redis":
        from mlflowctl.backends.local import broker

        broker.write_config(stack.config, stack.secrets())
    elif spec.kind == "tls-front":
        from mlflowctl.backends.local import tls

        tls.ensure(stack.home, stack.config.listen)


def readiness(stack: Stack, spec: ServiceSpec) -> Callable[[], bool] | None:
    """For a service the next ones connect to at once (a database before the migration, the
    broker before the workers): true once it accepts connections. None: no wait."""
    if spec.kind == "postgres":
        from mlflowctl.backends.local import postgres

        return postgres.readiness(stack)
    if spec.kind == "redis":
        from mlflowctl.backends.local import broker

        url = broker.broker_url(stack.config, stack.secrets())
        return lambda: broker.ping(url)[0]
    return None
