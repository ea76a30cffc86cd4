"""The PromQL catalogue of `mlwf health`: instant queries over the window, range queries for the trends.

Windows over counters: `increase()` misses a series' first sample (a task's first
duration observation creates its series at count 1), so "how much in the window" is
`now - (value a window ago, or 0 for a series born since)`; see `_delta`.
"""

from __future__ import annotations

import math

#: Points in a duration trend (one range-query step each).
TREND_POINTS = 24
#: Model metrics judged against the promotion gate (mlpipeline.thresholds.PROMOTION_MINIMUMS).
MODEL_METRICS = ("accuracy", "f1", "roc_auc")


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
        "serving_served": "max(mlpipeline_serving_served_version)",
        "serving_production": "max(mlpipeline_serving_production_version)",
        "serving_healthy": "min(mlpipeline_serving_healthy)",
        "serving_requests": "sum(rate(mlpipeline_serving_requests_total[5m]))",
        "serving_error_rate": 'sum(rate(mlpipeline_serving_requests_total{code=~"5.."}[5m]))'
        " / (sum(rate(mlpipeline_serving_requests_total[5m])) > 0)",
        "serving_p95": "histogram_quantile(0.95, sum by (le) (rate(mlpipeline_serving_request_seconds_bucket[5m])))",
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
