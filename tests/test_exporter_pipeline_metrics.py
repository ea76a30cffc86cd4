"""pipeline_metrics: real UDP datagrams read from a real socket."""

from __future__ import annotations

import datetime as dt
import socket

import pytest

from mlpipeline import pipeline_metrics as pm


@pytest.fixture
def udp():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


def test_format_line_influx_tags_and_kinds():
    assert pm.format_line("rows_processed", 150, "counter", dag_id="ml", task_id="load") == (
        "mlpipeline.rows_processed,dag_id=ml,task_id=load:150|c"
    )
    assert pm.format_line("model_accuracy", 0.93, model_version="3") == "mlpipeline.model_accuracy,model_version=3:0.93|g"
    assert pm.format_line("training", dt.timedelta(seconds=1.5), "timer") == "mlpipeline.training:1500|ms"
    # a signed gauge is a delta in StatsD: reset to 0 first
    assert pm.format_line("drift", -2) == "mlpipeline.drift:0|g\nmlpipeline.drift:-2|g"
    # separators inside tag values cannot break the line
    assert pm.format_line("x", 1, note="a,b=c:d|e f") == "mlpipeline.x,note=a_b_c_d_e_f:1|g"
    with pytest.raises(ValueError):
        pm.format_line("x", 1, "histogramm")
    with pytest.raises(ValueError):
        pm.format_line("x", float("nan"))


def test_publish_sends_to_mlwf_env(udp, monkeypatch):
    monkeypatch.setenv("MLWF_STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("MLWF_STATSD_PORT", str(udp.getsockname()[1]))
    assert pm.publish("validation_failures", 3, kind="counter", dag_id="ml_pipeline_dag") is True
    assert udp.recv(4096) == b"mlpipeline.validation_failures,dag_id=ml_pipeline_dag:3|c"
    assert pm._sock.getsockname()[0] == "127.0.0.1"  # never a UDP port open on every interface


def test_publish_falls_back_to_airflow_env(udp, monkeypatch):
    monkeypatch.delenv("MLWF_STATSD_HOST", raising=False)
    monkeypatch.delenv("MLWF_STATSD_PORT", raising=False)
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "localhost")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PORT", str(udp.getsockname()[1]))
    monkeypatch.delenv("AIRFLOW__METRICS__STATSD_ON", raising=False)
    assert pm.publish("model_f1", 0.5, model_version="7", promoted=True)
    assert udp.recv(4096) == b"mlpipeline.model_f1,model_version=7,promoted=True:0.5|g"


def test_publish_is_a_noop_without_config_and_never_raises(monkeypatch):
    for var in ("MLWF_STATSD_HOST", "MLWF_STATSD_PORT", "AIRFLOW__METRICS__STATSD_HOST", "AIRFLOW__METRICS__STATSD_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert pm.publish("x", 1) is False
    monkeypatch.setenv("MLWF_STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("MLWF_STATSD_PORT", "not-a-port")
    assert pm.publish("x", 1) is False
    monkeypatch.setenv("MLWF_STATSD_PORT", "9")
    assert pm.publish("x", "not a number") is False
    assert pm.publish("x", 1, kind="bogus") is False
    monkeypatch.setenv("MLWF_STATSD_HOST", "no-such-host.invalid")
    assert pm.publish("x", 1) is False
