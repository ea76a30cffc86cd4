"""Notifications against a real local HTTP server and a real closed port."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlpipeline import notifications
from mlpipeline.notifications import NotificationError, append_jsonl, deadline_missed, notify, read_log
from mlpipeline.remote import redact_url


class _Hook:
    """A real HTTP server on 127.0.0.1:<free port>; answers each POST with the next queued status."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.bodies: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.bodies.append(json.loads(body))
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Hook:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_notify_without_webhook_appends_one_line(tmp_path):
    log = tmp_path / "sub" / "n.jsonl"
    rec = notify("model_promoted", "v0001 promoted", payload={"version": "v0001"}, log_path=log, webhook_url="")
    assert rec["webhook"] == {"status": "not_configured"}
    lines = log.read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == rec
    assert rec["payload"] == {"version": "v0001"} and rec["severity"] == "info"


def test_webhook_success_against_real_server(tmp_path):
    log = tmp_path / "n.jsonl"
    with _Hook() as hook:
        rec = notify("pipeline_done", "ok", log_path=log, webhook_url=hook.url, severity="warning")
    assert rec["webhook"]["status"] == "sent"
    assert rec["webhook"]["http_status"] == 200 and rec["webhook"]["attempts"] == 1
    assert hook.bodies[0]["event"] == "pipeline_done" and hook.bodies[0]["id"] == rec["id"]
    # the secret part of the URL never reaches the log
    assert "secret-token" not in log.read_text()
    assert read_log(log)[0]["webhook"]["status"] == "sent"


def test_non_json_payload_values_are_sent_as_text(tmp_path):
    import datetime as dt

    when = dt.datetime(2026, 1, 1, 2, 0, tzinfo=dt.timezone.utc)
    with _Hook() as hook:
        rec = notify("deadline_missed", "late", payload={"deadline_time": when}, log_path=tmp_path / "n.jsonl", webhook_url=hook.url)
    assert rec["webhook"]["status"] == "sent", rec["webhook"]
    assert hook.bodies[0]["payload"]["deadline_time"] == "2026-01-01 02:00:00+00:00"
    assert read_log(tmp_path / "n.jsonl")[0]["payload"] == hook.bodies[0]["payload"]


def test_webhook_retries_server_errors_then_succeeds(tmp_path):
    with _Hook([503, 500]) as hook:
        rec = notify("x", "y", log_path=tmp_path / "n.jsonl", webhook_url=hook.url, backoff=0.01)
    assert rec["webhook"]["status"] == "sent" and rec["webhook"]["attempts"] == 3
    assert len(hook.bodies) == 3


def test_webhook_client_error_is_not_retried_and_is_logged(tmp_path):
    with _Hook([404]) as hook:
        rec = notify("x", "y", log_path=tmp_path / "n.jsonl", webhook_url=hook.url, backoff=0.01)
    assert rec["webhook"]["status"] == "failed" and rec["webhook"]["attempts"] == 1
    assert rec["webhook"]["error"] == "HTTP 404 from webhook"
    assert len(hook.bodies) == 1


def test_webhook_to_closed_port_is_logged_not_raised(tmp_path, caplog):
    log = tmp_path / "n.jsonl"
    url = f"http://127.0.0.1:{_closed_port()}/hook"
    started = time.monotonic()
    rec = notify("x", "hello", log_path=log, webhook_url=url, attempts=3, backoff=0.01, timeout=2)
    assert time.monotonic() - started < 10
    assert rec["webhook"]["status"] == "failed" and rec["webhook"]["attempts"] == 3
    assert "ConnectError" in rec["webhook"]["error"]
    logged = read_log(log)
    assert len(logged) == 1 and logged[0]["webhook"]["status"] == "failed"
    assert "ConnectError" in logged[0]["webhook"]["error"]
    assert any("not delivered" in r.getMessage() for r in caplog.records)


def test_webhook_failure_raises_only_when_asked_and_still_logs(tmp_path):
    log = tmp_path / "n.jsonl"
    url = f"http://127.0.0.1:{_closed_port()}/hook"
    with pytest.raises(NotificationError, match="not delivered"):
        notify("x", "y", log_path=log, webhook_url=url, attempts=1, raise_on_failure=True)
    assert read_log(log)[0]["webhook"]["status"] == "failed"


def test_bad_severity_refused(tmp_path):
    with pytest.raises(ValueError, match="severity"):
        notify("x", "y", severity="loud", log_path=tmp_path / "n.jsonl", webhook_url="")
    assert not (tmp_path / "n.jsonl").exists()


