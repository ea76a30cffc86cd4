"""The state directory and the stack's processes under mistakes, races and damage.

Every destructive path runs on folders this test made: a sacrificial project, a fake home
(HOME points at a temporary folder), sentinel files that must survive. `/` and real homes
are only ever handed to the guard function, which deletes nothing itself.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from mlflowctl import state
from mlflowctl.backends import processes
from mlflowctl.backends.local.postgres import _private_folder, remove_data
from mlflowctl.config import load_config
from mlflowctl.errors import DamagedStateError, UsageError
from conftest import MLWF, stack_processes, stack_sessions

DOCUMENTED_EXIT_CODES = set(range(0, 17))


def _project(tmp_path: Path) -> tuple[Path, dict]:
    """A sacrificial project: mlwf.toml, a sentinel file, and an environment without MLWF_*."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "mlwf.toml").write_text('backend = "local"\n')
    (project / "sentinel.txt").write_text("must survive")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLWF_", "AIRFLOW"))}
    fake_home = tmp_path / "fake-home"
    fake_home.mkdir()
    (fake_home / "sentinel.txt").write_text("must survive")
    env.update({"HOME": str(fake_home), "USER": "mlwf-test-nobody", "COLUMNS": "200"})
    env.pop("SUDO_USER", None)
    return project, env


def _mlwf(project: Path, env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MLWF, *args], cwd=project, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


# ----------------------------------------------------------------------------- 1. deleting only what is ours


@pytest.mark.parametrize(
    "how",
    ["empty MLWF_HOME", "empty --home", "the project root", "a parent of the project", "the user's home", "a link to the project"],
)
def test_down_volumes_refuses_what_is_not_a_state_directory(tmp_path, how):
    project, env = _project(tmp_path)
    fake_home = Path(env["HOME"])
    args = ["down", "--volumes", "--yes"]
    if how == "empty MLWF_HOME":
        env["MLWF_HOME"] = ""
    elif how == "empty --home":
        args += ["--home", ""]
    elif how == "the project root":
        args += ["--home", str(project)]
    elif how == "a parent of the project":
        args += ["--home", str(tmp_path)]
    elif how == "the user's home":
        args += ["--home", str(fake_home)]
    else:
        (tmp_path / "link").symlink_to(project)
        args += ["--home", str(tmp_path / "link")]
    for target in (project, tmp_path, fake_home):  # even a marker planted there does not help
        state.mark(target)

    result = _mlwf(project, env, *args)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: ")
    assert (project / "sentinel.txt").read_text() == "must survive"
    assert (fake_home / "sentinel.txt").read_text() == "must survive"


def test_down_volumes_refuses_a_folder_mlwf_did_not_create(tmp_path):
    project, env = _project(tmp_path)
    foreign = tmp_path / "someone-elses"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    result = _mlwf(project, env, "down", "--volumes", "--yes", "--home", str(foreign))
    assert result.returncode == 2 and "no .mlwf-state marker" in result.stderr
    assert (foreign / "thesis.tex").exists()
    # `up` will not move into it either.
    result = _mlwf(project, env, "up", "--home", str(foreign), "--timeout", "5")
    assert result.returncode == 2 and "not an mlwf state directory" in result.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]


