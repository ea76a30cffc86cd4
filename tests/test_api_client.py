"""The Airflow API client's error paths that a healthy real server cannot be made to produce.

Fake servers are `httpx.MockTransport` handlers (HTTP 500, 503, a token that expires
mid-session, validation errors); refused connections and read timeouts use real sockets.
The happy paths are covered against the real stack in test_runs_e2e.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import stat
import threading
import time
import urllib.parse

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


def test_token_is_cached_0600_and_reused_by_the_next_client_without_the_password(tmp_path):
    server = FakeAirflow()
    server.routes[("GET", "/api/v2/dags/d")] = httpx.Response(200, json=DAG)
    with server.client(tmp_path) as client:
        assert client.get_dag("d").tags == ("t",)
    with server.client(tmp_path) as client:
        client.get_dag("d")
    assert server.logins == 1
    cache = tmp_path / "token.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    text = cache.read_text()
    assert server.password not in text and URL not in text and "admin" not in text
    assert len(json.loads(text)["tokens"]) == 1


def test_a_wrong_password_after_a_good_login_is_refused_not_hidden_by_the_cache(tmp_path):
    server = FakeAirflow()
    server.routes[("GET", "/api/v2/dags/d")] = httpx.Response(200, json=DAG)
    with server.client(tmp_path) as client:
        client.get_dag("d")
    with pytest.raises(AuthError, match="refused the password") as raised, server.client(tmp_path, password="wrong") as client:
        client.get_dag("d")
    assert raised.value.exit_code == 3
    logins = [json.loads(r.content)["password"] for r in server.requests if r.url.path == "/auth/token"]
    assert logins == ["secret", "wrong"]
    with server.client(tmp_path) as client:  # the good credential still finds its token
        client.get_dag("d")
    assert server.logins == 1


def test_a_password_changed_on_the_server_logs_in_afresh(tmp_path):
    server = FakeAirflow()
    server.routes[("GET", "/api/v2/dags/d")] = httpx.Response(200, json=DAG)
    with server.client(tmp_path) as client:
        client.get_dag("d")
    server.password = "rotated"
    with server.client(tmp_path) as client:  # asks for (and sends) the new password, not the old token
        client.get_dag("d")
    assert server.logins == 2
    assert json.loads(server.requests[-2].content) == {"username": "admin", "password": "rotated"}


def test_token_expired_mid_session_is_renewed_once_and_the_password_asked_once(tmp_path):
    server = FakeAirflow()
    server.routes[("GET", "/api/v2/dags/d")] = httpx.Response(200, json=DAG)
    asked = []
    client = AirflowClient(
        URL, "admin", lambda: asked.append(1) or server.password, home=tmp_path,
        transport=httpx.MockTransport(server.handler),
    )
    with client:
        client.get_dag("d")
        server.valid.clear()  # the server stops honouring the token (expired, or JWT secret rotated)
        assert client.get_dag("d").dag_id == "d"
    assert server.logins == 2
    assert len(asked) == 1


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


def test_cache_entries_belong_to_one_url_user_and_password_and_expire(tmp_path):
    cache = TokenCache(tmp_path / "token.json")
    cache.put(URL, "admin", "pw", jwt(time.time() + 3600))
    assert cache.get(URL, "admin", "pw") is not None
    assert cache.get(URL + "/", "admin", "pw") is not None  # the same server
    assert cache.get(URL, "someone-else", "pw") is None
    assert cache.get(URL, "admin", "pw2") is None
    assert cache.get("http://other.test", "admin", "pw") is None
    cache.put(URL, "admin", "pw", jwt(time.time() + 30))  # inside the expiry margin: treated as expired
    assert cache.get(URL, "admin", "pw") is None
    assert token_expiry("not-a-jwt") > time.time()


def test_only_the_password_already_in_secrets_json_is_fingerprinted_cheaply(tmp_path):
    """A password the user gave is keyed by scrypt: the file is no cheap guessing oracle for it.
    The stack's generated password, which secrets.json beside the cache holds in full, by SHA-256."""
    from mlflowctl.secrets import load_or_create

    generated = load_or_create(tmp_path).admin_password
    cache = TokenCache(tmp_path / "token.json")
    cache.put(URL, "admin", generated, jwt(time.time() + 3600))
    cache.put(URL, "admin", "typed-by-the-user", jwt(time.time() + 3600))
    data = json.loads((tmp_path / "token.json").read_text())
    salt = bytes.fromhex(data["salt"])
    credential = lambda password: f"{URL}\0admin\0{password}".encode()  # noqa: E731
    assert set(data["tokens"]) == {
        hashlib.sha256(salt + credential(generated)).hexdigest(),
        hashlib.scrypt(credential("typed-by-the-user"), salt=salt, n=2**14, r=8, p=1, maxmem=64 * 2**20, dklen=32).hex(),
    }
    assert cache.get(URL, "admin", generated) and cache.get(URL, "admin", "typed-by-the-user")
    assert TokenCache(tmp_path / "token.json").get(URL, "admin", generated + "x") is None


