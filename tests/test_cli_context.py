"""`up`, `down`, `status`, `scale` and `restart` in-process and fast: the CLI's own work (exit codes, tables,
refusals, which progress it shows) against a fake backend that satisfies the backend Protocol
and an Airflow API served by an `httpx.MockTransport`, passed in through the App context.

The same commands against a real stack are in test_local_stack.py, test_local_lifecycle.py and
test_celery_e2e.py.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from typer.testing import CliRunner

from mlflowctl.backends.base import Backend, ProgressKind, Restarting, Scaling, ServiceStatus, StackStatus
from mlflowctl.cli.context import App
from mlflowctl.cli.main import app
from mlflowctl.errors import NotAvailableError, StackDownError, UnhealthyError, UsageError

CORE = ("api-server", "scheduler", "dag-processor", "triggerer")


def services(**states: str) -> list[ServiceStatus]:
    """The core services, healthy unless named: services(scheduler="unhealthy")."""
    return [ServiceStatus(name, states.get(name.replace("-", "_"), "healthy"), pid=100 + i, port=8080 if i == 0 else None)
            for i, name in enumerate(CORE)]


class FakeBackend:
    """Satisfies `Backend`: answers with the states it was given and records what it was asked."""

    name = "fake"

    def __init__(self, states: list[ServiceStatus]) -> None:
        self.states = states
        self.calls: list[tuple] = []

    def up(self, *, exclude=frozenset(), progress=None, timeout=120.0) -> StackStatus:
        self.calls.append(("up", exclude, timeout))
        progress("starting the components", [])
        progress("waiting for scheduler", self.states)
        progress("creating pools", self.states, ProgressKind.STEP)
        progress("all healthy", self.states, ProgressKind.READY)
        return StackStatus(self.name, self.states, notes=["started 4 services"])

    def down(self, *, volumes=False) -> StackStatus:
        self.calls.append(("down", volumes))
        return StackStatus(self.name, [ServiceStatus(s.name, "stopped") for s in self.states])

    def status(self) -> StackStatus:
        self.calls.append(("status",))
        return StackStatus(self.name, self.states)

    def logs(self, service=None, *, tail=100, follow=False):
        yield from ()


class ScalingBackend(FakeBackend):
    def scale(self, workers, *, progress=None, timeout=120.0) -> StackStatus:
        self.calls.append(("scale", workers))
        progress(f"warm shutdown of worker-{workers + 1} (running tasks finish first)", [])
        progress("waiting for worker-1", self.states)
        progress("all healthy", self.states, ProgressKind.READY)
        return StackStatus(self.name, self.states)


class RestartingBackend(FakeBackend):
    def restart(self, service=None, *, progress=None, timeout=120.0) -> StackStatus:
        self.calls.append(("restart", service, timeout))
        progress(f"stopping {service or 'every service'}", [])
        progress("waiting for scheduler", self.states)
        progress("all healthy", self.states, ProgressKind.READY)
        return StackStatus(self.name, self.states, notes=[f"restarted {service or 'every service'}"])


class FakeAirflow:
    """An Airflow API with two DAGs, one of which has run; `broken` makes the DAG list a 500."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.paths: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.paths.append(path)
        if path == "/auth/token":
            return httpx.Response(201, json={"access_token": "token"})
        if self.broken:
            return httpx.Response(500, json={"detail": "boom"})
        if path == "/api/v2/dags":
            return httpx.Response(200, json={"total_entries": 2, "dags": [
                {"dag_id": "ml_pipeline_dag", "is_paused": False, "timetable_summary": "@daily", "tags": [{"name": "ml"}],
                 "next_dagrun_run_after": "2026-01-02T00:00:00Z"},
                {"dag_id": "monitoring_dag", "is_paused": True, "timetable_summary": None},
            ]})
        if path == "/api/v2/dags/ml_pipeline_dag/dagRuns":
            return httpx.Response(200, json={"total_entries": 1, "dag_runs": [
                {"dag_id": "ml_pipeline_dag", "dag_run_id": "manual__1", "state": "failed",
                 "run_after": "2026-01-01T10:00:00Z", "start_date": "2026-01-01T10:00:01Z"},
            ]})
        if path == "/api/v2/dags/monitoring_dag/dagRuns":
            return httpx.Response(200, json={"total_entries": 0, "dag_runs": []})
        if path == "/api/v2/importErrors":
            return httpx.Response(200, json={"total_entries": 0, "import_errors": []})
        return httpx.Response(404, json={"detail": "Not Found"})


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project of its own (no MLWF_* from outside), its state directory under it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlwf.toml").write_text("airflow_port = 18080\n")
    return tmp_path


