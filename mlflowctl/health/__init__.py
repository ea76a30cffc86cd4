"""`mlwf health`: gather Prometheus and the Airflow API at once, judge, return plain data.

`collect()` sends every Prometheus query (instant and range) on a thread pool together
with the Airflow calls, applies the rules of `mlpipeline.monitoring` (the same functions
`monitoring_dag` applies) and returns a `HealthReport`: rows grouped in sections, each
row with its status and the value that decided it. Nothing here prints.

Where the numbers come from:

- components: `/api/v2/monitor/health` (heartbeat ages), Prometheus `/-/ready`, `up` of
  the StatsD exporter and its line rate;
- DAG runs and failures by task: the API (exact, over the window); Prometheus's derived
  `airflow_dagrun_success|failed` and `airflow_task_failed` only when the API is down;
- durations by task, scheduler loop, executor, pools, model quality: Prometheus.

Degraded: when Prometheus or the API does not answer, the report still comes from the
other one, with a note saying what is missing; `exit_error()` turns that into exit 9
(UnhealthyError) unless `--fail-on` finds findings at its level (exit 12).

Windows over counters: `increase()` misses a series' first sample (a task's first
duration observation creates its series at count 1), so "how much in the window" is
`now - (value a window ago, or 0 for a series born since)`; see `_delta`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from mlflowctl.errors import (
    ApiError,
    AuthError,
    HealthThresholdError,
    MlwfError,
    UnhealthyError,
    UnreachableError,
    UsageError,
)
from mlpipeline import monitoring as rules
from mlpipeline import thresholds as limits

if TYPE_CHECKING:  # both client modules import httpx
    from mlflowctl.api.airflow import AirflowClient
    from mlflowctl.api.prometheus import PrometheusClient, Sample, Series

INFO, UNKNOWN = "info", "unknown"
SECTIONS = {
    "components": "Components",
    "dag_runs": "DAG runs",
    "task_failures": "Failures by task",
    "task_durations": "Durations by task",
    "scheduler": "Scheduler",
    "executor": "Executor and pools",
    "model_quality": "Model quality",
}
FAIL_ON = (rules.WARNING, rules.CRITICAL)
TREND_POINTS = 24
MIN_WINDOW_S, MAX_WINDOW_S = 60.0, 90 * 86400.0
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_WINDOW_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
#: Model metrics judged against the promotion gate (mlpipeline.thresholds.PROMOTION_MINIMUMS).
MODEL_METRICS = ("accuracy", "f1", "roc_auc")


def parse_window(text: str) -> float:
    """`30m`, `1h`, `2d`, `1w` -> seconds; between 1 minute and 90 days."""
    match = _WINDOW_RE.match(text or "")
    if not match:
        raise UsageError(f"--window {text!r} is not a duration: use a number and s, m, h, d or w (e.g. 1h, 30m)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not MIN_WINDOW_S <= seconds <= MAX_WINDOW_S:
        raise UsageError(f"--window {text}: must be between 1m and 90d")
    return seconds


# -- data --------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the report. `status` is a severity (ok|warning|critical) when a rule
    judged `value`, `info` when no rule applies, `unknown` when the source did not answer."""

    section: str
    name: str
    status: str
    value: float | str | None
    unit: str = ""
    detail: str = ""
    source: str = "api"
    rule: str | None = None
    threshold: float | None = None
    trend: list[float | None] | None = None

    @classmethod
    def judged(cls, section: str, name: str, finding: rules.Finding, *, unit: str = "", source: str = "api",
               detail: str | None = None, value: Any = None, trend=None) -> Row:
        return cls(
            section, name, finding.severity, finding.value if value is None else value, unit,
            finding.message if detail is None else detail, source, finding.rule, finding.threshold, trend,
        )

    @property
    def finding(self) -> rules.Finding | None:
        if self.rule is None or self.status not in rules.SEVERITIES:
            return None
        value = self.value if isinstance(self.value, (int, float)) else None
        return rules.Finding(self.rule, self.status, value, self.threshold, self.detail, self.name)


