"""Pure builders for the run commands: rich tables and JSON-ready dicts."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from rich.console import Group
from rich.text import Text

from mlflowctl.render.durations import duration
from mlflowctl.render.layout import Column, fitted

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


def task_groups(tasks: Iterable[TaskInstance], order: Sequence[str] = ()) -> list[list[TaskInstance]]:
    """The instances of each task together (mapped ones by index), the tasks in the DAG's order
    (`mlflowctl.runs.task_order`); tasks the order does not know come after, by id."""
    place = {task_id: n for n, task_id in enumerate(order)}
    groups: dict[str, list[TaskInstance]] = {}
    for task in tasks:
        groups.setdefault(task.task_id, []).append(task)
    ordered = sorted(groups, key=lambda task_id: (place.get(task_id, len(place)), task_id))
    return [sorted(groups[task_id], key=lambda t: t.map_index) for task_id in ordered]


def task_name(task: TaskInstance) -> str:
    return task.task_id if task.map_index < 0 else f"{task.task_id}[{task.map_index}]"


def _mapped_state(group: list[TaskInstance]) -> Text:
    """`3 mapped: 2 success, 1 running`."""
    counts: dict[str, int] = {}
    for task in group:
        counts[task.state] = counts.get(task.state, 0) + 1
    text = Text(f"{len(group)} mapped: ")
    for n, (name, count) in enumerate(sorted(counts.items())):
        text.append(", " if n else "")
        text.append(f"{count} {name}", style=STATE_STYLE.get(name, ""))
    return text


TASK_COLUMNS = (Column("task"), Column("state"), Column("try", "right", drop=2), Column("duration", "right", drop=1))


def tasks_table(
    tasks: Iterable[TaskInstance],
    order: Sequence[str] = (),
    *,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    now: datetime | None = None,
):
    """One row per task in the DAG's order; a mapped task's instances indented under its row.
    Within `height` lines (a live view) mapped tasks keep only their own row."""
    groups = task_groups(tasks, order)
    expanded = height is None or sum(len(g) + 1 for g in groups) + 4 <= height
    rows: list[list] = []
    for group in groups:
        first = group[0]
        if first.map_index < 0 and len(group) == 1:
            rows.append([first.task_id, state(first.state), str(first.try_number), duration(task_seconds(first, now))])
            continue
        longest = max((s for s in (task_seconds(t, now) for t in group) if s is not None), default=None)
        rows.append([first.task_id, _mapped_state(group), "", duration(longest)])
        if expanded:
            for task in group:
                rows.append([f"  [{task.map_index}]", state(task.state), str(task.try_number), duration(task_seconds(task, now))])
    return fitted(TASK_COLUMNS, rows, width, title=title)


def run_title(snapshot: RunSnapshot) -> Text:
    run = snapshot.run
    text = Text(run.run_id, style="bold")
    text.append("  ")
    text.append(run.state, style=STATE_STYLE.get(run.state, ""))
    text.append(f"  ({duration(snapshot.elapsed)})")
    return text


def run_table(snapshot: RunSnapshot, *, width: int | None = None, height: int | None = None, now: datetime | None = None):
    return tasks_table(snapshot.tasks, snapshot.task_order, title=run_title(snapshot), width=width, height=height, now=now)


def run_changes(before: RunSnapshot | None, after: RunSnapshot) -> list[Text]:
    """One line per change since `before` (a CI log's view of a run): the run's state, then each
    task instance that changed state or try, in the DAG's order, with its duration once it has one."""
    lines = []
    if before is None or before.run.state != after.run.state:
        line = Text(f"run {after.run.run_id} ")
        line.append(after.run.state, style=STATE_STYLE.get(after.run.state, ""))
        if after.run.done:
            line.append(f" {duration(after.elapsed)}")
        lines.append(line)
    seen = {} if before is None else {(t.task_id, t.map_index): (t.state, t.try_number) for t in before.tasks}
    for group in task_groups(after.tasks, after.task_order):
        for task in group:
            if seen.get((task.task_id, task.map_index), ("none", task.try_number)) == (task.state, task.try_number):
                continue
            line = Text(f"{task_name(task)} ")
            line.append(task.state, style=STATE_STYLE.get(task.state, ""))
            if task.try_number > 1:
                line.append(f" (try {task.try_number})")
            if task.done and task.duration is not None:
                line.append(f" {duration(task.duration)}")
            lines.append(line)
    return lines


def run_json(snapshot: RunSnapshot, failures: list[TaskFailure] | None = None) -> dict:
    data = jsonable(snapshot.run)
    data["tasks"] = jsonable(snapshot.tasks)
    if failures is not None:
        data["failed_tasks"] = [
            {"task_id": f.task.task_id, "try_number": f.task.try_number, "log_tail": f.log_tail} for f in failures
        ]
    return data


DAG_COLUMNS = (
    Column("dag"),
    Column("paused", drop=3),
    Column("schedule", shrink=True),
    Column("last run", drop=4),
    Column("state"),
    Column("next run", drop=1),
    Column("tags", shrink=True, drop=2),
)


def dags_table(overview: DagsOverview, *, title: str | None = None, width: int | None = None):
    """The one DAG table: `mlwf dags`, and `mlwf status` under the services."""
    rows = []
    for row in overview.dags:
        dag, last = row.dag, row.last_run
        name = Text(dag.dag_id)
        if dag.has_import_errors:
            name.append(" (import errors)", style="red")
        rows.append([
            name,
            "yes" if dag.is_paused else "no",
            dag.schedule or "-",
            when(last.run_after) if last else "-",
            state(last.state) if last else Text("-"),
            when(dag.next_run),
            ", ".join(dag.tags) or "-",
        ])
    return fitted(DAG_COLUMNS, rows, width, title=title)


def import_errors_table(overview: DagsOverview, *, width: int | None = None):
    rows = []
    for error in overview.import_errors:
        last = [line for line in error.stack_trace.strip().splitlines() if line.strip()]
        rows.append([error.filename, last[-1] if last else "?"])
    heading = Text("import errors", style="bold red")
    return fitted((Column("file"), Column("error", shrink=True)), rows, width, title=heading)


def dags_json(overview: DagsOverview) -> dict:
    return {
        "dags": [{**jsonable(row.dag), "last_run": jsonable(row.last_run)} for row in overview.dags],
        "import_errors": jsonable(overview.import_errors),
    }


RUN_COLUMNS = (
    Column("run"),
    Column("type", drop=2),
    Column("state"),
    Column("started", drop=1),
    Column("duration", "right"),
)


def runs_table(runs: Iterable[DagRun], *, title: str | None = None, width: int | None = None):
    rows = [[run.run_id, run.run_type or "-", state(run.state), when(run.start_date), duration(run_seconds(run))] for run in runs]
    return fitted(RUN_COLUMNS, rows, width, title=title)


def dag_status_tables(status: DagStatus, *, width: int | None = None) -> list:
    dag = status.dag
    head = f"{dag.dag_id}  paused={'yes' if dag.is_paused else 'no'}  schedule={dag.schedule or '-'}"
    tables = [Text(head, style="bold"), runs_table(status.runs, title="recent runs", width=width)]
    if status.runs:
        tables.append(
            tasks_table(status.latest_tasks, status.task_order, title=f"tasks of {status.runs[0].run_id}", width=width)
        )
    return tables


def dag_status_json(status: DagStatus) -> dict:
    return {
        "dag": jsonable(status.dag),
        "runs": jsonable(status.runs),
        "latest_run_tasks": jsonable(status.latest_tasks),
    }


def backfill_plan_table(plan: BackfillPlan, *, width: int | None = None):
    estimate = duration(plan.estimate_s) if plan.estimate_s is not None else "unknown (no past successful runs)"
    title = (
        f"backfill {plan.dag_id}: {len(plan.dates)} runs, max {plan.max_active_runs} at once, "
        f"reprocess {plan.reprocess}; estimated wall time {estimate}"
    )
    rows = [[str(number), date.isoformat()] for number, date in enumerate(plan.dates, 1)]
    return fitted((Column("#", "right"), Column("logical date")), rows, width, title=title)


def backfill_plan_json(plan: BackfillPlan) -> dict:
    return {
        "dag_id": plan.dag_id,
        "logical_dates": [d.isoformat() for d in plan.dates],
        "max_active_runs": plan.max_active_runs,
        "reprocess": plan.reprocess,
        "typical_run_seconds": plan.typical_run_s,
        "estimated_seconds": plan.estimate_s,
    }


BACKFILL_COLUMNS = (Column("logical date", drop=1), Column("run"), Column("state"), Column("duration", "right"))


def _by_date(progress: BackfillProgress) -> list[DagRun]:
    return sorted(progress.runs, key=lambda r: r.logical_date or datetime.min.replace(tzinfo=timezone.utc))


def backfill_summary_table(progress: BackfillProgress, *, width: int | None = None, height: int | None = None):
    """The backfill's runs by logical date; within `height` lines (a live view) the runs that
    have not succeeded come first, then the latest successes, and a line counts the rest."""
    title = f"{progress.finished}/{progress.total} runs ended, {len(progress.failed)} failed ({duration(progress.elapsed)})"
    runs = _by_date(progress)
    hidden = 0
    if height is not None and len(runs) + 4 > height:
        room = max(height - 5, 1)
        keep = sorted(runs, key=lambda r: (r.state == "success", -runs.index(r)))[:room]
        hidden = len(runs) - len(keep)
        runs = [r for r in runs if r in keep]
    rows = [[when(run.logical_date), run.run_id, state(run.state), duration(run_seconds(run))] for run in runs]
    table = fitted(BACKFILL_COLUMNS, rows, width, title=title)
    return Group(table, Text(f"... and {hidden} more successful runs", style="dim")) if hidden else table


def backfill_changes(before: BackfillProgress | None, after: BackfillProgress) -> list[Text]:
    """One line per run that appeared or changed state since `before` (a CI log's view)."""
    seen = {} if before is None else {r.run_id: r.state for r in before.runs}
    lines = []
    for run in _by_date(after):
        if seen.get(run.run_id) == run.state:
            continue
        line = Text(f"{when(run.logical_date)}  {run.run_id} ")
        line.append(run.state, style=STATE_STYLE.get(run.state, ""))
        if run.done:
            line.append(f" {duration(run_seconds(run))}")
        lines.append(line)
    return lines
