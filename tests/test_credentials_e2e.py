"""Credentials through the real `mlwf` CLI: against the session's stack, and against a second
real HTTP server on 127.0.0.1 that records everything it is sent (the "elsewhere" of --url).

- a wrong or changed password after a good login is refused (exit 3), not hidden by the cache;
- the password `mlwf up` generated goes to the stack's own URL only, never to another server.
The plain-HTTP-to-another-host warning is checked at the function level (test_api_client.py,
test_credentials.py): no test may send traffic beyond loopback.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import MLWF, answer_prompt

pytestmark = [pytest.mark.stack, pytest.mark.slow]

REMOTE_PASSWORDS = {"remote-pw", "typed-pw"}


class Recorder:
    """A stand-in Airflow API server on 127.0.0.1 that logs every request (headers and body).

    It issues a token for the passwords in REMOTE_PASSWORDS and answers the listing endpoints
    with nothing; everything else is 404.
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.token = f"remote-token-{secrets.token_hex(8)}"  # distinct from any cached token
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> bytes:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body.decode()}
                )
                return body

            def do_POST(self):  # noqa: N802 (http.server's spelling)
                body = self._record()
                if self.path == "/auth/token":
                    if json.loads(body).get("password") in REMOTE_PASSWORDS:
                        return self._answer(201, {"access_token": recorder.token})
                    return self._answer(401, {"detail": "Invalid credentials"})
                self._answer(404, {"detail": "Not Found"})

            def do_GET(self):  # noqa: N802
                self._record()
                if self.headers.get("Authorization") != f"Bearer {recorder.token}":
                    return self._answer(401, {"detail": "Not authenticated"})
                if self.path.startswith("/api/v2/dags?"):
                    return self._answer(200, {"dags": [], "total_entries": 0})
                if self.path.startswith("/api/v2/importErrors?"):
                    return self._answer(200, {"import_errors": [], "total_entries": 0})
                self._answer(404, {"detail": "Not Found"})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def everything_sent(self) -> str:
        return json.dumps(self.requests)


@pytest.fixture
def recorder():
    server = Recorder()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=10)


def mlwf(stack, *args: str, input: str = "", **env: str) -> subprocess.CompletedProcess:
    """The real `mlwf` in the stack's project, no password in the environment unless given;
    stdin is a pipe (no terminal), so mlwf cannot prompt."""
    environ = {k: v for k, v in stack.env.items() if k != "MLWF_AIRFLOW_PASSWORD"}
    return subprocess.run(
        [MLWF, *args], cwd=stack.project, env={**environ, **env}, input=input,
        capture_output=True, text=True, timeout=120,
    )


def cached_tokens(home) -> list[str]:
    """Every access token in the cache file, wherever it sits in it."""

    def find(node) -> list[str]:
        if isinstance(node, dict):
            return [node["access_token"]] if "access_token" in node else [t for v in node.values() for t in find(v)]
        return []

    return find(json.loads((home / "token.json").read_text()))


def test_a_wrong_password_after_a_good_login_exits_3(stack):
    """The issue's scenario: one good login, then MLWF_AIRFLOW_PASSWORD=wrong against the same server."""
    good = mlwf(stack, "dags", "--json")
    assert good.returncode == 0, good.stderr
    assert "ml_pipeline_dag" in {d["dag_id"] for d in json.loads(good.stdout)["dags"]}
    assert cached_tokens(stack.home)

    wrong = mlwf(stack, "dags", MLWF_AIRFLOW_PASSWORD="wrong")
    assert wrong.returncode == 3, wrong.stdout + wrong.stderr
    assert wrong.stderr.startswith(f"error: Airflow at {stack.url} refused the password of user 'admin'")
    assert "Traceback" not in wrong.stderr

    again = mlwf(stack, "dags", "--json")  # the good credential still has its token
    assert again.returncode == 0, again.stderr
    cache = (stack.home / "token.json").read_text()
    assert stack.password not in cache and "wrong" not in cache


