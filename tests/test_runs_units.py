"""Pure parts of the run commands: input parsing, log text, JUnit XML, tables (no server)."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

import pytest
from rich.console import Console

from mlflowctl.api.airflow import DagRun, LogRecord, TaskInstance
from mlflowctl.errors import UsageError
from mlflowctl.junit import junit_xml, write_junit
from mlflowctl.render import runs as render
from mlflowctl.render.durations import duration
from mlflowctl.runs import BackfillPlan, RunSnapshot, TaskFailure, backfill_range, log_text, parse_conf, parse_date

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def text(renderable, width: int = 160) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def test_conf_inline_and_from_file(tmp_path):
    assert parse_conf(None) == {}
    assert parse_conf('{"a": [1, 2]}') == {"a": [1, 2]}
    path = tmp_path / "c.json"
    path.write_text('{"source": "sklearn:iris"}')
    assert parse_conf(f"@{path}") == {"source": "sklearn:iris"}


@pytest.mark.parametrize(
    "value, message",
    [
        ("{bad", "is not valid JSON: Expecting property name"),
        ("[1]", "must be a JSON object, not list"),
        ('"text"', "must be a JSON object, not str"),
        ("@/nonexistent/conf.json", "cannot read it"),
    ],
)
def test_bad_conf_is_a_usage_error(value, message):
    with pytest.raises(UsageError, match=message) as raised:
        parse_conf(value)
    assert raised.value.exit_code == 2


def test_dates_are_utc_and_ordered():
    assert parse_date("2026-01-02", "--start-date") == datetime(2026, 1, 2, tzinfo=timezone.utc)
    assert parse_date("2026-01-02T03:00:00+02:00", "--x").utcoffset() == timedelta(hours=2)
    assert parse_date("2026-01-02T03:00:00Z", "--x") == datetime(2026, 1, 2, 3, tzinfo=timezone.utc)
    with pytest.raises(UsageError, match="--end-date '02/01/2026' is not a date"):
        backfill_range("2026-01-01", "02/01/2026")
    with pytest.raises(UsageError, match="is after --end-date"):
        backfill_range("2026-01-03", "2026-01-01")
    first, last = backfill_range("2026-01-01", "2026-01-01")
    assert first == last


def test_backfill_estimate_counts_waves_of_max_active_runs():
    dates = [T0 + timedelta(days=i) for i in range(5)]
    plan = BackfillPlan("d", dates[0], dates[-1], dates, 2, "none", typical_run_s=10.0)
    assert plan.estimate_s == 30.0  # 3 waves: 2 + 2 + 1
    assert BackfillPlan("d", T0, T0, [T0], 2, "none", None).estimate_s is None
    table = text(render.backfill_plan_table(plan))
    assert "5 runs" in table and "estimated wall time 30.0s" in table


def test_log_records_become_readable_lines():
    records = [
        LogRecord("::group::Log message source details"),
        LogRecord("/var/log/airflow/attempt=1.log"),
        LogRecord("::endgroup::"),
        LogRecord("::group::Pre Execute", "2026-01-01T12:00:00.1Z", "info", "task"),
        LogRecord("hello from the task", "2026-01-01T12:00:01.5Z", "info", "task.stdout"),
        LogRecord(
            "Task failed with exception", "2026-01-01T12:00:02Z", "error", "task",
            ("Traceback (most recent call last):", "ValueError: boom"),
        ),
        LogRecord("a plain line"),
    ]
    assert log_text(records) == [
        "[2026-01-01 12:00:01] INFO - hello from the task",
        "[2026-01-01 12:00:02] ERROR - Task failed with exception",
        "Traceback (most recent call last):",
        "ValueError: boom",
        "a plain line",
    ]


def test_airflow_frames_are_folded_in_tracebacks():
    record = LogRecord.from_api(
        {
            "event": "Task failed with exception",
            "error_detail": [
                {
                    "exc_type": "ValueError",
                    "exc_value": "boom",
                    "frames": [
                        {"filename": "/v/lib/python3.11/site-packages/airflow/sdk/a.py", "lineno": 1, "name": "run"},
                        {"filename": "/v/lib/python3.11/site-packages/airflow/sdk/b.py", "lineno": 2, "name": "call"},
                        {"filename": "/project/dags/my_dag.py", "lineno": 31, "name": "check"},
                    ],
                }
            ],
        }
    )
    assert record.exception == (
        "Traceback (most recent call last):",
        "  ... 2 frame(s) inside Airflow",
        '  File "/project/dags/my_dag.py", line 31, in check',
        "ValueError: boom",
    )


def _task(task_id, state, duration=1.0, tries=1, start=0):
    return TaskInstance(task_id, state, tries, start_date=T0 + timedelta(seconds=start), duration=duration)


def _snapshot(state="failed"):
    run = DagRun("d", "manual__2026-01-01T12:00:00+00:00", state, start_date=T0, duration=7.5)
    tasks = [
        _task("extract", "success", 0.5, start=0),
        _task("check", "failed", 5.25, start=1),
        _task("report", "upstream_failed", 0.0, tries=0, start=7),
    ]
    return RunSnapshot(run, tasks, elapsed=8.0)


def test_junit_has_one_case_per_task_with_failures_and_their_log_tail():
    snapshot = _snapshot()
    xml = junit_xml(snapshot, [TaskFailure(snapshot.tasks[1], ["line 1", "ValueError: <boom> & more"])])
    root = ET.fromstring(xml.split("\n", 1)[1])
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped"), suite.get("errors")) == ("3", "1", "1", "0")
    assert suite.get("time") == "7.500"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["check"].get("time") == "5.250"
    assert cases["check"].find("failure").text == "line 1\nValueError: <boom> & more"
    assert cases["report"].find("skipped").get("message") == "upstream_failed"
    assert list(cases["extract"]) == []


def test_junit_with_escapes_and_control_characters_is_valid_xml(tmp_path):
    """A failed task's log with colours, NUL, bell and a lone surrogate: a strict parser
    (expat) accepts the report, and the text stays readable."""
    import xml.dom.minidom

    snapshot = _snapshot()
    tail = ["\x1b[31mERROR\x1b[0m boom", "nul\x00 bell\x07 esc\x1b] vt\x0b", "bad \udc80 end", "ok \t tab"]
    path = tmp_path / "reports" / "junit.xml"
    write_junit(path, snapshot, [TaskFailure(snapshot.tasks[1], tail)])
    text = path.read_text()
    xml.dom.minidom.parseString(text.encode("utf-8", "surrogatepass"))  # raises on any invalid character
    failure = ET.fromstring(text.split("\n", 1)[1]).find("testsuite/testcase[@name='check']/failure").text
    assert failure.splitlines() == ["ERROR boom", "nul\\x00 bell\\x07 esc vt\\x0b", "bad \\xdc80 end", "ok \t tab"]
    assert [p.name for p in path.parent.iterdir()] == ["junit.xml"]  # no temporary file left


def test_junit_after_a_wait_that_gave_up_marks_unfinished_tasks():
    run = DagRun("d", "manual__1", "running", start_date=T0)
    snapshot = RunSnapshot(run, [_task("extract", "success"), _task("train", "running"), _task("report", None)], elapsed=3.0)
    root = ET.fromstring(junit_xml(snapshot, [], timed_out=True).split("\n", 1)[1])
    errors = {c.get("name"): c.find("error") for c in root.iter("testcase") if c.find("error") is not None}
    assert {name: e.get("type") for name, e in errors.items()} == {"train": "unfinished", "report": "unfinished"}
    assert "not started" in errors["report"].get("message")


def test_task_order_is_topological_then_by_task_id():
    from mlflowctl.api.airflow import Task
    from mlflowctl.runs import task_order

    dag = [Task("report"), Task("fan", ("report",)), Task("extract", ("fan", "check")), Task("check", ("report",)),
           Task("alone")]
    assert task_order(dag) == ("alone", "extract", "check", "fan", "report")


def test_run_table_follows_the_dag_order_with_mapped_instances_under_their_task():
    run = DagRun("d", "manual__2026-01-01T12:00:00+00:00", "failed", start_date=T0, duration=7.5)
    tasks = [  # as the API lists them: by task id, a mapped task's instances in any order
        _task("check", "failed", 5.25, start=1),
        _task("extract", "success", 0.5, start=0),
        TaskInstance("fan", "success", 1, map_index=1, duration=2.0),
        TaskInstance("fan", "running", 1, map_index=0),
        _task("report", "upstream_failed", 0.0, tries=0, start=7),
        _task("zombie", "removed"),  # not in the DAG any more: last
    ]
    snapshot = RunSnapshot(run, tasks, elapsed=8.0, task_order=("extract", "check", "fan", "report"))
    out = text(render.run_table(snapshot), width=80)
    lines = out.splitlines()
    assert lines[0] == "manual__2026-01-01T12:00:00+00:00  failed  (8.0s)"
    assert [line.split()[0] for line in lines[3:]] == ["extract", "check", "fan", "[0]", "[1]", "report", "zombie"]
    assert "2 mapped: 1 running, 1 success" in lines[5]
    check_row = lines[4]
    assert "failed" in check_row and "5.2s" in check_row
    # Within a live view's height, a mapped task keeps its own row only.
    short = text(render.run_table(snapshot, height=9), width=80).splitlines()
    assert [line.split()[0] for line in short[3:]] == ["extract", "check", "fan", "report", "zombie"]


def test_run_changes_are_one_line_per_change_in_dag_order():
    before = RunSnapshot(DagRun("d", "r1", "queued"), [_task("b", "none"), _task("a", "none")], 0.0, ("a", "b"))
    after = RunSnapshot(DagRun("d", "r1", "running"), [_task("b", "queued"), _task("a", "success", 1.25)], 1.0, ("a", "b"))
    assert [line.plain for line in render.run_changes(None, before)] == ["run r1 queued"]
    assert [line.plain for line in render.run_changes(before, after)] == ["run r1 running", "a success 1.2s", "b queued"]
    assert render.run_changes(after, after) == []


def test_running_task_duration_counts_from_its_start():
    running = TaskInstance("train", "running", 1, start_date=T0)
    assert render.task_seconds(running, now=T0 + timedelta(seconds=90)) == 90
    assert duration(90) == "1m30s"
    assert duration(3700) == "1h01m"
    assert duration(None) == "-"


def test_run_json_is_plain_json_with_failures():
    import json

    snapshot = _snapshot()
    data = render.run_json(snapshot, [TaskFailure(snapshot.tasks[1], ["tail"])])
    assert json.loads(json.dumps(data))["failed_tasks"] == [{"task_id": "check", "try_number": 1, "log_tail": ["tail"]}]
    assert data["start_date"] == "2026-01-01T12:00:00+00:00"
    assert [t["state"] for t in data["tasks"]] == ["success", "failed", "upstream_failed"]


def test_poll_yields_until_finished_and_times_out_on_a_fake_clock():
    from mlflowctl.errors import TimeoutExpired
    from mlflowctl.runs import poll

    now = [0.0]

    def clock():
        return now[0]

    def sleep(seconds):
        now[0] += seconds

    seen = list(poll(lambda e: e, lambda e: e >= 2, lambda e: TimeoutExpired("late"), timeout=None,
                     interval=1, clock=clock, sleep=sleep))
    assert seen == [0, 1, 2]
    now[0] = 0.0
    late = poll(lambda e: e, lambda e: False, lambda e: TimeoutExpired(f"late at {e}"), timeout=3,
                interval=1, clock=clock, sleep=sleep)
    with pytest.raises(TimeoutExpired, match="late at 3"):
        list(late)


def test_follow_shows_records_inserted_before_ones_already_shown_and_reads_once_more_after_the_end():
    """Airflow merges a running task's log sources by time: a late stdout line can land mid-log."""
    from mlflowctl.runs import LogTarget, follow_log

    a, b, c, d = (LogRecord(e, f"2026-01-01T00:00:0{i}Z", "info") for i, e in enumerate("abcd"))
    reads = iter([[a, b], [a, c, b], [a, c, b], [a, c, b, d]])  # c arrives late; d after the end
    states = iter(["running", "running", "success", "success"])

    class Server:  # a scripted server: the order a real one produces only by timing
        def task_instances(self, dag_id, run_id):
            return [TaskInstance("report", next(states), 1)]

        def task_log(self, dag_id, run_id, task_id, try_number):
            return next(reads)

    run = DagRun("d", "r", "running")
    target = LogTarget(run, TaskInstance("report", "running", 1), 1)
    chunks = list(follow_log(Server(), target, follow=True, sleep=lambda s: None))
    assert chunks == [[a, b], [c], [d]]


