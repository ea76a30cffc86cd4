"""Pure builders for the run commands: rich tables and JSON-ready dicts."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable

from rich.console import Group
from rich.table import Table
from rich.text import Text

from mlflowctl.render.durations import duration

if TYPE_CHECKING:
    from mlflowctl.api.airflow import DagRun, TaskInstance
    from mlflowctl.runs import BackfillPlan, BackfillProgress, DagsOverview, DagStatus, RunSnapshot, TaskFailure

STATE_STYLE = {
    "success": "green",
    "failed": "red",
    "upstream_failed": "red",
    "running": "cyan",
    "queued": "yellow",
    "scheduled": "yellow",
    "up_for_retry": "yellow",
    "skipped": "dim",
    "none": "dim",
}


def jsonable(value: Any) -> Any:
    """Dataclasses, datetimes and tuples -> plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def when(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def state(value: str | None) -> Text:
    text = value or "none"
    return Text(text, style=STATE_STYLE.get(text, ""))


def titled(title: str | None, table: Table, *, style: str = "bold"):
    """A heading line above a table (a rich title would wrap to the table's width)."""
    return table if not title else Group(Text(title, style=style), table)


def task_seconds(task: TaskInstance, now: datetime | None = None) -> float | None:
    """A task's duration; for a running task the time since it started."""
    if task.duration is not None:
        return task.duration
    if task.start_date is not None and task.state == "running":
        return ((now or datetime.now(timezone.utc)) - task.start_date).total_seconds()
    return None


def run_seconds(run: DagRun, now: datetime | None = None) -> float | None:
    if run.duration is not None:
        return run.duration
    if run.start_date is not None:
        return ((run.end_date or now or datetime.now(timezone.utc)) - run.start_date).total_seconds()
    return None


def tasks_table(tasks: Iterable[TaskInstance], *, title: str | None = None, now: datetime | None = None):
    table = Table()
    table.add_column("task")
    table.add_column("state")
    table.add_column("try", justify="right")
    table.add_column("duration", justify="right")
    for task in sorted(tasks, key=lambda t: (t.start_date is None, t.start_date or datetime.max.replace(tzinfo=timezone.utc), t.task_id)):
        name = task.task_id if task.map_index < 0 else f"{task.task_id}[{task.map_index}]"
        table.add_row(name, state(task.state), str(task.try_number), duration(task_seconds(task, now)))
    return titled(title, table)


def run_table(snapshot: RunSnapshot, *, now: datetime | None = None):
    run = snapshot.run
    title = f"{run.run_id}  {run.state}  ({duration(snapshot.elapsed)})"
    return tasks_table(snapshot.tasks, title=title, now=now)


def run_json(snapshot: RunSnapshot, failures: list[TaskFailure] | None = None) -> dict:
    data = jsonable(snapshot.run)
    data["tasks"] = jsonable(snapshot.tasks)
    if failures is not None:
        data["failed_tasks"] = [
            {"task_id": f.task.task_id, "try_number": f.task.try_number, "log_tail": f.log_tail} for f in failures
        ]
    return data


def dags_table(overview: DagsOverview, *, title: str | None = None):
    """The one DAG table: `mlwf dags`, and `mlwf status` under the services."""
    table = Table()
    for column in ("dag", "paused", "schedule", "last run", "state", "next run", "tags"):
        table.add_column(column)
    for row in overview.dags:
        dag, last = row.dag, row.last_run
        table.add_row(
            dag.dag_id + (" (import errors)" if dag.has_import_errors else ""),
            "yes" if dag.is_paused else "no",
            dag.schedule or "-",
            when(last.run_after) if last else "-",
            state(last.state) if last else Text("-"),
            when(dag.next_run),
            ", ".join(dag.tags) or "-",
        )
    return titled(title, table)


def import_errors_table(overview: DagsOverview):
    table = Table()
    table.add_column("file")
    table.add_column("error")
    for error in overview.import_errors:
        last = [line for line in error.stack_trace.strip().splitlines() if line.strip()]
        table.add_row(error.filename, last[-1] if last else "?")
    return titled("import errors", table, style="bold red")


def dags_json(overview: DagsOverview) -> dict:
    return {
        "dags": [{**jsonable(row.dag), "last_run": jsonable(row.last_run)} for row in overview.dags],
        "import_errors": jsonable(overview.import_errors),
    }


def runs_table(runs: Iterable[DagRun], *, title: str | None = None):
    table = Table()
    for column in ("run", "type", "state", "started", "duration"):
        table.add_column(column, justify="right" if column == "duration" else "left")
    for run in runs:
        table.add_row(run.run_id, run.run_type or "-", state(run.state), when(run.start_date), duration(run_seconds(run)))
    return titled(title, table)


def dag_status_tables(status: DagStatus) -> list:
    dag = status.dag
    head = f"{dag.dag_id}  paused={'yes' if dag.is_paused else 'no'}  schedule={dag.schedule or '-'}"
    tables = [Text(head, style="bold"), runs_table(status.runs, title="recent runs")]
    if status.runs:
        tables.append(tasks_table(status.latest_tasks, title=f"tasks of {status.runs[0].run_id}"))
    return tables


def dag_status_json(status: DagStatus) -> dict:
    return {
        "dag": jsonable(status.dag),
        "runs": jsonable(status.runs),
        "latest_run_tasks": jsonable(status.latest_tasks),
    }


def backfill_plan_table(plan: BackfillPlan):
    estimate = duration(plan.estimate_s) if plan.estimate_s is not None else "unknown (no past successful runs)"
    title = (
        f"backfill {plan.dag_id}: {len(plan.dates)} runs, max {plan.max_active_runs} at once, "
        f"reprocess {plan.reprocess}; estimated wall time {estimate}"
    )
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("logical date")
    for number, date in enumerate(plan.dates, 1):
        table.add_row(str(number), date.isoformat())
    return titled(title, table)


def backfill_plan_json(plan: BackfillPlan) -> dict:
    return {
        "dag_id": plan.dag_id,
        "logical_dates": [d.isoformat() for d in plan.dates],
        "max_active_runs": plan.max_active_runs,
        "reprocess": plan.reprocess,
        "typical_run_seconds": plan.typical_run_s,
        "estimated_seconds": plan.estimate_s,
    }


def backfill_summary_table(progress: BackfillProgress):
    title = f"{progress.finished}/{progress.total} runs ended, {len(progress.failed)} failed ({duration(progress.elapsed)})"
    table = Table()
    for column in ("logical date", "run", "state", "duration"):
        table.add_column(column)
    for run in sorted(progress.runs, key=lambda r: r.logical_date or datetime.min.replace(tzinfo=timezone.utc)):
        table.add_row(when(run.logical_date), run.run_id, state(run.state), duration(run_seconds(run)))
    return titled(title, table)
