"""A tiny DAG for the API-client tests: quick tasks, a known log line, a failure on demand.

`mlwf_smoke` runs in about a second; trigger it with conf {"fail": true} to make `check` fail.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import dag, task

KNOWN_LINE = "mlwf-smoke: the answer is 42"


@dag(
    dag_id="mlwf_smoke",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["mlwf-test"],
)
def mlwf_smoke():
    @task
    def extract() -> int:
        return 21

    @task
    def check(value: int, **context) -> int:
        conf = context["dag_run"].conf or {}
        if conf.get("fail"):
            raise ValueError(f"check failed on purpose (conf={conf})")
        return value * 2

    @task
    def report(value: int) -> None:
        print(f"mlwf-smoke: the answer is {value}")

    report(check(extract()))


mlwf_smoke()
