"""Pure builders for the lifecycle commands' tables and JSON (no I/O)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.text import Text

from mlflowctl.backends.base import ServiceStatus, StackStatus
from mlflowctl.render.durations import duration
from mlflowctl.render.layout import Column, fitted, pairs, plan, whole

if TYPE_CHECKING:
    from mlflowctl.runs import DagRow, DagsOverview

STATE_STYLES = {"healthy": "green", "starting": "yellow", "unhealthy": "red", "stopped": "dim"}


#: How `status` names each metadata database.
DATABASE_NAMES = {"postgres": "PostgreSQL", "sqlite": "SQLite", "database_url": "the database at database_url"}


SERVICE_COLUMNS = (
    Column("service"),
    Column("state"),
    Column("pid", "right", drop=3),
    Column("uptime", "right", drop=2),
    Column("port", "right", drop=4),
    Column("url", drop=1),
    Column("detail", shrink=True),
)
URL = [c.header for c in SERVICE_COLUMNS].index("url")


def services_table(
    services: list[ServiceStatus],
    *,
    backend: str,
    title: str | None = None,
    database: str = "",
    width: int | None = None,
) -> RenderableType:
    """The services, one line each; on a terminal too narrow for the URL column the URLs
    follow the table, one line each, whole."""
    on = f", metadata in {DATABASE_NAMES.get(database, database)}" if database else ""
    rows = [
        [
            service.name,
            Text(service.state, style=STATE_STYLES.get(service.state, "")),
            str(service.pid) if service.pid else "-",
            duration(service.uptime_seconds, tenths=False),
            str(service.port) if service.port else "-",
            service.url or "",
            service.detail,
        ]
        for service in services
    ]
    layout = plan(SERVICE_COLUMNS, rows, width)
    table = fitted(SERVICE_COLUMNS, rows, width, title=title or f"services ({backend} backend{on})", layout=layout)
    if any(i == URL for i, _ in layout):
        return table
    named = [s for s in services if s.url]
    if not named:
        return table
    pad = max(len(s.name) for s in named)
    return Group(table, Text(""), *(whole(f"{s.name.ljust(pad)}   {s.url}") for s in named))


@dataclass(frozen=True)
class Starting:
    """What `up` or `scale` reported last: a step's message and the services' states."""

    backend: str
    message: str
    services: list[ServiceStatus]
    step: bool  # the message is a step worth a line in a log (not a wait)
    elapsed: float  # seconds since the command began


def starting_view(state: Starting, width: int, height: int) -> RenderableType:
    """The live view on a terminal: the message, then the services."""
    parts: list[RenderableType] = [Text(state.message, style="bold")]
    if state.services:
        parts.append(services_table(state.services, backend=state.backend, title="starting", width=width))
    return Group(*parts)


def starting_changes(before: Starting | None, after: Starting) -> list[Text]:
    """A log's lines: each step, and each service that changed state, with the time so far."""
    lines = [Text(after.message)] if after.step else []
    was = {s.name: s.state for s in before.services} if before else {}
    for service in after.services:
        if was.get(service.name, "starting") != service.state:
            line = Text(f"{service.name} ")
            line.append(service.state, style=STATE_STYLES.get(service.state, ""))
            line.append(f" after {duration(after.elapsed)}")
            lines.append(line)
    return lines


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


def config_table(items: list[tuple[str, Any, str, bool]], *, width: int | None = None) -> RenderableType:
    rows = []
    for name, value, source, secret in items:
        shown = mask(value) if secret else (", ".join(value) if isinstance(value, tuple) else str(value))
        rows.append((name, shown, f"from {source}"))
    return pairs(rows, width, title="effective configuration")


def mask(value: Any) -> str:
    return "****" if value not in ("", None) else ""
