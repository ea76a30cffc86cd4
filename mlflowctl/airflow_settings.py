"""The one source of the Airflow settings every backend and executor mode runs with.

`airflow_env` is a pure function: from the effective `Config`, the generated `Secrets`
and the few values that differ per backend (where the database is, which host name the
components reach the api-server by, which ports they listen on inside their host or
container) it builds the `AIRFLOW__*` environment. The local backend passes it to its
processes; the docker backend writes it into the 0600 env file its containers read; the
Celery mode of both adds only a broker URL. Nothing here touches the disk or the network.

Why each value (see /work/shared/airflow3-field-notes.md):
- parallelism 4 instead of 32: 32 idle task slots cost ~250 MiB more on a laptop;
- DAG folder scan every 5 s instead of 300 s: a new DAG file shows up in seconds;
- scheduler idle sleep 0.2 s: task-to-task gap ~0.2 s instead of ~1 s;
- StatsD with InfluxDB-style tags and the prefix `airflow`: dag_id, task_id and state
  become Prometheus labels in both statsd_exporter and mlwf's embedded exporter;
- SimpleAuthManager with one fixed admin whose password lives in a 0600 file; the JWT
  secret and the api secret key shared by every component, so tokens and log fetches
  signed by one component are accepted by the others.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Mapping

from mlflowctl.config import Config, local_url
from mlflowctl.secrets import Secrets

EXECUTOR_CLASSES = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
DAG_REFRESH_SECONDS = 5  # how often the DAG folder is scanned for new files
MIN_FILE_PROCESS_SECONDS = 10  # how often one DAG file is parsed again (CPU on a laptop)
SCHEDULER_IDLE_SLEEP_SECONDS = 0.2
# The scheduler's job heartbeat, also its StatsD `scheduler_heartbeat`, which the exporter's
# health waits for: the first one comes this long after the scheduler starts (default 5 s; at
# 2 s `up` still waited 1.6-1.8 s for it after every component was healthy, at 1 s 0.5-0.8 s).
# The cost: one small database update per second.
SCHEDULER_HEARTBEAT_SECONDS = 1
# A task's supervisor (in a LocalExecutor or Celery worker) heartbeats the API server every
# `[workers] min_heartbeat_interval` seconds while its task runs. Airflow's own supervisor also
# sleeps up to that long between looks at its task process, and when the process's last socket
# closes just before it exits, sees the exit only at its next wake-up, the executor slot taken
# meanwhile (up to 5 s per task at the default). mlwf's launcher fixes that look
# (backends/airflow_fixes.py), so its processes keep Airflow's 5 s; where Airflow runs as it
# is (the docker images, MLWF_LAUNCHER=0), 1 s, the smallest the setting takes, caps the loss,
# at the price of one heartbeat call per running task per second.
TASK_HEARTBEAT_SECONDS = 5
UNFIXED_SUPERVISOR_WAKEUP_SECONDS = 1
STATSD_PREFIX = "airflow"
SCHEDULER_HEALTH_PORT = 8974
# Tasks whose processes vanished (kill -9, OOM, a power cut) stay "running" in the database
# until the scheduler notices (Airflow 3.3, verified in its scheduler_job_runner):
# - a task whose supervisor died while the scheduler lives (a killed Celery worker, a killed
#   LocalExecutor worker) is failed, then retried, after this many seconds without a task
#   heartbeat (`[scheduler] task_instance_heartbeat_timeout`, default 300). 60 s is twelve
#   task heartbeats (TASK_HEARTBEAT_SECONDS), so a busy machine never fails a live task;
TASK_INSTANCE_HEARTBEAT_TIMEOUT_SECONDS = 60
# - a task queued by a scheduler that died with it (the whole stack killed) is never checked
#   for heartbeats by the next scheduler: that one resets it for a new try once the old
#   scheduler's job has missed heartbeats for `scheduler_health_check_threshold` (30 s), looking
#   at start and then every `[scheduler] orphaned_tasks_check_interval` (default 300 s). A
#   restarted stack takes less than 30 s, so at the default the interrupted run sat "running"
#   for 5 minutes after `up`; at 15 s it goes on within ~45 s of the crash. The cost: one small
#   query every 15 s.
ORPHANED_TASKS_CHECK_SECONDS = 15
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


def _flag(value: bool) -> str:
    return "True" if value else "False"


def derived_secret(secrets: Secrets, purpose: str) -> str:
    """A secret for `purpose` derived from the stack's JWT secret (random, stable, never stored)."""
    return hmac.new(secrets.jwt_secret.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def api_secret_key(secrets: Secrets) -> str:
    """`[api] secret_key`, shared by every component (it also signs log-fetch requests)."""
    return derived_secret(secrets, "api-secret-key")


def celery_result_backend(database_url: str) -> str:
    """Celery's database result backend for an SQLAlchemy URL (`db+` prefix)."""
    return database_url if database_url.startswith("db+") else f"db+{database_url}"


def airflow_env(
    config: Config,
    secrets: Secrets,
    *,
    database_url: str,
    passwords_file: str,
    dags_folder: str,
    api_host: str = "127.0.0.1",
    api_port: int | None = None,
    api_reach_host: str = "127.0.0.1",
    statsd_host: str = "127.0.0.1",
    statsd_port: int | None = None,
    log_server_port: int | None = None,
    trigger_log_server_port: int | None = None,
    base_log_folder: str | None = None,
    base_url: str | None = None,
    broker_url: str | None = None,
    result_backend: str | None = None,
    scheduler_health_check: bool = False,
    supervisor_fixed: bool = False,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The `AIRFLOW__*` variables for one stack; every value a string, ready for an env.

    Ports left as None come from the config (the local backend's case); the docker backend
    passes the fixed ports inside its containers. `api_host` is where the api-server binds,
    `api_reach_host` the name the other components reach it by (the Execution API URL).
    With `config.executor == "celery"`, `broker_url` is required and the result backend
    defaults to the metadata database. `supervisor_fixed`: Airflow's processes run with
    mlwf's fix of the task supervisor (the local backend's launcher).
    """
    api_port = config.airflow_port if api_port is None else api_port
    own_url = local_url(api_port, host=api_reach_host)
    env = {
        "AIRFLOW__CORE__EXECUTOR": EXECUTOR_CLASSES[config.executor],
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": str(config.parallelism),
        "AIRFLOW__CORE__DAGS_FOLDER": dags_folder,
        "AIRFLOW__CORE__FERNET_KEY": secrets.fernet_key,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{own_url}/execution/",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{secrets.admin_user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": passwords_file,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
        "AIRFLOW__API__HOST": api_host,
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": base_url or own_url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": api_secret_key(secrets),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.jwt_secret,
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(DAG_REFRESH_SECONDS),
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": str(MIN_FILE_PROCESS_SECONDS),
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": str(SCHEDULER_IDLE_SLEEP_SECONDS),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": str(SCHEDULER_HEARTBEAT_SECONDS),
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": str(
            TASK_HEARTBEAT_SECONDS if supervisor_fixed else UNFIXED_SUPERVISOR_WAKEUP_SECONDS
        ),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(TASK_INSTANCE_HEARTBEAT_TIMEOUT_SECONDS),
        "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": str(ORPHANED_TASKS_CHECK_SECONDS),
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": statsd_host,
        "AIRFLOW__METRICS__STATSD_PORT": str(config.statsd_port if statsd_port is None else statsd_port),
        "AIRFLOW__METRICS__STATSD_PREFIX": STATSD_PREFIX,
        "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(
            config.log_server_port if log_server_port is None else log_server_port
        ),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(
            config.trigger_log_server_port if trigger_log_server_port is None else trigger_log_server_port
        ),
    }
    env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] = _flag(scheduler_health_check)
    if scheduler_health_check:
        env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT"] = str(SCHEDULER_HEALTH_PORT)
    if base_log_folder:
        env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = base_log_folder
    if config.executor == "celery":
        if not broker_url:
            raise ValueError("the celery executor needs a broker_url")
        env["AIRFLOW__CELERY__BROKER_URL"] = broker_url
        env["AIRFLOW__CELERY__RESULT_BACKEND"] = result_backend or celery_result_backend(database_url)
        # No STARTED result per task: one write to the result backend (a database commit) less
        # for every task, at the moment a wave of tasks starts. The Celery provider's executor
        # treats STARTED as PENDING, adoption included (tested); the task's state is Airflow's own.
        env["AIRFLOW__CELERY__TASK_TRACK_STARTED"] = "False"
        # No stale-bundle cleanup process per worker (~50 MiB each): the DAG bundle is a local folder.
        env["AIRFLOW__DAG_PROCESSOR__STALE_BUNDLE_CLEANUP_INTERVAL"] = "0"
    env.update(extra or {})
    return env


def api_connection(secrets: Secrets, *, host: str, port: int) -> str:
    """AIRFLOW_CONN_MLWF_API in Airflow's JSON form: the API monitoring_dag reads."""
    return json.dumps(
        {
            "conn_type": "http",
            "host": host,
            "port": port,
            "schema": "http",
            "login": secrets.admin_user,
            "password": secrets.admin_password,
        },
        separators=(",", ":"),  # compact: one token in any env file format
    )


def task_env(
    config: Config,
    secrets: Secrets,
    *,
    data_root: str,
    api_host: str = "127.0.0.1",
    api_port: int | None = None,
    statsd_host: str = "127.0.0.1",
    statsd_port: int | None = None,
    home: str | None = None,
    project_root: str | None = None,
) -> dict[str, str]:
    """What the pipeline's tasks read (MLWF_*, see src/mlpipeline/settings.py), and the API
    connection for monitoring_dag. `project_root`: where the tasks may read data files from
    (the local backend's; the containers see only the data root)."""
    api_port = config.airflow_port if api_port is None else api_port
    env = {
        "MLWF_DATA_ROOT": data_root,
        "MLWF_STATSD_HOST": statsd_host,
        "MLWF_STATSD_PORT": str(config.statsd_port if statsd_port is None else statsd_port),
        "AIRFLOW_CONN_MLWF_API": api_connection(secrets, host=api_host, port=api_port),
        "MLWF_AIRFLOW_URL": local_url(api_port, host=api_host),
        "MLWF_AIRFLOW_USER": secrets.admin_user,
        "MLWF_AIRFLOW_PASSWORD": secrets.admin_password,
    }
    if home:
        env["MLWF_HOME"] = home
    if project_root:
        env["MLWF_PROJECT_ROOT"] = project_root
    if config.webhook_url:
        env["MLWF_WEBHOOK_URL"] = config.webhook_url
    return env
