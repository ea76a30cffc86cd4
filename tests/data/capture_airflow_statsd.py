"""Capture the StatsD lines a real Airflow 3.3 stack sends; writes tests/data/airflow_statsd_lines.txt.

How the fixture was made (re-run to refresh it; ~1-2 minutes):

    .venv/bin/python tests/data/capture_airflow_statsd.py [OUT]

It starts api-server, scheduler, dag-processor and triggerer in a temporary AIRFLOW_HOME (SQLite,
LocalExecutor, free ports) with statsd_on, statsd_influxdb_enabled and the `airflow`
prefix, pointed at a UDP socket this script reads. Three small DAGs run once each: one
that succeeds, one whose second task fails, one @daily DAG whose scheduled run
brings the schedule-delay timers. Every datagram is written out, one line per
StatsD line, in arrival order. Nothing here is used by the test suite at run time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(ROOT / ".venv" / "bin" / "airflow")

DAGS = textwrap.dedent(
    '''
    import datetime as dt
    from airflow.sdk import dag, task

    @dag(dag_id="capture_ok", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False)
    def capture_ok():
        @task
        def extract():
            return 1

        @task
        def load(x):
            return x + 1

        load(extract())

    @dag(dag_id="capture_fail", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False,
         default_args={"retries": 0})
    def capture_fail():
        @task
        def prepare():
            return 1

        @task
        def explode(x):
            raise RuntimeError("deliberate failure for the metrics fixture")

        explode(prepare())

    @dag(dag_id="capture_scheduled", schedule="@daily", start_date=dt.datetime(2026, 1, 1), catchup=False)
    def capture_scheduled():
        @task
        def tick():
            return 1

        tick()

    capture_ok()
    capture_fail()
    capture_scheduled()
    '''
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(out: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="mlwf-capture-"))
    (home / "dags").mkdir()
    (home / "dags" / "capture_dags.py").write_text(DAGS)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.settimeout(0.2)
    api_port = free_port()
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__PARALLELISM="4",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(api_port),
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{api_port}/execution/",
        AIRFLOW__API_AUTH__JWT_SECRET="capture-fixture-secret-not-used-elsewhere",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME="0.2",
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__METRICS__STATSD_ON="True",
        AIRFLOW__METRICS__STATSD_HOST="127.0.0.1",
        AIRFLOW__METRICS__STATSD_PORT=str(sock.getsockname()[1]),
        AIRFLOW__METRICS__STATSD_PREFIX="airflow",
        AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED="True",
    )
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    procs = []
    lines: list[str] = []

    def drain(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = sock.recv(65535)
            except socket.timeout:
                continue
            lines.extend(line for line in data.decode("utf-8", "replace").split("\n") if line)

    try:
        for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
            procs.append(
                subprocess.Popen(
                    [AIRFLOW, component], env=env, start_new_session=True,
                    stdin=subprocess.DEVNULL, stdout=open(home / f"{component}.log", "w"), stderr=subprocess.STDOUT,
                )
            )
        drain(25)  # components up, DAG files parsed
        for dag_id in ("capture_ok", "capture_fail"):
            subprocess.run([AIRFLOW, "dags", "unpause", dag_id], env=env, capture_output=True)
            subprocess.run([AIRFLOW, "dags", "trigger", dag_id], env=env, check=True, capture_output=True)
        # unpausing the @daily DAG creates one scheduled run at once (schedule_delay)
        subprocess.run([AIRFLOW, "dags", "unpause", "capture_scheduled"], env=env, capture_output=True)
        drain(45)  # the runs finish, a few more heartbeats
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(3)
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        sock.close()
    out.write_text("\n".join(lines) + "\n")
    shutil.rmtree(home, ignore_errors=True)
    print(f"{len(lines)} lines -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("airflow_statsd_lines.txt"))