def test_a_damaged_secrets_file_beside_the_cache_only_means_the_slow_fingerprint(tmp_path):
    (tmp_path / "secrets.json").write_text("{damaged")
    cache = TokenCache(tmp_path / "token.json")
    cache.put(URL, "admin", "pw", jwt(time.time() + 3600))
    assert cache.get(URL, "admin", "pw") is not None


@pytest.mark.parametrize(
    "damage",
    [
        "",
        "{damaged",
        '{"salt": "00112233445566778899aabbccddeeff", "tokens": {"abc": {"access_token": "x", "expi',
        "[]",
        '"salt"',
        "null",
        '{"salt": "zz", "tokens": {}}',
        '{"salt": "00", "tokens": {}}',
        '{"salt": 7, "tokens": {}}',
        '{"salt": "00112233445566778899aabbccddeeff", "tokens": []}',
        '{"salt": "00112233445566778899aabbccddeeff", "tokens": {"k": [1]}}',
        '{"http://airflow.test|admin": {"access_token": "old", "expires_at": 9999999999}}',  # the old format
    ],
)
def test_a_damaged_token_cache_is_ignored_and_rewritten(tmp_path, damage):
    (tmp_path / "token.json").write_text(damage)
    server = FakeAirflow()
    server.routes[("GET", "/api/v2/dags/d")] = httpx.Response(200, json=DAG)
    with server.client(tmp_path) as client:
        assert client.get_dag("d").dag_id == "d"
    with server.client(tmp_path) as client:
        client.get_dag("d")
    assert server.logins == 1  # the first client replaced the damaged file with a working cache
    data = json.loads((tmp_path / "token.json").read_text())
    assert len(bytes.fromhex(data["salt"])) == 16 and len(data["tokens"]) == 1


def test_a_login_over_plain_http_to_another_host_warns_once(tmp_path):
    server = FakeAirflow()
    server.routes[("GET", "/api/v2/dags/d")] = httpx.Response(200, json=DAG)
    warnings: list[str] = []
    with server.client(tmp_path, warn=warnings.append) as client:
        client.get_dag("d")
        server.valid.clear()  # a renewal sends the password again; one warning is enough
        client.get_dag("d")
    assert server.logins == 2
    assert warnings == [
        "sending the password to airflow.test over plain HTTP: anyone on the network path can read it; use https"
    ]
    with server.client(tmp_path, warn=warnings.append) as client:  # a cached token: no password sent
        client.get_dag("d")
    assert len(warnings) == 1


def test_no_warning_for_loopback_or_https(tmp_path):
    server = FakeAirflow()
    server.routes[("GET", "/api/v2/dags/d")] = httpx.Response(200, json=DAG)
    warnings: list[str] = []
    for url in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "https://airflow.test"):
        transport = httpx.MockTransport(server.handler)
        with AirflowClient(url, "admin", lambda: "secret", transport=transport, warn=warnings.append) as client:
            client.get_dag("d")
    assert server.logins == 4
    assert warnings == []


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


# Airflow 3.3's default [scheduler] allowed_run_id_pattern, and what marks a manual run.
AIRFLOW_RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.~:+-]+$")
RUN_ID = re.compile(r"^manual__\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00__[0-9a-f]{8}$")


def _posts(server: FakeAirflow) -> list[dict]:
    return [json.loads(r.content) for r in server.requests if r.method == "POST" and "dagRuns" in r.url.path]


def test_trigger_sends_logical_date_and_a_fresh_run_id_of_its_own(tmp_path):
    server = FakeAirflow()

    def echo(request):
        if request.url.path == "/api/v2/dags/d/dagRuns":
            server.requests.append(request)
            body = json.loads(request.content)
            return httpx.Response(200, json={"dag_id": "d", "dag_run_id": body["dag_run_id"], "state": "queued"})
        return server.handler(request)

    client = AirflowClient(URL, "admin", lambda: "secret", transport=httpx.MockTransport(echo))
    first, second = client.trigger_run("d", {"a": 1}), client.trigger_run("d")
    bodies = _posts(server)
    assert [b["dag_run_id"] for b in bodies] == [first.run_id, second.run_id]
    assert first.run_id != second.run_id
    for body in bodies:
        assert RUN_ID.match(body["dag_run_id"]) and AIRFLOW_RUN_ID_PATTERN.match(body["dag_run_id"])
        assert ".." not in body["dag_run_id"]
    assert bodies[0] == {"dag_run_id": first.run_id, "logical_date": None, "conf": {"a": 1}}


