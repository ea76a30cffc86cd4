"""Output that reads well anywhere (issue 21), checked on the session's real stack.

Each command's output at 80 and 120 columns: no line wider than the terminal, no identifier
(service, DAG id, task id, run id, URL, version) split or cut, tasks in the DAG's order. The
live displays run in a real pseudo-terminal of 80 x 24, read back through a terminal emulator
(pyte): they redraw in place, so nothing scrolls off the screen. Without a terminal they print
one plain line per change and the final table once. NO_COLOR, FORCE_COLOR and --quiet too.
"""

from __future__ import annotations

import re

import pytest
from rich.cells import cell_len

from conftest import UP_TIMEOUT_S
from terminal import in_terminal, screen_of

pytestmark = [pytest.mark.stack, pytest.mark.slow]

DAG = "ml_pipeline_dag"
SERVICES = ("postgres", "api-server", "scheduler", "dag-processor", "triggerer", "exporter", "prometheus")
SGR_COLOUR = re.compile(rb"\x1b\[[0-9;]*3[0-9][;m]")  # a foreground colour
CURSOR_MOVES = re.compile(rb"\x1b\[\d*[AFK]")  # up, previous line, erase line: a redraw


def at(stack, width: int, *args: str, env: dict | None = None, timeout: float = 300):
    return stack.mlwf(*args, env={"COLUMNS": str(width), **(env or {})}, timeout=timeout)


def assert_fits(text: str, width: int) -> None:
    wide = [line for line in text.splitlines() if cell_len(line.rstrip()) > width]
    assert not wide, f"lines wider than {width}:\n" + "\n".join(wide)


def assert_whole(text: str, *identifiers: str) -> None:
    """Each identifier appears in full on one line (not cut with an ellipsis, not wrapped)."""
    lines = text.splitlines()
    for identifier in identifiers:
        assert any(identifier in line for line in lines), f"{identifier!r} is not whole in:\n{text}"


def dag_order(stack) -> list[str]:
    """The DAG's tasks upstream first, read from the API here (not through mlwf)."""
    import httpx

    tasks = httpx.get(f"{stack.url}/api/v2/dags/{DAG}/tasks", headers={"Authorization": f"Bearer {stack.token()}"},
                      timeout=30).json()["tasks"]
    downstream = {t["task_id"]: set(t["downstream_task_ids"]) for t in tasks}
    order: list[str] = []
    while len(order) < len(downstream):
        ready = sorted(t for t in downstream if t not in order
                       and all(t not in downstream[u] for u in downstream if u not in order))
        order.extend(ready)
    return order


def triggered_run(text: str) -> str:
    return re.search(r"run (manual__\S+)", text).group(1)


@pytest.mark.parametrize("width", [80, 120])
def test_status_fits_and_keeps_every_service_and_url_whole(stack, width):
    result = at(stack, width, "status")
    assert result.returncode == 0, result.stderr
    assert_fits(result.stdout, width)
    urls = [f"http://127.0.0.1:{stack.ports['airflow_port']}", f"http://127.0.0.1:{stack.ports['exporter_port']}/metrics"]
    assert_whole(result.stdout, *SERVICES, *urls, DAG, "monitoring_dag")
    assert "…" not in "".join(line for line in result.stdout.splitlines() if any(s in line for s in SERVICES[:5]))
    wide = at(stack, width, "status", "--wide")  # every column: pid, uptime, port and URL in the table
    header = next(line for line in wide.stdout.splitlines() if line.split()[:1] == ["service"])
    assert header.split() == ["service", "state", "pid", "uptime", "port", "url", "detail"]


@pytest.mark.parametrize("width", [80, 120])
def test_dags_health_and_config_fit(stack, width):
    for args, identifiers in (
        (("dags",), (DAG, "monitoring_dag")),
        (("health",), ("airflow api", stack.url)),
        (("config",), (str(stack.home),)),
    ):
        result = at(stack, width, *args)
        assert result.returncode in (0, 9), result.stderr  # health may be degraded on a fresh stack
        assert_fits(result.stdout.replace(str(stack.home), "HOME"), width)  # a path longer than the width stays whole
        assert_whole(result.stdout, *identifiers)


def test_trigger_wait_in_a_ci_log_prints_a_line_per_change_then_the_table_once(stack):
    order = dag_order(stack)
    result = at(stack, 80, "trigger", DAG, "--unpause", "--wait", env={"FORCE_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    run_id = triggered_run(result.stdout)
    # FORCE_COLOR: colours, yet a pipe: never a redraw.
    assert "\x1b[3" in result.stderr and not CURSOR_MOVES.search(result.stderr.encode())
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stderr)
    done = [line.split()[0] for line in plain.splitlines() if re.fullmatch(r"\S+ success \d+(\.\d)?s", line)]
    assert done == order  # each task's end, once, with its duration, in the DAG's order
    assert f"run {run_id} success" in plain
    out = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert out.count(run_id) == 2  # "triggered ..." and the final table's title, once
    rows = [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0] in order]
    assert rows == order
    assert_fits(out, 80)


def test_trigger_wait_redraws_in_place_in_an_80x24_terminal(stack):
    order = dag_order(stack)
    ran = in_terminal(stack, "trigger", DAG, "--unpause", "--wait")
    assert ran.code == 0, ran.shown.decode(errors="replace")
    assert CURSOR_MOVES.search(ran.shown), "no redraw: was the live view on?"
    screen = screen_of(ran.shown)
    assert not screen.history.top, "lines scrolled off the 24-line screen"
    lines = [line.rstrip() for line in screen.display]
    run_id = triggered_run("\n".join(lines))
    assert_whole("\n".join(lines), run_id, *order)
    assert [line.split()[0] for line in lines if line.split() and line.split()[0] in order] == order


