"""Celery workers of a local stack: which there are, how busy each is, and a warm stop.

    worker-<i>   `airflow celery worker -H w<i>@%h --skip-serve-logs`: distinct Celery
                 hostnames; no log server (the task logs are files on this machine that
                 the api-server reads directly; two log servers would clash on 8793)
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from mlflowctl.backends.base import CeleryWorkers
    from mlflowctl.backends.local.state import ServiceSpec, Stack
    from mlflowctl.backends.processes import PidRecord
    from mlflowctl.config import Config

PREFIX = "worker-"
#: Celery hostnames of this host's workers (joined ones are joining.HOSTNAME, r<i>@host).
HOSTNAME = "w{index}@%h"
CONCURRENCY = 2
#: How long a removed worker may take to finish its running tasks.
WARM_SHUTDOWN_TIMEOUT = 600.0


def name(index: int) -> str:
    return f"{PREFIX}{index}"


def indices(stack: Stack) -> list[int]:
    """1..workers, plus any worker that still has a pid file (so `down` stops it too)."""
    found = set()
    for path in stack.run_dir.glob(f"{PREFIX}*.pid"):
        suffix = path.stem[len(PREFIX):]
        if suffix.isdigit():
            found.add(int(suffix))
    return sorted(found | set(range(1, stack.config.workers + 1)))


def services(stack: Stack, hostname: str = HOSTNAME) -> list[ServiceSpec]:
    """This state directory's Celery workers; `hostname`: their Celery names (a pattern of `index`)."""
    from mlflowctl.backends.local.services import airflow_service

    return [
        airflow_service(
            stack,
            name(index),
            ["celery", "worker", "-H", hostname.format(index=index), "--concurrency", str(CONCURRENCY), "--skip-serve-logs"],
            kind="celery-worker",
        )
        for index in indices(stack)
    ]


def joinable(config: Config) -> bool:
    """Whether workers of other hosts can join this stack: a Celery stack started with --listen."""
    return bool(config.listen and config.executor == "celery")


def remote(stack: Stack) -> dict[str, int] | None:
    """Celery hostname -> tasks running, of the workers other hosts joined to this stack, as
    Celery's broadcast finds them (about two seconds: the runtime's python starts, then waits a
    second for answers): {} when the stack does not listen (none can join), None when its
    broker could not be asked."""
    from mlflowctl.backends.local import broker, joining
    from mlflowctl.backends.runtime import installed_runtime

    c = stack.config
    if not joinable(c):
        return {}
    runtime = stack.runtime or installed_runtime(c.project_root)
    if stack.live(broker.SERVICE) is None or runtime is None:
        return None
    found = joining.cluster_workers(broker.broker_url(c, stack.secrets()), runtime.python)
    if found is None:
        return None
    own = tuple(HOSTNAME.format(index=i).split("@")[0] + "@" for i in indices(stack))
    return {name: busy for name, busy in sorted(found.items()) if not name.startswith(own)}


def census(config: Config) -> CeleryWorkers | None:
    """Every live Celery worker of the stack in `config`'s state directory, remote ones
    included; None when it runs none and none can join."""
    from mlflowctl.backends.base import CeleryWorkers
    from mlflowctl.backends.local.record import effective_config
    from mlflowctl.backends.local.state import Stack

    stack = Stack(effective_config(config))
    files = [path for path in stack.run_dir.glob(f"{PREFIX}*.pid") if path.stem[len(PREFIX):].isdigit()]
    listening = joinable(stack.config)
    if not files and not listening:
        return None
    here = sum(1 for path in files if stack.live(path.stem) is not None)
    return CeleryWorkers(here, remote(stack), listening)


def tasks(record: PidRecord | None) -> tuple[int, int] | None:
    """(pool processes, tasks running) of a live worker, from its process tree.

    Cheap (no broker round trip; `celery inspect active` broadcasts and waits a second or
    more): a pool process is titled `[celeryd: w1@host:ForkPoolWorker-N]` while idle and
    `airflow supervisor: <task id>` once it supervised a task (the title stays); a task runs
    while that pool process has a live child (the task process the supervisor forked).
    """
    import psutil

    process = record.process() if record is not None else None
    if process is None:
        return None
    pool = running = 0
    try:
        children = process.children()
    except psutil.Error:
        return None
    for child in children:
        try:
            title = " ".join(child.cmdline())
            if "ForkPoolWorker" in title:
                pool += 1
            elif "supervisor:" in title:  # the title stays after the task: a live child is the proof
                pool += 1
                if any(grandchild.status() != psutil.STATUS_ZOMBIE for grandchild in child.children()):
                    running += 1
        except psutil.Error:
            continue
    return pool, running


def check(record: PidRecord | None) -> tuple[bool, str]:
    counted = tasks(record)
    if counted is None:
        return False, "not running"
    pool, running = counted
    if pool == 0:
        return False, "no pool processes yet"
    return True, f"{running} of {pool} slots busy ({running} task{'s' if running != 1 else ''} running)"


def warm_stop(stack: Stack, worker: str, timeout: float) -> str:
    """SIGTERM to the worker's main process only: Celery's warm shutdown stops taking tasks
    and lets the running ones finish; then whatever is left of its session is stopped."""
    from mlflowctl.backends import processes

    record = stack.record(worker)
    if record is None:
        return "not running"
    process = record.process()
    outcome = "stopped"
    if process is not None:
        try:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout)
        except Exception:  # psutil.TimeoutExpired or gone
            outcome = "killed after the warm-shutdown timeout"
    processes.stop_session(record, grace=5.0, second_grace=3.0)
    stack.pid_file(worker).unlink(missing_ok=True)
    return outcome
