"""airflow_settings: the one set of AIRFLOW__* variables, checked against Airflow's own option registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlflowctl.airflow_settings import airflow_env, api_secret_key, task_env
from mlflowctl.config import Config
from mlflowctl.secrets import load_or_create


def _airflow_options() -> set[tuple[str, str]]:
    """Every (section, key) Airflow 3.3 and its Celery provider declare."""
    import airflow
    from airflow.providers.celery.get_provider_info import get_provider_info

    core = yaml.safe_load((Path(airflow.__file__).parent / "config_templates" / "config.yml").read_text())
    found: set[tuple[str, str]] = set()
    for sections in (core, get_provider_info()["config"]):
        for section, body in sections.items():
            found.update((section, key) for key in body["options"])
    return found


@pytest.fixture
def secrets(tmp_path):
    return load_or_create(tmp_path)


def _local(config, secrets, **extra):
    return airflow_env(
        config, secrets, database_url="sqlite:////tmp/x.db", passwords_file="/tmp/p.json",
        dags_folder="/tmp/dags", **extra,
    )


def test_every_variable_names_a_real_airflow_option(secrets):
    config = Config(executor="celery")
    env = _local(config, secrets, broker_url="redis://127.0.0.1:1/0", scheduler_health_check=True)
    options = _airflow_options()
    unknown = []
    for name in env:
        _, section, key = name.split("__", 2)
        if (section.lower(), key.lower()) not in options:
            unknown.append(name)
    assert unknown == []


def test_local_defaults_come_from_the_config(secrets):
    config = Config(airflow_port=18080, statsd_port=18125, log_server_port=18793, trigger_log_server_port=18794,
                    parallelism=3)
    env = _local(config, secrets)
    assert env["AIRFLOW__API__PORT"] == "18080"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["AIRFLOW__METRICS__STATSD_PORT"] == "18125"
    assert env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == "18793"
    assert env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] == "18794"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "3"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED"] == "True"
    assert env["AIRFLOW__METRICS__STATSD_PREFIX"] == "airflow"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == secrets.jwt_secret
    assert env["AIRFLOW__CORE__FERNET_KEY"] == secrets.fernet_key
    assert "AIRFLOW__CELERY__BROKER_URL" not in env
    assert all(isinstance(value, str) for value in env.values())


def test_container_values_override_the_config(secrets):
    env = _local(Config(airflow_port=18080), secrets, api_host="0.0.0.0", api_port=8080,
                 api_reach_host="airflow-apiserver", statsd_host="statsd-exporter", statsd_port=9125)
    assert env["AIRFLOW__API__PORT"] == "8080"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__METRICS__STATSD_HOST"] == "statsd-exporter"


def test_celery_needs_a_broker_and_defaults_the_result_backend(secrets):
    config = Config(executor="celery")
    with pytest.raises(ValueError, match="broker_url"):
        _local(config, secrets)
    env = airflow_env(config, secrets, database_url="postgresql+psycopg2://a:b@h/airflow",
                      passwords_file="/p", dags_folder="/d", broker_url="redis://r:6379/0")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://r:6379/0"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql+psycopg2://a:b@h/airflow"


TRACK_STARTED_PROBE = """
from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
print(DEFAULT_CELERY_CONFIG["task_track_started"])
"""


def test_celery_workers_store_no_started_state_which_the_executor_never_reads(secrets, tmp_path):
    """Airflow's Celery config built from the env tracks no STARTED state, and the provider's
    executor does the same for STARTED as for PENDING (nothing), so nothing depends on it."""
    import os
    import subprocess
    import sys
    from types import SimpleNamespace

    from airflow.providers.celery.executors.celery_executor import CeleryExecutor
    from celery import states

    env = airflow_env(Config(executor="celery"), secrets, database_url=f"sqlite:///{tmp_path / 'a.db'}",
                      passwords_file="/p", dags_folder=str(tmp_path), broker_url="redis://r:6379/0")
    answer = subprocess.run([sys.executable, "-c", TRACK_STARTED_PROBE], env={**os.environ, **env,
                            "AIRFLOW_HOME": str(tmp_path)}, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr[-2000:]
    assert answer.stdout.split()[-1] == "False"  # after any warning Airflow logs to stdout
    calls = []
    executor = SimpleNamespace(success=lambda *a: calls.append("success"), fail=lambda *a: calls.append("fail"),
                               log=SimpleNamespace(info=calls.append, exception=calls.append))
    for state in (states.STARTED, states.PENDING):
        CeleryExecutor.update_task_state(executor, ("key",), state, None)
    assert calls == []
    CeleryExecutor.update_task_state(executor, ("key",), states.SUCCESS, None)
    assert calls == ["success"]


def test_api_secret_key_is_stable_and_not_the_jwt_secret(secrets, tmp_path):
    other = load_or_create(tmp_path / "other")
    assert api_secret_key(secrets) == api_secret_key(secrets)
    assert api_secret_key(secrets) != api_secret_key(other)
    assert api_secret_key(secrets) != secrets.jwt_secret


def test_task_env_points_tasks_at_the_stack(secrets):
    import json

    env = task_env(Config(airflow_port=18080, webhook_url="http://hook"), secrets, data_root="/data",
                   api_host="airflow-apiserver", api_port=8080, statsd_host="statsd-exporter", statsd_port=9125)
    connection = json.loads(env["AIRFLOW_CONN_MLWF_API"])
    assert (connection["host"], connection["port"], connection["password"]) == (
        "airflow-apiserver", 8080, secrets.admin_password)
    assert env["MLWF_AIRFLOW_URL"] == "http://airflow-apiserver:8080"
    assert (env["MLWF_STATSD_HOST"], env["MLWF_STATSD_PORT"]) == ("statsd-exporter", "9125")
    assert env["MLWF_WEBHOOK_URL"] == "http://hook"
    assert "MLWF_WEBHOOK_URL" not in task_env(Config(), secrets, data_root="/d")


#: What may differ between the two backends: addresses, ports and paths, nothing else.
PER_BACKEND = {
    "AIRFLOW__API__HOST", "AIRFLOW__API__PORT", "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__METRICS__STATSD_HOST", "AIRFLOW__METRICS__STATSD_PORT", "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__LOGGING__BASE_LOG_FOLDER",
    # the docker healthcheck curls the scheduler's health server; locally the API reports it
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK", "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT",
    "AIRFLOW_CONN_MLWF_API", "MLWF_AIRFLOW_URL", "MLWF_DATA_ROOT", "MLWF_STATSD_HOST", "MLWF_STATSD_PORT",
    "MLWF_HOME", "MLWF_STACK_HOME",
    # the project is not mounted in the containers: their tasks read data files from the data root
    "MLWF_PROJECT_ROOT",
    # the local launcher fixes the task supervisor, so its workers heartbeat at Airflow's 5 s
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL",
    # the launcher lowers task processes' priority; containers leave CPU shares to Docker
    "MLWF_TASK_NICE",
    # the launcher builds the api-server's Execution API for one version; the images build all
    "MLWF_EXECUTION_API_NEWEST",
    # the model server's address: the compose service name; locally added by `up` unless --exclude serving
    "MLWF_SERVING_URL",
}


@pytest.mark.parametrize("executor", ["local", "celery"])
def test_both_backends_run_airflow_with_the_same_settings(tmp_path, executor):
    """The local processes and the docker containers differ only in where things are."""
    from mlflowctl.backends.local.environment import local_environment
    from mlflowctl.backends.compose import container_airflow_env

    config = Config(home=str(tmp_path), executor=executor, parallelism=3, airflow_port=18080)
    secrets = load_or_create(tmp_path)
    broker = "redis://127.0.0.1:16390/0" if executor == "celery" else None
    local = local_environment(config, secrets, base={}, broker_url=broker)
    docker = container_airflow_env(config, secrets)
    ours = lambda env: {k for k in env if k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "MLWF_"))}
    assert (ours(local) ^ ours(docker)) <= PER_BACKEND
    differing = {k for k in ours(local) & ours(docker) if local[k] != docker[k]}
    assert differing <= PER_BACKEND
    assert docker["AIRFLOW__CORE__PARALLELISM"] == local["AIRFLOW__CORE__PARALLELISM"] == "3"
    assert docker["AIRFLOW__API__BASE_URL"] == local["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:18080"


def test_only_processes_with_the_fixed_task_supervisor_keep_airflows_heartbeat_interval(tmp_path):
    """The docker images and MLWF_LAUNCHER=0 run Airflow's supervisor as it is: 1 s caps its
    late look at an exited task; the launcher's fixed supervisor keeps Airflow's 5 s."""
    from mlflowctl.backends.local.environment import local_environment
    from mlflowctl.backends.compose import container_airflow_env

    config = Config(home=str(tmp_path))
    secrets = load_or_create(tmp_path)
    interval = "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"
    assert local_environment(config, secrets, base={})[interval] == "5"
    assert local_environment(config, secrets, base={}, supervisor_fixed=False)[interval] == "1"
    assert container_airflow_env(config, secrets)[interval] == "1"
