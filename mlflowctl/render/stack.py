"""Pure builders for the lifecycle commands' tables and JSON (no I/O)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from mlflowctl.backends.base import ServiceStatus, StackStatus
from mlflowctl.render.durations import duration

if TYPE_CHECKING:
    from mlflowctl.runs import DagRow, DagsOverview

STATE_STYLES = {"healthy": "green", "starting": "yellow", "unhealthy": "red", "stopped": "dim"}


#: How `status` names each metadata database.
DATABASE_NAMES = {"postgres": "PostgreSQL", "sqlite": "SQLite", "database_url": "the database at database_url"}


def services_table(
    services: list[ServiceStatus], *, backend: str, title: str | None = None, database: str = ""
) -> Table:
    on = f", metadata in {DATABASE_NAMES.get(database, database)}" if database else ""
    table = Table(title=title or f"services ({backend} backend{on})", title_justify="left")
    for column in ("service", "state", "pid", "uptime", "port", "url", "detail"):
        table.add_column(column, overflow="fold")
    for service in services:
        table.add_row(
            service.name,
            Text(service.state, style=STATE_STYLES.get(service.state, "")),
            str(service.pid) if service.pid else "-",
            duration(service.uptime_seconds, tenths=False),
            str(service.port) if service.port else "-",
            service.url or "",
            service.detail,
        )
    return table


def status_json(status: StackStatus, dags: DagsOverview | None, dags_error: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "backend": status.backend,
        "database": status.database or None,
        "healthy": status.healthy,
        "running": status.running,
        "services": [asdict(service) for service in status.services],
        "dags": [_dag_json(row) for row in dags.dags] if dags is not None else None,
    }
    if dags_error:
        data["dags_error"] = dags_error
    if status.notes:
        data["notes"] = list(status.notes)
    return data


def _dag_json(row: DagRow) -> dict[str, Any]:
    """One DAG as `status --json` has always written it (`dags --json` writes the API's fields)."""
    dag, last = row.dag, row.last_run
    return {
        "dag_id": dag.dag_id,
        "paused": dag.is_paused,
        "schedule": dag.schedule,
        "last_run_id": last.run_id if last else None,
        "last_run_state": last.state if last else None,
        "last_run_start": _iso(last.start_date) if last else None,
        "next_run": None if dag.is_paused else _iso(dag.next_run),
        "import_errors": int(dag.has_import_errors),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def config_table(items: list[tuple[str, Any, str, bool]]) -> Table:
    table = Table(title="effective configuration", title_justify="left")
    for column in ("setting", "value", "from"):
        table.add_column(column, overflow="fold")
    for name, value, source, secret in items:
        shown = ", ".join(value) if isinstance(value, tuple) else str(value)
        table.add_row(name, mask(value) if secret else shown, source)
    return table


def mask(value: Any) -> str:
    return "****" if value not in ("", None) else ""
