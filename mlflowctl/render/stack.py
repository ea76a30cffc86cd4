"""Pure builders for the lifecycle commands' tables and JSON (no I/O)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.table import Table
from rich.text import Text

from mlflowctl.backends.base import ServiceStatus, StackStatus

STATE_STYLES = {"healthy": "green", "starting": "yellow", "unhealthy": "red", "stopped": "dim"}
RUN_STYLES = {"success": "green", "failed": "red", "running": "yellow", "queued": "cyan"}


def uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


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
            uptime(service.uptime_seconds),
            str(service.port) if service.port else "-",
            service.url or "",
            service.detail,
        )
    return table


def dags_table(dags: list) -> Table:
    table = Table(title="DAGs", title_justify="left")
    for column in ("dag", "paused", "schedule", "last run", "state", "next run"):
        table.add_column(column, overflow="fold")
    for dag in dags:
        table.add_row(
            dag.dag_id,
            "yes" if dag.paused else "no",
            dag.schedule or "-",
            _short_time(dag.last_run_start) if dag.last_run_id else "-",
            Text(dag.last_run_state or "-", style=RUN_STYLES.get(dag.last_run_state or "", "")),
            _short_time(dag.next_run),
        )
    return table


def _short_time(value: str | None) -> str:
    if not value:
        return "-"
    return value.replace("T", " ")[:19]


def status_json(status: StackStatus, dags: list | None, dags_error: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "backend": status.backend,
        "database": status.database or None,
        "healthy": status.healthy,
        "running": status.running,
        "services": [asdict(service) for service in status.services],
        "dags": [asdict(dag) for dag in dags] if dags is not None else None,
    }
    if dags_error:
        data["dags_error"] = dags_error
    if status.notes:
        data["notes"] = list(status.notes)
    return data


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