@dataclass
class HealthReport:
    generated_at: str
    window: str
    window_seconds: float
    airflow_url: str
    prometheus_url: str
    sources: dict[str, str]  # api / prometheus -> "ok" or why not
    notes: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    elapsed_seconds: float = 0.0

    @property
    def degraded(self) -> bool:
        return any(state != "ok" for state in self.sources.values())

    @property
    def findings(self) -> list[rules.Finding]:
        return [f for f in (row.finding for row in self.rows) if f is not None]

    @property
    def worst(self) -> str:
        return rules.worst_severity(self.findings)

    def section(self, name: str) -> list[Row]:
        return [row for row in self.rows if row.section == name]

    def to_dict(self) -> dict[str, Any]:
        summary = rules.summarize(self.findings)
        return {
            "generated_at": self.generated_at,
            "window": self.window,
            "window_seconds": self.window_seconds,
            "airflow_url": self.airflow_url,
            "prometheus_url": self.prometheus_url,
            "degraded": self.degraded,
            "sources": self.sources,
            "notes": self.notes,
            "worst": summary["worst"],
            "counts": summary["counts"],
            "sections": {name: [asdict(row) for row in self.section(name)] for name in SECTIONS},
            "findings": summary["findings"],
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


def exit_error(report: HealthReport, fail_on: str | None) -> MlwfError | None:
    """The error `mlwf health` exits with, if any.

    `--fail-on LEVEL` and a finding at LEVEL or worse -> HealthThresholdError (12);
    otherwise a degraded report (Prometheus or the API did not answer) -> UnhealthyError (9);
    otherwise None (exit 0). Findings alone never fail the command without --fail-on.
    """
    if fail_on is not None:
        if fail_on not in FAIL_ON:
            raise UsageError(f"--fail-on {fail_on!r}: use warning or critical")
        hits = [f for f in report.findings if rules.at_least(f.severity, fail_on)]
        if hits:
            hits.sort(key=lambda f: -rules.severity_rank(f.severity))
            names = "; ".join(f.message for f in hits[:3]) + (f" (+{len(hits) - 3} more)" if len(hits) > 3 else "")
            return HealthThresholdError(f"{len(hits)} finding(s) at {fail_on} or worse: {names}")
    if report.degraded:
        missing = ", ".join(f"{name}: {why}" for name, why in report.sources.items() if why != "ok")
        return UnhealthyError(f"health report degraded ({missing})")
    return None


# -- queries -----------------------------------------------------------------------------


def _delta(metric: str, by: str, window: str) -> str:
    """How much counter `metric` grew in the window, by labels `by`, counting series born inside it."""
    return (
        f"(sum by ({by}) ({metric}) - sum by ({by}) (({metric} offset {window}) or ({metric} * 0)))"
    )


def instant_queries(window_s: float) -> dict[str, str]:
    w = f"{int(window_s)}s"
    task = "dag_id, task_id"
    return {
        "up": "up",
        "lines_rate": "sum(rate(statsd_exporter_lines_total[1m]))",
        "last_line_age": "time() - max(mlwf_exporter_last_line_timestamp_seconds)",
        "heartbeat_rate": "sum(rate(airflow_scheduler_heartbeat[1m]))",
        "import_errors": "max(airflow_dag_processing_import_errors)",
        "dagbag_size": "max(airflow_dagbag_size)",
        "loop_p95": "histogram_quantile(0.95, sum by (le) (rate(airflow_scheduler_scheduler_loop_duration_bucket[5m])))",
        "schedule_delay": f"{_delta('airflow_dagrun_schedule_delay_sum', 'dag_id', w)}"
        f" / ({_delta('airflow_dagrun_schedule_delay_count', 'dag_id', w)} > 0)",
        "open_slots": "sum by (executor_class_name) (airflow_executor_open_slots)",
        "queued_tasks": "sum by (executor_class_name) (airflow_executor_queued_tasks)",
        "running_tasks": "sum by (executor_class_name) (airflow_executor_running_tasks)",
        "pool_open": "sum by (pool_name) (airflow_pool_open_slots)",
        "pool_running": "sum by (pool_name) (airflow_pool_running_slots)",
        "pool_queued": "sum by (pool_name) (airflow_pool_queued_slots)",
        "duration_sum": _delta("airflow_task_duration_sum", task, w),
        "duration_count": _delta("airflow_task_duration_count", task, w),
        "task_failed": f"{_delta('airflow_task_failed', task, w)} > 0",
        "dagrun_success": _delta("airflow_dagrun_success", "dag_id", w),
        "dagrun_failed": _delta("airflow_dagrun_failed", "dag_id", w),
        "validation_failures": "max by (dag_id) (mlpipeline_validation_failures)",
        "model_promoted": "max by (dag_id, version) (mlpipeline_model_promoted)",
        **{
            f"model_{m}": f"max by (dag_id, version, model_type) (mlpipeline_model_{m})" for m in MODEL_METRICS
        },
    }


def trend_step(window_s: float) -> float:
    return max(10.0, math.ceil(window_s / TREND_POINTS))


def range_queries(window_s: float) -> dict[str, str]:
    """Mean task duration per trend step (the tasks that finished within each step)."""
    s = f"{int(trend_step(window_s))}s"
    task = "dag_id, task_id"
    return {
        "duration_trend": f"{_delta('airflow_task_duration_sum', task, s)}"
        f" / ({_delta('airflow_task_duration_count', task, s)} > 0)"
    }


# -- gathering ---------------------------------------------------------------------------


@dataclass
class _Gathered:
    instant: dict[str, list[Sample] | MlwfError] = field(default_factory=dict)
    ranges: dict[str, list[Series] | MlwfError] = field(default_factory=dict)
    health: dict | MlwfError | None = None
    runs: list | MlwfError | None = None
    running: list | MlwfError | None = None
    failed: list | MlwfError | None = None
    import_errors: list | MlwfError | None = None
    prometheus: str = "ok"
    api: str = "ok"
    workers: int | None = None
    answered_wrongly: bool = False  # a source answered, but not as its API does (redirect, HTML, ...)


def _outcome(future: Future) -> Any:
    """A future's result, or the mlwf error it raised; an AuthError is re-raised (bad setup, not health)."""
    try:
        return future.result()
    except AuthError:
        raise
    except MlwfError as exc:
        return exc


def _why(exc: MlwfError) -> str:
    text = str(exc)
    match = re.search(r"\(([^()]*)\)\s*$", text)
    return match.group(1) if isinstance(exc, UnreachableError) and match else text


def gather(
    airflow: AirflowClient | None,
    prometheus: PrometheusClient | None,
    window_s: float,
    now: dt.datetime,
    *,
    workers: int = 8,
) -> _Gathered:
    """Every query at once: Prometheus on the pool; Airflow's health first (it logs in at
    most once), then its other calls on the pool too."""
    got = _Gathered()
    since = now - dt.timedelta(seconds=window_s)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mlwf-health") as pool:
        prom: dict[str, Future] = {}
        ranges: dict[str, Future] = {}
        ready: Future | None = None
        if prometheus is not None:
            ready = pool.submit(prometheus.ready)
            prom = {name: pool.submit(prometheus.query, expr, at=now) for name, expr in instant_queries(window_s).items()}
            step = trend_step(window_s)
            ranges = {
                name: pool.submit(prometheus.query_range, expr, since, now, step)
                for name, expr in range_queries(window_s).items()
            }
        else:
            got.prometheus = "not configured"
        calls: dict[str, Future] = {}
        if airflow is not None:
            try:
                got.health = airflow.health()
            except AuthError:
                raise
            except MlwfError as exc:
                got.health = exc
                got.api = _why(exc)
                got.answered_wrongly |= isinstance(exc, ApiError)
            if got.api == "ok":
                calls = {
                    "runs": pool.submit(airflow.runs_since, since),
                    "running": pool.submit(airflow.runs_since, state="running"),
                    "failed": pool.submit(airflow.failed_tasks_since, since),
                    "import_errors": pool.submit(airflow.import_errors),
                }
        else:
            got.api = "not configured"
        for name, future in calls.items():
            setattr(got, name, _outcome(future))
        if ready is not None:
            state = _outcome(ready)
            if isinstance(state, MlwfError):
                got.prometheus = _why(state)
                got.answered_wrongly |= isinstance(state, ApiError)
            elif state is False:
                got.prometheus = "not ready"
        got.instant = {name: _outcome(f) for name, f in prom.items()}
        got.ranges = {name: _outcome(f) for name, f in ranges.items()}
    return got


# -- judging -----------------------------------------------------------------------------


def _value(samples: list[Sample] | MlwfError | None) -> float | None:
    if not isinstance(samples, list) or not samples:
        return None
    value = samples[0].value
    return value if math.isfinite(value) else None


def _by(samples: list[Sample] | MlwfError | None, *keys: str) -> dict[tuple[str, ...], float]:
    if not isinstance(samples, list):
        return {}
    return {tuple(s.labels.get(k, "") for k in keys): s.value for s in samples if math.isfinite(s.value)}


def _ok(value: Any) -> bool:
    return not isinstance(value, MlwfError) and value is not None


def _components(got: _Gathered, report: HealthReport, now: dt.datetime) -> list[Row]:
    rows: list[Row] = []
    if got.api == "ok":
        rows.append(Row("components", "airflow api", rules.OK, "reachable", detail=report.airflow_url,
                        rule="api_reachable"))
        health = got.health if isinstance(got.health, dict) else {}
        db = (health.get("metadatabase") or {}).get("status")
        rows.append(Row("components", "metadatabase", rules.OK if db == "healthy" else rules.CRITICAL, db or "unknown",
                        detail=f"status {db or 'not reported'}", rule="component_health"))
        for key, name in (("scheduler", "scheduler"), ("triggerer", "triggerer"), ("dag_processor", "dag-processor")):
            part = health.get(key) or {}
            age = rules.age_seconds(part.get(f"latest_{key}_heartbeat"), now)
            finding = rules.check_heartbeat_age(age, subject=name)
            detail = f"{finding.message}; API status {part.get('status') or 'none'}"
            rows.append(Row.judged("components", name, finding, unit="s", detail=detail))
    else:
        finding = rules.Finding("api_reachable", rules.CRITICAL, None, None,
                                f"Airflow API at {report.airflow_url} did not answer: {got.api}", "airflow-api")
        rows.append(Row.judged("components", "airflow api", finding, value="unreachable"))
    if got.prometheus == "ok":
        rows.append(Row("components", "prometheus", INFO, "ready", detail=report.prometheus_url, source="prometheus"))
        up = _by(got.instant.get("up"), "job")
        exporter = up.get(("statsd-exporter",))
        rate = _value(got.instant.get("lines_rate"))
        last = _value(got.instant.get("last_line_age"))
        if exporter is None:
            rows.append(Row("components", "statsd exporter", UNKNOWN, None, source="prometheus",
                            detail="Prometheus has no target of job statsd-exporter"))
        else:
            detail = "scraped" if exporter == 1 else "Prometheus cannot scrape it"
            if rate is not None:
                detail += f"; {rate:.1f} StatsD lines/s"
            if last is not None:
                detail += f"; last line {last:.0f}s ago"
            rows.append(Row("components", "statsd exporter", rules.OK if exporter == 1 else rules.CRITICAL,
                            rate if rate is not None else exporter, unit="/s", detail=detail,
                            source="prometheus", rule="statsd_exporter_up"))
    else:
        rows.append(Row("components", "prometheus", UNKNOWN, "unreachable", source="prometheus",
                        detail=f"{report.prometheus_url}: {got.prometheus}"))
    return rows


def _dag_runs(got: _Gathered, report: HealthReport, now: dt.datetime) -> list[Row]:
    rows: list[Row] = []
    if isinstance(got.runs, list):
        outcomes: dict[str, Counter] = defaultdict(Counter)
        durations: dict[str, list[float]] = defaultdict(list)
        last_failed: dict[str, str] = {}
        for run in got.runs:
            outcomes[run.dag_id][run.state] += 1
            if run.state == "success" and run.duration is not None:
                durations[run.dag_id].append(float(run.duration))
            if run.state == "failed" and run.dag_id not in last_failed:
                last_failed[run.dag_id] = run.run_id
        for dag_id in sorted(outcomes):
            c = outcomes[dag_id]
            finding = rules.check_success_ratio(c["success"], c["failed"], subject=dag_id)
            extra = [f"{n} {state}" for state, n in sorted(c.items()) if state not in ("success", "failed")]
            if durations[dag_id]:
                extra.append(f"mean successful run {sum(durations[dag_id]) / len(durations[dag_id]):.0f}s")
            if dag_id in last_failed:
                extra.append(f"last failed: {last_failed[dag_id]}")
            detail = finding.message + ("; " + ", ".join(extra) if extra else "")
            rows.append(Row.judged("dag_runs", dag_id, finding, unit="ratio", detail=detail))
        if not outcomes:
            rows.append(Row.judged("dag_runs", "all DAGs", rules.check_success_ratio(0, 0), unit="ratio",
                                   detail=f"no DAG run started in the last {report.window}"))
    elif got.prometheus == "ok" and isinstance(got.instant.get("dagrun_success"), list):
        success = _by(got.instant.get("dagrun_success"), "dag_id")
        failed = _by(got.instant.get("dagrun_failed"), "dag_id")
        for (dag_id,) in sorted(set(success) | set(failed)):
            ok, bad = round(success.get((dag_id,), 0)), round(failed.get((dag_id,), 0))
            if ok + bad == 0:
                continue
            finding = rules.check_success_ratio(ok, bad, subject=dag_id)
            rows.append(Row.judged("dag_runs", dag_id, finding, unit="ratio", source="prometheus"))
        if not rows:
            rows.append(Row.judged("dag_runs", "all DAGs", rules.check_success_ratio(0, 0), unit="ratio",
                                   source="prometheus"))
    else:
        rows.append(_unknown("dag_runs", "neither the API nor Prometheus answered"))
    if isinstance(got.running, list):
        durations = {
            f"{r.dag_id}/{r.run_id}": rules.age_seconds(r.start_date, now) or 0.0 for r in got.running
        }
        for finding in rules.check_long_running(durations):
            rows.append(Row.judged("dag_runs", finding.subject or "running runs", finding, unit="s"))
    return rows


def _task_failures(got: _Gathered, report: HealthReport) -> list[Row]:
    rows: list[Row] = []
    counts: dict[tuple[str, str], int] = {}
    latest: dict[tuple[str, str], str] = {}
    source = "api"
    if isinstance(got.failed, list):
        for failure in got.failed:
            key = (failure.dag_id, failure.task_id)
            counts[key] = counts.get(key, 0) + 1
            latest.setdefault(key, failure.run_id)
    elif got.prometheus == "ok" and isinstance(got.instant.get("task_failed"), list):
        source = "prometheus"
        counts = {k: round(v) for k, v in _by(got.instant["task_failed"], "dag_id", "task_id").items() if round(v) > 0}
    else:
        return [_unknown("task_failures", "neither the API nor Prometheus answered")]
    for key in sorted(counts, key=lambda k: (-counts[k], k)):
        subject = f"{key[0]}.{key[1]}"
        finding = rules.check_task_failures(counts[key], subject=subject)
        detail = finding.message + (f"; latest run {latest[key]}" if key in latest else "")
        rows.append(Row.judged("task_failures", subject, finding, detail=detail, source=source))
    if not rows:
        finding = rules.check_task_failures(0, subject=f"the last {report.window}")
        rows.append(Row.judged("task_failures", "all tasks", finding, source=source))
    return rows


def _trend_points(series: Series, start: float, step: float) -> list[float | None]:
    points: list[float | None] = [None] * (TREND_POINTS + 1)
    for ts, value in series.points:
        index = round((ts - start) / step)
        if 0 <= index < len(points) and math.isfinite(value):
            points[index] = value
    return points


def _task_durations(got: _Gathered, report: HealthReport, now: dt.datetime) -> list[Row]:
    if got.prometheus != "ok":
        return [_unknown("task_durations", f"Prometheus: {got.prometheus}")]
    sums = _by(got.instant.get("duration_sum"), "dag_id", "task_id")
    counts = _by(got.instant.get("duration_count"), "dag_id", "task_id")
    step = trend_step(report.window_seconds)
    start = now.timestamp() - report.window_seconds
    trends: dict[tuple[str, ...], list[float | None]] = {}
    trend_data = got.ranges.get("duration_trend")
    if isinstance(trend_data, list):
        for series in trend_data:
            key = (series.labels.get("dag_id", ""), series.labels.get("task_id", ""))
            trends[key] = _trend_points(series, start, step)
    means = {key: sums.get(key, 0.0) / n for key, n in counts.items() if n >= 0.5}
    rows = []
    for key in sorted(means, key=lambda k: (k[0], -means[k])):
        n, mean = counts[key], means[key]
        rows.append(Row("task_durations", f"{key[0]}.{key[1]}", INFO, round(mean, 3), unit="s",
                        detail=f"mean of {round(n)} run(s) in the last {report.window}", source="prometheus",
                        trend=trends.get(key)))
    if not rows:
        rows.append(Row("task_durations", "all tasks", INFO, None, source="prometheus",
                        detail=f"no task finished in the last {report.window}"))
    return rows


def _scheduler(got: _Gathered, report: HealthReport) -> list[Row]:
    rows: list[Row] = []
    prom_ok = got.prometheus == "ok"
    if isinstance(got.import_errors, list):
        files = sorted({e.filename for e in got.import_errors})
        finding = rules.check_import_errors(len(got.import_errors))
        detail = finding.message + (f": {', '.join(files[:3])}" if files else "")
        rows.append(Row.judged("scheduler", "import errors", finding, detail=detail))
    elif prom_ok and _value(got.instant.get("import_errors")) is not None:
        finding = rules.check_import_errors(round(_value(got.instant["import_errors"])))
        rows.append(Row.judged("scheduler", "import errors", finding, source="prometheus"))
    if not prom_ok:
        rows.append(_unknown("scheduler", f"heartbeat rate, loop time, schedule delay: Prometheus: {got.prometheus}"))
        return rows
    info = (
        ("heartbeats", "heartbeat_rate", "/s", "scheduler heartbeats per second (last minute)"),
        ("loop p95", "loop_p95", "s", "95th percentile of the scheduler loop (last 5 min)"),
        ("DAGs loaded", "dagbag_size", "", "DAGs in the last parse"),
    )
    for name, key, unit, detail in info:
        value = _value(got.instant.get(key))
        rows.append(Row("scheduler", name, INFO if value is not None else UNKNOWN,
                        None if value is None else round(value, 4), unit=unit,
                        detail=detail if value is not None else f"{detail}: no data", source="prometheus"))
    for (dag_id,), delay in sorted(_by(got.instant.get("schedule_delay"), "dag_id").items()):
        rows.append(Row("scheduler", f"schedule delay {dag_id}", INFO, round(delay, 3), unit="s",
                        detail=f"mean delay of scheduled runs in the last {report.window}", source="prometheus"))
    return rows


def _executor(got: _Gathered) -> list[Row]:
    rows: list[Row] = []
    if got.workers is not None:
        sev = rules.OK if got.workers >= limits.CELERY_WORKERS_MIN else rules.CRITICAL
        detail = f"{got.workers} live Celery worker(s)" + ("" if sev == rules.OK else ": queued tasks will wait")
        rows.append(Row("executor", "celery workers", sev, got.workers, detail=detail, source="stack",
                        rule="celery_workers", threshold=limits.CELERY_WORKERS_MIN))
    if got.prometheus != "ok":
        return [*rows, _unknown("executor", f"Prometheus: {got.prometheus}")]
    open_slots = _by(got.instant.get("open_slots"), "executor_class_name")
    queued = _by(got.instant.get("queued_tasks"), "executor_class_name")
    running = _by(got.instant.get("running_tasks"), "executor_class_name")
    for (name,) in sorted(set(open_slots) | set(queued) | set(running)):
        key = (name,)
        label = name or "executor"
        q = queued.get(key)
        detail = f"open slots {_n(open_slots.get(key))}, running {_n(running.get(key))}, queued {_n(q)}"
        if "celery" in label.lower():
            detail += " (queued = the Celery queue)"
        rows.append(Row("executor", label, INFO, q, detail=detail, source="prometheus"))
    if not any(row.source == "prometheus" for row in rows):
        rows.append(Row("executor", "executor", UNKNOWN, None, source="prometheus", detail="no executor metrics yet"))
    pool_open = _by(got.instant.get("pool_open"), "pool_name")
    pool_running = _by(got.instant.get("pool_running"), "pool_name")
    pool_queued = _by(got.instant.get("pool_queued"), "pool_name")
    for (pool,) in sorted(set(pool_open) | set(pool_running)):
        key = (pool,)
        rows.append(Row("executor", f"pool {pool}", INFO, pool_open.get(key), source="prometheus",
                        detail=f"open slots {_n(pool_open.get(key))}, running {_n(pool_running.get(key))}, "
                        f"queued {_n(pool_queued.get(key))}"))
    return rows


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _model_quality(got: _Gathered) -> list[Row]:
    if got.prometheus != "ok":
        return [_unknown("model_quality", f"Prometheus: {got.prometheus}")]
    rows: list[Row] = []
    for (dag_id,), failures in sorted(_by(got.instant.get("validation_failures"), "dag_id").items()):
        sev = rules.WARNING if failures > limits.VALIDATION_FAILURES_ALLOWED else rules.OK
        rows.append(Row("model_quality", f"{dag_id} validation", sev, failures, source="prometheus",
                        rule="data_validation", threshold=limits.VALIDATION_FAILURES_ALLOWED,
                        detail=f"last validation: {failures:g} failed check(s)"))
    metrics = {m: _by(got.instant.get(f"model_{m}"), "dag_id", "version", "model_type") for m in MODEL_METRICS}
    promoted = _by(got.instant.get("model_promoted"), "dag_id", "version")
    latest: dict[str, tuple[str, str]] = {}
    for values in metrics.values():
        for dag_id, version, model_type in values:
            if dag_id not in latest or version > latest[dag_id][0]:
                latest[dag_id] = (version, model_type)
    for dag_id, (version, model_type) in sorted(latest.items()):
        verdict = promoted.get((dag_id, version))
        said = "" if verdict is None else ("; promoted" if verdict >= 1 else "; not promoted")
        for metric in MODEL_METRICS:
            value = metrics[metric].get((dag_id, version, model_type))
            if value is None:
                continue
            gate = limits.PROMOTION_MINIMUMS.get(metric)
            sev = rules.WARNING if gate is not None and value < gate else rules.OK
            detail = f"{model_type} {version}: {metric} {value:.4f}"
            detail += f" {'under' if sev != rules.OK else 'at or above'} {gate:g}" if gate is not None else ""
            rows.append(Row("model_quality", f"{dag_id} {version} {metric}", sev, round(value, 4),
                            source="prometheus", rule="model_quality", threshold=gate, detail=detail + said))
    if not rows:
        rows.append(Row("model_quality", "models", INFO, None, source="prometheus",
                        detail="no model evaluated yet (mlpipeline_model_* absent)"))
    return rows


def _unknown(section: str, why: str) -> Row:
    return Row(section, "-", UNKNOWN, None, detail=f"not available: {why}")


def judge(got: _Gathered, report: HealthReport, now: dt.datetime) -> None:
    report.sources = {"api": got.api, "prometheus": got.prometheus}
    report.rows = [
        *_components(got, report, now),
        *_dag_runs(got, report, now),
        *_task_failures(got, report),
        *_task_durations(got, report, now),
        *_scheduler(got, report),
        *_executor(got),
        *_model_quality(got),
    ]
    if got.prometheus != "ok":
        report.notes.append(
            f"degraded: Prometheus at {report.prometheus_url} did not answer ({got.prometheus}); components, "
            "DAG runs, failures by task and import errors come from the Airflow API; durations, scheduler "
            "and executor figures and model quality are missing"
        )
    if got.api != "ok":
        report.notes.append(
            f"degraded: the Airflow API at {report.airflow_url} did not answer ({got.api}); DAG runs and "
            "failures by task come from Prometheus where it has them"
        )
    for kind, results in (("query", got.instant), ("range query", got.ranges)):
        if got.prometheus != "ok":
            break
        for name, result in results.items():
            if isinstance(result, MlwfError):
                report.sources["prometheus"] = "some queries failed"
                report.notes.append(f"Prometheus {kind} {name} failed: {result}")
    for name in ("runs", "running", "failed", "import_errors"):
        result = getattr(got, name)
        if isinstance(result, MlwfError):
            report.sources["api"] = "some calls failed"
            report.notes.append(f"Airflow API call {name} failed: {result}")


def collect(
    airflow: AirflowClient | None,
    prometheus: PrometheusClient | None,
    *,
    window: str = "1h",
    now: Callable[[], dt.datetime] | None = None,
    workers: Callable[[], int | None] | None = None,
) -> HealthReport:
    """One health report; raises only on bad input, bad credentials, or when no source answered.

    `workers` counts the live Celery workers where the stack can tell (None: no Celery
    workers known); Airflow's metrics do not report them."""
    import time

    seconds = parse_window(window)
    started = time.perf_counter()
    moment = (now or (lambda: dt.datetime.now(dt.timezone.utc)))()
    report = HealthReport(
        generated_at=moment.isoformat(timespec="seconds"),
        window=window.strip(),
        window_seconds=seconds,
        airflow_url=getattr(airflow, "url", "") or "",
        prometheus_url=getattr(prometheus, "url", "") or "",
        sources={},
    )
    got = gather(airflow, prometheus, seconds, moment)
    if got.api != "ok" and got.prometheus != "ok":
        error = ApiError if got.answered_wrongly else UnreachableError
        raise error(
            f"neither the Airflow API ({report.airflow_url}: {got.api}) nor Prometheus "
            f"({report.prometheus_url}: {got.prometheus}) answered"
            + (" as its API does" if got.answered_wrongly else ""),
            hint="is the stack up? `mlwf status`, `mlwf up`, or pass --url / --prometheus-url",
        )
    got.workers = workers() if workers is not None else None
    judge(got, report, moment)
    report.elapsed_seconds = time.perf_counter() - started
    return report