def mlwf(args: list[str], backend: Backend, *, airflow: FakeAirflow | None = None, password: str | None = "pw"):
    import os

    context = App(backends=lambda config: (backend, "backend: fake (a test)"),
                  transport=httpx.MockTransport((airflow or FakeAirflow()).handler), ask=None)
    env = {name: None for name in os.environ if name.startswith("MLWF_")} | {"COLUMNS": "200"}
    env["MLWF_AIRFLOW_PASSWORD"] = password
    return CliRunner().invoke(app, args, obj=context, env=env)


def test_the_fakes_satisfy_the_protocols():
    assert isinstance(ScalingBackend([]), Scaling) and not isinstance(FakeBackend([]), Scaling)
    assert isinstance(RestartingBackend([]), Restarting) and not isinstance(FakeBackend([]), Restarting)


# ---------------------------------------------------------------------------------------- up


def test_up_prints_the_services_and_exits_9_when_one_is_unhealthy(project):
    backend = FakeBackend(services(scheduler="unhealthy"))
    result = mlwf(["up", "--exclude", "monitoring", "--timeout", "30"], backend)
    assert result.exit_code == UnhealthyError.exit_code, result.output
    assert backend.calls == [("up", frozenset({"monitoring"}), 30.0)]
    assert "scheduler" in result.stdout and "unhealthy" in result.stdout and "Airflow UI: http://127.0.0.1:18080" in result.stdout
    # Not a terminal: the steps are lines, and each service's state once it is known; the waits
    # and the end are not (the table follows).
    lines = [line.removesuffix(" after 0.0s") for line in result.stderr.splitlines()]
    assert lines[:8] == [
        "backend: fake (a test)", "starting the components", "api-server healthy", "scheduler unhealthy",
        "dag-processor healthy", "triggerer healthy", "creating pools", "started 4 services",
    ]
    assert "waiting for" not in result.stderr and "all healthy" not in result.stderr
    assert result.stderr.splitlines()[-1] == "error: the stack started but not every service is healthy"
    assert (project / ".mlwf" / "backend").read_text() == "fake\n"  # `status` finds it again


def test_up_of_a_healthy_stack_exits_0_and_its_json_is_the_table_data(project):
    result = mlwf(["up", "--json"], FakeBackend(services()))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["healthy"] is True and [s["name"] for s in data["services"]] == list(CORE)
    assert data["notes"] == ["started 4 services"] and data["dags"] is None


# -------------------------------------------------------------------------------------- down


def test_down_volumes_refuses_a_directory_mlwf_did_not_make_before_anything_stops(project):
    (project / ".mlwf").mkdir()
    (project / ".mlwf" / "precious.txt").write_text("keep")
    backend = FakeBackend(services())
    result = mlwf(["down", "--volumes", "--yes"], backend)
    assert result.exit_code == UsageError.exit_code
    assert "refusing to delete" in result.stderr and "nothing was deleted" in result.stderr
    assert backend.calls == [] and (project / ".mlwf" / "precious.txt").exists()


def test_down_volumes_without_yes_off_a_terminal_is_refused(project):
    backend = FakeBackend(services())
    result = mlwf(["down", "--volumes"], backend)
    assert result.exit_code == UsageError.exit_code and "confirm with --yes" in result.stderr
    assert backend.calls == []


def test_down_stops_the_stack(project):
    backend = FakeBackend(services())
    result = mlwf(["down"], backend)
    assert result.exit_code == 0, result.output
    assert backend.calls == [("down", False)] and result.stdout == "stack stopped\n"


# ------------------------------------------------------------------------------------ status


def test_status_of_a_stopped_stack_exits_8_without_asking_airflow(project):
    airflow = FakeAirflow()
    stopped = [ServiceStatus(name, "stopped") for name in CORE]
    result = mlwf(["status", "--json"], FakeBackend(stopped), airflow=airflow)
    assert result.exit_code == StackDownError.exit_code
    data = json.loads(result.stdout)
    assert data["running"] is False and data["dags"] is None and "dags_error" not in data
    assert "error: the stack is not running" in result.stderr


def test_status_exits_9_and_names_the_unhealthy_service(project):
    result = mlwf(["status"], FakeBackend(services(triggerer="unhealthy")))
    assert result.exit_code == UnhealthyError.exit_code
    assert "not every service is healthy: triggerer unhealthy" in result.stderr


def test_status_of_a_healthy_stack_shows_the_dag_table_from_the_api(project):
    airflow = FakeAirflow()
    result = mlwf(["status"], FakeBackend(services()), airflow=airflow)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    title = lines.index("DAGs")
    dags = "\n".join(lines[title:])
    assert "ml_pipeline_dag" in dags and "failed" in dags and "2026-01-01 10:00:00" in dags and "ml" in dags
    assert "monitoring_dag" in dags
    assert lines.index("DAGs") > next(i for i, line in enumerate(lines) if "api-server" in line)
    assert "/api/v2/importErrors" in airflow.paths

    as_json = json.loads(mlwf(["status", "--json"], FakeBackend(services()), airflow=airflow).stdout)
    by_id = {d["dag_id"]: d for d in as_json["dags"]}
    assert by_id["ml_pipeline_dag"] == {
        "dag_id": "ml_pipeline_dag", "paused": False, "schedule": "@daily", "last_run_id": "manual__1",
        "last_run_state": "failed", "last_run_start": "2026-01-01T10:00:01+00:00",
        "next_run": "2026-01-02T00:00:00+00:00", "import_errors": 0,
    }
    assert by_id["monitoring_dag"]["paused"] is True and by_id["monitoring_dag"]["last_run_id"] is None


