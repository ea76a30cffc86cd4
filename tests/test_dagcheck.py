"""`mlwf parse` and `mlwf test` against the real Airflow runtime, in projects made per test.

Every command runs the installed `mlwf` as a CI job does, in a temporary project with its own
state directory; the DAG files are real files that import (or fail to) in a real interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import MLWF, REPO, Stack

SMOKE = REPO / "tests" / "dags" / "mlwf_smoke_dag.py"
GOOD = '''
from datetime import datetime, timezone
from airflow.sdk import dag, task

@dag(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc))
def pipeline():
    @task
    def one():
        return 1
    one()

pipeline()
'''
BROKEN = '''from airflow.sdk import dag

# an import error on line 4
value = undefined_name + 1
'''
SYNTAX = '''from airflow.sdk import dag

def broken(:
    pass
'''
CYCLE = '''
from datetime import datetime, timezone
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("circular", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc)):
    a = EmptyOperator(task_id="a")
    b = EmptyOperator(task_id="b")
    a >> b >> a
'''
SLEEPY = '''
import time
from airflow.sdk import dag  # noqa: F401  (the safe-mode scan looks for "airflow" and "dag")
time.sleep({seconds})
'''
# Asks, as its import begins, whether the Airflow module it imports was imported before it
# (mlwf, as the dag-processor, pre-imports them), whether its code runs with the garbage
# collector on and may import trio (declined for Airflow's own imports); its task asks again
# when the run is under way.
COLLECTED = '''
import gc, sys
PRE_IMPORTED = "airflow.providers.standard.operators.bash" in sys.modules
COLLECTING = gc.isenabled()
from datetime import datetime, timezone
from airflow.providers.standard.operators.bash import BashOperator  # noqa: F401
from airflow.sdk import dag, task

assert PRE_IMPORTED, "the file's Airflow imports were not imported before it"
assert COLLECTING, "the DAG file's code ran without the garbage collector"
assert sys.modules.get("trio", "") is not None, "trio, declined for Airflow's imports, was not given back"

@dag(dag_id="collected", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc))
def collected():
    @task
    def probe():
        assert gc.isenabled(), "the task's code ran without the garbage collector"
        assert gc.get_freeze_count() > 10_000, "Airflow's objects were not kept out of the collections"
        assert sys.modules.get("trio", "") is not None, "trio was declined for the task's code"
    probe()

collected()
'''
# The project's own Airflow policy, read from its task folder as Airflow reads
# airflow_local_settings: a 2 s import timeout keeps the slow-file test short.
LOCAL_SETTINGS = '''
def get_dagbag_import_timeout(dag_file_path: str) -> float:
    return 2.0
'''


def make_project(root: Path, files: dict[str, str], *, src: dict[str, str] | None = None) -> tuple[Path, dict]:
    """A project with `files` in dags/ and `src` in src/, its own state directory; the env to run mlwf in."""
    project = root / "project"
    (project / "dags").mkdir(parents=True)
    (project / "src").mkdir()
    for name, text in files.items():
        (project / "dags" / name).write_text(textwrap.dedent(text))
    for name, text in (src or {}).items():
        (project / "src" / name).write_text(textwrap.dedent(text))
    (project / "mlwf.toml").write_text('dags_dir = "dags"\ntasks_dir = "src"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLWF_", "AIRFLOW"))}
    env.update({"MLWF_HOME": str(project / ".mlwf"), "COLUMNS": "200"})
    return project, env


def mlwf(project: Path, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([MLWF, *args], cwd=project, env=env, capture_output=True, text=True, timeout=timeout)


def junit_cases(path: Path) -> dict[str, ET.Element]:
    return {case.get("name"): case for case in ET.parse(path).getroot().iter("testcase")}


# -- parse ----------------------------------------------------------------------------------


def test_parse_of_this_project_is_clean_and_times_each_file(tmp_path):
    project, env = make_project(tmp_path, {})
    shutil.rmtree(project / "dags")
    shutil.copytree(REPO / "dags", project / "dags")
    report = tmp_path / "reports" / "parse.xml"
    result = mlwf(project, env, "parse", "--json", "--junit", str(report))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["dag_ids"] == ["ml_pipeline_dag", "monitoring_dag"]
    assert [f["file"] for f in data["files"]] == ["ml_pipeline_dag.py", "monitoring_dag.py"]
    assert all(0 < f["seconds"] < f["timeout"] and f["error"] is None for f in data["files"])
    cases = junit_cases(report)
    assert sorted(cases) == ["ml_pipeline_dag.py", "monitoring_dag.py"]
    assert not any(case.find("failure") is not None for case in cases.values())
    assert not (project / ".mlwf").exists(), "parse needs no state directory"


def test_parse_reports_import_errors_duplicates_and_cycles_with_file_and_line(tmp_path):
    project, env = make_project(
        tmp_path,
        {
            "a_good.py": GOOD.format(dag_id="pipeline"),
            "b_twin.py": GOOD.format(dag_id="pipeline"),
            "broken.py": BROKEN,
            "syntax.py": SYNTAX,
            "circular.py": CYCLE,
        },
    )
    report = tmp_path / "parse.xml"
    result = mlwf(project, env, "parse", "--json", "--junit", str(report))
    assert result.returncode == 20, result.stderr
    files = {f["file"]: f for f in json.loads(result.stdout)["files"]}
    assert files["a_good.py"]["error"] is None and files["a_good.py"]["dags"] == ["pipeline"]
    assert files["b_twin.py"]["error"]["kind"] == "duplicate"
    assert "a_good.py" in files["b_twin.py"]["error"]["last"]
    assert files["broken.py"]["error"]["kind"] == "import"
    assert files["broken.py"]["error"]["line"] == 4
    assert files["broken.py"]["error"]["last"] == "NameError: name 'undefined_name' is not defined"
    assert files["syntax.py"]["error"]["line"] == 3
    assert files["syntax.py"]["error"]["last"].startswith("SyntaxError")
    assert files["circular.py"]["error"]["kind"] == "cycle"
    # one line on stderr names the first problem, the hint says how to see all
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: b_twin.py") and "(and 3 more)" in lines[0], lines
    cases = junit_cases(report)
    failed = {name for name, case in cases.items() if case.find("failure") is not None}
    assert failed == {"b_twin.py", "broken.py", "syntax.py", "circular.py"}
    assert "undefined_name" in cases["broken.py"].find("failure").text


def test_parse_table_shows_the_problem_and_exit_code(tmp_path):
    project, env = make_project(tmp_path, {"broken.py": BROKEN})
    result = mlwf(project, env, "parse")
    assert result.returncode == 20
    assert "import: line 4: NameError: name 'undefined_name' is not defined" in result.stdout
    assert result.stderr.startswith("error: broken.py:4: NameError")


def test_parse_imports_a_files_airflow_modules_before_it_with_the_collector_on(tmp_path):
    """As the dag-processor: a file's parse time is its own, not that of importing Airflow's
    modules (the first file paid ~1 s for `airflow.sdk`); its code runs with the collector on."""
    project, env = make_project(tmp_path, {"collected.py": COLLECTED})
    result = mlwf(project, env, "parse", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["dag_ids"] == ["collected"]


@pytest.mark.slow
def test_parse_flags_a_file_near_the_import_timeout_and_fails_one_past_it(tmp_path):
    project, env = make_project(
        tmp_path,
        {"slow.py": SLEEPY.format(seconds=1.2), "stuck.py": SLEEPY.format(seconds=5)},
        src={"airflow_local_settings.py": LOCAL_SETTINGS},
    )
    result = mlwf(project, env, "parse", "--json")
    assert result.returncode == 20, result.stderr
    files = {f["file"]: f for f in json.loads(result.stdout)["files"]}
    assert files["slow.py"]["timeout"] == 2.0
    assert files["slow.py"]["slow"] is True and files["slow.py"]["error"] is None
    assert files["stuck.py"]["error"]["last"].startswith("airflow.sdk.exceptions.AirflowTaskTimeout: DagBag import timeout"), files["stuck.py"]["error"]
    assert files["stuck.py"]["seconds"] < 4


# -- test -----------------------------------------------------------------------------------


def test_test_runs_a_dag_with_the_live_table_json_and_junit(tmp_path):
    project, env = make_project(tmp_path, {"smoke.py": SMOKE.read_text()})
    report = tmp_path / "run.xml"
    result = mlwf(project, env, "test", "mlwf_smoke", "--json", "--junit", str(report))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["state"] == "success" and data["dag_id"] == "mlwf_smoke"
    assert sorted((t["task_id"], t["state"]) for t in data["tasks"]) == [
        ("check", "success"), ("extract", "success"), ("report", "success")
    ]
    assert all(t["duration"] is not None and t["try_number"] == 1 for t in data["tasks"])
    assert sorted(junit_cases(report)) == ["check", "extract", "report"]
    # the run's database and data are gone; the template database and the run's log stay
    scratch = project / ".mlwf" / "dagcheck"
    assert sorted(p.name for p in scratch.iterdir()) == ["mlwf_smoke.log", "template-3.3.2.db"]
    assert "mlwf-smoke: the answer is 42" in (scratch / "mlwf_smoke.log").read_text()
    # the table, when not --json: the same tasks
    table = mlwf(project, env, "test", "mlwf_smoke")
    assert table.returncode == 0, table.stderr
    assert "success" in table.stdout and all(name in table.stdout for name in ("extract", "check", "report"))


def test_test_runs_tasks_with_the_collector_on_and_airflows_objects_kept_out_of_it(tmp_path):
    """The child keeps the collector off while it imports Airflow, then freezes what is there:
    the tasks' own garbage is collected as on a stack."""
    project, env = make_project(tmp_path, {"collected.py": COLLECTED})
    result = mlwf(project, env, "test", "collected", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(t["task_id"], t["state"]) for t in json.loads(result.stdout)["tasks"]] == [("probe", "success")]