class LostAnswer:
    """A trigger endpoint whose first answer is lost after it created the run (a proxy's 502,
    a 500 after commit, or a read timeout): the server keeps the runs it created by id."""

    def __init__(self, first: httpx.Response | Exception, *, keep: bool = True) -> None:
        self.server = FakeAirflow()
        self.first, self.keep = first, keep
        self.runs: dict[str, dict] = {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.decode().split("?")[0]
        if request.url.path == "/auth/token":
            return self.server.handler(request)
        self.server.requests.append(request)
        if request.method == "POST" and path == "/api/v2/dags/d/dagRuns":
            run_id = json.loads(request.content)["dag_run_id"]
            if run_id in self.runs:
                return httpx.Response(409, json={"detail": "Unique constraint violation"})
            if self.keep or len(_posts(self.server)) > 1:
                self.runs[run_id] = {"dag_id": "d", "dag_run_id": run_id, "state": "queued"}
            if len(_posts(self.server)) == 1:
                if isinstance(self.first, Exception):
                    raise self.first
                return self.first
            return httpx.Response(200, json=self.runs[run_id])
        run_id = urllib.parse.unquote(path.rsplit("/", 1)[-1])
        if request.method == "GET" and run_id in self.runs:
            return httpx.Response(200, json=self.runs[run_id])
        return httpx.Response(404, json={"detail": "not found"})

    def client(self) -> AirflowClient:
        return AirflowClient(URL, "admin", lambda: "secret", transport=httpx.MockTransport(self.handler), retry_for=2)


@pytest.mark.parametrize(
    "first",
    [
        httpx.Response(500, text="Internal Server Error"),
        httpx.Response(502, text="Bad Gateway"),
        httpx.Response(503, json={"detail": "Database is locked"}),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
    ids=["500", "502", "503", "read-timeout", "disconnect"],
)
def test_a_trigger_whose_answer_was_lost_is_resent_and_its_409_means_created(first):
    fake = LostAnswer(first)
    run = fake.client().trigger_run("d", {"a": 1})
    bodies = _posts(fake.server)
    assert len(bodies) == 2 and bodies[0] == bodies[1]  # the same request, the same run id
    assert list(fake.runs) == [run.run_id] == [bodies[0]["dag_run_id"]]
    calls = [r.method for r in fake.server.requests if r.url.path != "/auth/token"]
    assert calls == ["POST", "POST", "GET"]  # the resend got 409, then the run was fetched


def test_a_trigger_that_failed_before_creating_anything_is_resent_once():
    fake = LostAnswer(httpx.Response(500, text="Internal Server Error"), keep=False)
    run = fake.client().trigger_run("d")
    assert len(_posts(fake.server)) == 2
    assert list(fake.runs) == [run.run_id]


def test_a_409_on_the_first_attempt_is_a_real_conflict(tmp_path):
    server = FakeAirflow()
    server.routes[("POST", "/api/v2/dags/d/dagRuns")] = httpx.Response(409, json={"detail": "already exists"})
    with pytest.raises(ApiError, match="conflict: already exists"):
        server.client(tmp_path).trigger_run("d", run_id="mine")
    assert len(_posts(server)) == 1


def test_a_409_after_a_resend_for_a_run_that_does_not_exist_stays_a_conflict():
    fake = LostAnswer(httpx.Response(500, text="Internal Server Error"), keep=False)

    def conflict_always(request):
        if request.method == "POST" and request.url.path.endswith("/dagRuns") and len(_posts(fake.server)) >= 1:
            fake.server.requests.append(request)
            return httpx.Response(409, json={"detail": "some other conflict"})
        return fake.handler(request)

    client = AirflowClient(URL, "admin", lambda: "secret", transport=httpx.MockTransport(conflict_always), retry_for=2)
    with pytest.raises(ApiError, match="conflict: some other conflict"):
        client.trigger_run("d")
    assert fake.runs == {}


def test_other_posts_are_not_resent_after_a_server_error(tmp_path):
    from datetime import datetime, timezone

    server = FakeAirflow()
    server.routes[("POST", "/api/v2/backfills")] = httpx.Response(500, text="Internal Server Error")
    day = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(ApiError, match="HTTP 500"):
        server.client(tmp_path, retry_for=2).create_backfill("d", day, day)
    assert [r.url.path for r in server.requests if r.method == "POST"] == ["/auth/token", "/api/v2/backfills"]


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
