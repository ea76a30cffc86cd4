"""The exporter as the local backend runs it: a separate process, real UDP, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from exporter_support import MAPPING, REPO, exporter_command, free_port, http_get, send_udp, start_exporter

from mlflowctl.metrics.exporter import fetch_status
from mlpipeline import pipeline_metrics


@pytest.fixture
def exporter(tmp_path):
    proc = start_exporter(tmp_path)
    yield proc
    assert proc.stop() == 0, (tmp_path / "exporter.log").read_text()


def test_lines_over_udp_come_out_on_metrics(exporter):
    send_udp(
        exporter.statsd_port,
        [
            "airflow.scheduler_heartbeat:1|c",
            "airflow.ti.finish,dag_id=ml_pipeline_dag,task_id=train,state=failed:1|c\n"
            "airflow.task.duration,dag_id=ml_pipeline_dag,task_id=train:1500|ms\n"
            "airflow.executor.open_slots,executor_class_name=LocalExecutor,status=open:4|g",
            "airflow.executor.open_slots,executor_class_name=LocalExecutor,status=open:-1|g",
            "not a statsd line",
        ],
    )
    status = exporter.wait_lines(6)
    assert status["lines"] == 6 and status["packets"] == 4 and status["parse_errors"] == 1
    assert status["heartbeats"]["scheduler"] == pytest.approx(time.time(), abs=30)
    got = exporter.metrics()
    assert got.types["airflow_scheduler_heartbeat"] == "counter"
    assert got.value("airflow_scheduler_heartbeat") == 1
    assert got.value("airflow_ti_finish", dag_id="ml_pipeline_dag", task_id="train", state="failed") == 1
    assert got.value("airflow_task_duration_sum", dag_id="ml_pipeline_dag", task_id="train") == 1.5
    assert got.value("airflow_executor_open_slots", executor_class_name="LocalExecutor", status="open") == 3
    assert got.value("statsd_exporter_sample_errors_total", reason="malformed_line") == 1
    assert got.value("mlwf_exporter_heartbeat_timestamp_seconds", component="scheduler") == status["heartbeats"]["scheduler"]
    assert fetch_status("127.0.0.1", exporter.http_port)["lines"] == 6
    assert http_get(exporter.url + "/-/healthy") == b"OK\n"


def test_pipeline_metrics_reach_the_exporter(exporter, monkeypatch):
    monkeypatch.setenv("MLWF_STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("MLWF_STATSD_PORT", str(exporter.statsd_port))
    assert pipeline_metrics.publish("model_accuracy", 0.91, dag_id="ml_pipeline_dag", version="v0001", model_type="logreg")
    assert pipeline_metrics.publish("training_seconds", 2.5, "timer", dag_id="ml_pipeline_dag", model_type="logreg")
    assert pipeline_metrics.publish("validation_failures", 2, dag_id="ml_pipeline_dag")
    exporter.wait_lines(3)
    got = exporter.metrics()
    assert got.value("mlpipeline_model_accuracy", dag_id="ml_pipeline_dag", version="v0001", model_type="logreg") == 0.91
    assert got.value("mlpipeline_training_seconds_sum", dag_id="ml_pipeline_dag", model_type="logreg") == 2.5
    assert got.value("mlpipeline_validation_failures", dag_id="ml_pipeline_dag") == 2


def test_sighup_reloads_the_mapping_and_a_bad_file_keeps_the_old_one(tmp_path):
    mapping = tmp_path / "mapping.yml"
    mapping.write_text("mappings:\n- {match: a.b, name: first}\n")
    proc = start_exporter(tmp_path, mapping)
    try:
        send_udp(proc.statsd_port, ["a.b:1|c"])
        proc.wait_lines(1)
        mapping.write_text("mappings:\n- {match: a.b, name: second}\n")
        os.kill(proc.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "second" not in proc.metrics().names() and time.monotonic() < deadline:
            send_udp(proc.statsd_port, ["a.b:1|c"])
            time.sleep(0.2)
        got = proc.metrics()
        assert "second" in got.names() and got.value("statsd_exporter_config_reloads_total", outcome="success") == 1
        mapping.write_text("mappings: [")
        os.kill(proc.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not proc.metrics().series("statsd_exporter_config_reloads_total").get(frozenset({("outcome", "failure")})):
            assert time.monotonic() < deadline
            send_udp(proc.statsd_port, ["a.b:1|c"])
            time.sleep(0.2)
        assert proc.status()["mappings"] == 1
    finally:
        assert proc.stop() == 0


def test_bad_mapping_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("mappings:\n- {match: a, name: a, timer_type: histogram}\n")
    r = subprocess.run(exporter_command("--mapping", str(bad), "--statsd-port", "0", "--http-port", "0"),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "timer_type" in r.stderr


def test_busy_port_exits_10(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        r = subprocess.run(
            exporter_command("--statsd-port", str(port), "--http-port", str(free_port())),
            capture_output=True, text=True, timeout=30,
        )
    assert r.returncode == 10 and "already in use" in r.stderr


def test_check_config_accepts_the_repository_mapping():
    r = subprocess.run(exporter_command("--mapping", str(MAPPING), "--check-config"), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "mapping OK" in r.stdout and "warning" not in r.stderr


def test_module_imports_stay_light():
    """The local backend starts this module often: no httpx, Airflow, pandas, typer or rich."""
    code = (
        "import sys, mlflowctl.metrics.exporter; "
        "heavy = {'httpx', 'airflow', 'pandas', 'sklearn', 'typer', 'rich', 'docker'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    r = subprocess.run([exporter_command()[0], "-c", code], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "[]", r.stderr


def test_benchmark_runs_and_loses_nothing_at_a_modest_rate():
    """bench/exporter_bench.py stays runnable; a small paced burst arrives whole."""
    r = subprocess.run([sys.executable, str(REPO / "bench" / "exporter_bench.py"), "--lines", "5000", "--rate", "10000", "--json"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)["runs"][0]
    assert run["lines_sent"] == 5000 and run["lines_received"] == 5000 and run["lines_lost"] == 0
    assert run["parse_errors"] == 0