# A task_preload module of the project's own (a library in a real project), which records
# whether Airflow was loaded when it was imported and imports trio (the child declines trio
# for Airflow's imports only; the test extra installs it, with selenium); the task asks for
# it and for the metrics setting the child runs with.
PRELOAD_PROBE = '''
import sys
AIRFLOW_WAS_LOADED = "airflow" in sys.modules
import trio  # noqa: F401
'''
PRELOADED = '''
import sys
from datetime import datetime, timezone
from airflow.sdk import dag, task

@dag(dag_id="preloaded", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc))
def preloaded():
    @task
    def probe():
        from airflow.configuration import conf
        assert "preload_probe" in sys.modules, "the task started without the project's task_preload"
        assert sys.modules["preload_probe"].AIRFLOW_WAS_LOADED is False, "task_preload was imported after Airflow"
        assert conf.getboolean("metrics", "legacy_names_on") is False, "legacy metric names are on with no StatsD"
    probe()

preloaded()
'''


def test_test_starts_tasks_with_the_projects_task_preload_imported_before_airflow(tmp_path):
    """As on the project's stack, a task starts with task_preload imported; here before Airflow,
    which keeps skops' scan of the loaded modules short (BENCHMARKS.md)."""
    project, env = make_project(tmp_path, {"preloaded.py": PRELOADED}, src={"preload_probe.py": PRELOAD_PROBE})
    result = mlwf(project, env | {"MLWF_TASK_PRELOAD": "preload_probe"}, "test", "preloaded", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(t["task_id"], t["state"]) for t in json.loads(result.stdout)["tasks"]] == [("probe", "success")]
    without = mlwf(project, env, "test", "preloaded", "--json")
    assert without.returncode == 7, "the probe passed without task_preload: it cannot tell"


