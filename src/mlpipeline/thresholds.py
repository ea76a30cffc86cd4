"""Every health threshold, in the one place ``mlwf health`` and ``monitoring_dag`` read them.

It lives under ``src/`` because that is all the task side sees: the stacks put ``src/`` on
the tasks' ``PYTHONPATH`` (the docker image bind-mounts it; ``mlflowctl`` is not installed
there), while the CLI imports ``mlpipeline`` from the same checkout. Plain data, stdlib
only: importing it costs the CLI nothing.

The rules that apply these numbers are in ``mlpipeline.monitoring`` (both sides) and
``mlflowctl.health.judge`` (the checks only ``mlwf health`` can make). The Prometheus alerts in
``stack/prometheus/rules/alerts.yml`` repeat some of them, since YAML cannot import;
``tests/test_prometheus_config.py`` holds the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Limits:
    """Where a rule turns ``warning`` and where it turns ``critical``."""

    warning: float
    critical: float


#: The limits of each rule, by the rule name its findings carry.
LIMITS: MappingProxyType[str, Limits] = MappingProxyType(
    {
        # Share of finished DAG runs that succeeded: lower is worse.
        "dag_run_success_ratio": Limits(warning=0.9, critical=0.5),
        # Failed task instances in the window.
        "task_failures": Limits(warning=1, critical=5),
        # Seconds since a component's last heartbeat.
        "scheduler_heartbeat": Limits(warning=60.0, critical=300.0),
        # Seconds a DAG run has been running.
        "long_running_run": Limits(warning=2 * 3600.0, critical=6 * 3600.0),
        # DAG files that fail to import.
        "import_errors": Limits(warning=1, critical=3),
        # The model server: share of prediction requests answered 5xx (last 5 minutes).
        "serving_error_rate": Limits(warning=0.01, critical=0.05),
        # The model server: 95th percentile of prediction latency in seconds (last 5 minutes).
        "serving_latency_p95": Limits(warning=0.05, critical=0.25),
    }
)

#: Seconds the model server may serve another version than production before the alert fires
#: (a load takes a second or two; `mlwf health` warns at once, critical when it refused the version).
SERVING_VERSION_GRACE_S = 300

#: Fewer live Celery workers than this is critical, those joined from other hosts included
#: (only `mlwf health` can count them).
CELERY_WORKERS_MIN = 1

#: More failed data-validation checks than this in the last validation is a warning.
VALIDATION_FAILURES_ALLOWED = 0

#: The promotion gate: minimum metrics a candidate model needs (``MLWF_THRESHOLDS`` overrides
#: them for promotion); `mlwf health` warns when the latest model is below them.
PROMOTION_MINIMUMS: MappingProxyType[str, float] = MappingProxyType({"accuracy": 0.7, "f1": 0.7, "roc_auc": 0.75})
