"""`mlwf doctor` on a real machine: a port another process listens on, and a missing binary."""

from __future__ import annotations

import json
import os
import socket

from conftest import Stack


def findings(result) -> dict:
    return {f["check"]: f for f in json.loads(result.stdout)["findings"]}


def test_doctor_names_the_port_holder_and_the_missing_binary(tmp_path):
    project = Stack.create(tmp_path)
    empty_bin = tmp_path / "no-postgres-here"
    empty_bin.mkdir()
    port = project.ports["airflow_port"]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        blocked = project.mlwf("doctor", "--json", env={"MLWF_POSTGRES_BIN": str(empty_bin)}, timeout=120)
    assert blocked.returncode == 19, blocked.stderr
    found = findings(blocked)
    held = found[f"port {port}/TCP"]
    assert held["status"] == "block" and f"pid {os.getpid()}" in held["detail"] and "airflow_port" in held["fix"]
    postgres = found["postgresql"]
    assert postgres["status"] == "block" and str(empty_bin) in postgres["detail"] and postgres["fix"]
    errors = [line for line in blocked.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "(and 1 more)" in errors[0]

    # The same project with the port closed and the wheel's PostgreSQL: neither blocks.
    clear = project.mlwf("doctor", "--json", timeout=120)
    found = findings(clear)
    assert found[f"port {port}/TCP"]["status"] == "ok" and found["postgresql"]["status"] == "ok"
    assert not (project.home).exists()  # doctor changes nothing
    assert found["dag parse"]["status"] == "ok" and "DAG(s) import" in found["dag parse"]["detail"]


def test_doctor_warns_of_a_dag_file_that_does_not_import_without_blocking_up(tmp_path):
    """A broken DAG file does not stop `up` (Airflow lists it as an import error): a warning
    naming the file, its line and the error, with `mlwf parse` as the way to see all."""
    project = Stack.create(tmp_path)
    (project.project / "dags" / "broken_dag.py").write_text("from airflow.sdk import dag\n\nundefined_name\n")
    result = project.mlwf("doctor", "--json", timeout=180)
    parse = findings(result)["dag parse"]
    assert parse["status"] == "warn" and parse["detail"].startswith("broken_dag.py:3: NameError"), parse
    assert parse["fix"].startswith("mlwf parse")
