"""The local backend's parts against real processes, sockets and files (no stack needed)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from mlflowctl.backends import processes, runtime, choose
from mlflowctl.backends.base import ServiceStatus, StackStatus
from mlflowctl.backends.local.backend import LocalBackend
from mlflowctl.backends.local.logs import follow_logs, tail_lines
from mlflowctl.backends.ports import PortNeed, check_free
from mlflowctl.config import load_config
from mlflowctl.errors import DamagedStateError, PortInUseError
from mlflowctl.render.durations import duration
from mlflowctl.render.stack import services_table
from mlflowctl.state import ensure_home

MLWF = str(Path(sys.executable).parent / "mlwf")


def _start(tmp_path: Path, script: str):
    return processes.start_detached(
        ["sh", "-c", script], env=dict(os.environ), cwd=tmp_path, log_path=tmp_path / "logs" / "svc.log"
    )


# ------------------------------------------------------------------ processes


def test_detached_session_is_stopped_whole_and_its_pid_file_then_is_stale(tmp_path):
    popen, record = _start(tmp_path, "sleep 60 & sleep 60 & echo started; wait")
    pid_file = tmp_path / "run" / "svc.pid"
    processes.write_pid_file(pid_file, record)
    assert os.getsid(popen.pid) == popen.pid  # its own session
    deadline = time.monotonic() + 5
    while len(processes.session_members(popen.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(processes.session_members(popen.pid)) == 3
    assert processes.live_record(pid_file) == record

    assert processes.stop_session(record, grace=5, popen=popen) == "terminated"
    assert processes.session_members(popen.pid) == []
    assert processes.live_record(pid_file) is None and not pid_file.exists()
    assert "started" in (tmp_path / "logs" / "svc.log").read_text()


def test_children_in_their_own_group_are_stopped_after_the_leader_was_killed(tmp_path):
    # Airflow's task supervisor puts each task into a process group of its own (setpgid).
    mover = f"{sys.executable} -c 'import os, time; os.setpgid(0, 0); time.sleep(60)'"
    popen, record = _start(tmp_path, f"{mover} & {mover} & wait")
    deadline = time.monotonic() + 10
    groups: set[int] = set()
    while len(groups) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        groups = {os.getpgid(p.pid) for p in processes.session_members(popen.pid)}
    assert len(groups) == 3
    os.kill(popen.pid, 9)
    popen.wait()
    assert processes.PidRecord(record.pid, record.create_time, []).process() is None
    assert len(processes.session_members(popen.pid, since=record.create_time)) == 2
    assert processes.stop_session(record, grace=5) == "terminated"
    assert processes.session_members(popen.pid) == []


def test_a_session_ignoring_term_is_killed(tmp_path):
    popen, record = _start(tmp_path, "trap '' TERM; sleep 60 & wait; sleep 60")
    time.sleep(0.3)
    outcome = processes.stop_session(record, grace=0.5, second_grace=0.5, popen=popen)
    assert outcome == "killed"
    assert processes.session_members(popen.pid) == []


FORKER = """
import os, sys, time
def fork(detach):
    if os.fork() == 0:
        if detach:
            os.setsid()
        time.sleep(120)
        os._exit(0)
