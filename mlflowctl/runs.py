"""What the run commands do, between the API client and the terminal (no printing here).

Input checks (conf JSON, dates) happen before anything is sent; waiting, backfill planning
and log following are generators the CLI renders as they go.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

from mlflowctl.errors import NotFoundError, TimeoutExpired, UnreachableError, UsageError

if TYPE_CHECKING:  # the client module imports httpx: keep it out of `mlwf --help`
    from mlflowctl.api.airflow import AirflowClient, Backfill, Dag, DagImportError, DagRun, LogRecord, Task, TaskInstance

T = TypeVar("T")
REPROCESS = ("none", "failed", "completed")
FAILED_TASK_STATES = frozenset({"failed", "upstream_failed"})
LOG_TAIL_LINES = 20
POLL_TOLERANCE_S = 120.0  # how long a wait rides out a server that stopped answering
SOURCE_GROUP = "::group::Log message source details"


# -- input, checked before anything is sent -----------------------------------------------


def parse_conf(text: str | None) -> dict:
    """`--conf '{"k": 1}'` or `--conf @file.json` -> a dict; anything JSON cannot send is a usage error."""
    if text is None:
        return {}
    source = "--conf"
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        source = f"--conf {path}"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{source}: cannot read it ({exc.strerror or exc})") from None
        except ValueError as exc:  # not UTF-8 (UnicodeDecodeError), or a NUL in the name
            raise UsageError(f"{source}: cannot read it as UTF-8 text ({exc})") from None
    try:
        conf = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # NaN/Infinity, an integer of too many digits, deep nesting
        raise UsageError(f"{source} is not JSON that can be sent: {str(exc) or type(exc).__name__}") from None
    if not isinstance(conf, dict):
        raise UsageError(f"{source} must be a JSON object, not {type(conf).__name__}")
    try:  # as httpx encodes it: a lone surrogate (from a non-UTF-8 argument) cannot be sent
        json.dumps(conf, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{source} is not JSON that can be sent: {str(exc) or type(exc).__name__}") from None
    return conf


def _no_constant(name: str):
    """NaN and Infinity are not JSON (Python's json reads them; the server would not)."""
    raise ValueError(f"{name} is not a JSON value")


def parse_date(text: str, flag: str) -> datetime:
    """YYYY-MM-DD or an ISO 8601 date-time; naive values are UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a date (use YYYY-MM-DD or an ISO 8601 date-time)") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def backfill_range(start: str, end: str) -> tuple[datetime, datetime]:
    first, last = parse_date(start, "--start-date"), parse_date(end, "--end-date")
    if first > last:
        raise UsageError(f"--start-date {start} is after --end-date {end}")
    return first, last


# -- DAGs ---------------------------------------------------------------------------------


@dataclass
class DagRow:
    dag: Dag
    last_run: DagRun | None


@dataclass
class DagsOverview:
    dags: list[DagRow]
    import_errors: list[DagImportError]


#: At most this many requests at once for the overview: enough to hide round trips, few
#: enough not to crowd out the api-server's other clients.
OVERVIEW_REQUESTS = 8


def dags_overview(client: AirflowClient) -> DagsOverview:
    """Every DAG with its latest run, and the import errors. The API has no "latest run per
    DAG", so that is one request per DAG: sent together after the DAG list (which logs in
    first), so that a busy api-server costs one queueing delay, not one per DAG (issue 22)."""
    from concurrent.futures import ThreadPoolExecutor

    dags = client.list_dags()
    with ThreadPoolExecutor(OVERVIEW_REQUESTS) as pool:
        errors = pool.submit(client.import_errors)
        latest = list(pool.map(lambda dag: client.list_runs(dag.dag_id, limit=1), dags))
    rows = [DagRow(dag, runs[0] if runs else None) for dag, runs in zip(dags, latest)]
    return DagsOverview(rows, errors.result())


def task_order(tasks: Iterable[Task]) -> tuple[str, ...]:
    """The DAG's task ids as Airflow's grid lists them: upstream before downstream, and tasks
    that become ready together by task id."""
    from graphlib import TopologicalSorter

    graph = TopologicalSorter()
    for task in tasks:
        graph.add(task.task_id)
        for downstream in task.downstream_task_ids:
            graph.add(downstream, task.task_id)
    graph.prepare()
    order: list[str] = []
    while graph.is_active():
        ready = sorted(graph.get_ready())
        order.extend(ready)
        graph.done(*ready)
    return tuple(order)


@dataclass
class DagStatus:
    dag: Dag
    runs: list[DagRun]
    latest_tasks: list[TaskInstance]
    task_order: tuple[str, ...] = ()


def dag_status(client: AirflowClient, dag_id: str, *, limit: int = 10) -> DagStatus:
    dag = client.get_dag(dag_id)
    runs = client.list_runs(dag_id, limit=limit)
    tasks = client.task_instances(dag_id, runs[0].run_id) if runs else []
    return DagStatus(dag, runs, tasks, task_order(client.dag_tasks(dag_id)) if runs else ())


# -- trigger and wait ---------------------------------------------------------------------


def trigger(client: AirflowClient, dag_id: str, conf: dict, *, unpause: bool = False) -> tuple[DagRun, Dag | None]:
    """Trigger a run; a paused DAG is refused (its run would only queue) unless `unpause`.

    Returns the run and, when this call unpaused the DAG, the DAG (its schedule may start a run too).
    """
    dag = client.get_dag(dag_id)
    unpaused = None
    if dag.is_paused:
        if not unpause:
            raise UsageError(
                f"DAG '{dag_id}' is paused: a run would wait in the queue until it is unpaused",
                hint=f"add --unpause, or run `mlwf unpause {dag_id}` first",
            )
        unpaused = client.set_paused(dag_id, False)
    return client.trigger_run(dag_id, conf), unpaused


@dataclass
class RunSnapshot:
    run: DagRun
    tasks: list[TaskInstance]
    elapsed: float
    task_order: tuple[str, ...] = ()  # the DAG's order (`task_order`), for tables

    @property
    def failed_tasks(self) -> list[TaskInstance]:
        return [t for t in self.tasks if t.state == "failed"]


def poll(
    fetch: Callable[[float], T],
    finished: Callable[[T], bool],
    late: Callable[[T], Exception],
    *,
    timeout: float | None,
    interval: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[T]:
    """Yield `fetch(elapsed)` every `interval` s until `finished`; raise `late(last)` after `timeout` s.

    A wait outlives a busy server: a fetch that times out or finds the server unreachable is
    tried again on the next round, unless no fetch has succeeded for `POLL_TOLERANCE_S`
    (the first one must succeed: a wrong URL fails at once).
    """
    started = clock()
    last_ok: float | None = None
    item = None
    while True:
        try:
            item = fetch(clock() - started)
        except (TimeoutExpired, UnreachableError):
            if last_ok is None or clock() - last_ok > POLL_TOLERANCE_S:
                raise
        else:
            last_ok = clock()
            yield item
            if finished(item):
                return
        if timeout is not None and clock() - started >= timeout:
            raise late(item)
        sleep(interval)


class RunWaitTimedOut(TimeoutExpired):
    """A wait for a run that gave up; carries the run as last seen (for a JUnit report)."""

    def __init__(self, message: str, *, hint: str | None = None, snapshot: RunSnapshot) -> None:
        super().__init__(message, hint=hint)
        self.snapshot = snapshot


def watch_run(
    client: AirflowClient, dag_id: str, run_id: str, *, timeout: float | None = None, interval: float = 0.3, **clocks
) -> Iterator[RunSnapshot]:
    """Snapshots of the run and its tasks until the run ends; TimeoutExpired after `timeout` s."""
    order = task_order(client.dag_tasks(dag_id))

    def fetch(elapsed: float) -> RunSnapshot:
        run = client.get_run(dag_id, run_id)
        return RunSnapshot(run, client.task_instances(dag_id, run_id), elapsed, order)

    def late(snapshot: RunSnapshot) -> RunWaitTimedOut:
        return RunWaitTimedOut(
            f"run '{run_id}' of DAG '{dag_id}' still {snapshot.run.state} after {timeout:g} s",
            hint=f"the run goes on; watch it with `mlwf status {dag_id}`",
            snapshot=snapshot,
        )

    return poll(fetch, lambda s: s.run.done, late, timeout=timeout, interval=interval, **clocks)


@dataclass
class TaskFailure:
    task: TaskInstance
    log_tail: list[str] = field(default_factory=list)


def failures(client: AirflowClient, snapshot: RunSnapshot, *, lines: int = LOG_TAIL_LINES) -> list[TaskFailure]:
    """The failed tasks of a finished run, each with the tail of its last try's log."""
    result = []
    for task in snapshot.failed_tasks:
        try:
            records = client.task_log(snapshot.run.dag_id, snapshot.run.run_id, task.task_id, max(task.try_number, 1))
            tail = log_text(records)[-lines:]
        except NotFoundError:
            tail = ["(no log found)"]
        result.append(TaskFailure(task, tail))
    return result