def test_settings_from_env_are_used(tmp_path, monkeypatch):
    monkeypatch.setenv("MLWF_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.delenv("MLWF_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("MLWF_NOTIFICATIONS_LOG", raising=False)
    notify("x", "y")
    assert len(read_log(tmp_path / "data" / "notifications.jsonl")) == 1


def test_concurrent_appends_never_interleave(tmp_path):
    log = tmp_path / "n.jsonl"
    big = "x" * 20000

    def writer(n: int) -> None:
        for i in range(25):
            append_jsonl(log, {"writer": n, "i": i, "pad": big})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = read_log(log)
    assert len(records) == 100
    assert {(r["writer"], r["i"]) for r in records} == {(n, i) for n in range(4) for i in range(25)}


def test_deadline_callback_notifies_with_airflow_context(tmp_path, monkeypatch):
    monkeypatch.setenv("MLWF_NOTIFICATIONS_LOG", str(tmp_path / "n.jsonl"))
    monkeypatch.delenv("MLWF_WEBHOOK_URL", raising=False)
    ctx = {
        "dag_run": {"dag_id": "ml_pipeline_dag", "dag_run_id": "manual__1", "state": "running"},
        "deadline": {"id": "d1", "deadline_time": "2026-01-01T02:00:00+00:00"},
    }
    rec = deadline_missed(context=ctx, deadline_minutes=120)
    assert rec["event"] == "deadline_missed" and rec["severity"] == "warning"
    assert "ml_pipeline_dag run manual__1 missed its deadline" in rec["message"]
    assert read_log(tmp_path / "n.jsonl")[0]["payload"]["deadline_minutes"] == 120


def test_redact_url():
    hook = "https://hooks.example.com/services/T0/B0/xyz?token=1"
    assert redact_url(hook, keep_path=False) == "https://hooks.example.com/…"
    assert redact_url("http://127.0.0.1:9000", keep_path=False) == "http://127.0.0.1:9000"
    assert notifications.SEVERITIES == ("info", "warning", "critical")


class _BadHook:
    """A real webhook server on 127.0.0.1 that reads the POST, then answers slowly or forever."""

    def __init__(self, mode: str) -> None:
        stopping = self.stopping = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    if mode == "trickle":  # a status line, then one header byte every 0.5 s
                        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                        while not stopping.wait(0.5):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                    else:  # 200, then a body that never ends
                        self.send_response(200)
                        self.send_header("Connection", "close")
                        self.end_headers()
                        started = time.monotonic()
                        while not stopping.is_set() and time.monotonic() - started < 30:
                            self.wfile.write(b"x" * 65536)
                except OSError:  # the client hung up
                    pass

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _BadHook:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_trickling_webhook_gives_up_at_the_deadline(tmp_path):
    with _BadHook("trickle") as hook:
        started = time.monotonic()
        rec = notify("e", "m", log_path=tmp_path / "n.jsonl", webhook_url=hook.url, timeout=30, deadline=1.5,
                     backoff=0.01)
        elapsed = time.monotonic() - started
    assert 1.4 < elapsed < 3.5, elapsed
    assert rec["webhook"]["status"] == "failed" and "no answer within 1.5 s" in rec["webhook"]["error"]
    assert read_log(tmp_path / "n.jsonl")[0]["webhook"]["status"] == "failed"


def test_an_endless_webhook_answer_is_not_read(tmp_path):
    with _BadHook("endless") as hook:
        started = time.monotonic()
        rec = notify("e", "m", log_path=tmp_path / "n.jsonl", webhook_url=hook.url, deadline=10)
        elapsed = time.monotonic() - started
    assert rec["webhook"]["status"] == "sent" and rec["webhook"]["http_status"] == 200
    assert elapsed < 2, elapsed


def test_urls_in_notifications_are_recorded_without_credentials(tmp_path):
    with _Hook() as hook:
        rec = notify(
            "task_failed", "GET https://bob:hunter2@data.example/x.csv?token=t0k failed",
            payload={"source": "https://bob:hunter2@data.example/x.csv", "nested": ["http://h/?sig=abc"]},
            log_path=tmp_path / "n.jsonl", webhook_url=hook.url,
        )
    assert rec["message"] == "GET https://data.example/x.csv?token=REDACTED failed"
    assert rec["payload"] == {"source": "https://data.example/x.csv", "nested": ["http://h/?sig=REDACTED"]}
    for text in ((tmp_path / "n.jsonl").read_text(), json.dumps(hook.bodies)):
        assert "hunter2" not in text and "t0k" not in text and "abc" not in text
