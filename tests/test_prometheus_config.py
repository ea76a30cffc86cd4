"""stack/prometheus: configs and rules checked by the real promtool; thresholds agree with mlwf health."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mlflowctl.errors import UsageError
from mlflowctl.metrics.prometheus_config import render_local_config, write_local_config
from mlpipeline.thresholds import LIMITS, PROMOTION_MINIMUMS, SERVING_VERSION_GRACE_S

REPO = Path(__file__).resolve().parents[1]
PROM = REPO / "stack" / "prometheus"
RULES = sorted((PROM / "rules").glob("*.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not on PATH (scripts/setup.sh installs Debian's prometheus package)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.docker.yml"])
def test_promtool_check_config(config):
    r = promtool("check", "config", str(PROM / config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 rule files found" in r.stdout


def test_promtool_check_rules():
    assert [p.name for p in RULES] == ["alerts.yml", "recording.yml"]
    r = promtool("check", "rules", *map(str, RULES))
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_rule_unit_tests():
    """Recording rules and alerts on synthetic series (tests/data/prometheus_rules_test.yml)."""
    r = promtool("test", "rules", str(REPO / "tests" / "data" / "prometheus_rules_test.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_rendered_local_config_is_valid_and_points_at_the_ports(tmp_path):
    path = write_local_config(tmp_path / "state" / "prometheus.yml", exporter_port=19102, prometheus_port=19090,
                              scrape_interval="5s")
    r = promtool("check", "config", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    data = yaml.safe_load(path.read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in data["scrape_configs"]}
    assert jobs == {"statsd-exporter": ["127.0.0.1:19102"], "prometheus": ["127.0.0.1:19090"],
                    "serving": ["127.0.0.1:8085"]}  # the template's default when no serving_port is given
    assert data["global"]["scrape_interval"] == "5s"
    assert data["rule_files"] == [str(PROM / "rules" / "recording.yml"), str(PROM / "rules" / "alerts.yml")]


def test_docker_and_local_configs_share_jobs_intervals_and_rules():
    local = yaml.safe_load((PROM / "prometheus.yml").read_text())
    docker = yaml.safe_load((PROM / "prometheus.docker.yml").read_text())
    for key in ("scrape_interval", "evaluation_interval"):
        assert local["global"][key] == docker["global"][key]
    assert local["rule_files"] == docker["rule_files"]
    assert [j["job_name"] for j in local["scrape_configs"]] == [j["job_name"] for j in docker["scrape_configs"]]
    assert docker["scrape_configs"][0]["static_configs"][0]["targets"] == ["statsd-exporter:9102"]


def test_render_refuses_a_template_without_the_jobs(tmp_path):
    (tmp_path / "prometheus").mkdir()
    (tmp_path / "prometheus" / "prometheus.yml").write_text("scrape_configs:\n- job_name: other\n")
    with pytest.raises(UsageError, match="no job named prometheus, statsd-exporter"):
        render_local_config(exporter_port=1, prometheus_port=2, stack_dir=tmp_path)
    with pytest.raises(UsageError, match="cannot read"):
        render_local_config(exporter_port=1, prometheus_port=2, stack_dir=tmp_path / "missing")


def _alerts() -> dict[tuple[str, str], str]:
    groups = yaml.safe_load((PROM / "rules" / "alerts.yml").read_text())["groups"]
    return {(r["alert"], r["labels"]["severity"]): r["expr"] for g in groups for r in g["rules"]}


def _threshold(expr: str) -> float:
    return float(re.findall(r"(?:<|>=|>)\s*([0-9.]+)\s*$", expr.strip())[0])


def test_alert_thresholds_match_mlwf_health_defaults():
    alerts = _alerts()
    for metric, minimum in PROMOTION_MINIMUMS.items():
        name = {"accuracy": "ModelAccuracyBelowThreshold", "f1": "ModelF1BelowThreshold", "roc_auc": "ModelRocAucBelowThreshold"}[metric]
        expr = alerts[(name, "warning")]
        assert expr.startswith(f"mlpipeline_model_{metric} <") and _threshold(expr) == minimum
    for severity in ("warning", "critical"):
        assert _threshold(alerts[("AirflowImportErrors", severity)]) == getattr(LIMITS["import_errors"], severity)
        assert _threshold(alerts[("AirflowDagRunSuccessRatioLow", severity)]) == getattr(LIMITS["dag_run_success_ratio"], severity)
        assert _threshold(alerts[("AirflowDagRunTooLong", severity)]) == getattr(LIMITS["long_running_run"], severity)
        window = re.search(r"airflow_scheduler_heartbeat\[(\d+)m\]", alerts[("AirflowSchedulerHeartbeatAbsent", severity)])
        assert int(window.group(1)) * 60 == getattr(LIMITS["scheduler_heartbeat"], severity)
        assert _threshold(alerts[("ServingErrorRateHigh", severity)]) == getattr(LIMITS["serving_error_rate"], severity)
        assert _threshold(alerts[("ServingLatencyHigh", severity)]) == getattr(LIMITS["serving_latency_p95"], severity)
    served = next(r for g in yaml.safe_load((PROM / "rules" / "alerts.yml").read_text())["groups"]
                  for r in g["rules"] if r["alert"] == "ServedModelIsNotProduction")
    assert int(served["for"].rstrip("m")) * 60 == SERVING_VERSION_GRACE_S
    assert _threshold(alerts[("AirflowTaskFailed", "warning")]) == LIMITS["task_failures"].warning
    assert _threshold(alerts[("AirflowTaskFailuresMany", "critical")]) == LIMITS["task_failures"].critical
