"""`mlwf health` without the Airflow stack: the Prometheus client and the health service
against a real Prometheus fed by the real exporter (repository mapping and rules), real
sockets for unreachable and silent servers; httpx.MockTransport only for answers a real
Prometheus cannot be made to give (a 503, a proxy's HTML page).
"""

from __future__ import annotations

import io
import socket
import time

import httpx
import pytest
from conftest import sigint_as_from_a_terminal
from exporter_support import send_udp, start_exporter
from rich.console import Console
from test_exporter_prometheus import Prometheus

from mlflowctl import health
from mlflowctl.api.prometheus import PrometheusClient
from mlflowctl.errors import ApiError, HealthThresholdError, TimeoutExpired, UnhealthyError, UnreachableError, UsageError
from mlflowctl.health.report import SECTIONS, HealthReport, Row, exit_error
from mlflowctl.render.health import report_view, sparkline
from mlpipeline import monitoring as rules

DAG = "demo_dag"


@pytest.fixture(scope="module")
def fed_prometheus(tmp_path_factory):
    """Exporter + Prometheus (1 s scrapes and rule evaluations) holding one failed and one
    successful task of a fresh DAG: every series born within any window."""
    tmp = tmp_path_factory.mktemp("health-prom")
    exporter = start_exporter(tmp)
    prom = None
    try:
        prom = Prometheus(tmp, exporter.http_port)
        first = [
            "airflow.scheduler_heartbeat:1|c",
            f"airflow.ti.start,dag_id={DAG},task_id=load:1|c",
            f"airflow.ti.start,dag_id={DAG},task_id=train:1|c",
            "airflow.executor.open_slots,status=open,executor_class_name=LocalExecutor:4|g",
            f"mlpipeline.model_accuracy,dag_id={DAG},model_type=logreg,version=v0001:0.91|g",
            f"mlpipeline.model_roc_auc,dag_id={DAG},model_type=logreg,version=v0001:0.62|g",
            f"mlpipeline.model_accuracy,dag_id={DAG},model_type=logreg,version=v0002:0.93|g",
            f"mlpipeline.model_roc_auc,dag_id={DAG},model_type=logreg,version=v0002:0.97|g",
        ]
        send_udp(exporter.statsd_port, first)
        exporter.wait_lines(len(first))
        # The derived failure counter exists at 0 before the failure arrives.
        prom.wait_for(f'airflow_task_failed{{dag_id="{DAG}",task_id="train"}}', lambda r: r and r[0]["value"][1] == "0")
        second = [
            "airflow.scheduler_heartbeat:1|c",
            f"airflow.task.duration,dag_id={DAG},task_id=load:1500|ms",
            f"airflow.ti.finish,dag_id={DAG},task_id=load,state=success:1|c",
            f"airflow.task.duration,dag_id={DAG},task_id=train:4500|ms",
            f"airflow.ti.finish,dag_id={DAG},task_id=train,state=failed:1|c",
            f"airflow.dagrun.duration.failed,dag_id={DAG},run_type=manual:7000|ms",
        ]
        send_udp(exporter.statsd_port, second)
        exporter.wait_lines(len(first) + len(second))
        prom.wait_for(f'airflow_task_failed{{dag_id="{DAG}",task_id="train"}} == 1')
        prom.wait_for(f'airflow_dagrun_failed{{dag_id="{DAG}"}} == 1')
        prom.wait_for(f'airflow_task_duration_count{{dag_id="{DAG}"}}', lambda r: len(r) == 2)
        yield prom
    finally:
        if prom is not None:
            prom.stop()
        exporter.stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake(handler) -> PrometheusClient:
    return PrometheusClient("http://prometheus.test", transport=httpx.MockTransport(handler))


# -- the client -----------------------------------------------------------------------------