def test_a_changed_stored_password_is_noticed_on_the_next_command(stack, tmp_path):
    """The stack's secrets.json (in a copy of the state directory) changes after a good login."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(stack.home / "secrets.json", home / "secrets.json")
    good = mlwf(stack, "dags", MLWF_HOME=str(home))
    assert good.returncode == 0, good.stderr
    assert len(cached_tokens(home)) == 1

    stored = json.loads((home / "secrets.json").read_text())
    (home / "secrets.json").write_text(json.dumps({**stored, "admin_password": "changed"}))
    changed = mlwf(stack, "dags", MLWF_HOME=str(home))
    assert changed.returncode == 3, changed.stdout + changed.stderr
    assert "refused the password" in changed.stderr

    fixed = mlwf(stack, "dags", MLWF_HOME=str(home), MLWF_AIRFLOW_PASSWORD=stack.password)
    assert fixed.returncode == 0, fixed.stderr


@pytest.mark.parametrize("damage", ["", "[1, 2]", '{"salt": "00112233445566778899aabbccddeeff", "tok'])
def test_a_damaged_token_cache_costs_one_login(stack, tmp_path, damage):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(stack.home / "secrets.json", home / "secrets.json")
    (home / "token.json").write_text(damage)
    result = mlwf(stack, "dags", MLWF_HOME=str(home))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert len(cached_tokens(home)) == 1


def test_the_local_stacks_localhost_url_gets_its_password(stack):
    port = stack.ports["airflow_port"]
    for url in (f"http://localhost:{port}", f"http://127.0.0.1:{port}/"):
        result = mlwf(stack, "dags", "--url", url)
        assert result.returncode == 0, f"{url}: {result.stderr}"


@pytest.mark.parametrize("how", ["--url", "MLWF_AIRFLOW_URL"])
def test_another_server_never_receives_the_stacks_password(stack, recorder, how):
    assert mlwf(stack, "dags").returncode == 0  # the stack's own token is cached in its home
    local_tokens = cached_tokens(stack.home)
    where = ["--url", recorder.url] if how == "--url" else []
    env = {"MLWF_AIRFLOW_URL": recorder.url} if how == "MLWF_AIRFLOW_URL" else {}

    for command in (["dags"], ["trigger", "ml_pipeline_dag"], ["pause", "ml_pipeline_dag"], ["status", "ml_pipeline_dag"]):
        refused = mlwf(stack, *command, *where, **env)
        assert refused.returncode == 3, f"{command}: {refused.stdout}{refused.stderr}"
        assert refused.stderr.startswith(f"error: no password for Airflow user 'admin' at {recorder.url}\n")
        assert "hint: set MLWF_AIRFLOW_PASSWORD" in refused.stderr
    assert recorder.requests == []  # not even a login attempt

    status = mlwf(stack, "status", "--json", *where, **env)  # the services table; the DAGs say why not
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["dags"] is None
    assert report["dags_error"].startswith(f"no password for Airflow user 'admin' at {recorder.url}")
    assert recorder.requests == []

    given = mlwf(stack, "dags", "--json", *where, **env, MLWF_AIRFLOW_PASSWORD="remote-pw")
    assert given.returncode == 0, given.stderr
    assert json.loads(given.stdout)["dags"] == []
    logins = [json.loads(r["body"]) for r in recorder.requests if r["path"] == "/auth/token"]
    assert logins == [{"username": "admin", "password": "remote-pw"}]
    sent = recorder.everything_sent()
    assert stack.password not in sent
    assert not any(token in sent for token in local_tokens)


def test_on_a_terminal_another_server_gets_what_the_user_types(stack, recorder):
    """The stack's password is at hand (its project and home), yet mlwf asks for the other server's."""
    env = {k: v for k, v in stack.env.items() if k != "MLWF_AIRFLOW_PASSWORD"}
    run = answer_prompt(
        [MLWF, "dags", "--json", "--url", recorder.url], prompt=f"Airflow password for admin at {recorder.url}: ",
        typed=b"typed-pw\n", env=env, cwd=stack.project, timeout=60,
    )
    assert run.returncode == 0
    assert json.loads(run.stdout)["dags"] == []
    assert b"typed-pw" not in run.shown  # not echoed
    logins = [json.loads(r["body"]) for r in recorder.requests if r["path"] == "/auth/token"]
    assert logins == [{"username": "admin", "password": "typed-pw"}]
    assert stack.password not in recorder.everything_sent()


def test_end_of_input_at_the_prompt_is_one_line_and_exit_3(stack, recorder):
    env = {k: v for k, v in stack.env.items() if k != "MLWF_AIRFLOW_PASSWORD"}
    run = answer_prompt(
        [MLWF, "dags", "--url", recorder.url], prompt=f"Airflow password for admin at {recorder.url}: ",
        typed=b"\x04", env=env, cwd=stack.project, timeout=60,  # Ctrl-D
    )
    after = run.shown.split(run.prompt, 1)[1].decode()
    assert run.returncode == 3, after
    assert f"error: no password for Airflow user 'admin' at {recorder.url}" in after
    assert "Traceback" not in after
    assert recorder.requests == []
