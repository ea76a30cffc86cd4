"""No traceback, ever: every bad argument, setting or server answer ends in one line and a
documented exit code (issue 14, point 1).

The property tests generate arguments and settings (flags, MLWF_* variables, mlwf.toml) for
every command and run them in-process with typer's CliRunner, against a port nobody listens
on and against a real HTTP server on 127.0.0.1 that answers wrongly (redirects, HTML, JSON
arrays, truncated JSON, 500s, objects of the wrong shape). The named cases of the issue are
tests of their own, with the same real server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

import pytest
import typer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import REPO, free_ports
from mlflowctl.cli.main import app, with_error_handling

#: The exit codes the README documents (its table), and nothing else.
DOCUMENTED = {int(code) for code in re.findall(r"^\| (\d+) \|", (REPO / "README.md").read_text(), re.M)}
BAD_ANSWERS = ("redirect", "html", "list", "truncated", "500", "shape")
#: The body of each bad answer; `shape` is an object whose fields have the wrong types.
BODIES = {
    "html": (200, "text/html", b"<html><body><h1>Welcome to nginx!</h1>\n</body></html>"),
    "list": (200, "application/json", b"[]"),
    "truncated": (200, "application/json", b'{"dags": [{"dag_id": "d", "is_pa'),
    "500": (500, "text/html", b"<html>\n<h1>Internal Server Error</h1>\n</html>"),
    "shape": (
        200,
        "application/json",
        json.dumps(
            {
                "dags": [1],
                "dag_runs": {"a": 1},
                "task_instances": [{"task_id": 3}],
                "import_errors": "x",
                "total_entries": "many",
                "dag_id": 5,
                "content": 7,
                "backfills": [None],
                "metadatabase": [],
                "status": "success",
                "data": {"resultType": "vector", "result": [{"value": 1}]},
            }
        ).encode(),
    ),
}


class WrongServer:
    """A real HTTP server on 127.0.0.1 that logs in anyone and answers every other request with
    `mode` (one of BAD_ANSWERS); with `login_mode` set, the login itself answers that way."""

    def __init__(self) -> None:
        self.mode = "list"
        self.login_mode: str | None = None
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                server.requests.append((self.command, self.path))
                mode = server.mode
                if self.path == "/auth/token":
                    if server.login_mode is None:
                        return self._send(201, "application/json", b'{"access_token": "a.b.c"}')
                    mode = server.login_mode
                if mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{server.port}/login/?next={self.path}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._send(*BODIES[mode])

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.http.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def __enter__(self) -> WrongServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def wrong_server():
    with WrongServer() as server:
        yield server


@pytest.fixture(scope="module")
def dead_port() -> int:
    return free_ports(1)[0]


# -- running a command as a user would, in a project of its own --------------------------------


BASE_ENV = {"MLWF_AIRFLOW_PASSWORD": "x", "DISPLAY": None, "WAYLAND_DISPLAY": None, "BROWSER": None, "COLUMNS": "120"}


def invoke(args: list[str], *, project: Path, env: dict | None = None):
    """`mlwf ARGS` in `project` with only the MLWF_* variables given (the caller's are unset)."""
    unset = {name: None for name in os.environ if name.startswith("MLWF_")}
    with contextlib.chdir(project):
        return CliRunner().invoke(app, args, env={**unset, **BASE_ENV, **(env or {})})


def new_project(root: Path, toml: str, dead_port: int) -> Path:
    """A project whose every port is one nobody listens on, then `toml` (later keys are refused
    as duplicates by TOML, so generated settings replace the defaults rather than follow them)."""
    project = Path(tempfile.mkdtemp(dir=root))
    ports = {"airflow_port", "prometheus_port", "exporter_port", "grafana_port"}
    defaults = "".join(f"{name} = {dead_port}\n" for name in sorted(ports) if not re.search(rf"^{name}\s*=", toml, re.M))
    (project / "mlwf.toml").write_text(defaults + toml)
    return project


def check(result, *, allow_crash: bool = False) -> None:
    """The invariant: no exception escaped, no traceback printed, a documented exit code."""
    shown = f"exit {result.exit_code}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        shown,
        result.exception,
    )
    assert "Traceback" not in result.output, shown
    assert result.exit_code in DOCUMENTED, shown
    if not allow_crash:
        assert "a bug in mlwf" not in result.output, shown