# -- backfill -----------------------------------------------------------------------------


@dataclass
class BackfillPlan:
    dag_id: str
    start: datetime
    end: datetime
    dates: list[datetime]
    max_active_runs: int
    reprocess: str
    typical_run_s: float | None  # median duration of the DAG's past successful runs

    @property
    def estimate_s(self) -> float | None:
        if self.typical_run_s is None:
            return None
        return math.ceil(len(self.dates) / max(self.max_active_runs, 1)) * self.typical_run_s


def plan_backfill(
    client: AirflowClient, dag_id: str, start: datetime, end: datetime, *, reprocess: str, max_active_runs: int
) -> BackfillPlan:
    """The logical dates a backfill would run (Airflow's dry run) and a wall-time estimate."""
    client.get_dag(dag_id)  # a clear "DAG not found" before the backfill endpoints speak
    dates = client.backfill_dry_run(dag_id, start, end, reprocess=reprocess, max_active_runs=max_active_runs)
    past = [r.duration for r in client.list_runs(dag_id, limit=20) if r.state == "success" and r.duration]
    typical = statistics.median(past) if past else None
    return BackfillPlan(dag_id, start, end, dates, max_active_runs, reprocess, typical)


def require_dates(plan: BackfillPlan) -> None:
    if not plan.dates:
        skipped = "" if plan.reprocess == "completed" else f" (--reprocess {plan.reprocess} skips dates that have a run)"
        raise UsageError(
            f"no logical dates of DAG '{plan.dag_id}' to run between "
            f"{plan.start.isoformat()} and {plan.end.isoformat()}{skipped}: the range is empty",
            hint="widen the range, check the DAG's schedule, or use --reprocess failed|completed",
        )


