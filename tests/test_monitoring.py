"""Health rules: boundaries, bad input, aggregation."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest

from mlpipeline.monitoring import (
    CRITICAL,
    OK,
    WARNING,
    Finding,
    age_seconds,
    at_least,
    check_heartbeat_age,
    check_import_errors,
    check_long_running,
    check_success_ratio,
    check_task_failures,
    parse_time,
    summarize,
    worst_severity,
)


@pytest.mark.parametrize(
    ("ok", "failed", "severity"),
    [
        (9, 1, OK),  # 0.9 == warning -> ok
        (89, 11, WARNING),  # 0.89
        (5, 5, WARNING),  # 0.5 == critical -> warning
        (49, 51, CRITICAL),
        (0, 3, CRITICAL),
        (10, 0, OK),
    ],
)
def test_success_ratio_boundaries(ok, failed, severity):
    f = check_success_ratio(ok, failed, warning=0.9, critical=0.5, subject="ml_pipeline_dag")
    assert f.severity == severity
    assert f.rule == "dag_run_success_ratio" and f.subject == "ml_pipeline_dag"
    assert f.value == round(ok / (ok + failed), 4)


def test_success_ratio_without_runs_is_ok():
    f = check_success_ratio(0, 0)
    assert f.severity == OK and f.value is None and "no finished" in f.message


@pytest.mark.parametrize(("count", "severity"), [(0, OK), (1, WARNING), (4, WARNING), (5, CRITICAL), (50, CRITICAL)])
def test_task_failures_boundaries(count, severity):
    f = check_task_failures(count, warning=1, critical=5)
    assert f.severity == severity and f.value == count
    assert f.threshold == (5 if severity == CRITICAL else 1)


@pytest.mark.parametrize(("count", "severity"), [(0, OK), (1, WARNING), (2, WARNING), (3, CRITICAL)])
def test_import_errors_boundaries(count, severity):
    assert check_import_errors(count).severity == severity


@pytest.mark.parametrize(
    ("age", "severity"), [(0, OK), (60, OK), (60.5, WARNING), (300, WARNING), (300.1, CRITICAL), (None, CRITICAL)]
)
def test_heartbeat_boundaries(age, severity):
    f = check_heartbeat_age(age, warning=60, critical=300)
    assert f.severity == severity and f.rule == "scheduler_heartbeat"


def test_long_running_one_finding_per_slow_run():
    found = check_long_running({"a/r1": 100, "b/r2": 3601, "c/r3": 7200.5, "d/r4": 3600}, warning=3600, critical=7200)
    assert [(f.subject, f.severity) for f in found] == [("b/r2", WARNING), ("c/r3", CRITICAL)]
    none = check_long_running({"a": 10.0})
    assert len(none) == 1 and none[0].severity == OK and none[0].value == 10.0
    assert check_long_running({})[0].severity == OK


@pytest.mark.parametrize(
    "call",
    [
        lambda: check_task_failures(-1),
        lambda: check_task_failures(float("nan")),
        lambda: check_success_ratio(1, -2),
        lambda: check_heartbeat_age(-5),
        lambda: check_task_failures(1, warning=5, critical=1),
        lambda: check_success_ratio(1, 1, warning=0.5, critical=0.9),
        lambda: check_long_running({"x": -1}),
        lambda: Finding("r", "loud", 1, 1, "m"),
        lambda: worst_severity([{"severity": "bad"}]),
    ],
)
def test_bad_input_is_refused(call):
    with pytest.raises(ValueError):
        call()


def test_worst_severity_and_summary():
    findings = [check_task_failures(0), check_heartbeat_age(400), check_import_errors(1)]
    assert worst_severity([]) == OK
    assert worst_severity(findings) == CRITICAL
    assert worst_severity([f.to_dict() for f in findings[:1]]) == OK
    report = summarize([f.to_dict() for f in findings])
    assert report["worst"] == CRITICAL
    assert report["counts"] == {OK: 1, WARNING: 1, CRITICAL: 1}
    assert [f["severity"] for f in report["findings"]] == [CRITICAL, WARNING, OK]
    assert Finding.from_dict(report["findings"][0]) == findings[1]
    assert at_least(WARNING, WARNING) and at_least(CRITICAL, WARNING) and not at_least(OK, WARNING)


def test_time_helpers():
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
    assert age_seconds("2026-01-01T11:59:00Z", now) == 60
    assert age_seconds("2026-01-01T11:59:30+00:00", now) == 30
    assert age_seconds(None, now) is None
    assert parse_time("2026-01-01T00:00:00").tzinfo is dt.timezone.utc


def test_module_imports_only_the_stdlib():
    code = (
        "import sys; import mlpipeline.monitoring; "
        "heavy = {'httpx','pandas','sklearn','airflow','numpy','yaml'} & set(sys.modules); print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