def test_client_queries_a_real_prometheus(fed_prometheus):
    with PrometheusClient(fed_prometheus.url) as client:
        assert client.ready() is True
        [one] = client.query('vector(1) + 1')
        assert one.value == 2.0 and one.labels == {}
        [scalar] = client.query("scalar(vector(3))")
        assert scalar.value == 3.0
        counts = client.query(f'airflow_task_duration_count{{dag_id="{DAG}"}}')
        assert {s.labels["task_id"] for s in counts} == {"load", "train"}
        now = time.time()
        [series] = client.query_range("vector(5)", now - 60, now, 10)
        assert len(series.points) == 7 and set(series.values) == {5.0}


def test_client_maps_a_real_bad_query_to_a_usage_error(fed_prometheus):
    with PrometheusClient(fed_prometheus.url) as client, pytest.raises(UsageError, match="refused the query"):
        client.query("sum(")


def test_client_unreachable_and_silent_servers():
    with PrometheusClient(f"http://127.0.0.1:{closed_port()}") as client:
        with pytest.raises(UnreachableError, match="connection refused"):
            client.query("up")
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        with PrometheusClient(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5) as client:
            with pytest.raises(TimeoutExpired, match="did not answer"):
                client.query("up")


def test_client_error_answers_a_real_server_cannot_be_made_to_give():
    def overloaded(request):
        return httpx.Response(503, json={"status": "error", "errorType": "timeout", "error": "query timed out"})

    with pytest.raises(ApiError, match="HTTP 503 \\(timeout\\).*query timed out"):
        fake(overloaded).query("up")

    def proxy(request):
        return httpx.Response(502, text="<html>Bad gateway</html>")

    with pytest.raises(ApiError, match="not a JSON object"):
        fake(proxy).query("up")
    assert fake(lambda r: httpx.Response(503, text="Service Unavailable")).ready() is False
    with pytest.raises(UsageError, match="step"):
        fake(proxy).query_range("up", 0, 60, 0)


# -- windows and exit codes -----------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("1h", 3600), ("30m", 1800), ("2d", 172800), (" 90s ", 90), ("1.5h", 5400)])
def test_parse_window(text, seconds):
    assert health.parse_window(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "10s", "1y", "-1h", "100d"])
def test_parse_window_refuses(text):
    with pytest.raises(UsageError, match="--window"):
        health.parse_window(text)


def report_with(statuses: list[str], *, degraded: bool) -> HealthReport:
    report = HealthReport("t", "1h", 3600, "http://a", "http://p",
                          {"api": "ok", "prometheus": "connection refused" if degraded else "ok"})
    report.rows = [Row("task_failures", f"r{i}", s, 1, rule="task_failures") for i, s in enumerate(statuses)]
    report.rows.append(Row("executor", "info row", "info", 3))
    return report


@pytest.mark.parametrize(
    ("statuses", "degraded", "fail_on", "expected"),
    [
        (["ok"], False, None, None),
        (["warning", "critical"], False, None, None),  # findings alone never fail
        (["warning"], False, "warning", HealthThresholdError),
        (["warning"], False, "critical", None),
        (["critical"], False, "critical", HealthThresholdError),
        (["ok"], True, None, UnhealthyError),
        (["warning"], True, "critical", UnhealthyError),  # nothing at critical: degraded decides
        (["warning"], True, "warning", HealthThresholdError),  # --fail-on's code wins
    ],
)
def test_exit_rule(statuses, degraded, fail_on, expected):
    error = exit_error(report_with(statuses, degraded=degraded), fail_on)
    assert (type(error) if error else None) is expected
    if expected is not None:
        assert error.exit_code == {HealthThresholdError: 12, UnhealthyError: 9}[expected]


# -- the service on real Prometheus data ------------------------------------------------------