fork(True); fork(True); fork(False)  # two services in sessions of their own, one not yet detached
print("forked", flush=True)
time.sleep(120)
"""


def test_a_launcher_that_times_out_is_stopped_with_everything_it_forked(tmp_path):
    """What `up` does when its deadline passes while the launcher runs (migration, forks)."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", FORKER], stdout=subprocess.PIPE, start_new_session=True, cwd=tmp_path
    )
    lines = processes.read_lines(launcher.stdout, time.monotonic() + 30)
    assert next(lines) == "forked"
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        processes.read_lines(launcher.stdout, time.monotonic() + 0.5).__next__()
    assert 0.4 < time.monotonic() - started < 5  # a silent child: the wait ends at its deadline
    forked = psutil.Process(launcher.pid).children()
    assert len(forked) == 3 and len({os.getsid(child.pid) for child in forked}) == 3

    processes.stop_forker(launcher)
    assert launcher.returncode is not None
    assert not [child for child in forked if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
    launcher.stdout.close()


def test_reused_pid_is_not_trusted():
    me = psutil.Process()
    genuine = processes.PidRecord(me.pid, me.create_time(), me.cmdline())
    assert genuine.process() is not None
    reused = processes.PidRecord(me.pid, me.create_time() - 100, me.cmdline())
    assert reused.process() is None


def test_pid_file_of_a_dead_process_is_stale(tmp_path):
    child = subprocess.Popen(["true"])
    created = psutil.Process(child.pid).create_time()
    child.wait()
    path = tmp_path / "dead.pid"
    processes.write_pid_file(path, processes.PidRecord(child.pid, created, ["true"]))
    assert processes.live_record(path) is None
    (tmp_path / "garbage.pid").write_text("not json")
    with pytest.raises(DamagedStateError, match="garbage.pid is damaged"):
        processes.live_record(tmp_path / "garbage.pid")


def test_sigint_is_restored_in_the_child_even_when_the_parent_ignores_it(tmp_path):
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        popen, _ = _start(tmp_path, "sleep 30")
    finally:
        signal.signal(signal.SIGINT, previous)
    time.sleep(0.2)
    os.killpg(popen.pid, signal.SIGINT)
    assert popen.wait(timeout=5) == -signal.SIGINT


# ------------------------------------------------------------------ ports


def test_taken_tcp_port_is_named_with_its_holder():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(PortInUseError) as error:
            check_free([PortNeed("scheduler log server", "log_server_port", port, wildcard=True)])
    message = str(error.value)
    assert f"port {port}/TCP" in message and "scheduler log server" in message
    assert f"pid {os.getpid()}" in message and "MLWF_LOG_SERVER_PORT" in message
    assert error.value.exit_code == 10


def test_taken_udp_port_is_found_and_free_ports_pass():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"{port}/UDP"):
            check_free([PortNeed("statsd", "statsd_port", port, udp=True)])
    check_free([PortNeed("statsd", "statsd_port", port, udp=True)])  # released: no error


# ------------------------------------------------------------------ runtime


def test_runtime_key_ignores_comments_and_order_but_not_versions():
    base = runtime.runtime_key("apache-airflow==3.3.2\npandas==3.1.1\n")
    assert runtime.runtime_key("# pinned\npandas==3.1.1  # data\napache-airflow==3.3.2\n") == base
    assert runtime.runtime_key("apache-airflow==3.3.2\npandas==3.1.0\n") != base


def test_this_interpreter_is_used_when_it_has_airflow_33(tmp_path):
    found = runtime.find_runtime(tmp_path)
    assert found.managed is False and found.version.startswith("3.3.")
    assert Path(found.airflow).exists()


def test_managed_runtime_is_built_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("MLWF_CACHE_DIR", str(tmp_path / "cache"))
    lines: list[str] = []
    target = runtime.cache_root() / runtime.runtime_key("")
    runtime.build_managed("", target, lines.append)
    assert (target / "bin" / "python").exists() and (target / runtime.COMPLETE_MARKER).exists()
    assert lines, "building reports progress"
    inode = (target / runtime.COMPLETE_MARKER).stat().st_ino
    # Without Airflow in it, the runtime is refused with a clear message, and not rebuilt.
    monkeypatch.setattr(runtime, "current_runtime", lambda: None)
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "runtime.txt").write_text("")
    with pytest.raises(runtime.MissingDependencyError, match="needs 3.3"):
        runtime.find_runtime(tmp_path)
    assert (target / runtime.COMPLETE_MARKER).stat().st_ino == inode


# ------------------------------------------------------------------ logs


def test_tail_reads_only_the_last_lines_of_a_large_file(tmp_path):
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {i}\n" for i in range(50_000)))
    assert tail_lines(path, 3) == ["line 49997", "line 49998", "line 49999"]
    assert tail_lines(path, 0) == [] and tail_lines(tmp_path / "missing.log", 5) == []


