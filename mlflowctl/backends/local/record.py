"""Which executor and database a local stack was started with, kept in <home>/executor.json.

`status`, `down` and `scale` must see the stack as it was started, whatever the config
says now: `mlwf down` after `mlwf up --executor celery` stops the workers, and `mlwf
status` after `mlwf scale workers 3` shows three. And mlwf never switches databases under
a user's data: an existing stack keeps its database (a new default does not move it), an
explicit other choice is refused, and so is Celery on SQLite.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from mlflowctl.config import DATABASES, Config
from mlflowctl.errors import DamagedStateError, UsageError
from mlflowctl.state import read_json, write_durably

RECORD_FILE = "executor.json"
#: How messages name each database.
NAMES = {"postgres": "PostgreSQL", "sqlite": "SQLite"}


def read_record(home: Path) -> dict:
    """The record, {} before the first `up`; a damaged one is an error, never silently "local"."""
    path = Path(home) / RECORD_FILE
    data = read_json(
        path,
        fix='write it again as {"executor": "local", "database": "postgres"} or {"executor": "celery", '
        '"workers": N} (what the stack was started with), or start over with `mlwf down --volumes`',
    )
    if data is not None and data.get("executor", "local") not in ("local", "celery"):
        raise DamagedStateError(f"{path} names an unknown executor {data.get('executor')!r}")
    if data is not None and data.get("database", "postgres") not in DATABASES:
        raise DamagedStateError(f"{path} names an unknown database {data.get('database')!r}")
    return data or {}


def write_record(home: Path, **values) -> None:
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    write_durably(home / RECORD_FILE, json.dumps({**read_record(home), **values}, indent=2))


def recorded_database(home: Path) -> str | None:
    """The metadata database a stack in `home` was created with; None for a new stack.

    Stacks made before the record said so: a SQLite file means SQLite (the local executor's
    database then), a Celery stack means mlwf's PostgreSQL.
    """
    record = read_record(home)
    if record.get("database") in DATABASES:
        return record["database"]
    if (Path(home) / "airflow" / "airflow.db").exists():
        return "sqlite"
    if record.get("executor") == "celery" or record.get("postgres_dir"):
        return "postgres"
    return None


def effective_config(config: Config) -> Config:
    """The config with the executor, worker count and database the stack was started with.

    A value the user set (flag, MLWF_*, project file) wins for the executor and workers; a
    default does not override what the running stack is: `mlwf down` after `mlwf up
    --executor celery` must stop the workers, and `mlwf status` after `mlwf scale workers 3`
    must show three. The database is always the stack's own (`check_switch` refuses another).
    """
    record = read_record(config.home_dir)
    changes = {}
    if "executor" not in config.sources and record.get("executor") in ("local", "celery"):
        changes["executor"] = record["executor"]
    if "workers" not in config.sources and isinstance(record.get("workers"), int) and record["workers"] >= 1:
        changes["workers"] = record["workers"]
    if "listen" not in config.sources and isinstance(record.get("listen"), str):
        changes["listen"] = record["listen"]  # `status`, `down`, `worker token` see the stack as started
    database = recorded_database(config.home_dir)
    if database is not None and database != config.database:
        changes["database"] = database
    return dataclasses.replace(config, **changes) if changes else config


def check_switch(requested: Config) -> None:
    """Refuse to run an existing stack's data under another database: there is no migration.

    `requested` is the config as the user gave it (before `effective_config`)."""
    if requested.database_url:
        return  # the user's own database is the user's business
    home = requested.home_dir
    existing = recorded_database(home)
    executor = effective_config(requested).executor
    database = existing or requested.database
    move = (
        "mlwf has no automatic migration: keep this stack as it is, or start a new one in another state "
        "directory (MLWF_HOME=...) or after `mlwf down --volumes` (deletes this stack's database, logs and data)"
    )
    if existing and "database" in requested.sources and requested.database != existing:
        raise UsageError(
            f"the stack in {home} keeps its metadata in {NAMES[existing]}; mlwf does not move it to "
            f"{NAMES[requested.database]} (database={requested.database} from {requested.sources['database']})",
            hint=f"{move}; to carry DAG runs over, export and import them yourself (README: Moving from SQLite)",
        )
    if executor == "celery" and database == "sqlite":
        where = f"the stack in {home} keeps its metadata in SQLite" if existing else "database = sqlite"
        raise UsageError(
            f"the celery executor needs PostgreSQL, and {where}",
            hint=move if existing else "use the default database (postgres) with the celery executor",
        )