def test_a_task_preload_that_does_not_import_stops_test_with_exit_11_and_leaves_nothing(tmp_path):
    project, env = make_project(tmp_path, {"smoke.py": SMOKE.read_text()})
    env |= {"MLWF_TASK_PRELOAD": "json,no_such_library_xyz"}
    result = mlwf(project, env, "test", "mlwf_smoke")
    assert result.returncode == 11, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: task_preload: cannot import 'no_such_library_xyz': ModuleNotFoundError: No module named 'no_such_library_xyz'",
        "hint: install it in the Airflow runtime, or take it out of task_preload (mlwf.toml or MLWF_TASK_PRELOAD)",
    ]
    assert not (project / ".mlwf" / "data").exists()
    assert not [p.name for p in (project / ".mlwf" / "dagcheck").iterdir() if p.name.startswith("test-")]
    assert mlwf(project, env, "parse").returncode == 0  # parsing runs no task: task_preload plays no part


UNSYNCED_PROBE = """
import runpy, sys
from sqlalchemy import text
child = runpy.run_path(sys.argv[1])
child["_unsynced_database"]()
from airflow import settings
with settings.engine.connect() as connection:
    print(connection.execute(text("PRAGMA synchronous")).scalar(), connection.execute(text("PRAGMA journal_mode")).scalar())
"""


