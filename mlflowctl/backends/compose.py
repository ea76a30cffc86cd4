"""The docker backend's pure parts: which compose flavour, the exact command lines, the env files.

Both flavours get the same command lines after their prefix: `docker compose` (v2, the
plugin every current Docker ships) and `docker-compose` (v1, e.g. Debian's 1.29 package).
Only options both accept are used (`--env-file`, `--profile`, `--project-name`, `up
--detach --scale`, `logs --tail=N --follow`, `restart SERVICE...`), so one builder serves both.

Two env files, mode 0600, in `<state>/docker/`, are the only place secrets exist:
`compose.env` holds the variables the compose file interpolates (ports, paths, the
Postgres and Grafana passwords), `airflow.env` the AIRFLOW__* settings every Airflow
container reads (from `mlflowctl.airflow_settings`, the same builder the local backend uses).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from mlflowctl.airflow_settings import airflow_env, task_env
from mlflowctl.config import Config, local_url
from mlflowctl.errors import MissingDependencyError, UsageError
from mlflowctl.secrets import PASSWORDS_FILE, Secrets, write_private

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"

#: Services in start order, as named in stack/docker-compose.yml (the same names as the
#: local backend's, so `mlwf logs scheduler` means the same thing on both).
CORE = ("postgres", "api-server", "scheduler", "dag-processor", "triggerer")
MONITORING = ("statsd-exporter", "prometheus", "grafana")
CELERY = ("redis", "worker")
SERVING = ("serving",)
ONE_SHOT = ("airflow-init",)
GROUPS = {"monitoring": MONITORING, "serving": SERVING}
CELERY_PROFILE = "celery"
WORKER = "worker"

#: Ports inside the containers (fixed; the host side comes from the config).
API_PORT = 8080
STATSD_PORT = 9125
POSTGRES_PORT = 5432
REDIS_PORT = 6379
SERVING_PORT = 8085
#: Host-published ports: service -> (config field, container port).
PUBLISHED = {
    "api-server": ("airflow_port", API_PORT),
    "statsd-exporter": ("exporter_port", 9102),
    "prometheus": ("prometheus_port", 9090),
    "grafana": ("grafana_port", 3000),
    "serving": ("serving_port", SERVING_PORT),
}
#: Paths inside the Airflow containers (see the compose file's volumes).
CONTAINER_DAGS = "/opt/airflow/dags"
CONTAINER_PASSWORDS = "/opt/airflow/mlwf/passwords.json"
CONTAINER_DATA = "/opt/airflow/mlwf-data"
IMAGE_REPOSITORY = "mlwf-airflow"
AIRFLOW_VERSION = "3.3.2"


@dataclass(frozen=True)
class Flavour:
    label: str
    prefix: tuple[str, ...]


V2 = Flavour("docker compose (v2)", ("docker", "compose"))
V1 = Flavour("docker-compose (v1)", ("docker-compose",))


def detect_flavour(environ: Mapping[str, str] | None = None) -> Flavour:
    """`docker compose` when the plugin answers, else `docker-compose`, else a clear error."""
    environ = dict(os.environ if environ is None else environ)
    path = environ.get("PATH", os.defpath)
    if shutil.which("docker", path=path):
        try:
            probe = subprocess.run(
                [*V2.prefix, "version"], env=environ, capture_output=True, timeout=20, check=False
            )
            if probe.returncode == 0:
                return V2
        except (OSError, subprocess.TimeoutExpired):
            pass
    if shutil.which("docker-compose", path=path):
        return V1
    raise MissingDependencyError(
        "neither `docker compose` (v2) nor `docker-compose` (v1) is installed; "
        "install Docker with its compose plugin, or use --backend local"
    )


@dataclass(frozen=True)
class ComposeCommands:
    """The command line of each operation, for one flavour, project and env file."""

    flavour: Flavour
    project: str
    file: Path
    env_file: Path

    def base(self, *, celery: bool) -> list[str]:
        argv = [*self.flavour.prefix, "--project-name", self.project, "--env-file", str(self.env_file)]
        argv += ["--file", str(self.file)]
        if celery:
            argv += ["--profile", CELERY_PROFILE]
        return argv

    def build(self) -> list[str]:
        # Every Airflow service shares one image: building it for one builds it for all.
        return [*self.base(celery=False), "build", ONE_SHOT[0]]

    def up(self, services: list[str] | tuple[str, ...] = (), *, workers: int | None = None) -> list[str]:
        """Start (building only a missing image); with `workers`, the celery profile at N workers."""
        argv = [*self.base(celery=workers is not None), "up", "--detach", "--remove-orphans"]
        if workers is not None:
            argv += ["--scale", f"{WORKER}={workers}"]
        return argv + list(services)

    def scale_workers(self, workers: int) -> list[str]:
        """Add or remove workers only; removed ones get SIGTERM, Celery's warm shutdown."""
        return [
            *self.base(celery=True), "up", "--detach", "--no-deps", "--no-recreate",
            "--scale", f"{WORKER}={workers}", WORKER,
        ]

    def remove(self, services: list[str]) -> list[str]:
        """Stop and remove these services' containers (e.g. the celery ones after a switch to local)."""
        return [*self.base(celery=True), "rm", "--stop", "--force", *services]

    def restart(self, services: list[str]) -> list[str]:
        """Stop and start these services' containers as they are (v2 also restarts the services
        that depend on them, v1 does not); the celery profile on, so `worker` is one of them."""
        return [*self.base(celery=True), "restart", *services]

    def stop(self) -> list[str]:
        return [*self.base(celery=True), "stop"]

    def down(self, *, volumes: bool = False) -> list[str]:
        # The celery profile is always on here, so its containers go too.
        argv = [*self.base(celery=True), "down", "--remove-orphans"]
        return argv + (["--volumes"] if volumes else [])

    def ps(self) -> list[str]:
        return [*self.base(celery=True), "ps", "--all"]

    def logs(self, service: str | None = None, *, tail: int = 100, follow: bool = False) -> list[str]:
        argv = [*self.base(celery=True), "logs", "--no-color", f"--tail={tail}"]
        if follow:
            argv.append("--follow")
        return argv + ([service] if service else [])