def test_the_guard_refuses_root_and_homes_without_touching_them(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for forbidden in (Path("/"), Path.home(), project, project.parent):
        with pytest.raises(UsageError, match="refusing"):
            state.check_removable(forbidden, project)
    with pytest.raises(UsageError, match="home=''.*MLWF_HOME.*must not be empty"):
        load_config({}, cwd=project, environ={"MLWF_HOME": ""})


def test_a_state_directory_is_created_private_and_marked(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    home = state.ensure_home(project / ".mlwf", project)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert state.is_ours(home)
    state.remove_tree(home, project)
    assert not home.exists() and project.exists()


def test_a_state_directory_from_an_older_mlwf_is_adopted(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    old = project / ".mlwf"
    old.mkdir(mode=0o755)
    (old / "secrets.json").write_text("{}")
    state.ensure_home(old, project)
    assert state.is_ours(old) and stat.S_IMODE(old.stat().st_mode) == 0o700


def test_postgres_data_outside_the_home_is_deleted_only_when_marked(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "mlwf.toml").write_text("")
    config = load_config({"home": str(project / ".mlwf")}, cwd=project, environ={})
    state.ensure_home(config.home_dir, project)
    unmarked = tmp_path / "pg-unmarked"
    unmarked.mkdir()
    (unmarked / "PG_VERSION").write_text("15")
    (config.home_dir / "executor.json").write_text(json.dumps({"executor": "celery", "postgres_dir": str(unmarked)}))
    assert "kept" in remove_data(config) and (unmarked / "PG_VERSION").exists()
    state.mark(unmarked)
    assert "deleted" in remove_data(config) and not unmarked.exists()


# ----------------------------------------------------------------------------- 5. safe temporary places


def test_postgres_folder_is_made_fresh_or_refused_when_planted(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    fresh = tmp_path / "fresh"
    _private_folder(fresh, None, inside=home)
    assert stat.S_IMODE(os.lstat(fresh).st_mode) == 0o700 and state.is_ours(fresh)
    _private_folder(fresh, None, inside=home)  # ours: accepted again

    planted_link = tmp_path / "link"
    planted_link.symlink_to(fresh)
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    state.mark(loose)
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    state.mark(foreign)
    os.chown(foreign, 65534, 65534)  # nobody made it
    unmarked = tmp_path / "unmarked"
    unmarked.mkdir(mode=0o700)
    for planted in (planted_link, loose, foreign, unmarked):
        with pytest.raises(Exception, match="mlwf did not make it"):
            _private_folder(planted, None, inside=home)


def test_a_state_file_replaces_a_planted_link_with_the_mode_asked(tmp_path):
    """write_durably: 0600 unless told (JUnit reports are 0644); a link at the target is
    replaced, never written through; no temporary file is left beside it."""
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("must survive")
    home = tmp_path / "home"
    home.mkdir()
    record = home / "executor.json"
    record.symlink_to(elsewhere)
    previous = os.umask(0o022)
    try:
        state.write_durably(record, '{"executor": "local"}')
        state.write_durably(home / "report.xml", "<testsuites/>", mode=0o644)
    finally:
        os.umask(previous)
    assert not record.is_symlink() and record.read_text() == '{"executor": "local"}'
    assert elsewhere.read_text() == "must survive"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "report.xml").stat().st_mode) == 0o644
    assert sorted(p.name for p in home.iterdir()) == ["executor.json", "report.xml"]


# ----------------------------------------------------------------------------- 2. signalling only our processes


def test_a_record_from_before_a_reboot_is_discarded(tmp_path):
    me = psutil.Process()
    path = tmp_path / "run" / "scheduler.pid"
    processes.write_pid_file(path, processes.PidRecord(me.pid, me.create_time(), [], boot_id="another-boot"))
    assert processes.read_pid_file(path) is None and not path.exists()
    processes.write_pid_file(path, processes.PidRecord(me.pid, me.create_time(), []))
    assert processes.read_pid_file(path).process() is not None


def test_a_pid_alive_with_another_start_time_is_never_signalled(tmp_path):
    sleeper = subprocess.Popen(["setsid", "--wait", "sleep", "300"], stdin=subprocess.DEVNULL)
    try:
        leader = _session_leader_of(sleeper.pid)
        wrong = processes.PidRecord(leader.pid, leader.create_time() - 50, ["airflow", "scheduler"])
        assert processes.stop_session(wrong, grace=0.5, second_grace=0.5) == processes.NOT_OURS
        assert leader.is_running() and leader.status() != psutil.STATUS_ZOMBIE
    finally:
        _kill(sleeper)


def _kill(sleeper: subprocess.Popen) -> None:
    for process in psutil.Process(sleeper.pid).children():
        process.kill()
    sleeper.kill()
    sleeper.wait()


def test_the_marker_sweep_spares_mlwf_and_its_ancestors(tmp_path):
    """A marked process that runs the sweep (as `mlwf down` run from a task would) finds
    neither itself nor its marked parent, but does find a marked sibling."""
    code = (
        "import json, subprocess, sys, time\n"
        "from mlflowctl.backends.processes import marked_processes\n"
        "sibling = subprocess.Popen(['sleep', '30'])\n"
        "time.sleep(0.3)\n"
        "child = subprocess.run([sys.executable, '-c', 'import json; from mlflowctl.backends.processes import marked_processes; "
        "print(json.dumps([p.pid for p in marked_processes(\"X\")]))'], capture_output=True, text=True)\n"
        "print(json.dumps({'me': __import__('os').getpid(), 'sibling': sibling.pid, 'found': json.loads(child.stdout)}))\n"
        "sibling.kill()\n"
    )
    env = {**os.environ, processes.STACK_MARKER: "X"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    facts = json.loads(result.stdout)
    assert facts["sibling"] in facts["found"]
    assert facts["me"] not in facts["found"]


# ----------------------------------------------------------------------------- 3. one writer at a time


def test_a_second_writer_waits_then_gives_up_with_its_code(tmp_path):
    project, env = _project(tmp_path)
    home = project / ".mlwf"
    holder_code = (
        "import sys, time; from pathlib import Path; from mlflowctl.state import locked\n"
        f"with locked(Path({str(home)!r}), Path({str(project)!r}), command='mlwf up', wait=5):\n"
        "    print('held', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", holder_code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        result = _mlwf(project, {**env, "MLWF_LOCK_WAIT": "1.5"}, "down")
        waited = time.monotonic() - started
        assert result.returncode == 15, result.stderr
        assert f"waiting for `mlwf up` (pid {holder.pid})" in result.stderr
        assert "gave up after 2 s" in result.stderr and waited >= 1.5
    finally:
        holder.kill()
        holder.wait()
    # Released by the holder's death: the next writer goes through at once.
    assert _mlwf(project, env, "down").returncode == 0


def test_the_lock_follows_a_state_directory_deleted_while_waiting(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    home = project / ".mlwf"
    order = []
    with state.locked(home, project, command="mlwf down --volumes", wait=5):
        waiter = threading.Thread(
            target=lambda: order.append(_hold_briefly(home, project)),
        )
        waiter.start()
        time.sleep(0.5)
        state.remove_tree(home, project)  # what `down --volumes` does while holding the lock
    waiter.join(10)
    assert order == ["held a live lock file"]


def _hold_briefly(home: Path, project: Path) -> str:
    with state.locked(home, project, command="mlwf up", wait=5) as held:
        lock = held / state.LOCK_FILE
        return "held a live lock file" if lock.exists() and state.is_ours(held) else "held a deleted file"


# ----------------------------------------------------------------------------- 4. damaged state files


DAMAGES = {"emptied": "", "truncated": '{"admin_pass', "a JSON list": "[1, 2]"}


@pytest.mark.parametrize("name", ["secrets.json", "executor.json", "run/scheduler.pid", "token.json"])
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_state_file_is_one_line_and_loses_nothing(tmp_path, name, damage):
    project, env = _project(tmp_path)
    home = state.ensure_home(project / ".mlwf", project)
    from mlflowctl.secrets import load_or_create

    load_or_create(home)
    (home / "executor.json").write_text(json.dumps({"executor": "local", "workers": 2}))
    me = psutil.Process()
    processes.write_pid_file(home / "run" / "scheduler.pid", processes.PidRecord(1 << 22, me.create_time(), []))
    (home / "token.json").write_text("{}")
    (home / "data").mkdir()
    (home / "data" / "keep.parquet").write_text("precious")
    (home / name).write_text(DAMAGES[damage])
    kept = {p: p.read_bytes() for p in home.rglob("*") if p.is_file() and p.name not in (state.LOCK_FILE, "token.json")}
    env["MLWF_AIRFLOW_URL"] = "http://127.0.0.1:9"  # nothing listens: `dags` cannot reach a server

    for command in (["status"], ["dags"], ["config"], ["down"]):
        result = _mlwf(project, env, *command, timeout=60)
        assert "Traceback" not in result.stderr + result.stdout, (command, result.stderr)
        assert result.returncode in DOCUMENTED_EXIT_CODES, (command, result.returncode, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) <= 1, result.stderr
        if result.returncode == 16:
            assert name.split("/")[-1] in errors[0]
    # down removed only the damaged pid file; nothing else was touched.
    for path, content in kept.items():
        if path.name != "scheduler.pid":
            assert path.read_bytes() == content, path


def test_damaged_secrets_and_executor_record_are_errors_not_defaults(tmp_path):
    project, env = _project(tmp_path)
    home = state.ensure_home(project / ".mlwf", project)
    (home / "executor.json").write_text("[]")
    result = _mlwf(project, env, "status")
    assert result.returncode == 16 and "executor.json is damaged: it holds a JSON list" in result.stderr
    (home / "executor.json").write_text(json.dumps({"executor": "local"}))
    (home / "secrets.json").write_text('{"admin_pass')
    result = _mlwf(project, env, "config", "--show-password")
    assert result.returncode == 16 and "secrets.json is damaged" in result.stderr


def test_secrets_are_checked_against_the_passwords_file(tmp_path):
    from mlflowctl.secrets import PASSWORDS_FILE, load_or_create

    project = tmp_path / "project"
    project.mkdir()
    home = state.ensure_home(project / ".mlwf", project)
    first = load_or_create(home)
    (home / PASSWORDS_FILE).unlink()
    assert load_or_create(home) == first
    assert json.loads((home / PASSWORDS_FILE).read_text()) == {"admin": first.admin_password}
    (home / PASSWORDS_FILE).write_text('{"admin": "something else"}')
    load_or_create(home)
    assert json.loads((home / PASSWORDS_FILE).read_text()) == {"admin": first.admin_password}
    for path in (home / "secrets.json", home / PASSWORDS_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Secrets gone beside existing metadata: refused, never silently replaced.
    (home / "airflow").mkdir()
    (home / "airflow" / "airflow.db").write_text("")
    (home / "secrets.json").unlink()
    with pytest.raises(DamagedStateError, match="secrets.json is missing"):
        load_or_create(home)


# ----------------------------------------------------------------------------- a real stack: race, modes, foreign pid


@pytest.mark.stack
@pytest.mark.slow
def test_two_ups_at_once_a_private_stack_and_a_foreign_pid_left_alone(make_stack):
    stack = make_stack()
    sleeper = subprocess.Popen(["setsid", "--wait", "sleep", "600"], stdin=subprocess.DEVNULL)
    try:
        foreign = _session_leader_of(sleeper.pid)
        state.ensure_home(stack.home, stack.project)
        for service in ("scheduler", "triggerer"):
            processes.write_pid_file(
                stack.home / "run" / f"{service}.pid",
                processes.PidRecord(foreign.pid, foreign.create_time() - 3600, ["airflow", service]),
            )
        assert stack.mlwf("down", timeout=120).returncode == 0
        assert foreign.is_running(), "down signalled a process that is not the stack's"

        ups = [
            subprocess.Popen(
                [MLWF, "up", "--timeout", "200"], cwd=stack.project, env=stack.env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        outcomes = [(up.wait(timeout=260), up.stderr.read()) for up in ups]
        assert [code for code, _ in outcomes] == [0, 0], outcomes
        assert any("waiting for `mlwf up`" in err for _, err in outcomes), outcomes
        assert any("already running" in err for _, err in outcomes), outcomes
        assert foreign.is_running(), "up signalled a process that is not the stack's"

        # One process per service: every pid file names a live leader of its own session.
        leaders = {}
        for path in (stack.home / "run").glob("*.pid"):
            record = processes.read_pid_file(path)
            assert record is not None and record.process() is not None, path
            leaders[path.stem] = record.pid
        assert len(set(leaders.values())) == len(leaders)
        for service in ("api-server", "scheduler", "dag-processor", "triggerer"):
            commands = [
                p for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] and f"airflow {service}" in " ".join(p.info["cmdline"])
                and os.getsid(p.pid) in stack_sessions(stack.home) and os.getsid(p.pid) == p.pid
            ]
            assert len(commands) <= 1, service
        # One set of secrets every component shares: the generated password logs in.
        assert stack.token()

        # Private state: the directory, secrets and every log.
        assert stat.S_IMODE(stack.home.stat().st_mode) == 0o700
        for path in [stack.home / "secrets.json", *stack.home.glob("logs/*.log")]:
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
        sessions = stack_sessions(stack.home)
        assert stack.mlwf("down", timeout=120).returncode == 0
        deadline = time.monotonic() + 10
        while stack_processes(stack.home, sessions, stack.project) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stack_processes(stack.home, sessions, stack.project) == []
        assert foreign.is_running()
    finally:
        _kill(sleeper)


def _session_leader_of(pid: int) -> psutil.Process:
    """`setsid --wait` forks when it already leads a group: the sleep is the session's leader."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for process in [psutil.Process(pid), *psutil.Process(pid).children()]:
            if os.getsid(process.pid) == process.pid and process.name() == "sleep":
                return process
        time.sleep(0.05)
    raise AssertionError("the sleep did not start its own session")


def test_the_suite_removes_only_postgres_data_its_own_stacks_left_outside(tmp_path):
    """The session's clean-up (conftest.remove_postgres_left_outside) deletes folders under the
    temp directory: only one a state directory under its root records, named and marked as mlwf
    makes it, with no process working in it."""
    import tempfile

    from conftest import remove_postgres_left_outside
    from mlflowctl.state import mark

    root = tmp_path / "root"
    made = {name: Path(tempfile.mkdtemp(prefix=f"mlwf-postgres-test-{name}-")) for name in ("left", "unmarked", "busy")}
    outside = tmp_path / "elsewhere" / "mlwf-postgres-x"
    outside.mkdir(parents=True)
    for folder in (made["left"], made["busy"], outside):
        mark(folder)
    for index, folder in enumerate([*made.values(), outside]):
        home = root / f"home{index}"
        home.mkdir(parents=True)
        (home / "executor.json").write_text(json.dumps({"postgres_dir": str(folder)}))
    unrecorded = Path(tempfile.mkdtemp(prefix="mlwf-postgres-test-unrecorded-"))
    mark(unrecorded)
    working = subprocess.Popen(["sleep", "30"], cwd=made["busy"])
    try:
        assert remove_postgres_left_outside(root) == [made["left"]]
        assert not made["left"].exists()
        assert made["unmarked"].is_dir() and made["busy"].is_dir() and outside.is_dir() and unrecorded.is_dir()
    finally:
        working.kill()
        working.wait()
        for folder in (*made.values(), unrecorded):
            shutil.rmtree(folder, ignore_errors=True)
