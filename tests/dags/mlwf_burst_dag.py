"""Two quick tasks and no schedule: the DAG the burst test and bench/load_bench.py trigger many times.

No schedule, so unpausing it starts nothing by itself: every run is one the client asked for.
`first` returns its process's CPU niceness: tasks run below the stack's priority (task_nice).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from airflow.sdk import dag, task


@dag(
    dag_id="mlwf_burst",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["mlwf-test"],
)
def mlwf_burst():
    @task
    def first() -> int:
        return os.nice(0)

    @task
    def second(value: int) -> int:
        return value + 1

    second(first())


mlwf_burst()