def test_report_from_prometheus_alone(fed_prometheus):
    with PrometheusClient(fed_prometheus.url) as client:
        report = health.collect(None, client, window="1h")
    data = report.to_dict()
    assert data["degraded"] is True and data["sources"]["api"] == "not configured"
    rows = {(r.section, r.name): r for r in report.rows}

    # Series born inside the window count from 0 (increase() would report nothing here).
    load, train = rows[("task_durations", f"{DAG}.load")], rows[("task_durations", f"{DAG}.train")]
    assert (load.value, train.value) == (1.5, 4.5) and "1 run(s)" in train.detail
    assert [r.name for r in report.section("task_durations")] == [f"{DAG}.train", f"{DAG}.load"]
    assert train.trend is not None and train.trend[-1] == pytest.approx(4.5)

    # Without the API, failures and run outcomes come from the derived Prometheus series.
    failed = rows[("task_failures", f"{DAG}.train")]
    assert (failed.status, failed.value, failed.source) == ("warning", 1, "prometheus")
    assert ("task_failures", f"{DAG}.load") not in rows
    run = rows[("dag_runs", DAG)]
    assert (run.status, run.value) == ("critical", 0.0)

    # Model quality: the latest version per DAG, judged by the promotion gate.
    assert rows[("model_quality", f"{DAG} v0002 roc_auc")].status == "ok"
    assert not any(name.startswith(f"{DAG} v0001") for _, name in rows)
    assert rows[("executor", "LocalExecutor")].detail.startswith("open slots 4")
    assert rows[("components", "statsd exporter")].status == "ok"
    assert rows[("components", "airflow api")].status == "critical"

    assert {f.rule for f in report.findings} >= {"task_failures", "dag_run_success_ratio", "api_reachable"}
    assert report.worst == rules.CRITICAL
    error = exit_error(report, None)
    assert isinstance(error, UnhealthyError) and "api: not configured" in str(error)


def test_nothing_answers(tmp_path):
    with PrometheusClient(f"http://127.0.0.1:{closed_port()}") as client:
        with pytest.raises(UnreachableError, match="neither the Airflow API"):
            health.collect(None, client)


def test_cli_with_nothing_to_ask_exits_5(tmp_path):
    from typer.testing import CliRunner

    from mlflowctl.cli.main import app

    env = {"MLWF_HOME": str(tmp_path), "MLWF_AIRFLOW_PASSWORD": "x", "MLWF_BACKEND": "local"}
    result = CliRunner().invoke(
        app,
        ["health", "--url", f"http://127.0.0.1:{closed_port()}", "--prometheus-url", f"http://127.0.0.1:{closed_port()}"],
        env=env,
    )
    assert result.exit_code == 5, result.output
    assert "neither the Airflow API" in result.output


# -- rendering --------------------------------------------------------------------------------


def test_sparkline():
    assert sparkline([1, 2, None, 8]) == "▁▂·█"
    assert sparkline([3, 3]) == "▅▅"
    assert sparkline([None, None]) == "" and sparkline(None) == ""


def test_report_view_renders_every_section(fed_prometheus):
    with PrometheusClient(fed_prometheus.url) as client:
        report = health.collect(None, client, window="1h")
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(report_view(report))
    text = console.file.getvalue()
    assert text.startswith("health: CRITICAL  DEGRADED")
    assert "degraded: the Airflow API" in text
    for title in SECTIONS.values():
        assert title in text
    line = next(line for line in text.splitlines() if f"{DAG}.train" in line and "4.5s" in line)
    assert "█" in line or "▅" in line


