"""The environment every process of a local stack runs with.

The `AIRFLOW__*` settings come from the one shared builder (`mlflowctl.airflow_settings`,
also used by the docker backend); this module adds what is local: the state directory's
paths (AIRFLOW_HOME, SQLite database, task logs, passwords file), the task modules on
PYTHONPATH, the marker every process of the stack inherits (so `down` can sweep strays),
and what the pipeline's tasks read (data root, StatsD target, the API connection and
credentials for monitoring_dag).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from mlflowctl.airflow_settings import airflow_env
from mlflowctl.backends.airflow_fixes import TASK_NICE_VARIABLE
from mlflowctl.backends.processes import STACK_MARKER
from mlflowctl.config import Config
from mlflowctl.secrets import PASSWORDS_FILE, Secrets

#: Variables from the caller's environment that would steer Airflow elsewhere.
_DROPPED_PREFIXES = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_")


def airflow_home(config: Config) -> Path:
    return config.home_dir / "airflow"


def data_root(config: Config) -> Path:
    """The pipeline's data root (MLWF_DATA_ROOT) on a local stack; its model registry lies under it."""
    return config.home_dir / "data"


# How long a write waits for SQLite's lock before "database is locked" (sqlite3's default
# 5 s): the components, every running task's heartbeat and the API all write to one file,
# and on a busy laptop a writer can be descheduled while it holds the lock (seen in CI as an
# HTTP 500 from POST dagRuns after exactly 5 s).
SQLITE_LOCK_TIMEOUT_S = 30


def sqlite_url(config: Config) -> str:
    return f"sqlite:///{airflow_home(config) / 'airflow.db'}?timeout={SQLITE_LOCK_TIMEOUT_S}"


def api_connection(config: Config, secrets: Secrets) -> str:
    """AIRFLOW_CONN_MLWF_API in Airflow's JSON form: the API that monitoring_dag reads."""
    return json.dumps(
        {
            "conn_type": "http",
            "host": "127.0.0.1",
            "port": config.airflow_port,
            "schema": "http",
            "login": secrets.admin_user,
            "password": secrets.admin_password,
        }
    )


def task_environment(config: Config, secrets: Secrets) -> dict[str, str]:
    """What the pipeline's tasks read (see src/mlpipeline/settings.py and monitoring_dag)."""
    env = {
        "MLWF_HOME": str(config.home_dir),
        "MLWF_DATA_ROOT": str(data_root(config)),
        "MLWF_PROJECT_ROOT": str(config.project_root),  # data files may be read from under it
        "MLWF_STATSD_HOST": "127.0.0.1",
        "MLWF_STATSD_PORT": str(config.statsd_port),
        "AIRFLOW_CONN_MLWF_API": api_connection(config, secrets),
        "MLWF_AIRFLOW_URL": f"http://127.0.0.1:{config.airflow_port}",
        "MLWF_AIRFLOW_USER": secrets.admin_user,
        "MLWF_AIRFLOW_PASSWORD": secrets.admin_password,
    }
    if config.webhook_url:
        env["MLWF_WEBHOOK_URL"] = config.webhook_url
    return env


def local_environment(
    config: Config,
    secrets: Secrets,
    *,
    base: Mapping[str, str] | None = None,
    database_url: str | None = None,
    broker_url: str | None = None,
    supervisor_fixed: bool = True,
) -> dict[str, str]:
    """The full environment for the stack's processes: the caller's, minus stray AIRFLOW settings.
    `supervisor_fixed`: the components are forked by the launcher, which fixes the task supervisor."""
    base = dict(os.environ if base is None else base)
    env = {k: v for k, v in base.items() if not k.startswith(_DROPPED_PREFIXES)}
    home = config.home_dir
    env.update(
        {
            STACK_MARKER: str(home),
            "AIRFLOW_HOME": str(airflow_home(config)),
            "PYTHONPATH": os.pathsep.join(p for p in (config.tasks_dir, env.get("PYTHONPATH", "")) if p),
            "PYTHONUNBUFFERED": "1",
            TASK_NICE_VARIABLE: str(config.task_nice),  # read by airflow_fixes.lower_task_priority
        }
    )
    env.update(
        airflow_env(
            config,
            secrets,
            database_url=database_url or config.database_url or sqlite_url(config),
            passwords_file=str(home / PASSWORDS_FILE),
            dags_folder=config.dags_dir,
            broker_url=broker_url or config.broker_url or None,
            supervisor_fixed=supervisor_fixed,
            extra={
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs" / "tasks"),
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            },
        )
    )
    env.update(task_environment(config, secrets))
    return env