def test_all_logs_are_interleaved_by_timestamp_with_a_prefix(tmp_path):
    (tmp_path / "a.log").write_text("2026-11-25T08:00:01Z a1\ncontinued\n2026-11-25T08:00:03Z a3\n")
    (tmp_path / "bb.log").write_text("2026-11-25T08:00:02Z b2\n")
    lines = list(follow_logs({"a": tmp_path / "a.log", "bb": tmp_path / "bb.log"}, tail=10, follow=False, prefix=True))
    assert lines == [
        "a  | 2026-11-25T08:00:01Z a1",
        "a  | continued",
        "bb | 2026-11-25T08:00:02Z b2",
        "a  | 2026-11-25T08:00:03Z a3",
    ]


def test_follow_yields_lines_written_later(tmp_path):
    path = tmp_path / "s.log"
    path.write_text("old\n")
    lines = follow_logs({"s": path}, tail=1, follow=True, prefix=False)
    assert next(lines) == "old"

    def write():
        time.sleep(0.3)
        with open(path, "a") as handle:
            handle.write("new\n")

    threading.Thread(target=write).start()
    assert next(lines) == "new"
    lines.close()


# ------------------------------------------------------------------ backend selection and rendering


def test_backend_choice_flag_then_recorded_then_auto(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-daemon.sock'}")
    (tmp_path / "mlwf.toml").write_text("")
    config = load_config({}, cwd=tmp_path, environ={})
    assert choose.choose(config) == ("local", "auto: no Docker daemon answers")
    choose.record_backend(config, "docker")
    assert choose.choose(config)[0] == "docker"
    explicit = load_config({"backend": "local"}, cwd=tmp_path, environ={})
    assert choose.choose(explicit) == ("local", "backend=local from flag")


def test_docker_ping_on_a_socket_that_answers(tmp_path, monkeypatch):
    path = str(tmp_path / "d.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()

    def answer():  # the one reply a daemon gives to GET /_ping
        connection, _ = server.accept()
        connection.recv(1024)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        connection.close()

    threading.Thread(target=answer, daemon=True).start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    assert choose.docker_answers() is True
    server.close()


def test_services_table_renders_states_and_uptime():
    services = [
        ServiceStatus("api-server", "healthy", pid=12, port=8080, url="http://127.0.0.1:8080", uptime_seconds=3725),
        ServiceStatus("scheduler", "stopped", detail="stale pid file"),
    ]
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(services_table(services, backend="local"))
    text = console.file.getvalue()
    assert "api-server" in text and "healthy" in text and "1h02m" in text and "stale pid file" in text
    assert duration(59, tenths=False) == "59s" and duration(None) == "-"
    assert StackStatus("local", services).healthy is False


# ------------------------------------------------------------------ commands without a stack


def _project(tmp_path: Path) -> tuple[Path, dict]:
    (tmp_path / "mlwf.toml").write_text("airflow_port = 1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLWF_", "AIRFLOW__"))}
    return tmp_path, env | {"MLWF_BACKEND": "local"}


def test_status_of_a_stack_that_is_not_running_exits_8(tmp_path):
    project, env = _project(tmp_path)
    result = subprocess.run([MLWF, "status", "--json"], cwd=project, env=env, capture_output=True, text=True)
    assert result.returncode == 8, result.stderr
    data = json.loads(result.stdout)
    assert {s["state"] for s in data["services"]} == {"stopped"}
    assert "not running" in result.stderr


def test_stale_pid_file_is_reported_not_trusted(tmp_path):
    project, env = _project(tmp_path)
    child = subprocess.Popen(["true"])
    created = psutil.Process(child.pid).create_time()
    child.wait()
    processes.write_pid_file(project / ".mlwf" / "run" / "scheduler.pid", processes.PidRecord(child.pid, created, []))
    result = subprocess.run([MLWF, "status", "--json"], cwd=project, env=env, capture_output=True, text=True)
    assert result.returncode == 8
    scheduler = next(s for s in json.loads(result.stdout)["services"] if s["name"] == "scheduler")
    assert scheduler["state"] == "stopped" and "stale pid file" in scheduler["detail"]