def test_status_says_why_there_are_no_dags_and_still_exits_0(project):
    broken = mlwf(["status", "--json"], FakeBackend(services()), airflow=FakeAirflow(broken=True))
    assert broken.exit_code == 0, broken.output
    data = json.loads(broken.stdout)
    assert data["dags"] is None and "HTTP 500" in data["dags_error"] and "boom" in data["dags_error"]

    airflow = FakeAirflow()
    started = time.monotonic()
    nobody = mlwf(["status", "--json", "--url", "http://10.0.0.5:8080"], FakeBackend(services()), airflow=airflow,
                  password=None)
    assert nobody.exit_code == 0, nobody.output
    error = json.loads(nobody.stdout)["dags_error"]
    assert error.startswith("no password for Airflow user 'admin' at http://10.0.0.5:8080 (set MLWF_AIRFLOW_PASSWORD")
    assert airflow.paths == []  # no prompt, no request
    assert time.monotonic() - started < 5


# ------------------------------------------------------------------------------------- scale


def test_scale_refuses_on_a_backend_that_cannot_scale(project):
    backend = FakeBackend(services())
    result = mlwf(["scale", "workers", "2"], backend)
    assert result.exit_code == NotAvailableError.exit_code
    assert "error: the fake backend cannot scale workers" in result.stderr
    assert backend.calls == []


def test_scale_on_a_backend_that_can_shows_its_steps_and_the_services(project):
    backend = ScalingBackend(services())
    result = mlwf(["scale", "workers", "2"], backend)
    assert result.exit_code == 0, result.output
    assert backend.calls == [("scale", 2)]
    assert "warm shutdown of worker-3 (running tasks finish first)" in result.stderr
    assert "waiting for" not in result.stderr and "all healthy" not in result.stderr
    assert "api-server" in result.stdout


# ----------------------------------------------------------------------------------- restart


def test_restart_refuses_on_a_backend_that_cannot_restart(project):
    backend = FakeBackend(services())
    result = mlwf(["restart", "scheduler"], backend)
    assert result.exit_code == NotAvailableError.exit_code
    assert "error: the fake backend cannot restart services" in result.stderr
    assert backend.calls == []


def test_restart_one_service_shows_its_steps_and_exits_by_health(project):
    backend = RestartingBackend(services())
    result = mlwf(["restart", "scheduler", "--timeout", "30"], backend)
    assert result.exit_code == 0, result.output
    assert backend.calls == [("restart", "scheduler", 30.0)]
    assert "stopping scheduler" in result.stderr and "restarted scheduler" in result.stderr
    assert "waiting for" not in result.stderr and "all healthy" not in result.stderr
    assert "api-server" in result.stdout
    sick = RestartingBackend(services(triggerer="unhealthy"))
    result = mlwf(["restart", "--json"], sick)
    assert result.exit_code == UnhealthyError.exit_code
    assert sick.calls == [("restart", None, 120.0)]
    assert {s["name"]: s["state"] for s in json.loads(result.stdout)["services"]}["triggerer"] == "unhealthy"


def test_only_a_whole_stack_restart_reads_the_projects_objects(project):
    """The whole stack comes back with the project's objects, as from `up`, so a malformed file stops
    it before anything is stopped; one service is restarted without them."""
    (project / "airflow_settings.yaml").write_text("airflow:\n  pools: [{pool_slot: 3}]\n")
    backend = RestartingBackend(services())
    whole = mlwf(["restart"], backend)
    assert whole.exit_code == UsageError.exit_code and "airflow_settings.yaml" in whole.stderr
    assert backend.calls == []
    one = mlwf(["restart", "scheduler"], backend)
    assert one.exit_code == 0, one.output
    assert backend.calls == [("restart", "scheduler", 120.0)]


def test_status_with_a_damaged_secrets_file_says_so(project):
    from mlflowctl.errors import DamagedStateError
    from mlflowctl.state import ensure_home

    home = ensure_home(project / ".mlwf", project)
    (home / "secrets.json").write_text('{"admin_pass')
    result = mlwf(["status"], FakeBackend(services()), password=None)  # the stack's own URL: its password is read
    assert result.exit_code == DamagedStateError.exit_code
    assert "secrets.json is damaged" in result.stderr