def start_backfill(client: AirflowClient, plan: BackfillPlan) -> Backfill:
    require_dates(plan)
    return client.create_backfill(
        plan.dag_id, plan.start, plan.end, reprocess=plan.reprocess, max_active_runs=plan.max_active_runs
    )


@dataclass
class BackfillProgress:
    runs: list[DagRun]  # one per planned logical date that has a run yet
    total: int
    elapsed: float

    @property
    def finished(self) -> int:
        return sum(r.done for r in self.runs)

    @property
    def failed(self) -> list[DagRun]:
        return [r for r in self.runs if r.state == "failed"]


def watch_backfill(
    client: AirflowClient, plan: BackfillPlan, *, timeout: float | None = None, interval: float = 1.0, **clocks
) -> Iterator[BackfillProgress]:
    """Progress of the backfill's runs (matched by logical date) until every one has ended."""
    wanted = set(plan.dates)
    low, high = min(plan.dates) - timedelta(seconds=1), max(plan.dates) + timedelta(seconds=1)

    def fetch(elapsed: float) -> BackfillProgress:
        runs = client.list_runs(
            plan.dag_id, limit=len(wanted) + 50, order_by="logical_date", logical_date_gte=low, logical_date_lte=high
        )
        return BackfillProgress([r for r in runs if r.logical_date in wanted], len(wanted), elapsed)

    def late(progress: BackfillProgress) -> TimeoutExpired:
        return TimeoutExpired(
            f"backfill of DAG '{plan.dag_id}': {progress.finished} of {progress.total} runs ended after {timeout:g} s",
            hint=f"the backfill goes on; watch it with `mlwf status {plan.dag_id}`",
        )

    def finished(progress: BackfillProgress) -> bool:
        return len(progress.runs) == progress.total and progress.finished == progress.total

    return poll(fetch, finished, late, timeout=timeout, interval=interval, **clocks)


