"""A tiny DAG for the API-client tests: quick tasks, a known log line, a failure on demand.

`mlwf_smoke` runs in about a second. Conf {"fail": true} makes `check` fail;
{"sleep": S} makes `report` print a line, sleep S seconds, then print KNOWN_LINE (to follow a log).
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
    def report(value: int, **context) -> None:
        import time

        pause = float((context["dag_run"].conf or {}).get("sleep", 0))
        if pause:
            print(f"mlwf-smoke: thinking for {pause:g} s", flush=True)
            time.sleep(pause)
        print(f"mlwf-smoke: the answer is {value}", flush=True)

    report(check(extract()))


mlwf_smoke()
