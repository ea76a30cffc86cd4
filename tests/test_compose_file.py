"""stack/docker-compose.yml: validated by Debian's docker-compose 1.29 (`config -q`, no daemon
needed) with the env files mlwf really generates, plus structure checks on the parsed file.

No container runs here (no Docker engine on these machines): these tests prove the file is
well-formed for compose v1, uses only what mlwf provides, and keeps to the security rules.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mlflowctl.backends import compose
from mlflowctl.config import load_config
from mlflowctl.secrets import load_or_create

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "stack"
COMPOSE_FILE = STACK / "docker-compose.yml"
needs_v1 = pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (v1) not installed")


def _env_files(tmp_path: Path, executor: str = "local") -> compose.EnvFiles:
    config = load_config({"home": str(tmp_path / "state"), "executor": executor}, cwd=ROOT, environ={})
    return compose.write_env_files(config, load_or_create(config.home_dir), compose.stack_dir(config))


def _compose_config(files: compose.EnvFiles, *extra: str) -> subprocess.CompletedProcess:
    argv = ["docker-compose", "--env-file", str(files.compose), "--file", str(COMPOSE_FILE), *extra]
    # A bare environment: the file must validate from the env file alone.
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _services(spec: dict) -> dict:
    return spec["services"]


def _long_running(spec: dict) -> dict:
    return {name: body for name, body in _services(spec).items() if name not in compose.ONE_SHOT}


# ---------------------------------------------------------------- docker-compose v1 validation


@needs_v1
@pytest.mark.parametrize("executor,profile", [("local", ()), ("celery", ("--profile", "celery"))])
def test_v1_validates_the_file_with_the_generated_env_files(tmp_path, executor, profile):
    files = _env_files(tmp_path, executor)
    result = _compose_config(files, *profile, "config", "-q")
    assert result.returncode == 0, result.stderr
    services = _compose_config(files, *profile, "config", "--services").stdout.split()
    expected = ["postgres", "airflow-init", "api-server", "scheduler", "dag-processor", "triggerer",
                "statsd-exporter", "prometheus", "grafana"]
    # v1 lists profile services either way; the profile's own presence is checked below.
    assert set(expected + ["serving", "redis", "worker"]) == set(services)


@needs_v1
def test_v1_resolves_secrets_and_ports_from_the_env_files_only(tmp_path):
    files = _env_files(tmp_path, "celery")
    rendered = yaml.safe_load(_compose_config(files, "--profile", "celery", "config").stdout)
    services = rendered["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == files.variables["MLWF_POSTGRES_PASSWORD"]
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == files.variables["MLWF_GRAFANA_PASSWORD"]
    scheduler = services["scheduler"]["environment"]
    assert scheduler["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert files.variables["MLWF_POSTGRES_PASSWORD"] in scheduler["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert scheduler["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0"
    assert services["api-server"]["ports"] == ["127.0.0.1:8080:8080/tcp"]
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000/tcp"]
    assert services["scheduler"]["image"] == files.variables["MLWF_AIRFLOW_IMAGE"]


@needs_v1
def test_v1_refuses_to_run_without_the_generated_env_file():
    result = subprocess.run(
        ["docker-compose", "--file", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "mlwf up --backend docker writes it" in result.stderr


@needs_v1
def test_generated_env_files_are_private(tmp_path):
    files = _env_files(tmp_path)
    for path in (files.compose, files.airflow):
        assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state" / "docker") == files.compose.parent


def test_the_init_container_creates_the_one_pool_list(tmp_path, spec):
    """The pools come from src/mlpipeline/pools.py only: no default of the compose file's own."""
    from mlpipeline.pools import POOLS, TRAINING_POOL

    assert _env_files(tmp_path).variables["MLWF_POOLS"].split() == [f"{n}={p.slots}" for n, p in POOLS.items()]
    assert TRAINING_POOL in POOLS
    assert ":?" in spec["services"]["airflow-init"]["environment"]["MLWF_POOLS"]


# ---------------------------------------------------------------- structure


def test_compose_v1_compatible_keys_only(spec):
    assert "name" not in spec and "version" not in spec
    for body in _services(spec).values():
        for dependency in (body.get("depends_on") or {}).values():
            assert set(dependency) <= {"condition"}  # no Compose-spec-only `required`/`restart`
        assert "develop" not in body


def test_every_long_running_service_has_a_healthcheck(spec):
    missing = [name for name, body in _long_running(spec).items() if not body.get("healthcheck", {}).get("test")]
    assert missing == []


