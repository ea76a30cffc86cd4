"""`mlwf trigger | backfill | dags | pause | unpause | status DAG | logs DAG TASK` against the real stack.

Every test runs the real CLI in a subprocess against the session's Airflow (`stack` fixture),
and checks what mlwf reports against what the server says through apache-airflow-client,
an independent client. The small `mlwf_smoke` DAG (tests/dags/) is copied into the stack's
DAG folder for the fast cases; `ml_pipeline_dag` is run for real once.
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

from conftest import answer_prompt

pytestmark = [pytest.mark.stack, pytest.mark.slow]

SMOKE = "mlwf_smoke"
KNOWN_LINE = "mlwf-smoke: the answer is 42"
PIPELINE = "ml_pipeline_dag"


def cli(stack, *args: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    """`mlwf ARGS` in a fresh process, configured for the stack only through the environment."""
    environ = {
        **os.environ,
        **{k: str(v) for k, v in (getattr(stack, "env", None) or {}).items()},
        "MLWF_AIRFLOW_URL": stack.url,
        "MLWF_AIRFLOW_USER": stack.user,
        "MLWF_AIRFLOW_PASSWORD": stack.password,
        "MLWF_HOME": str(stack.home),
        "COLUMNS": "200",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "mlflowctl", *args],
        env=environ,
        cwd=str(stack.project),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def api(stack):
    """apache-airflow-client, logged in with a token fetched independently of mlwf."""
    import airflow_client.client as ac

    token = httpx.post(
        f"{stack.url}/auth/token", json={"username": stack.user, "password": stack.password}, timeout=30
    ).json()["access_token"]
    client = ac.ApiClient(ac.Configuration(host=stack.url, access_token=token))
    return {
        "dags": ac.DAGApi(client),
        "runs": ac.DagRunApi(client),
        "tasks": ac.TaskInstanceApi(client),
        "backfills": ac.BackfillApi(client),
    }


def _server_run(api, dag_id: str, run_id: str):
    run = api["runs"].get_dag_run(dag_id, run_id)
    tasks = api["tasks"].get_task_instances(dag_id, run_id).task_instances
    return run, {t.task_id: t for t in tasks}


def _state(value) -> str:
    return getattr(value, "value", value)


def _assert_matches_server(api, report: dict) -> None:
    """What `mlwf trigger --json` printed is what the server holds (run and every task)."""
    run, tasks = _server_run(api, report["dag_id"], report["run_id"])
    assert _state(run.state) == report["state"]
    assert {t["task_id"]: t["state"] for t in report["tasks"]} == {k: _state(t.state) for k, t in tasks.items()}


def _run_ids(api, dag_id: str) -> set[str]:
    return {r.dag_run_id for r in api["runs"].get_dag_runs(dag_id, limit=100).dag_runs}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the pipeline, for real -----------------------------------------------------------------


def test_trigger_wait_runs_the_pipeline_and_registers_a_production_model(stack, api, tmp_path):
    from mlpipeline.model_deployment import ModelRegistry

    report_file = tmp_path / "junit.xml"
    result = cli(
        stack, "trigger", PIPELINE, "--wait", "--timeout", "1200", "--unpause", "--json", "--junit", str(report_file),
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["state"] == "success"
    _assert_matches_server(api, report)
    assert all(t["state"] == "success" for t in report["tasks"])

    suite = ET.parse(report_file).getroot().find("testsuite")
    assert {c.get("name") for c in suite.iter("testcase")} == {t["task_id"] for t in report["tasks"]}
    assert suite.get("failures") == "0"

    # The run registered its model, and the registry has a production model that loads.
    pointers = list(Path(stack.home).rglob("production.json"))
    assert pointers, "no model registry with a production model under the stack's state directory"
    registry = ModelRegistry(pointers[0].parent)
    versions = {v: registry.verify(v) for v in registry.list_versions()}
    assert report["run_id"] in {meta.get("run_id") for meta in versions.values()}
    model, meta = registry.load()
    assert hasattr(model, "predict") and meta["version"] == registry.production_version()


def test_conf_that_fails_validation_exits_run_failed_and_names_the_task(stack, api):
    result = cli(
        stack, "trigger", PIPELINE, "--unpause", "--wait", "--timeout", "1200", "--conf", '{"min_rows": 1000000}', timeout=1500
    )
    assert result.returncode == 7, result.stdout + result.stderr
    assert "validate_data" in result.stderr  # the one-line error names the failed task
    assert "task validate_data failed" in result.stdout  # and its log tail follows
    run_id = result.stdout.split(" run ", 1)[1].split()[0]
    run, tasks = _server_run(api, PIPELINE, run_id)
    assert _state(run.state) == "failed"
    assert _state(tasks["validate_data"].state) == "failed"


# -- the smoke DAG: trigger, junit, logs, status ------------------------------------------


def test_trigger_prints_the_run_id_the_server_knows(stack, api, smoke):
    result = cli(stack, "trigger", smoke, "--unpause")
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    assert run_id in _run_ids(api, smoke)
    assert _state(api["runs"].get_dag_run(smoke, run_id).conf) in ({}, None)


def test_failed_run_exit_code_log_tail_json_and_junit(stack, api, smoke, tmp_path):
    report_file = tmp_path / "out" / "junit.xml"
    result = cli(
        stack, "trigger", smoke, "--unpause", "--conf", '{"fail": true}', "--json", "--junit", str(report_file)
    )
    assert result.returncode == 7, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["state"] == "failed"
    _assert_matches_server(api, report)
    [failure] = report["failed_tasks"]
    assert failure["task_id"] == "check"
    assert any("check failed on purpose" in line for line in failure["log_tail"])

    suite = ET.parse(report_file).getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"extract", "check", "report"}
    assert cases["extract"].find("failure") is None
    assert "check failed on purpose" in cases["check"].find("failure").text
    assert cases["report"].find("skipped").get("message") == "upstream_failed"
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")


def test_a_wait_that_gives_up_still_writes_a_valid_junit_report(stack, api, smoke, tmp_path):
    report_file = tmp_path / "junit.xml"
    result = cli(
        stack, "trigger", smoke, "--unpause", "--conf", '{"sleep": 20}', "--timeout", "6", "--junit", str(report_file)
    )
    assert result.returncode == 6, result.stdout + result.stderr
    suite = ET.parse(report_file).getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"extract", "check", "report"}
    assert cases["report"].find("error").get("type") == "unfinished"
    assert suite.get("errors") == str(sum(c.find("error") is not None for c in cases.values()))


def test_conf_from_file_reaches_the_run(stack, api, smoke, tmp_path):
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"note": "from a file", "n": 3}))
    result = cli(stack, "trigger", smoke, "--unpause", "--conf", f"@{conf}", "--wait", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["conf"] == {"note": "from a file", "n": 3}
    assert api["runs"].get_dag_run(smoke, report["run_id"]).conf == {"note": "from a file", "n": 3}
    _assert_matches_server(api, report)


def test_bad_conf_is_refused_before_anything_is_sent(stack, api, smoke, tmp_path):
    before = _run_ids(api, smoke)
    for conf in ("{not json", "[1, 2]", f"@{tmp_path / 'missing.json'}"):
        result = cli(stack, "trigger", smoke, "--conf", conf)
        assert result.returncode == 2, (conf, result.stderr)
        assert result.stderr.startswith("error: --conf")
        assert len(result.stderr.strip().splitlines()) == 1
    assert _run_ids(api, smoke) == before


def test_paused_dag_is_refused_with_a_hint_and_pause_unpause_work(stack, api, smoke):
    assert cli(stack, "pause", smoke).returncode == 0
    assert api["dags"].get_dag(smoke).is_paused is True
    before = _run_ids(api, smoke)
    refused = cli(stack, "trigger", smoke)
    assert refused.returncode == 2
    assert "paused" in refused.stderr and "--unpause" in refused.stderr
    assert _run_ids(api, smoke) == before

    unpaused = cli(stack, "unpause", smoke, "--json")
    assert unpaused.returncode == 0
    assert json.loads(unpaused.stdout)["is_paused"] is False
    assert api["dags"].get_dag(smoke).is_paused is False


def test_logs_show_a_line_the_task_printed(stack, smoke):
    run = cli(stack, "trigger", smoke, "--unpause", "--wait", "--json")
    assert run.returncode == 0, run.stderr
    run_id = json.loads(run.stdout)["run_id"]
    result = cli(stack, "logs", smoke, "report", "--run", run_id)
    assert result.returncode == 0, result.stderr
    assert KNOWN_LINE in result.stdout
    assert '"event"' not in result.stdout  # readable text, not the API's JSON records
    assert "::group::" not in result.stdout


def test_logs_follow_a_running_task_until_it_ends(stack, smoke):
    run_id = cli(stack, "trigger", smoke, "--unpause", "--conf", '{"sleep": 6}').stdout.strip()
    assert run_id
    started = time.monotonic()
    result = cli(stack, "logs", smoke, "report", "--run", run_id, "-f", timeout=180)
    assert result.returncode == 0, result.stderr
    assert "thinking for 6 s" in result.stdout
    assert KNOWN_LINE in result.stdout  # printed after the sleep: only following shows it
    assert time.monotonic() - started >= 5


def test_wait_timeout_gives_the_timeout_exit_code_and_leaves_the_run_going(stack, api, smoke):
    result = cli(stack, "trigger", smoke, "--unpause", "--conf", '{"sleep": 20}', "--wait", "--timeout", "2", "--json")
    assert result.returncode == 6, result.stdout + result.stderr
    assert "after 2 s" in result.stderr
    run_id = result.stderr.split("run '", 1)[1].split("'", 1)[0]
    assert _state(api["runs"].get_dag_run(smoke, run_id).state) in ("queued", "running")


def test_status_of_a_dag_lists_runs_and_task_durations(stack, api, smoke):
    run = cli(stack, "trigger", smoke, "--unpause", "--wait", "--json")
    run_id = json.loads(run.stdout)["run_id"]
    result = cli(stack, "status", smoke, "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["dag"]["dag_id"] == smoke
    assert status["runs"][0]["run_id"] in _run_ids(api, smoke)
    server_runs = {r.dag_run_id: _state(r.state) for r in api["runs"].get_dag_runs(smoke, limit=100).dag_runs}
    assert all(server_runs[r["run_id"]] == r["state"] for r in status["runs"])
    assert run_id in {r["run_id"] for r in status["runs"]}
    assert {t["task_id"] for t in status["latest_run_tasks"]} == {"extract", "check", "report"}

    table = cli(stack, "status", smoke)
    assert table.returncode == 0 and "recent runs" in table.stdout


def test_dags_lists_paused_state_like_the_server(stack, api, smoke):
    created = httpx.post(
        f"{stack.url}/api/v2/dags/{smoke}/dagRuns", json={"logical_date": None},
        headers={"Authorization": f"Bearer {stack.token()}"}, timeout=30,
    )
    assert created.status_code == 200, created.text  # so that the smoke DAG has a latest run
    result = cli(stack, "dags", "--json")
    assert result.returncode == 0, result.stderr
    listed = {d["dag_id"]: d for d in json.loads(result.stdout)["dags"]}
    assert {SMOKE, PIPELINE} <= set(listed)
    for dag_id, dag in listed.items():
        assert dag["is_paused"] == api["dags"].get_dag(dag_id).is_paused
        # Each DAG's own latest run (the runs are fetched together, then paired with their DAG).
        newest = api["runs"].get_dag_runs(dag_id, limit=1, order_by=["-id"]).dag_runs
        assert (dag["last_run"] or {}).get("run_id") == (newest[0].dag_run_id if newest else None)
    assert listed[SMOKE]["last_run"]["run_id"] == created.json()["dag_run_id"]
    table = cli(stack, "dags")
    assert table.returncode == 0 and SMOKE in table.stdout


# -- backfill -----------------------------------------------------------------------------


def _backfill_count(api, dag_id: str) -> int:
    return api["backfills"].list_backfills(dag_id).total_entries


def test_backfill_bad_ranges_are_refused_before_anything_is_created(stack, api, smoke):
    before = _backfill_count(api, smoke)
    cases = [
        ("2026-13-01", "2026-01-03", "is not a date"),
        ("2026-01-05", "2026-01-03", "is after"),
        ("2020-03-01T01:00:00", "2020-03-01T02:00:00", "range is empty"),
    ]
    for start, end, message in cases:
        result = cli(stack, "backfill", smoke, "--start-date", start, "--end-date", end)
        assert result.returncode == 2, (start, end, result.stderr)
        assert message in result.stderr
    bad = cli(stack, "backfill", smoke, "--start-date", "2020-01-01", "--end-date", "2020-01-02", "--reprocess", "all")
    assert bad.returncode == 2
    assert _backfill_count(api, smoke) == before


def test_backfill_dry_run_lists_dates_and_estimates_from_past_runs(stack, api, smoke):
    ran = cli(stack, "trigger", smoke, "--unpause", "--wait", "--json", timeout=240)
    assert ran.returncode == 0, ran.stderr  # at least one successful run to estimate from
    before = _backfill_count(api, smoke)
    result = cli(stack, "backfill", smoke, "--start-date", "2021-06-01", "--end-date", "2021-06-04", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["logical_dates"] == [f"2021-06-0{d}T00:00:00+00:00" for d in (1, 2, 3, 4)]
    # The estimate: waves of max_active_runs runs, each the median of the last 20 runs' successes.
    recent = api["runs"].get_dag_runs(smoke, limit=20, order_by=["-id"]).dag_runs
    successes = [(r.end_date - r.start_date).total_seconds() for r in recent if r.state.value == "success"]
    waves = math.ceil(4 / plan["max_active_runs"])
    assert plan["estimated_seconds"] == pytest.approx(waves * statistics.median(successes), abs=0.01)
    assert _backfill_count(api, smoke) == before
    table = cli(stack, "backfill", smoke, "--start-date", "2021-06-01", "--end-date", "2021-06-04", "--dry-run")
    assert "2021-06-04T00:00:00+00:00" in table.stdout and "estimated wall time" in table.stdout


def test_backfill_of_three_days_ends_with_three_successful_runs(stack, api, smoke):
    result = cli(
        stack, "backfill", smoke, "--start-date", "2022-03-01", "--end-date", "2022-03-03",
        "--max-active-runs", "2", "--wait", "--json", timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["total"] == 3
    assert [r["state"] for r in report["runs"]] == ["success"] * 3
    for run in report["runs"]:
        server = api["runs"].get_dag_run(smoke, run["run_id"])
        assert _state(server.state) == "success"
        assert _state(server.run_type) == "backfill"
    dates = sorted(r["logical_date"][:10] for r in report["runs"])
    assert dates == ["2022-03-01", "2022-03-02", "2022-03-03"]


# -- error paths against real servers -------------------------------------------------------


def test_wrong_password_gives_the_auth_exit_code(stack, smoke, tmp_path):
    result = cli(stack, "dags", MLWF_AIRFLOW_PASSWORD="not-the-password", MLWF_HOME=str(tmp_path))
    assert result.returncode == 3, result.stderr
    assert "refused the password" in result.stderr
    assert not (tmp_path / "token.json").exists()


def test_no_password_and_no_terminal_gives_the_auth_exit_code_with_a_hint(stack, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLWF_AIRFLOW_PASSWORD"}
    result = subprocess.run(
        [sys.executable, "-m", "mlflowctl", "dags", "--url", stack.url, "--home", str(tmp_path)],
        env={**env, "MLWF_AIRFLOW_PASSWORD": ""}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
    )
    assert result.returncode == 3, result.stderr
    assert "hint: set MLWF_AIRFLOW_PASSWORD" in result.stderr


def test_password_is_asked_for_on_a_terminal_and_the_token_cached(stack, tmp_path):
    """No password anywhere but a terminal attached: a hidden prompt, then a cached token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWF_")}
    run = answer_prompt(
        [sys.executable, "-m", "mlflowctl", "dags", "--json", "--url", stack.url, "--home", str(tmp_path)],
        prompt=f"Airflow password for admin at {stack.url}: ", typed=stack.password.encode() + b"\n",
        env=env, cwd=str(tmp_path),
    )
    assert run.returncode == 0
    assert PIPELINE in {d["dag_id"] for d in json.loads(run.stdout)["dags"]}
    assert stack.password.encode() not in run.shown  # not echoed
    assert (tmp_path / "token.json").stat().st_mode & 0o777 == 0o600


def test_unknown_dag_gives_the_not_found_exit_code(stack):
    for args in (
        ("trigger", "no_such_dag"),
        ("pause", "no_such_dag"),
        ("status", "no_such_dag"),
        ("backfill", "no_such_dag", "--start-date", "2022-01-01", "--end-date", "2022-01-02"),
        ("logs", "no_such_dag", "some_task"),
    ):
        result = cli(stack, *args)
        assert result.returncode == 4, (args, result.stderr)
        assert "DAG 'no_such_dag' not found" in result.stderr


def test_unknown_run_gives_the_not_found_exit_code(stack, smoke):
    result = cli(stack, "logs", smoke, "report", "--run", "manual__1999-01-01T00:00:00+00:00")
    assert result.returncode == 4
    assert "run 'manual__1999-01-01T00:00:00+00:00' of DAG 'mlwf_smoke' not found" in result.stderr


def test_server_stopped_gives_the_unreachable_exit_code(stack, tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    result = cli(stack, "dags", "--url", url, MLWF_HOME=str(tmp_path))
    assert result.returncode == 5, result.stderr
    assert f"cannot reach Airflow at {url}" in result.stderr
    assert time.monotonic() - started < 30  # retried for a bounded time, then gave up