def test_down_volumes_needs_confirmation_and_keeps_data_without_it(tmp_path):
    project, env = _project(tmp_path)
    ensure_home(project / ".mlwf", project)
    data = project / ".mlwf" / "data" / "keep.txt"
    data.parent.mkdir(parents=True)
    data.write_text("precious")
    refused = subprocess.run([MLWF, "down", "--volumes"], cwd=project, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert refused.returncode == 2 and "--yes" in refused.stderr and data.exists()
    done = subprocess.run([MLWF, "down", "--volumes", "--yes"], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not (project / ".mlwf").exists()


def test_backend_services_and_groups(tmp_path):
    (tmp_path / "mlwf.toml").write_text("")
    backend = LocalBackend(load_config({}, cwd=tmp_path, environ={}))
    names = [s.name for s in backend.services()]
    # The database first (a new stack's default is mlwf's PostgreSQL), stopped last by `down`.
    assert names[:5] == ["postgres", "api-server", "scheduler", "dag-processor", "triggerer"]
    assert [s.name for s in backend.services() if s.database] == ["postgres"]
    assert all(s.group != "monitoring" for s in backend.services(frozenset({"monitoring"})))
    sqlite = LocalBackend(load_config({"database": "sqlite"}, cwd=tmp_path, environ={}))
    assert [s.name for s in sqlite.services()][:4] == ["api-server", "scheduler", "dag-processor", "triggerer"]


# ------------------------------------------------------------------ launcher


def _launcher_module():
    import importlib.util

    from mlflowctl.backends.local.services import LAUNCHER

    spec = importlib.util.spec_from_file_location("mlwf_launcher", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launcher_preloads_only_what_the_planned_components_use():
    launcher = _launcher_module()
    scale = {"services": [{"name": "worker-3", "args": ["celery", "worker", "-H", "w3@%h"]}]}
    whole = {"services": [{"name": n, "args": [n]} for n in ("api-server", "scheduler", "dag-processor", "triggerer")]}

    assert launcher.preloads(scale) == list(launcher.PRELOAD["celery"])
    modules = launcher.preloads(whole)
    assert "airflow.jobs.scheduler_job_runner" in modules and "airflow.dag_processing.manager" in modules
    assert len(modules) == len(set(modules)), "the log server, shared by two components, is imported once"
    assert not any("celery" in name for name in modules)


def test_every_launcher_preload_names_an_importable_module():
    """The launcher skips a preload that fails to import, so a stale name would only cost speed silently."""
    names = sorted({name for names in _launcher_module().PRELOAD.values() for name in names})
    code = "import importlib, sys\nfor name in sys.argv[1:]: importlib.import_module(name)"
    result = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_task_modules_are_imported_where_tasks_are_forked():
    launcher = _launcher_module()
    modules = ["pandas", "sklearn.ensemble"]
    local = {"executor": "local", "task_preload": modules}
    celery = {"executor": "celery", "task_preload": modules}
    assert launcher._task_modules(local) == ((), tuple(modules))  # by the scheduler, for its LocalExecutor
    assert launcher._task_modules(celery) == (tuple(modules), ())  # once, shared by every worker
    assert launcher.import_task_modules(("json", "no_such_library_xyz")).startswith(
        "mlwf: task_preload: cannot import 'no_such_library_xyz': ModuleNotFoundError"
    )


def test_launcher_applies_its_airflow_fixes_to_what_it_forks():
    """launcher.py loads airflow_fixes.py by path (its folder is not on its sys.path)."""
    from mlflowctl.backends.local.services import LAUNCHER

    code = (
        "import runpy, sys\n"
        "launcher = runpy.run_path(sys.argv[1])\n"
        "launcher['_fix_airflow']()\n"
        "from airflow.sdk.execution_time.supervisor import ActivitySubprocess\n"
        "from sqlalchemy import func, select\n"
        "from sqlalchemy.dialects import sqlite\n"
        "print(getattr(ActivitySubprocess._service_subprocess, '_mlwf_fixed', False))\n"
        "print(select(func.now()).compile(dialect=sqlite.dialect()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(LAUNCHER)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-3:] == ["True", "SELECT STRFTIME('%Y-%m-%d %H:%M:%f000', 'now') AS now_1"]
    assert "left as it is" not in result.stderr