# -- strategies ----------------------------------------------------------------------------------

#: No ':' so generated text is never a URL that would send anything beyond 127.0.0.1.
plain = st.text(alphabet=st.characters(blacklist_characters=":\x00", blacklist_categories=("Cs",)), max_size=8)
number = st.sampled_from(["1", "0", "-1", "2", "70000", "nan", "inf", "1e400", "x", "", " 3 "])
bad_urls = st.sampled_from(
    ["http://[::1", "http://h:99999", "127.0.0.1:8080", "ftp://127.0.0.1", "http://", "http://:80",
     "http://u:p@127.0.0.1", "http://127.0.0.1:0", "http://1.2.3.999", "http://127.0.0.1/?q", "http://☃", " "]
) | plain
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
confs = (
    st.dictionaries(st.text(max_size=4), json_values, max_size=3).map(json.dumps)
    | st.sampled_from(['{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}', "[1]", "{", '"x"', "1" * 5000,
                       "[" * 5000, "@", "@/nonexistent/c.json", "@NOT_UTF8", '{"a": "\udcff"}'])
    | plain
)
dates = st.sampled_from(["2026-01-01", "2026-01-03", "2026-02-30", "2026-01-01T00:00:00+05:00", "x", ""]) | plain
dag_ids = st.sampled_from(["d", "ml_pipeline_dag", "a/b", "x y", "..", "%2F", ""]) | plain
homes = st.sampled_from(["state", "a/b", ""])  # never free text: --home is deleted by `down --volumes`


def rarely(strategy, empty):
    """`empty` two times in three: most examples then get past their checks to the server."""
    return st.one_of(st.just(empty), st.just(empty), strategy)


def flag(name: str, values) -> st.SearchStrategy[list[str]]:
    return rarely(values.map(lambda value: [name, value]), [])


def switch(name: str) -> st.SearchStrategy[list[str]]:
    return st.sampled_from([[], [name]])


def joined(*parts) -> st.SearchStrategy[list[str]]:
    return st.tuples(*parts).map(lambda lists: [item for part in lists for item in part])


API = (flag("--url", bad_urls), flag("--user", st.sampled_from(["admin", ""]) | plain), flag("--home", homes))
COMMANDS = {
    "dags": joined(st.just(["dags"]), switch("--json"), *API),
    "trigger": joined(
        st.just(["trigger"]), dag_ids.map(lambda d: [d]), flag("--conf", confs), switch("--wait"),
        flag("--timeout", number), switch("--unpause"), switch("--json"), *API,
    ),
    "backfill": joined(
        st.just(["backfill"]), dag_ids.map(lambda d: [d]), flag("--start-date", dates), flag("--end-date", dates),
        flag("--max-active-runs", number), flag("--reprocess", st.sampled_from(["none", "failed", "completed", "x"])),
        switch("--dry-run"), switch("--json"), *API,
    ),
    "pause": joined(st.sampled_from([["pause"], ["unpause"]]), dag_ids.map(lambda d: [d]), switch("--json"), *API),
    "status": joined(st.just(["status"]), st.just([]) | dag_ids.map(lambda d: [d]), switch("--json"), *API),
    "logs": joined(
        st.just(["logs"]),
        st.just([]) | st.sampled_from(["scheduler", "nope"]).map(lambda s: [s])
        | st.tuples(dag_ids, dag_ids).map(list),
        flag("--tail", number), flag("--run", st.sampled_from(["latest", "", "manual__x"]) | plain),
        flag("--try", number), *API,
    ),
    "health": joined(
        st.just(["health"]), flag("--window", st.sampled_from(["1h", "30m", "0m", "x", "99999d"]) | plain),
        flag("--fail-on", st.sampled_from(["warning", "critical", "x"])), switch("--json"),
        flag("--prometheus-url", bad_urls), *API,
    ),
    "config": joined(st.just(["config"]), switch("--json"), switch("--show-password"), flag("--home", homes)),
    "down": joined(st.just(["down"]), flag("--backend", st.sampled_from(["local", "docker", "x"])), flag("--home", homes)),
    "scale": joined(
        st.just(["scale"]), st.sampled_from(["workers", "x"]).map(lambda w: [w]), number.map(lambda n: [n]),
        flag("--timeout", number), flag("--home", homes),
    ),
    "restart": joined(
        st.just(["restart"]), st.sampled_from([[], ["scheduler"], ["nope"], [""]]), flag("--timeout", number),
        flag("--home", homes), switch("--json"),
    ),
    "open": joined(
        st.just(["open"]), st.sampled_from([[], ["airflow"], ["prometheus"], ["grafana"], ["x"]]), switch("--print"),
        flag("--home", homes),
    ),
    "password": joined(st.just(["password"]), st.sampled_from([[], ["airflow"], ["grafana"], ["x"]]), flag("--home", homes)),
    # `up` would start a stack: only with a setting that refuses it first (MLWF_PARALLELISM=0 below).
    "up": joined(
        st.just(["up"]), flag("--executor", st.sampled_from(["local", "celery", "x"])), flag("--workers", number),
        flag("--timeout", number), flag("--home", homes), flag("--exclude", st.sampled_from(["monitoring", "x"])),
    ),
}
commands = st.sampled_from(sorted(COMMANDS)).flatmap(lambda name: COMMANDS[name])