# -- logs ---------------------------------------------------------------------------------


def resolve_run(client: AirflowClient, dag_id: str, run: str) -> DagRun:
    if not run.strip():
        raise UsageError("--run must be 'latest' or a run id, not empty")
    if run != "latest":
        return client.get_run(dag_id, run)
    runs = client.list_runs(dag_id, limit=1)
    if not runs:
        client.get_dag(dag_id)  # unknown DAG -> "DAG not found"
        raise NotFoundError(f"DAG '{dag_id}' has no runs yet")
    return runs[0]


def find_task(client: AirflowClient, run: DagRun, task_id: str) -> TaskInstance:
    for task in client.task_instances(run.dag_id, run.run_id):
        if task.task_id == task_id:
            return task
    raise NotFoundError(f"task '{task_id}' not found in run '{run.run_id}' of DAG '{run.dag_id}'")


@dataclass
class LogTarget:
    run: DagRun
    task: TaskInstance
    try_number: int


def log_target(client: AirflowClient, dag_id: str, task_id: str, *, run: str, try_number: int | None) -> LogTarget:
    dag_run = resolve_run(client, dag_id, run)
    task = find_task(client, dag_run, task_id)
    chosen = try_number if try_number is not None else max(task.try_number, 1)
    if chosen < 1:
        raise UsageError(f"--try must be at least 1, not {chosen}")
    return LogTarget(dag_run, task, chosen)


def follow_log(
    client: AirflowClient,
    target: LogTarget,
    *,
    follow: bool = False,
    interval: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[list[LogRecord]]:
    """The log's records, then (with `follow`) the new ones until the task has ended.

    Airflow merges a running task's log sources by time, so a record can appear *before*
    ones already shown (the task's stdout lags its structured log): new records are told
    by content, not by position. After the task ends, one more read after `interval` picks
    up the stragglers.
    """
    from collections import Counter

    run, task_id = target.run, target.task.task_id
    shown: Counter = Counter()
    ended_reads = 0
    while True:
        task = find_task(client, run, task_id) if follow else target.task
        try:
            records = client.task_log(run.dag_id, run.run_id, task_id, target.try_number)
        except NotFoundError:
            if not follow or task.done:
                raise
            records = []  # not started yet: nothing to show so far
        seen: Counter = Counter()
        fresh = []
        for record in records:
            seen[record] += 1
            if seen[record] > shown[record]:
                fresh.append(record)
        shown |= seen
        if fresh:
            yield fresh
        if not follow:
            return
        if task.done:
            ended_reads += 1
            if ended_reads > 1:
                return
        sleep(interval)


def log_text(records: Iterable[LogRecord]) -> list[str]:
    """Readable lines: `[time] LEVEL - message`, tracebacks under their line; group markers dropped."""
    lines: list[str] = []
    skipping = False
    for record in records:
        event = record.event
        if event == SOURCE_GROUP:
            skipping = True
            continue
        if event.startswith("::endgroup::"):
            skipping = False
            continue
        if skipping or event.startswith("::group::"):
            continue
        if record.timestamp:
            stamp = record.timestamp.replace("T", " ")[:19]
            level = (record.level or "info").upper()
            lines.append(f"[{stamp}] {level} - {event}")
        else:
            lines.append(event)
        lines.extend(record.exception)
    return lines