# -- --watch ----------------------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [True, False])
def test_watch_refreshes_until_ctrl_c_then_exits_by_the_last_report(fed_prometheus, tmp_path, as_json):
    import json
    import os
    import signal
    import subprocess
    import sys
    import threading

    args = [sys.executable, "-m", "mlflowctl", "health", "--watch", "--interval", "1",
            "--url", f"http://127.0.0.1:{closed_port()}", "--prometheus-url", fed_prometheus.url]
    # Colours as on a terminal (TTY_COMPATIBLE), yet pipes: a CI log's lines, never redraws
    # (the live view on a real terminal is in test_output.py).
    env = {**os.environ, "MLWF_HOME": str(tmp_path), "MLWF_AIRFLOW_PASSWORD": "x", "COLUMNS": "200",
           "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}
    proc = subprocess.Popen(args + (["--json"] if as_json else []), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path, preexec_fn=sigint_as_from_a_terminal)
    chunks: list[str] = []
    said: list[str] = []
    readers = [threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read(1), "")), daemon=True),
               threading.Thread(target=lambda: said.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + 60
        # Two reports: JSON lines on stdout, or the first report's headline on stderr and a second refresh.
        while time.monotonic() < deadline and (
            "".join(chunks).count("\n") < 2 if as_json else "health: " not in "".join(said)
        ):
            time.sleep(0.1)
        if not as_json:
            time.sleep(1.5)  # one more refresh
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        for reader in readers:
            reader.join(timeout=5)
    out, err = "".join(chunks), "".join(said)
    assert proc.returncode == 9, err  # the last report was degraded (no API)
    assert "health report degraded" in err
    if as_json:
        reports = [json.loads(line) for line in out.splitlines()[:2]]
        assert all(r["degraded"] and r["sources"]["api"] != "ok" for r in reports)
        assert reports[1]["generated_at"] >= reports[0]["generated_at"]
    else:  # the headline once (its status did not change), and the last report in full once, at the end
        assert err.count("health: ") == 1 and "\x1b[" not in out.split("health: ")[0]
        assert out.count("health: ") == 1 and "Durations by task" in out


def test_celery_workers_are_counted_from_the_stacks_pid_files(fed_prometheus, tmp_path):
    import json
    import os

    import psutil

    from mlflowctl.backends.base import CeleryWorkers
    from mlflowctl.backends.local.workers import census
    from mlflowctl.config import load_config

    config = load_config({"home": str(tmp_path)}, cwd=tmp_path, environ={})
    run = tmp_path / "run"
    run.mkdir()
    assert census(config) is None  # no Celery workers, none can join: no row
    me = psutil.Process()
    (run / "worker-1.pid").write_text(json.dumps({"pid": os.getpid(), "create_time": me.create_time()}))
    (run / "worker-2.pid").write_text(json.dumps({"pid": os.getpid(), "create_time": me.create_time() - 100}))
    assert census(config) == CeleryWorkers(1, {}, False)  # the second record names a pid reused since

    with PrometheusClient(fed_prometheus.url) as client:
        for count, status in ((1, "ok"), (0, "critical")):
            report = health.collect(None, client, workers=lambda: CeleryWorkers(count))
            row = next(r for r in report.section("executor") if r.name == "celery workers")
            assert (row.status, row.value) == (status, count)
            assert "other hosts" not in row.detail  # a stack that does not listen has none
        report = health.collect(None, client)
        assert not [r for r in report.section("executor") if r.name == "celery workers"]


def test_ctrl_c_during_a_refresh_drops_the_queries_not_yet_sent(tmp_path):
    """A slow Prometheus (each answer 4 s: a fake, as a real one cannot be made that slow on
    demand): Ctrl-C in the middle of the first refresh ends `health --watch` at once, instead
    of after every queued query had its turn (~16 s before)."""
    import http.server
    import os
    import signal
    import subprocess
    import sys
    import threading

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(4)
            body = b'{"status":"success","data":{"resultType":"vector","result":[]}}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "MLWF_HOME": str(tmp_path), "MLWF_AIRFLOW_PASSWORD": "x"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflowctl", "health", "--watch", "--json", "--url", f"http://127.0.0.1:{closed_port()}",
         "--prometheus-url", f"http://127.0.0.1:{server.server_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        preexec_fn=sigint_as_from_a_terminal,
    )
    try:
        time.sleep(3)  # the first refresh's queries are in flight or queued
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        proc.wait(timeout=30)
        assert time.monotonic() - started < 6, "Ctrl-C waited for the queued queries"
        assert proc.returncode == 130  # stopped before the first report
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.shutdown()
        server.server_close()
