"""Which executor a local stack was started with, kept in <home>/executor.json.

`status`, `down` and `scale` must see the stack as it was started, whatever the config
says now: `mlwf down` after `mlwf up --executor celery` stops the workers, and `mlwf
status` after `mlwf scale workers 3` shows three. And mlwf never switches databases under
a user's data: moving an existing SQLite stack to Celery (PostgreSQL), or back, is refused.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from mlflowctl.config import Config
from mlflowctl.errors import DamagedStateError, UsageError
from mlflowctl.state import read_json, write_durably

RECORD_FILE = "executor.json"


def read_record(home: Path) -> dict:
    """The record, {} before the first `up`; a damaged one is an error, never silently "local"."""
    path = Path(home) / RECORD_FILE
    data = read_json(
        path,
        fix='write it again as {"executor": "local"} or {"executor": "celery", "workers": N} (what the stack '
        "was started with), or start over with `mlwf down --volumes`",
    )
    if data is not None and data.get("executor", "local") not in ("local", "celery"):
        raise DamagedStateError(f"{path} names an unknown executor {data.get('executor')!r}")
    return data or {}


def write_record(home: Path, **values) -> None:
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    write_durably(home / RECORD_FILE, json.dumps({**read_record(home), **values}, indent=2))


def effective_config(config: Config) -> Config:
    """The config with the executor and worker count the stack was started with.

    A value the user set (flag, MLWF_*, project file) wins; a default does not override
    what the running stack is: `mlwf down` after `mlwf up --executor celery` must stop
    the workers, and `mlwf status` after `mlwf scale workers 3` must show three.
    """
    record = read_record(config.home_dir)
    changes = {}
    if "executor" not in config.sources and record.get("executor") in ("local", "celery"):
        changes["executor"] = record["executor"]
    if "workers" not in config.sources and isinstance(record.get("workers"), int) and record["workers"] >= 1:
        changes["workers"] = record["workers"]
    return dataclasses.replace(config, **changes) if changes else config


def check_switch(config: Config) -> None:
    """Refuse to run an existing stack's data under the other database."""
    home = config.home_dir
    sqlite = home / "airflow" / "airflow.db"
    redo = (
        f"keep it with `mlwf up --executor {{old}}`, or start fresh: `mlwf down --volumes` (deletes this "
        f"stack's database, logs and data) or another state directory (MLWF_HOME=...), then "
        f"`mlwf up --executor {config.executor}`"
    )
    if config.executor == "celery" and not config.database_url and sqlite.exists():
        raise UsageError(
            f"the stack in {home} keeps its metadata in SQLite ({sqlite}); mlwf does not move it to "
            f"PostgreSQL for the celery executor: " + redo.format(old="local")
        )
    record = read_record(home)
    if config.executor == "local" and record.get("executor") == "celery" and not config.database_url:
        raise UsageError(
            f"the stack in {home} was started with the celery executor and keeps its metadata in "
            f"PostgreSQL; mlwf does not move it back to SQLite: " + redo.format(old="celery")
        )
