"""Detached process groups with pid files that are checked, never trusted.

A service runs as the leader of its own session (so of its own process group): it
survives the shell that started it, ignores the terminal's Ctrl-C, and the whole
tree it forks (uvicorn workers, log servers, task supervisors) stops together.
The pid file records the pid, the process's start time and its command line; a pid
whose process is gone, became a zombie or now belongs to another program (its start
time differs: the command line is no proof, Airflow rewrites its own with setproctitle)
is stale.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import psutil

#: Marks every process of a stack (inherited by all children) so `down` can sweep strays.
STACK_MARKER = "MLWF_STACK_HOME"


@dataclass(frozen=True)
class PidRecord:
    pid: int
    create_time: float
    cmdline: list[str]

    def process(self) -> psutil.Process | None:
        """The live process this record names, or None when the record is stale."""
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.create_time) > 0.05:
                return None  # the pid was reused by a later process
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return process
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None


def read_pid_file(path: Path) -> PidRecord | None:
    try:
        data = json.loads(path.read_text())
        return PidRecord(int(data["pid"]), float(data["create_time"]), list(data.get("cmdline", [])))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_pid_file(path: Path, record: PidRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(asdict(record)))
    os.replace(temporary, path)


def live_record(path: Path) -> PidRecord | None:
    """The pid file's record when its process still runs; a stale file is removed."""
    record = read_pid_file(path)
    if record is None:
        path.unlink(missing_ok=True)
        return None
    if record.process() is None:
        path.unlink(missing_ok=True)
        return None
    return record


def _restore_signals() -> None:  # runs in the child between fork and exec
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start_detached(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_path: Path
) -> tuple[subprocess.Popen, PidRecord]:
    """Start `argv` as a new session, output appended to `log_path`, stdin from /dev/null."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_restore_signals,
            close_fds=True,
        )
    try:
        created = psutil.Process(popen.pid).create_time()
    except psutil.NoSuchProcess:
        created = time.time()
    return popen, PidRecord(popen.pid, created, list(argv))


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of process group `pgid`."""
    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(process.pid) == pgid:
                members.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def marked_processes(marker_value: str) -> list[psutil.Process]:
    """Live processes whose environment carries STACK_MARKER=marker_value."""
    found = []
    me = os.getpid()
    for process in psutil.process_iter(["status"]):
        try:
            if process.pid == me or process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get(STACK_MARKER) == marker_value:
                found.append(process)
        except psutil.Error:
            continue
    return found


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(popen: subprocess.Popen | None) -> None:
    if popen is not None:
        popen.poll()


def _wait_gone(pgid: int, seconds: float, popen: subprocess.Popen | None) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        _reap(popen)
        if not group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def stop_group(
    pgid: int,
    *,
    grace: float = 10.0,
    second_grace: float = 5.0,
    popen: subprocess.Popen | None = None,
) -> str:
    """TERM the group, TERM again (Airflow's scheduler can ignore the first), then KILL.

    Returns how it ended: "terminated", "terminated after second TERM" or "killed".
    """
    if not group_members(pgid):
        return "not running"
    _signal_group(pgid, signal.SIGTERM)
    if _wait_gone(pgid, grace, popen):
        return "terminated"
    _signal_group(pgid, signal.SIGTERM)
    if _wait_gone(pgid, second_grace, popen):
        return "terminated after second TERM"
    _signal_group(pgid, signal.SIGKILL)
    _wait_gone(pgid, 5.0, popen)
    return "killed"


def kill_processes(processes: list[psutil.Process], *, grace: float = 3.0) -> None:
    """TERM then KILL a list of stray processes (the sweep after stopping groups)."""
    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=2)
