"""End to end: exporter process -> real Prometheus (rendered local config, repository rules).

StatsD lines shaped exactly like the captured Airflow ones go in over UDP; the
documented queries are asked of Prometheus's HTTP API as written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse

import pytest
from exporter_support import free_port, http_get, send_udp, start_exporter, stop_process_group

from mlflowctl.metrics.prometheus_config import write_local_config

DAG = "ml_pipeline_dag"


class Prometheus:
    def __init__(self, tmp_path, exporter_port: int) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("the prometheus binary is not on PATH (scripts/setup.sh installs it)")
        self.port = free_port()
        config = write_local_config(
            tmp_path / "prometheus" / "prometheus.yml",
            exporter_port=exporter_port, prometheus_port=self.port,
            scrape_interval="1s", evaluation_interval="1s",
        )
        self.log = open(tmp_path / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'prometheus' / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if http_get(self.url + "/-/ready", timeout=1):
                    break
            except OSError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.1)

    def api(self, path: str, **params: str) -> dict:
        body = json.loads(http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"))
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def wait_for(self, expr: str, check=lambda result: bool(result), timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if check(result):
                return result
            assert time.monotonic() < deadline, f"{expr} -> {result}"
            time.sleep(0.25)

    def stop(self) -> None:
        stop_process_group(self.proc, timeout=15)
        self.log.close()


@pytest.fixture
def pipe(tmp_path):
    exporter = start_exporter(tmp_path)
    prometheus = None
    try:
        prometheus = Prometheus(tmp_path, exporter.http_port)
        yield exporter, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        exporter.stop()


@pytest.mark.slow
def test_documented_queries_work_as_written(pipe):
    exporter, prom = pipe
    first = [
        "airflow.scheduler_heartbeat:1|c",
        f"airflow.ti.start,dag_id={DAG},task_id=train:1|c",
        f"airflow.ti.start.{DAG}.train:1|c",  # legacy twin: dropped by the mapping
        f"airflow.ti.start,dag_id={DAG},task_id=load:1|c",
        f"airflow.ti.finish,dag_id={DAG},task_id=load,state=success:1|c",
        f"airflow.task.duration,dag_id={DAG},task_id=load:1234.5|ms",
        f"airflow.dagrun.duration.success,dag_id={DAG},run_type=manual:5000|ms",
        "airflow.executor.open_slots,status=open,executor_class_name=LocalExecutor:4|g",
        "airflow.executor.queued_tasks,status=queued,executor_class_name=LocalExecutor:1|g",
        "airflow.pool.open_slots,pool_name=default_pool:128|g",
        "airflow.dag_processing.import_errors:0|g",
        f"airflow.dagrun.schedule_delay,dag_id={DAG}:2500|ms",
        f"mlpipeline.model_accuracy,dag_id={DAG},model_type=logreg,version=v0002:0.55|g",
    ]
    send_udp(exporter.statsd_port, first)
    exporter.wait_lines(len(first))
    # the failure counter exists at 0 before the first failure, so rate() can see it rise
    prom.wait_for(f'airflow_task_failed{{dag_id="{DAG}",task_id="train"}}', lambda r: r and r[0]["value"][1] == "0")
    second = [
        "airflow.scheduler_heartbeat:1|c",
        f"airflow.ti.finish,dag_id={DAG},task_id=train,state=failed:1|c",
        f"airflow.dagrun.duration.failed,dag_id={DAG},run_type=manual:7000|ms",
    ]
    send_udp(exporter.statsd_port, second)
    exporter.wait_lines(len(first) + len(second))

    durations = prom.wait_for(f'airflow_task_duration{{dag_id="{DAG}"}}')
    assert {r["metric"]["quantile"] for r in durations} == {"0.5", "0.9", "0.99"}
    assert all(r["metric"]["task_id"] == "load" and float(r["value"][1]) == 1.2345 for r in durations)

    failed = prom.wait_for("rate(airflow_task_failed[5m])", lambda r: any(float(x["value"][1]) > 0 for x in r))
    assert {x["metric"]["task_id"] for x in failed if float(x["value"][1]) > 0} == {"train"}

    ratio = prom.wait_for("airflow_dagrun_success / airflow_dagrun_total", lambda r: r and r[0]["value"][1] == "0.5")
    assert ratio[0]["metric"] == {"dag_id": DAG}

    beats = prom.wait_for("airflow_scheduler_heartbeat", lambda r: r and float(r[0]["value"][1]) == 2)
    assert beats[0]["metric"]["__name__"] == "airflow_scheduler_heartbeat"
    # Prometheus files the type under the series' own name, as with statsd_exporter
    assert prom.api("metadata", metric="airflow_scheduler_heartbeat")["airflow_scheduler_heartbeat"][0]["type"] == "counter"

    # richer queries the dashboards and `mlwf health` use
    assert prom.query('airflow_executor_open_slots{executor_class_name="LocalExecutor"}')[0]["value"][1] == "4"
    assert prom.query("airflow_executor_queued_tasks")[0]["value"][1] == "1"
    assert prom.query('airflow_pool_open_slots{pool_name="default_pool"}')[0]["value"][1] == "128"
    assert prom.query("airflow_dag_processing_import_errors")[0]["value"][1] == "0"
    assert prom.query(f'airflow_dagrun_schedule_delay_count{{dag_id="{DAG}"}}')[0]["value"][1] == "1"
    assert prom.query('airflow_ti_start{task_id="train"}')[0]["metric"]["dag_id"] == DAG
    assert prom.query('{__name__=~"airflow_ti_start_.*"}') == []  # no legacy twin
    assert prom.query('up{job="statsd-exporter"}')[0]["value"][1] == "1"

    alerts = prom.api("alerts")["alerts"]
    deadline = time.monotonic() + 20
    want = {"AirflowTaskFailed", "ModelAccuracyBelowThreshold", "AirflowDagRunSuccessRatioLow"}
    while not want <= {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}:
        assert time.monotonic() < deadline, alerts
        time.sleep(0.5)
        alerts = prom.api("alerts")["alerts"]
    by_name = {a["labels"]["alertname"]: a for a in alerts if a["state"] == "firing"}
    assert by_name["AirflowTaskFailed"]["labels"]["task_id"] == "train"
    assert by_name["ModelAccuracyBelowThreshold"]["labels"]["version"] == "v0002"
    assert "AirflowSchedulerHeartbeatAbsent" not in by_name
