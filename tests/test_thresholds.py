"""Every health threshold is written once, in `mlpipeline.thresholds`, and `mlwf health` and
monitoring_dag both judge by it (issue 15)."""

from __future__ import annotations

import ast
import datetime as dt
import inspect
from pathlib import Path

import pytest

from mlflowctl.api.airflow import DagImportError, DagRun, TaskFailure
from mlflowctl.backends.base import CeleryWorkers
from mlflowctl.health.gather import Gathered
from mlflowctl.health.judge import judge
from mlflowctl.health.report import HealthReport
from mlpipeline import monitoring
from mlpipeline.thresholds import CELERY_WORKERS_MIN, LIMITS, PROMOTION_MINIMUMS

REPO = Path(__file__).resolve().parents[1]
HOME = REPO / "src" / "mlpipeline" / "thresholds.py"
SOURCES = sorted(p for d in ("mlflowctl", "src", "dags") for p in (REPO / d).rglob("*.py") if p != HOME)
THRESHOLD_WORDS = {"warning", "critical", "threshold"}
#: Dict keys under which a threshold would be written: the levels, the rules, the gated metrics.
THRESHOLD_KEYS = THRESHOLD_WORDS | set(LIMITS) | set(PROMOTION_MINIMUMS)


def _number(node: ast.AST) -> bool:
    """A literal number, or arithmetic on literal numbers (`2 * 3600.0`)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
    if isinstance(node, ast.UnaryOp):
        return _number(node.operand)
    if isinstance(node, ast.BinOp):
        return _number(node.left) and _number(node.right)
    return False


def thresholds_written(source: str) -> list[str]:
    """Where `source` writes a number as a threshold: `warning=`/`critical=`/`threshold=` given
    or defaulted to a literal, or a dict literal mapping a level, rule or gated metric to one."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.keyword) and node.arg in THRESHOLD_WORDS and _number(node.value):
            found.append(f"line {node.value.lineno}: {node.arg}={ast.unparse(node.value)}")
        elif isinstance(node, ast.arguments):
            positional = node.posonlyargs + node.args
            pairs = list(zip(positional[len(positional) - len(node.defaults):], node.defaults))
            pairs += [(a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults) if d is not None]
            found += [f"line {d.lineno}: {a.arg}={ast.unparse(d)}" for a, d in pairs
                      if a.arg in THRESHOLD_WORDS and _number(d)]
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                inner = value.values if isinstance(value, ast.Dict) else [value]
                if isinstance(key, ast.Constant) and key.value in THRESHOLD_KEYS and any(map(_number, inner)):
                    found.append(f"line {key.lineno}: {key.value!r}: {ast.unparse(value)}")
    return found


def test_no_threshold_is_written_outside_mlpipeline_thresholds():
    assert len(SOURCES) > 20 and REPO / "dags" / "monitoring_dag.py" in SOURCES
    written = {str(p.relative_to(REPO)): hits for p in SOURCES if (hits := thresholds_written(p.read_text()))}
    assert written == {}, "thresholds belong in src/mlpipeline/thresholds.py"


def test_the_scan_finds_a_threshold_written_a_second_time():
    twice = '''
DEFAULTS = {"task_failures": {"warning": 1, "critical": 5}}
GATE = {"accuracy": 0.7}
def check(count, *, warning=2 * 3600.0, critical=LIMITS["x"].critical): ...
def old_style(count, critical=5): ...
rows.append(Row("executor", "celery workers", sev, n, rule="celery_workers", threshold=1))
check_task_failures(n, subject=s, warning=-1)
'''
    hits = thresholds_written(twice)
    assert sorted({h.split(":")[0] for h in hits}) == ["line 2", "line 3", "line 4", "line 5", "line 6", "line 7"], hits
    assert thresholds_written(HOME.read_text()) != []  # the one place does write them


SERVING_RULES = {"serving_error_rate", "serving_latency_p95"}


def test_monitoring_rules_default_to_the_registered_limits():
    rules = {
        "dag_run_success_ratio": monitoring.check_success_ratio,
        "task_failures": monitoring.check_task_failures,
        "scheduler_heartbeat": monitoring.check_heartbeat_age,
        "long_running_run": monitoring.check_long_running,
        "import_errors": monitoring.check_import_errors,
    }
    # the serving rules read their limits inside (tests/test_serving.py checks them at each limit)
    assert set(rules) == set(LIMITS) - SERVING_RULES
    for rule, check in rules.items():
        params = inspect.signature(check).parameters
        assert (params["warning"].default, params["critical"].default) == (
            LIMITS[rule].warning, LIMITS[rule].critical), rule


