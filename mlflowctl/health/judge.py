"""The judges of `mlwf health`: what the sources answered -> report rows, one function per section.

The rules shared with `monitoring_dag` are `mlpipeline.monitoring`'s; the checks only the CLI
can make read their limits from `mlpipeline.thresholds` too. Where the numbers come from:

- components: `/api/v2/monitor/health` (heartbeat ages), Prometheus `/-/ready`, `up` of
  the StatsD exporter and its line rate;
- DAG runs and failures by task: the API (exact, over the window); Prometheus's derived
  `airflow_dagrun_success|failed` and `airflow_task_failed` only when the API is down;
- durations by task, scheduler loop, executor, pools, model quality: Prometheus.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from mlflowctl.errors import MlwfError
from mlflowctl.health.gather import Gathered
from mlflowctl.health.queries import MODEL_METRICS, TREND_POINTS, trend_step
from mlflowctl.health.report import INFO, UNKNOWN, HealthReport, Row
from mlpipeline import monitoring as rules
from mlpipeline import thresholds as limits

if TYPE_CHECKING:
    from mlflowctl.api.prometheus import Sample, Series
    from mlflowctl.backends.base import CeleryWorkers


def _value(samples: list[Sample] | MlwfError | None) -> float | None:
    if not isinstance(samples, list) or not samples:
        return None
    value = samples[0].value
    return value if math.isfinite(value) else None


def _by(samples: list[Sample] | MlwfError | None, *keys: str) -> dict[tuple[str, ...], float]:
    if not isinstance(samples, list):
        return {}
    return {tuple(s.labels.get(k, "") for k in keys): s.value for s in samples if math.isfinite(s.value)}


def _components(got: Gathered, report: HealthReport, now: dt.datetime) -> list[Row]:
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


def _dag_runs(got: Gathered, report: HealthReport, now: dt.datetime) -> list[Row]:
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


def _task_failures(got: Gathered, report: HealthReport) -> list[Row]:
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


def _task_durations(got: Gathered, report: HealthReport, now: dt.datetime) -> list[Row]:
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


def _scheduler(got: Gathered, report: HealthReport) -> list[Row]:
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


def _executor(got: Gathered) -> list[Row]:
    rows: list[Row] = []
    if got.workers is not None:
        rows.append(_celery_workers(got.workers))
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


def _celery_workers(workers: CeleryWorkers) -> Row:
    """Every live worker counts, those other hosts joined too: they take the same queue."""
    total = workers.total
    sev = rules.OK if total >= limits.CELERY_WORKERS_MIN else rules.CRITICAL
    detail = f"{total} live Celery worker(s)"
    if workers.listening:
        detail += f": {workers.here} on this host, "
        if workers.remote is None:
            detail += "those of other hosts not counted (the broker could not be asked)"
        else:
            names = ", ".join(workers.remote)
            detail += f"{len(workers.remote)} joined from other hosts" + (f" ({names})" if names else "")
    if sev != rules.OK:
        detail += "; queued tasks will wait"
    return Row("executor", "celery workers", sev, total, detail=detail, source="stack",
               rule="celery_workers", threshold=limits.CELERY_WORKERS_MIN)


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _model_quality(got: Gathered) -> list[Row]:
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


def _serving(got: Gathered) -> list[Row]:
    """The model server: the version it serves against production, its error rate and p95 latency."""
    if got.prometheus != "ok":
        return [_unknown("serving", f"Prometheus: {got.prometheus}")]
    served, production = _value(got.instant.get("serving_served")), _value(got.instant.get("serving_production"))
    if served is None or production is None:
        return [Row("serving", "model server", INFO, None, source="prometheus",
                    detail="no model server metrics (the serving group is excluded, or not scraped yet)")]
    healthy = _value(got.instant.get("serving_healthy")) != 0
    finding = rules.check_served_version(int(served), int(production), healthy)
    rows = [Row.judged("serving", "served version", finding, source="prometheus")]
    requests = _value(got.instant.get("serving_requests"))
    error_rate, p95 = _value(got.instant.get("serving_error_rate")), _value(got.instant.get("serving_p95"))
    if not requests:
        rows.append(Row("serving", "requests", INFO, 0, unit="/s", source="prometheus",
                        detail="no prediction requests in the last 5 minutes"))
        return rows
    rows.append(Row("serving", "requests", INFO, round(requests, 3), unit="/s", source="prometheus",
                    detail="prediction requests per second (last 5 min)"))
    if error_rate is not None:
        rows.append(Row.judged("serving", "error rate", rules.check_serving_error_rate(error_rate),
                               source="prometheus", value=round(error_rate, 4)))
    if p95 is not None:
        rows.append(Row.judged("serving", "latency p95", rules.check_serving_latency(p95), unit="s",
                               source="prometheus", value=round(p95, 4)))
    return rows


def _unknown(section: str, why: str) -> Row:
    return Row(section, "-", UNKNOWN, None, detail=f"not available: {why}")


def judge(got: Gathered, report: HealthReport, now: dt.datetime) -> None:
    report.sources = {"api": got.api, "prometheus": got.prometheus}
    report.rows = [
        *_components(got, report, now),
        *_dag_runs(got, report, now),
        *_task_failures(got, report),
        *_task_durations(got, report, now),
        *_scheduler(got, report),
        *_executor(got),
        *_model_quality(got),
        *_serving(got),
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