def test_start_order_waits_for_health(spec):
    services = _services(spec)
    for name in ("api-server", "scheduler", "dag-processor", "triggerer", "worker"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["airflow-init"]["condition"] == "service_completed_successfully"
    assert services["worker"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_published_ports_are_loopback_only(spec):
    published = {}
    for name, body in _services(spec).items():
        for port in body.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"
            published[name] = port
    assert set(published) == set(compose.PUBLISHED)
    for name, (field, target) in compose.PUBLISHED.items():
        assert published[name] == f"127.0.0.1:${{MLWF_{field.upper()}:-{_default_port(field)}}}:{target}"
    assert "expose" not in _services(spec)["postgres"]


def _default_port(field: str) -> int:
    from mlflowctl.config import Config

    return getattr(Config(), field)


SECRET_KEY = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$", re.I)


def _walk(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*path, str(index)))
    else:
        yield path, node


def test_no_literal_secret_anywhere(spec):
    text = COMPOSE_FILE.read_text()
    for path, value in _walk(spec):
        if SECRET_KEY.search(path[-1]):
            assert re.fullmatch(r"\$\{MLWF_[A-Z_]+:\?[^}]+\}", str(value)), f"{'.'.join(path)}: {value!r}"
    assert "airflow:airflow" not in text  # the official file's default credentials
    assert not re.search(r"AIRFLOW__\w+:", text)  # every Airflow setting comes from airflow_settings.py
    assert "SIMPLE_AUTH_MANAGER_ALL_ADMINS" not in text


def test_airflow_services_read_the_generated_env_file(spec):
    for name, body in _services(spec).items():
        if body.get("image", "").startswith("${MLWF_AIRFLOW_IMAGE"):
            assert body["env_file"] == ["${MLWF_AIRFLOW_ENV_FILE:?mlwf up --backend docker writes it}"], name
            assert body["user"] == "${AIRFLOW_UID:-50000}:0"


def test_celery_profile_has_redis_and_workers(spec):
    services = _services(spec)
    in_profile = {name for name, body in services.items() if "celery" in body.get("profiles", [])}
    assert in_profile == set(compose.CELERY)
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # scalable
    assert worker["command"].startswith("celery worker")
    assert "--save" in services["redis"]["command"] and "no" in services["redis"]["command"]


def test_named_volumes_and_code_mounts(spec):
    assert set(spec["volumes"]) >= {"postgres-data", "prometheus-data", "grafana-data"}
    common = spec["x-airflow-common"]["volumes"]
    assert "${MLWF_DAGS_DIR:-../dags}:/opt/airflow/dags:ro" in common
    assert "${MLWF_TASKS_DIR:-../src}:/opt/airflow/src:ro" in common
    assert any(v.startswith("postgres-data:") for v in _services(spec)["postgres"]["volumes"])


def test_service_names_match_the_backend(spec):
    names = set(_services(spec))
    assert names == set(compose.CORE) | set(compose.MONITORING) | set(compose.CELERY) | set(compose.ONE_SHOT) | set(compose.SERVING)


def test_every_mounted_file_exists(spec):
    missing = []
    for name, body in _services(spec).items():
        for volume in body.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                if not (STACK / source).exists():
                    missing.append(f"{name}: {source}")
    assert missing == []


def test_grafana_provisions_prometheus_and_the_dashboards():
    datasources = yaml.safe_load((STACK / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((STACK / "grafana/provisioning/dashboards/mlwf.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    import json

    titles = set()
    for path in sorted((STACK / "grafana/dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        titles.add(dashboard["title"])
        assert dashboard["panels"], path
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == source["uid"], (path.name, panel["title"])
            assert all(target["expr"].strip() for target in panel["targets"]), (path.name, panel["title"])
    assert {"mlwf stack", "mlwf pipeline"} <= titles


def test_dockerfile_builds_on_the_pinned_airflow_and_installs_the_runtime_list():
    dockerfile = (STACK / "Dockerfile").read_text()
    runtime = (ROOT / "requirements" / "runtime.txt").read_text()
    pinned = re.search(r"^apache-airflow(\[[^]]*\])?==([\d.]+)$", runtime, re.M).group(2)
    assert f"ARG AIRFLOW_IMAGE=apache/airflow:{pinned}" in dockerfile
    assert compose.AIRFLOW_VERSION == pinned
    # Run the Dockerfile's own filter on the real list: only the apache-airflow line goes.
    pattern = re.search(r"grep -viE '([^']+)'", dockerfile).group(1)
    kept = subprocess.run(["grep", "-viE", pattern], input=runtime, capture_output=True, text=True).stdout
    requirement_lines = lambda text: [l for l in text.splitlines() if l.strip() and not l.startswith("#")]
    dropped = set(requirement_lines(runtime)) - set(requirement_lines(kept))
    assert dropped == {line for line in requirement_lines(runtime) if re.match(r"apache-airflow(\[|==)", line)}
    assert len(dropped) == 1
    assert "apache-airflow-providers-celery==3.26.0" in kept
    # The data volume's mount point exists in the image, writable by group 0 (AIRFLOW_UID:0).
    assert f"mkdir -p {compose.CONTAINER_DATA} && chmod 0775 {compose.CONTAINER_DATA}" in dockerfile


needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path):
    """promtool parses each panel's expression (as a recording rule): no typo reaches Grafana."""
    import json

    exprs = [
        target["expr"]
        for path in sorted((STACK / "grafana/dashboards").glob("*.json"))
        for panel in json.loads(path.read_text())["panels"]
        for target in panel["targets"]
    ]
    rules = [{"record": f"mlwf:panel_{n}", "expr": expr} for n, expr in enumerate(exprs)]
    rules_file = tmp_path / "panels.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout + result.stderr


@needs_promtool
def test_docker_prometheus_config_checks_with_the_stack_rules(tmp_path):
    """The docker config as the container sees it: stack/prometheus/rules at <config dir>/rules."""
    text = (STACK / "prometheus/prometheus.docker.yml").read_text()
    rule_files = yaml.safe_load(text)["rule_files"]
    assert rule_files and all(r.startswith(("rules/", "/etc/prometheus/rules/")) for r in rule_files)
    (tmp_path / "rules").symlink_to(STACK / "prometheus/rules")
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/rules/", f"{tmp_path}/rules/"))
    result = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("rules found") == len(rule_files)
    targets = [t for job in yaml.safe_load(text)["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert "statsd-exporter:9102" in targets