# ---------------------------------------------------------------------- project files


def stack_dir(config: Config) -> Path:
    """The project's own stack/ when it has a compose file, else the one shipped with mlwf."""
    own = Path(config.project_root) / "stack"
    if (own / "docker-compose.yml").is_file():
        return own
    return Path(__file__).resolve().parents[2] / "stack"


def project_name(config: Config) -> str:
    """`mlwf-<project>-<hash of the state dir>`: one compose project per state directory."""
    slug = re.sub(r"[^a-z0-9]+", "-", Path(config.project_root).name.lower()).strip("-") or "project"
    digest = hashlib.sha256(str(config.home_dir).encode()).hexdigest()[:6]
    return f"mlwf-{slug}-{digest}"


def image_tag(requirements: Path, dockerfile: Path) -> str:
    """The Airflow image tag: changes whenever the pinned runtime or the Dockerfile does."""
    digest = hashlib.sha256(requirements.read_bytes() + b"\0" + dockerfile.read_bytes()).hexdigest()[:10]
    return f"{IMAGE_REPOSITORY}:{AIRFLOW_VERSION}-{digest}"


def requirements_dir(config: Config, stack: Path) -> Path:
    for root in (Path(config.project_root), stack.parent):
        if (root / "requirements" / "runtime.txt").is_file():
            return root / "requirements"
    raise MissingDependencyError(
        f"no requirements/runtime.txt in {config.project_root} or {stack.parent}: the docker image needs it"
    )


@dataclass(frozen=True)
class EnvFiles:
    compose: Path
    airflow: Path
    variables: dict[str, str]  # what compose.env holds (also passed to the compose process)


def docker_dir(config: Config) -> Path:
    return config.home_dir / "docker"


def database_url(config: Config, secrets: Secrets) -> str:
    return config.database_url or (
        f"postgresql+psycopg2://airflow:{secrets.postgres_password}@postgres:{POSTGRES_PORT}/airflow"
    )