def test_the_test_runs_database_commits_without_waiting_for_the_disk(tmp_path):
    """synchronous=NORMAL (1) in Airflow's WAL mode: no fsync per commit on a database that is
    deleted after the run (FULL, 2, is SQLite's default)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path / 'airflow.db'}")
    child = REPO / "mlflowctl" / "dagcheck" / "child.py"
    answer = subprocess.run([sys.executable, "-c", UNSYNCED_PROBE, str(child)], env=env, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr[-2000:]
    assert answer.stdout.split() == ["1", "wal"]


def test_test_of_a_failing_run_exits_7_with_the_failed_task_log_tail(tmp_path):
    project, env = make_project(tmp_path, {"smoke.py": SMOKE.read_text(), "broken.py": BROKEN})
    report = tmp_path / "run.xml"
    result = mlwf(project, env, "test", "mlwf_smoke", "--conf", '{"fail": true}', "--junit", str(report))
    assert result.returncode == 7, result.stderr
    assert "task check failed (try 1); end of its log:" in result.stdout
    assert "ValueError: check failed on purpose" in result.stdout
    # stderr: the run's changes one line each (no terminal here), the warning, then the error and hint last
    lines = result.stderr.strip().splitlines()
    assert "warning: another DAG file does not import: broken.py:4: NameError: name 'undefined_name' is not defined" in lines
    assert "check failed" in "\n".join(lines[:-2])  # the change line of the failing task
    assert lines[-2].startswith("error: run manual__") and lines[-2].endswith("of DAG mlwf_smoke ended failed (failed: check)")
    assert lines[-1] == f"hint: the run's whole log: {project / '.mlwf' / 'dagcheck' / 'mlwf_smoke.log'}"
    cases = junit_cases(report)
    assert "check failed on purpose" in cases["check"].find("failure").text
    assert cases["report"].find("skipped").get("message") == "upstream_failed"


@pytest.mark.slow
def test_test_that_runs_out_of_time_exits_6_stops_the_run_and_still_reports(tmp_path):
    import psutil

    project, env = make_project(tmp_path, {"smoke.py": SMOKE.read_text()})
    report = tmp_path / "run.xml"
    result = mlwf(project, env, "test", "mlwf_smoke", "--conf", '{"sleep": 600}', "--timeout", "40", "--junit", str(report))
    assert result.returncode == 6, result.stderr
    # stderr: the run's changes one line each (no terminal here), then the error
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: test run of DAG 'mlwf_smoke' still running after 40 s; stopped")
    assert "extract success" in result.stderr
    cases = junit_cases(report)
    assert cases["report"].find("error").get("type") == "unfinished"
    assert cases["check"].find("error") is None and cases["check"].find("failure") is None
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(project) in " ".join(p.info["cmdline"] or [])]
    assert left == [], "the test run's process outlived mlwf"
    assert sorted(p.name for p in (project / ".mlwf" / "dagcheck").iterdir()) == ["mlwf_smoke.log", "template-3.3.2.db"]


@pytest.mark.slow
def test_test_runs_ml_pipeline_dag_with_its_deadline_alert(tmp_path):
    project, env = make_project(tmp_path, {})
    shutil.rmtree(project / "dags")
    shutil.rmtree(project / "src")
    shutil.copytree(REPO / "dags", project / "dags")
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    result = mlwf(project, env, "test", "ml_pipeline_dag", "--json", timeout=900)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["state"] == "success" and len(data["tasks"]) == 8
    # the model went to the run's throwaway data root, not the state directory's
    assert not (project / ".mlwf" / "data").exists()


# -- bad input ------------------------------------------------------------------------------


def test_unknown_dag_is_one_line_exit_4_naming_the_dags_there(tmp_path):
    project, env = make_project(tmp_path, {"smoke.py": SMOKE.read_text()})
    result = mlwf(project, env, "test", "no_such_dag")
    assert result.returncode == 4
    assert result.stderr.strip().splitlines() == [
        f"error: DAG 'no_such_dag' not found in {project / 'dags'} (its DAGs: mlwf_smoke)"
    ]
    assert result.stdout == ""


def test_a_dag_id_airflow_would_not_take_is_refused_before_anything_starts(tmp_path):
    project, env = make_project(tmp_path, {"smoke.py": SMOKE.read_text()})
    result = mlwf(project, env, "test", "../../etc/x", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: '../../etc/x' is not a DAG id (letters, digits, '_', '.', '-'; at most 250)"
    ]
    assert not (project / ".mlwf").exists()


def test_a_dag_file_that_does_not_import_is_named_with_its_error(tmp_path):
    project, env = make_project(tmp_path, {"broken.py": BROKEN})
    result = mlwf(project, env, "test", "broken")
    assert result.returncode == 20
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: DAG 'broken' not found: broken.py:4: NameError: name 'undefined_name' is not defined"
    assert lines[1:] == ["hint: the DAG files that do not import: `mlwf parse`"]


@pytest.mark.parametrize(
    "conf, message",
    [
        ("{not json", "error: --conf is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        ("[1, 2]", "error: --conf must be a JSON object, not list"),
        ("@missing.json", "error: --conf missing.json: cannot read it (No such file or directory)"),
    ],
)
def test_bad_conf_is_refused_before_anything_starts(tmp_path, conf, message):
    project, env = make_project(tmp_path, {"smoke.py": SMOKE.read_text()})
    result = mlwf(project, env, "test", "mlwf_smoke", "--conf", conf, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [message]
    assert not (project / ".mlwf").exists()


def test_conf_that_does_not_fit_the_dags_params_is_refused_with_exit_2(tmp_path):
    project, env = make_project(tmp_path, {})
    shutil.copy(REPO / "dags" / "ml_pipeline_dag.py", project / "dags")
    shutil.rmtree(project / "src")
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    result = mlwf(project, env, "test", "ml_pipeline_dag", "--conf", '{"model_type": "magic"}')
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[0]
    assert line.startswith("error: --conf does not fit DAG 'ml_pipeline_dag': ") and "model_type" in line
    assert not (project / ".mlwf" / "data").exists()


@pytest.mark.parametrize("command", [["parse"], ["test", "mlwf_smoke"]])
def test_unwritable_junit_path_is_refused_and_nothing_is_written(tmp_path, command):
    project, env = make_project(tmp_path, {"smoke.py": SMOKE.read_text()})
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "report.xml"
    result = mlwf(project, env, *command, "--junit", str(target), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: --junit {target}: {blocker} is not a folder"]
    folder = tmp_path / "reports"
    folder.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere: the folder check cannot refuse it
        result = mlwf(project, env, *command, "--junit", str(folder / "r.xml"), timeout=60)
        assert result.returncode == 2 and "not a writable file" in result.stderr
    assert list(folder.iterdir()) == [] and not (project / ".mlwf").exists()


def test_missing_dag_folder_is_exit_4(tmp_path):
    project, env = make_project(tmp_path, {})
    shutil.rmtree(project / "dags")
    result = mlwf(project, env, "parse", timeout=60)
    assert result.returncode == 4
    assert result.stderr.startswith(f"error: no DAG folder at {project / 'dags'}")


# -- version and completion -----------------------------------------------------------------


def test_version_names_mlwf_and_the_airflow_runtime_without_importing_airflow(tmp_path):
    from importlib.metadata import version

    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mlflowctl", "--version"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"mlwf {version('mlflowctl')}",
        f"Airflow {version('apache-airflow')} (this interpreter's runtime, {Path(sys.executable).parent})",
    ]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "airflow" not in imported and "typer" in imported


def test_shell_completion_script_is_offered():
    # What `--show-completion bash` prints, asked the way the installed script asks: typer's
    # flag guesses the shell from the parent processes first, which differs under CI runners.
    env = {**os.environ, "_MLWF_COMPLETE": "source_bash"}
    result = subprocess.run([MLWF], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "_MLWF_COMPLETE=complete_bash" in result.stdout


# -- a stack may run at the same time -------------------------------------------------------


@pytest.mark.stack
def test_test_beside_a_running_stack_touches_neither_its_database_nor_its_data(stack: Stack, tmp_path):
    """Same project, same state directory; the smoke DAG from a folder the stack does not read."""
    (tmp_path / "dags").mkdir()
    shutil.copy(SMOKE, tmp_path / "dags")
    result = stack.mlwf("test", "mlwf_smoke", "--json", env={"MLWF_DAGS_DIR": str(tmp_path / "dags")})
    assert result.returncode == 0, result.stderr
    run_id = json.loads(result.stdout)["run_id"]
    import httpx

    headers = {"Authorization": f"Bearer {stack.token()}"}
    answer = httpx.get(f"{stack.url}/api/v2/dags/mlwf_smoke/dagRuns/{run_id}", headers=headers, timeout=10)
    assert answer.status_code == 404, "the test run reached the stack's database"
    assert stack.mlwf("status").returncode == 0, "the stack is not healthy after the test run"
    assert not (stack.home / "data" / "runs" / run_id).exists()
    assert sorted(p.name for p in (stack.home / "dagcheck").iterdir()) == ["mlwf_smoke.log", "template-3.3.2.db"]