def test_poll_rides_out_a_busy_server_for_a_while_but_not_forever():
    from mlflowctl.errors import TimeoutExpired, UnreachableError
    from mlflowctl.runs import POLL_TOLERANCE_S, poll

    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    answers = iter([1, TimeoutExpired("slow"), UnreachableError("down"), 2])

    def fetch(elapsed):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert list(poll(fetch, lambda x: x == 2, lambda x: TimeoutExpired("late"), timeout=None, interval=1,
                     clock=lambda: now[0], sleep=sleep)) == [1, 2]

    def down_after_first(elapsed):
        if elapsed > 0:
            raise UnreachableError("down")
        return 1

    now[0] = 0.0
    with pytest.raises(UnreachableError):
        list(poll(down_after_first, lambda x: False, lambda x: TimeoutExpired("late"), timeout=None, interval=10,
                  clock=lambda: now[0], sleep=sleep))
    assert now[0] > POLL_TOLERANCE_S

    def never(elapsed):
        raise UnreachableError("wrong url")

    now[0] = 0.0
    with pytest.raises(UnreachableError):
        list(poll(never, lambda x: False, lambda x: TimeoutExpired("late"), timeout=None, interval=1,
                  clock=lambda: now[0], sleep=sleep))
    assert now[0] == 0.0