def container_airflow_env(config: Config, secrets: Secrets) -> dict[str, str]:
    """Everything the Airflow containers read: the shared settings at container addresses."""
    celery = config.executor == "celery"
    env = airflow_env(
        config,
        secrets,
        database_url=database_url(config, secrets),
        passwords_file=CONTAINER_PASSWORDS,
        dags_folder=CONTAINER_DAGS,
        api_host="0.0.0.0",  # inside the container; the host publishes it on 127.0.0.1 only
        api_port=API_PORT,
        api_reach_host="api-server",
        statsd_host="statsd-exporter",
        statsd_port=STATSD_PORT,
        log_server_port=8793,
        trigger_log_server_port=8794,
        base_url=local_url(config.airflow_port),
        broker_url=(config.broker_url or f"redis://redis:{REDIS_PORT}/0") if celery else None,
        scheduler_health_check=True,
    )
    env.update(
        task_env(
            config, secrets, data_root=CONTAINER_DATA, api_host="api-server", api_port=API_PORT,
            statsd_host="statsd-exporter", statsd_port=STATSD_PORT,
        )
    )
    # deploy_model checks the model server; with `--exclude serving` the name does not resolve
    # on the compose network, and deploy_model skips the check (mlpipeline.model_deployment).
    env["MLWF_SERVING_URL"] = f"http://serving:{SERVING_PORT}"
    return env


def compose_variables(config: Config, secrets: Secrets, stack: Path, airflow_env_file: Path) -> dict[str, str]:
    from mlpipeline.pools import POOLS

    requirements = requirements_dir(config, stack)
    dockerfile = stack / "Dockerfile"
    return {
        "MLWF_AIRFLOW_ENV_FILE": str(airflow_env_file),
        "MLWF_PASSWORDS_FILE": str(config.home_dir / PASSWORDS_FILE),
        "MLWF_POSTGRES_PASSWORD": secrets.postgres_password,
        "MLWF_GRAFANA_PASSWORD": secrets.grafana_password,
        "AIRFLOW_UID": str(os.getuid()) if hasattr(os, "getuid") else "50000",
        "MLWF_AIRFLOW_IMAGE": image_tag(requirements / "runtime.txt", dockerfile),
        "MLWF_REQUIREMENTS_DIR": str(requirements),
        # Relative to the build context, as compose expects.
        "MLWF_DOCKERFILE": os.path.relpath(dockerfile, requirements),
        "MLWF_DAGS_DIR": str(config.dags_dir),
        "MLWF_TASKS_DIR": str(config.tasks_dir),
        "MLWF_AIRFLOW_PORT": str(config.airflow_port),
        "MLWF_PROMETHEUS_PORT": str(config.prometheus_port),
        "MLWF_EXPORTER_PORT": str(config.exporter_port),
        "MLWF_GRAFANA_PORT": str(config.grafana_port),
        "MLWF_SERVING_PORT": str(config.serving_port),
        "MLWF_POOLS": " ".join(f"{name}={pool.slots}" for name, pool in POOLS.items()),
        "MLWF_WORKER_CONCURRENCY": "2",
    }


def render_env(values: Mapping[str, str]) -> str:
    """KEY=value lines both compose flavours read the same way (no quoting, no `$`)."""
    lines = []
    for key, value in values.items():
        if "\n" in value or "$" in value:
            raise UsageError(f"{key}: a value with a newline or `$` cannot go into a compose env file")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def write_env_files(config: Config, secrets: Secrets, stack: Path) -> EnvFiles:
    """(Re)write both env files, 0600, from the config and the secrets: never stale, never committed."""
    directory = docker_dir(config)
    airflow_file = directory / "airflow.env"
    compose_file = directory / "compose.env"
    write_private(airflow_file, render_env(container_airflow_env(config, secrets)))
    variables = compose_variables(config, secrets, stack, airflow_file)
    write_private(compose_file, render_env(variables))
    return EnvFiles(compose=compose_file, airflow=airflow_file, variables=variables)