def test_up_on_a_running_stack_fits_an_80x24_terminal_and_no_color_is_honoured(stack):
    ran = in_terminal(stack, "up", env={"NO_COLOR": "1"})
    assert ran.code == 0, ran.shown.decode(errors="replace")
    assert not SGR_COLOUR.search(ran.shown)
    screen = screen_of(ran.shown)
    assert not screen.history.top
    text = "\n".join(line.rstrip() for line in screen.display)
    assert_whole(text, *SERVICES, f"Airflow UI: {stack.url}", "`mlwf password`")
    ran = in_terminal(stack, "status")  # colours by default on a terminal
    assert ran.code == 0 and SGR_COLOUR.search(ran.shown)


def test_up_of_a_fresh_stack_redraws_in_place_in_an_80x24_terminal(make_stack):
    fresh = make_stack()
    try:
        ran = in_terminal(fresh, "up", "--timeout", str(UP_TIMEOUT_S - 20), timeout=UP_TIMEOUT_S)
        assert ran.code == 0, ran.shown.decode(errors="replace")
        assert CURSOR_MOVES.search(ran.shown), "no redraw: was the live view on?"
        screen = screen_of(ran.shown)
        assert not screen.history.top, "lines scrolled off the 24-line screen"
        text = "\n".join(line.rstrip() for line in screen.display)
        assert_whole(text, *SERVICES, f"Airflow UI: {fresh.url}")
        states = {row[0]: row[1] for row in map(str.split, text.splitlines()) if len(row) > 2 and row[0] in SERVICES}
        assert states == dict.fromkeys(SERVICES, "healthy"), text
    finally:
        fresh.down_and_check()


def test_backfill_wait_redraws_in_place_in_an_80x24_terminal(stack, smoke):
    stack.mlwf("unpause", smoke, check=True)  # a new DAG is paused, and so would its backfill runs be
    ran = in_terminal(stack, "backfill", smoke, "--start-date", "2023-05-01", "--end-date", "2023-05-03",
                      "--max-active-runs", "2", "--wait", timeout=300)
    assert ran.code == 0, ran.shown.decode(errors="replace")
    assert CURSOR_MOVES.search(ran.shown), "no redraw: was the live view on?"
    screen = screen_of(ran.shown)
    assert not screen.history.top, "lines scrolled off the 24-line screen"
    text = "\n".join(line.rstrip() for line in screen.display)
    assert "3/3 runs ended, 0 failed" in text
    runs = re.findall(r"^2023-05-0([123]) 00:00:00\s+(backfill__\S+)\s+success", text, re.M)
    assert [day for day, _ in runs] == ["1", "2", "3"], text
    assert_whole(text, *(run_id for _, run_id in runs))


def test_health_watch_redraws_in_place_in_an_80x24_terminal_until_ctrl_c(stack):
    # Ctrl-C once a refresh erases the view (rich's Live erases each line it redraws): without a
    # live view that never comes and in_terminal fails
    ran = in_terminal(stack, "health", "--watch", "--interval", "1", interrupt_on=b"\x1b[2K", timeout=120)
    assert ran.code in (0, 9), ran.shown.decode(errors="replace")  # 9: degraded, as a fresh stack may be
    live = screen_of(ran.before_interrupt)
    assert not live.history.top, "the live view scrolled off the 24-line screen"
    assert_fits("\n".join(live.display), 80)
    after = ran.shown[len(ran.before_interrupt):]
    assert b"health: " in after  # the full report, once, after Ctrl-C


def test_quiet_prints_only_the_run_id_and_the_reason_of_a_failure(stack):
    result = at(stack, 80, "trigger", DAG, "--wait", "--quiet")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"manual__\S+\n", result.stdout) and result.stderr == ""
    result = at(stack, 80, "trigger", "no_such_dag", "--quiet")
    assert result.returncode == 4 and result.stdout == ""
    assert result.stderr.startswith("error: DAG 'no_such_dag' not found")
    result = at(stack, 80, "status", "--quiet")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


@pytest.mark.parametrize("width", [80, 120])
def test_status_of_a_dag_and_the_model_registry_fit(stack, width):
    if at(stack, width, "models", "list").stdout.count(" v0") < 2:  # two versions to diff
        for _ in range(2):
            assert at(stack, width, "trigger", DAG, "--unpause", "--wait", "--quiet").returncode == 0
    order = dag_order(stack)
    result = at(stack, width, "status", DAG)
    assert result.returncode == 0, result.stderr
    assert_fits(result.stdout, width)
    runs = re.findall(r"^((?:manual|scheduled)__\S+)", result.stdout, re.M)
    assert runs, result.stdout
    assert_whole(result.stdout, *runs)
    tasks_part = result.stdout.split("tasks of ", 1)[1]
    assert [line.split()[0] for line in tasks_part.splitlines() if line.split() and line.split()[0] in order] == order
    for args in (("models", "list"), ("models", "show", "1"), ("models", "diff", "1", "2"), ("models", "events")):
        result = at(stack, width, *args)
        assert result.returncode == 0, result.stderr
        registry = str(stack.home / "data" / "registry")
        assert_fits(result.stdout.replace(registry, "REGISTRY"), width)
        assert_whole(result.stdout, "v0001")
    shown = at(stack, width, "models", "show", "1").stdout
    assert re.search(r"^\s+[0-9a-f]{64}$|\s[0-9a-f]{64}$", shown, re.M)  # the sha256 whole, never cut
