"""The Airflow API client's error paths that a healthy real server cannot be made to produce.

Fake servers are `httpx.MockTransport` handlers (HTTP 500, 503, a token that expires
mid-session, validation errors); refused connections and read timeouts use real sockets.
The happy paths are covered against the real stack in test_runs_e2e.py.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import threading
import time

import httpx
import pytest

from mlflowctl.api.airflow import AirflowClient
from mlflowctl.api.auth import TokenCache, token_expiry
from mlflowctl.errors import ApiError, AuthError, NotFoundError, TimeoutExpired, UnreachableError, UsageError

URL = "http://airflow.test"


def jwt(exp: float) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS512'})}.{part({'sub': 'admin', 'exp': int(exp)})}.signature"


class FakeAirflow:
    """A tiny fake API server: issues tokens, accepts only the ones it issued and still honours."""

    def __init__(self, password: str = "secret") -> None:
        self.password = password
        self.valid: set[str] = set()
        self.logins = 0
        self.requests: list[httpx.Request] = []
        self.routes: dict[tuple[str, str], httpx.Response] = {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/auth/token":
            body = json.loads(request.content)
            if body != {"username": "admin", "password": self.password}:
                return httpx.Response(401, json={"detail": "Invalid credentials"})
            self.logins += 1
            token = jwt(time.time() + 86400) + str(self.logins)
            self.valid.add(token)
            return httpx.Response(201, json={"access_token": token})
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.valid:
            return httpx.Response(401, json={"detail": "Invalid JWT"})
        route = self.routes.get((request.method, request.url.raw_path.decode().split("?")[0]))
        if route is None:
            return httpx.Response(404, json={"detail": "Not Found"})
        return route

    def client(self, tmp_path, password: str | None = None, **kwargs) -> AirflowClient:
        return AirflowClient(
            URL, "admin", lambda: password or self.password, home=tmp_path,
            transport=httpx.MockTransport(self.handler), **kwargs,
        )


DAG = {"dag_id": "d", "is_paused": False, "timetable_summary": "@daily", "tags": [{"name": "t"}]}


def test_token_is_cached_0600_and_reused_by_the_next_client(tmp_path):
    server = FakeAirflow()
    server.routes[("GET", "/api/v2/dags/d")] = httpx.Response(200, json=DAG)
    with server.client(tmp_path) as client:
        assert client.get_dag("d").tags == ("t",)
    with server.client(tmp_path, password="never asked") as client:
        client.get_dag("d")
    assert server.logins == 1
    cache = tmp_path / "token.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert f"{URL}|admin" in json.loads(cache.read_text())


def test_token_expired_mid_session_is_renewed_once(tmp_path):
    server = FakeAirflow()
    server.routes[("GET", "/api/v2/dags/d")] = httpx.Response(200, json=DAG)
    with server.client(tmp_path) as client:
        client.get_dag("d")
        server.valid.clear()  # the server stops honouring the token (expired, or JWT secret rotated)
        assert client.get_dag("d").dag_id == "d"
    assert server.logins == 2


def test_a_token_the_server_keeps_refusing_is_an_auth_error_not_a_loop(tmp_path):
    server = FakeAirflow()

    def refuse_all(request):
        if request.url.path == "/auth/token":
            server.logins += 1
            return httpx.Response(201, json={"access_token": jwt(time.time() + 60)})
        return httpx.Response(401, json={"detail": "Invalid JWT"})

    client = AirflowClient(URL, "admin", lambda: "x", transport=httpx.MockTransport(refuse_all))
    with pytest.raises(AuthError) as raised:
        client.get_dag("d")
    assert raised.value.exit_code == 3
    assert server.logins == 1


def test_wrong_password_is_an_auth_error_and_caches_nothing(tmp_path):
    server = FakeAirflow()
    with pytest.raises(AuthError, match="refused the password of user 'admin'"):
        server.client(tmp_path, password="wrong").list_dags()
    assert not (tmp_path / "token.json").exists()


def test_password_is_not_asked_for_while_a_cached_token_is_valid(tmp_path):
    cache = TokenCache(tmp_path / "token.json")
    cache.put(URL, "admin", jwt(time.time() + 3600))
    assert cache.get(URL, "admin") is not None
    assert cache.get(URL, "someone-else") is None
    cache.put(URL, "admin", jwt(time.time() + 30))  # inside the expiry margin: treated as expired
    assert cache.get(URL, "admin") is None
    (tmp_path / "token.json").write_text("{damaged")
    assert cache.get(URL, "admin") is None
    assert token_expiry("not-a-jwt") > time.time()


def test_server_errors_map_to_distinct_exceptions(tmp_path):
    server = FakeAirflow()
    server.routes[("GET", "/api/v2/dags/broken")] = httpx.Response(500, text="Internal Server Error")
    server.routes[("GET", "/api/v2/dags/forbidden")] = httpx.Response(403, json={"detail": "Forbidden"})
    server.routes[("POST", "/api/v2/dags/d/dagRuns")] = httpx.Response(
        422, json={"detail": [{"loc": ["body", "logical_date"], "msg": "Field required", "type": "missing"}]}
    )
    server.routes[("POST", "/api/v2/backfills")] = httpx.Response(
        409, json={"detail": "There is already a running backfill for dag d"}
    )
    client = server.client(tmp_path)
    with pytest.raises(ApiError, match="HTTP 500 to GET /dags/broken: Internal Server Error") as error:
        client.get_dag("broken")
    assert error.value.exit_code == 13
    with pytest.raises(AuthError, match="not allowed"):
        client.get_dag("forbidden")
    with pytest.raises(UsageError, match="logical_date: Field required"):
        client.trigger_run("d", {})
    with pytest.raises(NotFoundError, match="DAG 'nope' not found"):
        client.get_dag("nope")
    from datetime import datetime, timezone

    day = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(ApiError, match="already a running backfill"):
        client.create_backfill("d", day, day)


def test_503_is_retried_then_succeeds(tmp_path):
    server = FakeAirflow()
    answers = [httpx.Response(503, json={"detail": "Database is locked"})] * 2 + [httpx.Response(200, json=DAG)]

    def flaky(request):
        if request.url.path == "/api/v2/dags/d":
            server.requests.append(request)
            return answers[min(len(server.requests) - 1, 2)]
        return server.handler(request)

    client = AirflowClient(URL, "admin", lambda: "secret", transport=httpx.MockTransport(flaky))
    assert client.get_dag("d").dag_id == "d"
    assert len(server.requests) == 3


def test_503_for_longer_than_the_retry_budget_is_an_api_error(tmp_path):
    server = FakeAirflow()
    server.routes[("GET", "/api/v2/dags/d")] = httpx.Response(503, json={"detail": "Database is locked"})
    with pytest.raises(ApiError, match="HTTP 503.*Database is locked"):
        server.client(tmp_path, retry_for=0.5).get_dag("d")


def test_run_ids_are_quoted_with_nothing_safe(tmp_path):
    server = FakeAirflow()
    run = {"dag_id": "d", "dag_run_id": "manual__2026-01-01T00:00:00+00:00", "state": "running"}
    path = "/api/v2/dags/d/dagRuns/manual__2026-01-01T00%3A00%3A00%2B00%3A00"
    server.routes[("GET", path)] = httpx.Response(200, json=run)
    assert server.client(tmp_path).get_run("d", run["dag_run_id"]).state == "running"


def test_trigger_always_sends_logical_date(tmp_path):
    server = FakeAirflow()
    run = {"dag_id": "d", "dag_run_id": "r", "state": "queued", "conf": {"a": 1}}
    server.routes[("POST", "/api/v2/dags/d/dagRuns")] = httpx.Response(200, json=run)
    server.client(tmp_path).trigger_run("d", {"a": 1})
    body = json.loads(server.requests[-1].content)
    assert body == {"logical_date": None, "conf": {"a": 1}}


def test_lists_follow_pages_until_total_entries(tmp_path):
    calls = []

    def pages(request):
        if request.url.path == "/auth/token":
            return httpx.Response(201, json={"access_token": jwt(time.time() + 600)})
        offset = int(request.url.params["offset"])
        calls.append(offset)
        batch = [{**DAG, "dag_id": f"d{i}"} for i in range(offset, min(offset + 100, 230))]
        return httpx.Response(200, json={"dags": batch, "total_entries": 230})

    client = AirflowClient(URL, "admin", lambda: "x", transport=httpx.MockTransport(pages))
    assert len(client.list_dags()) == 230
    assert calls == [0, 100, 200]


def test_connection_refused_is_unreachable_after_a_bounded_retry():
    with socket.socket() as sock:  # a real port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = AirflowClient(f"http://127.0.0.1:{port}", "admin", lambda: "x", retry_for=1.0)
    started = time.monotonic()
    with pytest.raises(UnreachableError, match="connection refused") as raised:
        client.list_dags()
    assert raised.value.exit_code == 5
    assert 0.9 <= time.monotonic() - started < 5


def test_a_server_that_never_answers_is_a_timeout():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    thread.start()
    try:
        client = AirflowClient(f"http://127.0.0.1:{listener.getsockname()[1]}", "admin", lambda: "x", timeout=0.5)
        with pytest.raises(TimeoutExpired, match="did not answer") as raised:
            client.list_dags()
        assert raised.value.exit_code == 6
    finally:
        for conn, _ in accepted:
            conn.close()
        listener.close()


def test_the_cli_does_not_import_httpx_at_start():
    import subprocess
    import sys

    code = "import sys, mlflowctl.cli.main; print('httpx' in sys.modules, 'tenacity' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.split() == ["False", "False"]
