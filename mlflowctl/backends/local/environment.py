"""The environment every process of a local stack runs with.

The `AIRFLOW__*` settings and what the pipeline's tasks read come from the one builder both
backends use (`mlflowctl.airflow_settings`: `airflow_env`, `task_env`); this module adds
only what is local: the state directory's paths (AIRFLOW_HOME, SQLite database, task logs,
passwords file), the task modules on PYTHONPATH, and the marker every process of the stack
inherits (so `down` can sweep strays).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from mlflowctl.airflow_settings import airflow_env, task_env
from mlflowctl.backends.airflow_fixes import NEWEST_API_VARIABLE, TASK_NICE_VARIABLE
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
            # Every Execution API client is this runtime's Task SDK unless other hosts join
            # (read by the launcher: airflow_fixes.api_server_newest_execution_api).
            NEWEST_API_VARIABLE: "0" if config.listen else "1",
        }
    )
    env.update(
        airflow_env(
            config,
            secrets,
            database_url=database_url or config.database_url or sqlite_url(config),
            passwords_file=str(home / PASSWORDS_FILE),
            dags_folder=config.dags_dir,
            base_log_folder=str(home / "logs" / "tasks"),
            broker_url=broker_url or config.broker_url or None,
            supervisor_fixed=supervisor_fixed,
        )
    )
    env.update(
        task_env(config, secrets, data_root=str(data_root(config)), home=str(home), project_root=str(config.project_root))
    )
    return env