def toml_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_literal(v)}" for k, v in value.items()) + "}"
    return json.dumps(value) if isinstance(value, str) else str(value)


toml_values = (
    st.integers(-5, 70000) | st.booleans() | st.floats() | st.lists(st.integers(0, 9), max_size=2)
    | st.just({"a": 1}) | st.sampled_from(["local", "celery", "auto", "docker", "x", "", "pandas, os"])
)
SETTINGS = ("backend", "airflow_port", "prometheus_port", "parallelism", "executor", "workers", "task_preload",
            "airflow_user", "webhook_url")
PATHS = ("home", "dags_dir", "tasks_dir")
project_files = rarely(st.one_of(
    st.dictionaries(
        st.sampled_from(SETTINGS + PATHS + ("airflow_url", "no_such_setting")),
        toml_values | bad_urls,
        max_size=3,
    ).map(lambda d: "".join(
        # Paths come only from a fixed list: a generated text could name a real folder.
        f"{k} = {toml_literal(v if k not in PATHS or v in ('', 'state') or not isinstance(v, str) else 'state')}\n"
        for k, v in d.items()
    )),
    st.sampled_from(["[broken\n", "airflow_port = \n", "home = 'x'\nhome = 'y'\n"]),
), "")
environments = rarely(st.dictionaries(
    st.sampled_from([f"MLWF_{name.upper()}" for name in SETTINGS + ("airflow_url", "prometheus_url")]),
    number | bad_urls | st.sampled_from(["local", "celery", "admin", "pandas"]),
    max_size=2,
), {})


def run_generated(args: list[str], toml: str, environ: dict, *, target: str, root: Path, dead_port: int) -> None:
    project = new_project(root, toml, dead_port)
    not_utf8 = project / "not-utf8.json"
    not_utf8.write_bytes(b'{"a": "\xff\xfe"}')
    args = [f"@{not_utf8}" if a == "@NOT_UTF8" else a for a in args]  # the generated stand-in for that file
    env = {"MLWF_AIRFLOW_URL": target, "MLWF_PROMETHEUS_URL": target, **environ}
    if args[0] == "up":
        env["MLWF_PARALLELISM"] = "0"  # refused before anything starts
    if args[0] == "logs" and len([a for a in args[1:] if not a.startswith("-")]) < 2:
        args = [a for a in args if a not in ("-f", "--follow")]
    result = invoke(args, project=project, env=env)
    event(f"{args[0]} exit {result.exit_code}")
    check(result)