def _called_checks(path: Path) -> set[str]:
    """The `check_*` functions a file calls, through the module it imported them from."""
    tree = ast.parse(path.read_text())
    aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "mlpipeline"
               for a in n.names if a.name == "monitoring"}
    return {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and isinstance(n.func.value, ast.Name) and n.func.value.id in aliases and n.func.attr.startswith("check_")}


def test_monitoring_dag_and_mlwf_health_apply_the_same_rule_functions():
    dag = _called_checks(REPO / "dags" / "monitoring_dag.py")
    cli = _called_checks(REPO / "mlflowctl" / "health" / "judge.py")
    shared = {"check_success_ratio", "check_long_running", "check_task_failures", "check_heartbeat_age",
              "check_import_errors"}
    # the model server's rules need Prometheus's serving metrics, which only `mlwf health` reads
    serving = {"check_serving_error_rate", "check_serving_latency", "check_served_version"}
    assert dag == shared and cli == shared | serving


NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def _ago(seconds: float) -> str:
    return (NOW - dt.timedelta(seconds=seconds)).isoformat()


@pytest.mark.parametrize("workers", [0, CELERY_WORKERS_MIN])
def test_mlwf_health_judges_by_the_registered_limits(workers):
    """The judge on answers that cross each limit: every finding names a registered limit,
    at the severity that limit sets."""
    heartbeat = LIMITS["scheduler_heartbeat"]
    got = Gathered(
        prometheus="not configured",
        health={
            "metadatabase": {"status": "healthy"},
            "scheduler": {"latest_scheduler_heartbeat": _ago(heartbeat.warning + 1)},
            "triggerer": {"latest_triggerer_heartbeat": _ago(heartbeat.critical + 1)},
            "dag_processor": {"latest_dag_processor_heartbeat": _ago(1)},
        },
        runs=[DagRun("bad_dag", f"r{i}", "failed") for i in range(3)] + [DagRun("good_dag", "r", "success")],
        running=[DagRun("slow_dag", "s", "running", start_date=NOW - dt.timedelta(
            seconds=LIMITS["long_running_run"].critical + 60))],
        failed=[TaskFailure("bad_dag", f"r{i}", "train", "failed") for i in range(int(LIMITS["task_failures"].critical))],
        import_errors=[DagImportError(f"dags/broken_{i}.py", "") for i in range(int(LIMITS["import_errors"].warning))],
        workers=CeleryWorkers(here=workers),
    )
    report = HealthReport("t", "1h", 3600, "http://a", "http://p", {})
    judge(got, report, NOW)
    severities = {(f.rule, f.subject): (f.severity, f.threshold) for f in report.findings}

    def level(rule: str, name: str) -> tuple[str, float]:
        return name, getattr(LIMITS[rule], name)

    assert severities[("scheduler_heartbeat", "scheduler")] == level("scheduler_heartbeat", "warning")
    assert severities[("scheduler_heartbeat", "triggerer")] == level("scheduler_heartbeat", "critical")
    assert severities[("scheduler_heartbeat", "dag-processor")] == ("ok", heartbeat.warning)
    assert severities[("dag_run_success_ratio", "bad_dag")] == level("dag_run_success_ratio", "critical")
    assert severities[("dag_run_success_ratio", "good_dag")] == ("ok", LIMITS["dag_run_success_ratio"].warning)
    assert severities[("long_running_run", "slow_dag/s")] == level("long_running_run", "critical")
    assert severities[("task_failures", "bad_dag.train")] == level("task_failures", "critical")
    assert severities[("import_errors", "import errors")] == level("import_errors", "warning")
    assert severities[("celery_workers", "celery workers")] == (
        "ok" if workers >= CELERY_WORKERS_MIN else "critical", CELERY_WORKERS_MIN)
    for finding in report.findings:
        if finding.rule in LIMITS:
            assert finding.threshold in (LIMITS[finding.rule].warning, LIMITS[finding.rule].critical), finding


def test_the_thresholds_module_is_plain_data():
    """Importable on the task side and at CLI start: it imports nothing but the stdlib."""
    imported = {n.module or a.name for n in ast.walk(ast.parse(HOME.read_text()))
                if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert imported <= {"__future__", "dataclasses", "types"}