def test_bad_input_is_refused_before_any_connection(tmp_path):
    """Nothing listens at the URL: these must fail on their input, with exit 2, not exit 5."""
    from typer.testing import CliRunner

    from mlflowctl.cli.main import app

    nowhere = ["--url", "http://127.0.0.1:9", "--home", str(tmp_path)]
    cases = [
        ["trigger", "d", "--conf", "{oops"],
        ["trigger", "d", "--junit", str(tmp_path)],
        ["backfill", "d", "--start-date", "2026-02-30", "--end-date", "2026-03-01"],
        ["backfill", "d", "--start-date", "2026-03-02", "--end-date", "2026-03-01"],
        ["backfill", "d", "--start-date", "2026-03-01", "--end-date", "2026-03-02", "--reprocess", "some"],
        ["backfill", "d", "--start-date", "2026-03-01", "--end-date", "2026-03-02", "--max-active-runs", "0"],
    ]
    for args in cases:
        result = CliRunner().invoke(app, [*args, *nowhere], env={"MLWF_AIRFLOW_PASSWORD": "x"})
        assert result.exit_code == 2, (args, result.output)


def test_one_duration_format_for_runs_uptimes_and_probes():
    assert [duration(s) for s in (4.25, 59.94, 125, 3725, 2 * 86400 + 4 * 3600)] == ["4.2s", "59.9s", "2m05s", "1h02m", "2d04h"]
    assert duration(59.7, tenths=False) == "59s"  # an uptime counts whole seconds
    assert duration(0.25, millis=True) == "250ms" and duration(0.25) == "0.2s"
