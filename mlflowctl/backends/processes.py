"""Detached sessions with pid files that are checked, never trusted.

A service runs as the leader of its own session: it survives the shell that started it,
ignores the terminal's Ctrl-C, and the whole tree it forks (uvicorn workers, log servers,
task supervisors, which put each task in a process group of its own) stops together.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Iterator, Mapping, Sequence

import psutil

from mlflowctl.errors import DamagedStateError
from mlflowctl.state import read_json, write_durably

#: Marks the environment of a stack's processes so `down` can sweep strays. Not a proof of
#: absence: setproctitle (Airflow uses it) overwrites /proc/<pid>/environ; sessions are that.
STACK_MARKER = "MLWF_STACK_HOME"
#: Everything a stack's process creates (logs, task logs, databases) is for its owner only.
PRIVATE_UMASK = 0o077
NOT_OURS = "not signalled: its pid now belongs to another program"


def boot_id() -> str:
    """This boot's id: a pid file written before a reboot names processes that no longer exist."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class PidRecord:
    pid: int
    create_time: float
    cmdline: list[str]
    boot_id: str = field(default_factory=boot_id)

    def process(self) -> psutil.Process | None:
        """The live process this record names, or None when the record is stale."""
        try:
            process = psutil.Process(self.pid)
            if not _same_start(process, self.create_time):
                return None  # the pid was reused by a later process
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return process
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None

    def names_another_process(self) -> bool:
        """True when the pid is alive with another start time: someone else's, never to be signalled."""
        try:
            return not _same_start(psutil.Process(self.pid), self.create_time)
        except psutil.Error:
            return False

    def from_another_boot(self) -> bool:
        if self.boot_id:
            return self.boot_id != boot_id()
        return self.create_time < psutil.boot_time()  # a record written before boot ids were kept


def _same_start(process: psutil.Process, create_time: float) -> bool:
    return abs(process.create_time() - create_time) <= 0.05


def read_pid_file(path: Path) -> PidRecord | None:
    """The record, or None when there is none or it is from before a reboot (then it is removed).

    A damaged file is an error naming it: guessing could signal the wrong process."""
    data = read_json(
        path,
        fix="`mlwf down` stops the stack's processes by their marker and removes it; then `mlwf up`",
    )
    if data is None:
        return None
    try:
        record = PidRecord(
            int(data["pid"]), float(data["create_time"]), list(data.get("cmdline", [])), str(data.get("boot_id", ""))
        )
    except (KeyError, TypeError, ValueError):
        raise DamagedStateError(
            f"{path} is damaged: it lacks a pid and start time",
            hint="`mlwf down` stops the stack's processes by their marker and removes it; then `mlwf up`",
        ) from None
    if record.pid <= 1:
        raise DamagedStateError(f"{path} is damaged: pid {record.pid} is never a service of the stack")
    if record.from_another_boot():
        path.unlink(missing_ok=True)
        return None
    return record


def write_pid_file(path: Path, record: PidRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, json.dumps(asdict(record)))


def live_record(path: Path) -> PidRecord | None:
    """The pid file's record when its process still runs; a stale file is removed."""
    record = read_pid_file(path)
    if record is None or record.process() is None:
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
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open_log(log_path) as log:
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
            umask=PRIVATE_UMASK,
        )
    try:
        created = psutil.Process(popen.pid).create_time()
    except psutil.NoSuchProcess:
        created = time.time()
    return popen, PidRecord(popen.pid, created, list(argv))


def open_log(path: Path):
    """A service's log for appending, created 0600: logs can hold connection strings and tokens."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600), "ab")


def session_members(sid: int, *, since: float = 0.0) -> list[psutil.Process]:
    """Live (non-zombie) processes of the session led (or once led) by `sid`.

    A session, not a process group: Airflow's task supervisor moves each task into a
    process group of its own, but nothing of ours leaves the session. The kernel does not
    reuse a pid while a session of that number exists; `since` (the leader's start time)
    also rules out an unrelated later session leader that got the same pid.
    """
    members = []
    for process in psutil.process_iter(["status", "create_time"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE or os.getsid(process.pid) != sid:
                continue
            if process.info["create_time"] + 0.05 < since:
                continue
            members.append(process)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def marked_processes(marker_value: str) -> list[psutil.Process]:
    """Live processes whose environment carries STACK_MARKER=marker_value, never this
    process or its ancestors (an mlwf run from inside a task must not stop its own chain)."""
    found = []
    spared = {os.getpid(), *(parent.pid for parent in psutil.Process().parents())}
    for process in psutil.process_iter(["status"]):
        try:
            if process.pid in spared or process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get(STACK_MARKER) == marker_value:
                found.append(process)
        except psutil.Error:
            continue
    return found


def _signal_session(sid: int, signum: int, since: float) -> None:
    """`signum` to every process group that has a member in the session."""
    for pgid in {_pgid(p.pid) for p in session_members(sid, since=since)} - {None}:
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _wait_gone(sid: int, seconds: float, popen: subprocess.Popen | None, since: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if popen is not None:
            popen.poll()  # reap our own child so it does not linger as a zombie
        if not session_members(sid, since=since):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def stop_session(
    record: PidRecord,
    *,
    grace: float = 10.0,
    second_grace: float = 5.0,
    popen: subprocess.Popen | None = None,
) -> str:
    """TERM the service's session, TERM again (Airflow's scheduler can ignore the first), then KILL.

    Works when the leader is already dead (its children still hold ports). Returns how it
    ended: "not running", "terminated", "terminated after second TERM" or "killed".
    """
    sid, since = record.pid, record.create_time
    if not record.names_another_process() and not session_members(sid, since=since):
        return "not running"
    for signum, wait, outcome in (
        (signal.SIGTERM, grace, "terminated"),
        (signal.SIGTERM, second_grace, "terminated after second TERM"),
        (signal.SIGKILL, 5.0, "killed"),
    ):
        if record.names_another_process():  # checked before every signal: a pid is never trusted
            return NOT_OURS
        _signal_session(sid, signum, since)
        if _wait_gone(sid, wait, popen, since):
            return outcome
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


def read_lines(stream: IO[bytes], until: float) -> Iterator[str]:
    """Lines from a child's pipe until it closes; TimeoutError once time.monotonic() passes
    `until` (a plain readline would wait for a silent child forever)."""
    import selectors

    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream.fileno(), selectors.EVENT_READ)
        while True:
            *lines, buffer = buffer.split(b"\n")
            yield from (line.decode("utf-8", "replace") for line in lines)
            left = until - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if not selector.select(left):
                continue
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                if buffer:
                    yield buffer.decode("utf-8", "replace")
                return
            buffer += chunk


def stop_forker(popen: subprocess.Popen) -> None:
    """Stop a process that forks services into sessions of their own (mlwf's launcher), with
    everything it forked: freeze it so that it forks nothing more, kill it, stop each child's
    session, then the rest of its own session (children that have none of their own yet)."""
    try:
        forker = psutil.Process(popen.pid)
        since = forker.create_time()
        forker.suspend()
        children = forker.children()
    except psutil.Error:  # gone already: its session may still hold what it forked
        since, children = 0.0, []
    popen.kill()
    records = []
    for child in children:
        try:
            records.append(PidRecord(child.pid, child.create_time(), []))
        except psutil.Error:
            continue
    for record in records:
        stop_session(record, grace=3.0, second_grace=1.0)
    stop_session(PidRecord(popen.pid, since, []), grace=3.0, second_grace=1.0, popen=popen)
    popen.wait()
