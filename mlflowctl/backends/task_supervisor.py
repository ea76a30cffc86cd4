"""A fix for Airflow's task supervisor, applied by the launcher to the processes that run tasks.

A task's supervisor (`ActivitySubprocess`, in a LocalExecutor or Celery worker) waits in
select() on its task process's sockets for at most `[workers] min_heartbeat_interval` (mlwf:
1 s), then looks whether the process has exited. The process's last socket closes while it
exits, tens of microseconds before the kernel reports the exit: a supervisor that wakes for
that last EOF and looks at once sees a live process, then sleeps on no sockets at all for the
whole interval while the executor slot stays taken. Traced here (strace of a Celery pool
process, 2 s tasks): one task in three held its slot 1.0 s after its process had exited.

Fixed here, not by configuration: the interval is an integer setting (0 makes every
supervisor heartbeat the API server a hundred times a second). Once no socket is left to
read, the supervisor waits on the process itself (psutil's wait: a pidfd on Linux), which
returns the moment the process exits. Applied only when Airflow's supervisor has the shape
this was written against (task-sdk 1.3); otherwise Airflow runs unchanged.

Loaded by path by launcher.py (not on its sys.path): stdlib and Airflow imports only.
"""

from __future__ import annotations

import inspect

FIXED = "_mlwf_waits_on_exit"  # marks the replaced method, so applying twice is harmless


def apply() -> bool:
    """Replace ActivitySubprocess._service_subprocess; False when Airflow's differs from the
    one this fix was written for (then nothing is changed)."""
    try:
        import attrs
        from airflow.sdk.execution_time.supervisor import ActivitySubprocess
    except ImportError:
        return False
    upstream = ActivitySubprocess._service_subprocess
    if getattr(upstream, FIXED, False):
        return True
    fields = attrs.fields_dict(ActivitySubprocess)
    if list(inspect.signature(upstream).parameters) != [
        "self",
        "max_wait_time",
        "raise_on_timeout",
        "expect_signal",
    ] or not {"_process", "_exit_code", "selector"} <= fields.keys():
        return False

    def _service_subprocess(self, max_wait_time, raise_on_timeout=False, expect_signal=None):
        registered = self.selector.get_map()
        if self._exit_code is None and registered is not None and not registered:
            try:
                self._process.wait(timeout=max_wait_time)
            except self._process.TimeoutExpired:
                pass
            max_wait_time = 0  # Airflow's own select then sleeps its minimum (10 ms), not the interval
        return upstream(self, max_wait_time, raise_on_timeout=raise_on_timeout, expect_signal=expect_signal)

    setattr(_service_subprocess, FIXED, True)
    _service_subprocess.__doc__ = upstream.__doc__
    ActivitySubprocess._service_subprocess = _service_subprocess
    return True