#: A few seconds a run; MLWF_TEST_EXAMPLES=500 searches harder.
PROPERTY = settings(
    max_examples=int(os.environ.get("MLWF_TEST_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


@PROPERTY
@given(data=st.data())
def test_generated_commands_against_a_server_that_answers_wrongly(data, wrong_server, dead_port, tmp_path_factory):
    wrong_server.mode = data.draw(st.sampled_from(BAD_ANSWERS), label="answer")
    wrong_server.login_mode = data.draw(st.none() | st.sampled_from(BAD_ANSWERS), label="login answer")
    run_generated(
        data.draw(commands, label="args"), data.draw(project_files, label="mlwf.toml"),
        data.draw(environments, label="env"), target=wrong_server.url,
        root=tmp_path_factory.getbasetemp(), dead_port=dead_port,
    )


@pytest.mark.slow
@settings(PROPERTY, max_examples=12)
@given(data=st.data())
def test_generated_commands_against_no_server(data, dead_port, tmp_path_factory):
    """Slow: an API command that gets through its checks retries the refused connection for 8 s."""
    run_generated(
        data.draw(commands, label="args"), data.draw(project_files, label="mlwf.toml"),
        data.draw(environments, label="env"), target=f"http://127.0.0.1:{dead_port}",
        root=tmp_path_factory.getbasetemp(), dead_port=dead_port,
    )


# -- the named cases of the issue ----------------------------------------------------------------


@pytest.fixture
def project(tmp_path, dead_port) -> Path:
    return new_project(tmp_path, "", dead_port)


def one_error_line(result) -> str:
    """The `error:` line, which must be the only one."""
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("conf", ['{"a": NaN}', '{"a": Infinity}', '{"a": [-Infinity]}', "@NOT_UTF8", "@MISSING"])
def test_a_conf_json_cannot_send_is_refused_before_any_request(conf, wrong_server, project):
    not_utf8 = project / "conf.json"
    not_utf8.write_bytes(b'{"source": "caf\xe9"}')  # Latin-1, not UTF-8
    conf = {"@NOT_UTF8": f"@{not_utf8}", "@MISSING": f"@{project / 'missing.json'}"}.get(conf, conf)
    wrong_server.requests.clear()
    result = invoke(["trigger", "d", "--unpause", "--conf", conf, "--url", wrong_server.url], project=project)
    check(result)
    assert result.exit_code == 2, result.output
    assert "--conf" in one_error_line(result)
    assert wrong_server.requests == []


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://[::1", "Invalid IPv6 URL"),
        ("http://h:99999", "Port out of range"),
        ("127.0.0.1:8080", "must start with http:// or https://"),
        ("ftp://127.0.0.1", "must start with http:// or https://"),
        ("http://", "has no host"),
        ("http://1.2.3.999", "Invalid IPv4 address"),
    ],
)
def test_a_malformed_url_is_exit_2_naming_the_setting_and_where_it_came_from(url, reason, project):
    cases = [
        (["--url", url], {}, "", "from flag"),
        ([], {"MLWF_AIRFLOW_URL": url}, "", "from MLWF_AIRFLOW_URL"),
        ([], {}, f"airflow_url = {json.dumps(url)}\n", "from mlwf.toml"),
    ]
    for flags, env, toml, origin in cases:
        (project / "mlwf.toml").write_text(toml)
        for command in (["dags"], ["trigger", "d"], ["logs", "d", "t"], ["status", "d"], ["pause", "d"]):
            result = invoke([*command, *flags], project=project, env=env)
            check(result)
            assert result.exit_code == 2, (command, result.output)
            line = one_error_line(result)
            assert "airflow_url=" in line and origin in line and reason in line, line
    (project / "mlwf.toml").write_text("")
    result = invoke(["health", "--prometheus-url", url], project=project)
    assert result.exit_code == 2 and "prometheus_url=" in one_error_line(result), result.output
    result = invoke(["health"], project=project, env={"MLWF_PROMETHEUS_URL": url})
    assert result.exit_code == 2 and "from MLWF_PROMETHEUS_URL" in one_error_line(result), result.output


def test_credentials_in_a_url_are_refused_and_never_echoed(project):
    result = invoke(["dags", "--url", "http://admin:hunter2@127.0.0.1:1"], project=project)
    assert result.exit_code == 2 and "must not hold credentials" in one_error_line(result)
    assert "hunter2" not in result.output


@pytest.mark.parametrize(
    "mode, says",
    [
        ("redirect", "with HTTP 302: a redirect to http://127.0.0.1:"),
        ("list", "with HTTP 200 and a JSON list where an object was expected"),
        ("html", "with HTTP 200 and a text/html body that is not JSON"),
        ("truncated", "with HTTP 200 and a application/json body that is not JSON"),
        ("shape", "with JSON mlwf cannot read"),
        ("500", "HTTP 500"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [["dags"], ["trigger", "d"], ["logs", "d", "t"], ["status", "d"], ["pause", "d"],
     ["backfill", "d", "--start-date", "2026-01-01", "--end-date", "2026-01-02"]],
    ids=lambda c: c[0],
)
def test_a_wrong_answer_is_exit_13_naming_the_url_and_status(command, mode, says, wrong_server, project):
    wrong_server.mode, wrong_server.login_mode = mode, None
    result = invoke([*command, "--url", wrong_server.url], project=project)
    check(result)
    assert result.exit_code == 13, result.output
    line = one_error_line(result)
    assert says in line, line
    assert f"{wrong_server.url}/api/v2/" in line or mode == "500", line


def test_health_with_both_sources_answering_wrongly_is_exit_13(wrong_server, project):
    wrong_server.mode, wrong_server.login_mode = "redirect", None
    result = invoke(["health", "--url", wrong_server.url, "--prometheus-url", wrong_server.url], project=project)
    check(result)
    assert result.exit_code == 13, result.output
    assert "HTTP 302" in one_error_line(result)


@pytest.mark.parametrize(
    "where, text, says",
    [
        ("mlwf.toml", "airflow_port = [8080]\n", "airflow_port=[8080] (from mlwf.toml): must be an integer, not an array"),
        ("mlwf.toml", "airflow_port = -1\n", "airflow_port=-1 (from mlwf.toml): not a port number"),
        ("mlwf.toml", "workers = true\n", "workers=True (from mlwf.toml): must be an integer, not a boolean"),
        ("mlwf.toml", "airflow_port = 8080.5\n", "must be an integer, not a number"),
        ("mlwf.toml", "airflow_port = inf\n", "must be an integer, not a number"),
        ("mlwf.toml", "home = {a = 1}\n", "home={'a': 1} (from mlwf.toml): must be a string, not a table"),
        ("mlwf.toml", "home = \"\"\n", "home='' (from mlwf.toml): must not be empty"),
        ("mlwf.toml", "dags_dir = 5\n", "dags_dir=5 (from mlwf.toml): must be a string, not an integer"),
        ("mlwf.toml", "backend = true\n", "backend=True (from mlwf.toml): must be a string, not a boolean"),
        ("mlwf.toml", "task_preload = {pandas = 1}\n", "must be a string, not a table"),
        ("mlwf.toml", "airflow_url = [\"http://127.0.0.1\"]\n", "must be a string, not an array"),
        ("pyproject.toml", "[tool.mlwf]\nairflow_user = [1]\n", "(from pyproject.toml [tool.mlwf]): must be a string"),
        ("pyproject.toml", "[tool]\nmlwf = 5\n", "[tool] and [tool.mlwf] must be tables"),
        ("pyproject.toml", "tool = \"mlwf\"\n", "[tool] and [tool.mlwf] must be tables"),
        ("mlwf.toml", b"home = \"caf\xe9\"\n", "cannot read"),
    ],
)
def test_a_setting_of_the_wrong_type_is_exit_2_naming_it_and_its_source(where, text, says, tmp_path):
    (tmp_path / where).write_bytes(text if isinstance(text, bytes) else text.encode())
    for command in (["config"], ["status"], ["dags"], ["down"]):
        result = invoke(command, project=tmp_path)
        check(result)
        assert result.exit_code == 2, (command, result.output)
        assert says in one_error_line(result), result.output


@pytest.mark.parametrize(
    "env, says",
    [
        ({"MLWF_AIRFLOW_PORT": "-1"}, "(from MLWF_AIRFLOW_PORT): not a port number"),
        ({"MLWF_WORKERS": "two"}, "workers='two' (from MLWF_WORKERS): is not an integer"),
        ({"MLWF_HOME": ""}, "(from MLWF_HOME): must not be empty"),
        ({"MLWF_BROKER_URL": "x"}, None),  # any string is a broker URL here; it is checked by `up`
    ],
)
def test_a_bad_variable_is_exit_2_naming_it(env, says, project):
    result = invoke(["config"], project=project, env=env)
    check(result)
    if says is None:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 2 and says in one_error_line(result), result.output


def test_a_flag_out_of_range_is_exit_2(project):
    for args in (["up", "--workers", "0"], ["up", "--timeout", "-1"], ["scale", "workers", "2", "--timeout", "0"], ["restart", "--timeout", "0"],
                 ["health", "--watch", "--interval", "inf"], ["trigger", "d", "--timeout", "nan"],
                 ["up", "--timeout", "inf"], ["models", "promote", "1", "--wait", "nan"]):
        result = invoke(args, project=project)
        check(result)
        assert result.exit_code == 2, (args, result.output)


# -- the crash file --------------------------------------------------------------------------------


def crashing_app() -> typer.Typer:
    """A one-command app wrapped by mlwf's handler; its command fails as a bug would."""
    crashing = typer.Typer()

    def explode(home: Optional[str] = typer.Option(None, "--home")) -> None:
        {}["the bug"]

    crashing.command()(with_error_handling(explode))
    return crashing


def test_an_unexpected_exception_is_one_line_and_a_private_crash_file_in_the_state_directory(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    with contextlib.chdir(tmp_path):
        result = CliRunner().invoke(crashing_app(), ["--home", str(state)], env={"MLWF_HOME": None})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    assert one_error_line(result) == "error: unexpected KeyError: 'the bug' (a bug in mlwf)"
    (crash,) = state.glob("mlwf-crash-*.txt")
    assert f"the traceback is in {crash}" in result.output
    assert stat.S_IMODE(crash.stat().st_mode) == 0o600
    text = crash.read_text()
    assert "Traceback (most recent call last)" in text and "KeyError: 'the bug'" in text and "command explode" in text


def test_without_a_state_directory_the_crash_file_goes_to_the_temp_directory(tmp_path):
    with contextlib.chdir(tmp_path):
        result = CliRunner().invoke(crashing_app(), ["--home", str(tmp_path / "nowhere")], env={"MLWF_HOME": None})
    assert result.exit_code == 1, result.output
    path = Path(re.search(r"the traceback is in (\S+);", result.output).group(1))
    try:
        assert path.parent == Path(tempfile.gettempdir()) and path.name.startswith("mlwf-crash-")
        assert "KeyError: 'the bug'" in path.read_text()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        path.unlink()
    assert not (tmp_path / "nowhere").exists()


# -- against the real stack ----------------------------------------------------------------------


@pytest.mark.stack
def test_unpause_with_a_bad_conf_leaves_the_dag_paused(stack):
    import httpx

    dag = "monitoring_dag"
    stack.mlwf("pause", dag, check=True)
    for conf in ('{"a": NaN}', "@" + str(stack.project / "missing.json")):
        result = stack.mlwf("trigger", dag, "--unpause", "--conf", conf)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and result.stderr.startswith("error: --conf"), result.stderr
    answer = httpx.get(
        f"{stack.url}/api/v2/dags/{dag}", headers={"Authorization": f"Bearer {stack.token()}"}, timeout=10
    )
    assert answer.json()["is_paused"] is True
