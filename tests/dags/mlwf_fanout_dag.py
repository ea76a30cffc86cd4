"""Twelve independent tasks, each sleeping `conf.sleep` seconds (default 2) and returning the
Celery hostname of the worker that ran it (or "local" under the local executor).

Used by the Celery end-to-end test (tasks spread over the workers) and bench/celery_bench.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import dag, task

TASKS = 12


def celery_hostname() -> str:
    """The Celery worker running this task: from the worker's process title (`-H w1@host`)."""
    import re

    import psutil

    process = psutil.Process()
    while process is not None:
        try:
            command = " ".join(process.cmdline())
        except psutil.Error:
            break
        found = re.search(r"celeryd: (\S+?@\S+?):", command) or re.search(r"-H (\S+@\S+)", command)
        if found:
            return found.group(1)
        process = process.parent()
    return "local"


@dag(
    dag_id="mlwf_fanout",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_tasks=32,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=2)},
    tags=["mlwf-test"],
)
def mlwf_fanout():
    @task
    def sleep_and_report(index: int, **context) -> str:
        import os
        import time

        pause = float((context["dag_run"].conf or {}).get("sleep", 2))
        time.sleep(pause)
        name = celery_hostname()
        print(f"mlwf-fanout: task {index} ran on {name} (pid {os.getpid()})", flush=True)
        return name

    for index in range(TASKS):
        sleep_and_report.override(task_id=f"t{index:02d}")(index)


mlwf_fanout()
