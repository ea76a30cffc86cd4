"""DockerBackend against a small fake Docker Engine API server (no engine runs on these machines).

The docker SDK really talks HTTP to the fake (GET /version, /_ping, /containers/json with
label filters, /containers/{id}/json, /images/{name}/json), so the SDK calls, the label
filter and the state/health mapping are exercised end to end; nothing is patched. Where
`up`/`down`/`logs` run the compose CLI, a stand-in `docker` executable on PATH records its
argv and, for `up`, creates the containers in the fake engine (as compose would).
The daemon-not-answering errors are produced for real: a closed port, a missing socket.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import stat
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from mlflowctl.state import ensure_home

from mlflowctl.backends.base import ProgressKind
from mlflowctl.backends import compose
from mlflowctl.backends.docker import ComposeFailed, DockerBackend
from mlflowctl.config import load_config
from mlflowctl.backends.base import StartFailed
from mlflowctl.errors import NotFoundError, UnreachableError

ROOT = Path(__file__).resolve().parents[1]
PORTS = {"api-server": ("8080/tcp", 18080), "grafana": ("3000/tcp", 13000)}


class FakeEngine:
    """The few Docker Engine API endpoints the SDK calls, over real HTTP on 127.0.0.1."""

    def __init__(self) -> None:
        self.containers: dict[str, dict] = {}
        self.images: set[str] = set()
        self.requests: list[tuple[str, str, dict]] = []
        self.healthy_after: int | None = None  # inspections before "starting" turns healthy; None: never
        self._inspections: dict[str, int] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.server.server_address[1]}"

    def add(self, project: str, service: str, *, status: str = "running", health: str | None = "healthy",
            number: int = 1, exit_code: int = 0, log: str = "") -> str:
        cid = hashlib.sha256(f"{len(self.containers)}-{project}-{service}".encode()).hexdigest()
        labels = {compose.PROJECT_LABEL: project, compose.SERVICE_LABEL: service, compose.NUMBER_LABEL: str(number)}
        ports = {}
        if service in PORTS:
            inner, host = PORTS[service]
            ports[inner] = [{"HostIp": "127.0.0.1", "HostPort": str(host)}]
        state = {"Status": status, "Running": status == "running", "Pid": 4000 + len(self.containers) if status == "running" else 0,
                 "ExitCode": exit_code, "StartedAt": "2026-11-25T08:00:00.123456789Z"}
        if health:
            state["Health"] = {"Status": health, "Log": [{"ExitCode": 1, "Output": log}] if log else []}
        self.containers[cid] = {
            "Id": cid, "Name": f"/{project}-{service}-{number}", "State": state,
            "Config": {"Labels": labels, "Image": "x"}, "NetworkSettings": {"Ports": ports},
        }
        return cid

    def _handler(self):
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body) -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json" if not isinstance(body, str) else "text/plain")
                self.send_header("Api-Version", "1.45")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                # Test control: the stand-in compose CLI "creates" containers here.
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/_test/up":
                    for service in body["services"]:
                        count = body.get("workers", 1) if service == "worker" else 1
                        for number in range(1, count + 1):
                            engine.add(body["project"], service, health="starting", number=number)
                    engine.add(body["project"], "airflow-init", status="exited", health=None)
                    return self._send(200, {})
                if self.path == "/_test/restart":
                    for container in engine.containers.values():
                        labels = container["Config"]["Labels"]
                        if (labels[compose.PROJECT_LABEL], labels[compose.SERVICE_LABEL]) in {
                            (body["project"], service) for service in body["services"]
                        }:
                            container["State"]["Pid"] += 1000
                            container["State"]["Health"] = {"Status": "starting", "Log": []}
                            engine._inspections[container["Id"]] = 0
                    return self._send(200, {})
                self._send(404, {"message": "no such endpoint"})

            def do_GET(self):
                parsed = urlparse(self.path)
                path = re.sub(r"^/v[\d.]+", "", parsed.path)
                query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                engine.requests.append(("GET", path, query))
                if path == "/_ping":
                    return self._send(200, "OK")
                if path == "/version":
                    return self._send(200, {"Version": "27.3.1", "ApiVersion": "1.45", "MinAPIVersion": "1.24",
                                            "Os": "linux", "Arch": "amd64"})
                if path == "/containers/json":
                    wanted = json.loads(query.get("filters", "{}")).get("label", [])
                    found = []
                    for c in engine.containers.values():
                        labels = c["Config"]["Labels"]
                        if all(labels.get(k) == v for k, _, v in (w.partition("=") for w in wanted)):
                            if query.get("all") in ("1", "true", "True") or c["State"]["Running"]:
                                found.append({"Id": c["Id"], "Names": [c["Name"]], "Labels": labels,
                                              "State": c["State"]["Status"]})
                    return self._send(200, found)
                match = re.fullmatch(r"/containers/([0-9a-f]{64})/json", path)
                if match and match.group(1) in engine.containers:
                    container = engine.containers[match.group(1)]
                    state = container["State"]
                    seen = engine._inspections[container["Id"]] = engine._inspections.get(container["Id"], 0) + 1
                    after = engine.healthy_after
                    if state.get("Health", {}).get("Status") == "starting" and after is not None and seen > after:
                        state["Health"]["Status"] = "healthy"
                    return self._send(200, container)
                match = re.fullmatch(r"/images/(.+)/json", path)
                if match:
                    name = unquote(match.group(1))
                    if name in engine.images:
                        return self._send(200, {"Id": "sha256:" + "1" * 64, "RepoTags": [name]})
                    return self._send(404, {"message": f"No such image: {name}"})
                self._send(404, {"message": f"page not found: {path}"})

        return Handler


@pytest.fixture
def engine():
    fake = FakeEngine()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


STAND_IN_COMPOSE = r'''#!{python}
"""Stand-in for the `docker` CLI with its compose plugin: records argv, acts on the fake engine."""
import json, os, sys, urllib.request
argv = sys.argv[1:]
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps(argv) + "\n")
if argv[:2] == ["compose", "version"]:
    print("Docker Compose version v2.30.3"); sys.exit(0)
op = next(a for a in argv if a in ("up", "down", "build", "stop", "logs", "ps", "rm", "restart"))
fail = os.environ.get("FAKE_DOCKER_FAIL", "")
if op == fail:
    print("Error response from daemon: pull access denied for mlwf-airflow", file=sys.stderr); sys.exit(1)
if op == "up":
    rest = argv[argv.index("up") + 1:]
    services = [a for a in rest if not a.startswith("--") and "=" not in a]
    workers = int(next((a.split("=")[1] for a in rest if a.startswith("worker=")), "1"))
    project = argv[argv.index("--project-name") + 1]
    body = json.dumps({{"project": project, "services": [s for s in services if s != "airflow-init"],
                       "workers": workers}}).encode()
    url = "http://" + os.environ["DOCKER_HOST"][len("tcp://"):] + "/_test/up"
    urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST")).read()
    print("Container started")
if op == "restart":
    body = json.dumps({{"project": argv[argv.index("--project-name") + 1],
                       "services": argv[argv.index("restart") + 1:]}}).encode()
    url = "http://" + os.environ["DOCKER_HOST"][len("tcp://"):] + "/_test/restart"
    urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST")).read()
    print("Container restarted")
if op == "logs":
    print("scheduler-1  | scheduler line 1"); print("scheduler-1  | scheduler line 2")
'''


@pytest.fixture
def docker_cli(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(STAND_IN_COMPOSE.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def _backend(tmp_path, engine: FakeEngine | None, *, bin_dir: Path | None = None, executor: str = "local",
             **extra_env) -> DockerBackend:
    config = load_config({"home": str(tmp_path / "state"), "executor": executor, "workers": 2,
                          "airflow_port": 18080}, cwd=ROOT, environ={})
    environ = {"PATH": f"{bin_dir}:/usr/bin:/bin" if bin_dir else "/usr/bin:/bin",
               "FAKE_DOCKER_LOG": str(tmp_path / "docker.log"), **extra_env}
    if engine is not None:
        environ["DOCKER_HOST"] = engine.url
    backend = DockerBackend(config, environ=environ)
    backend.poll_seconds = 0.05
    return backend


def _calls(tmp_path) -> list[list[str]]:
    log = tmp_path / "docker.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# ---------------------------------------------------------------- status from the SDK


def test_status_maps_container_state_health_and_ports(tmp_path, engine):
    backend = _backend(tmp_path, engine)
    project = backend.project
    engine.add(project, "postgres")
    engine.add(project, "api-server")
    engine.add(project, "scheduler", health="unhealthy", log="curl: (7) Failed to connect to localhost port 8974")
    engine.add(project, "dag-processor", health="starting")
    engine.add(project, "triggerer", status="exited", health=None, exit_code=137)
    engine.add(project, "airflow-init", status="exited", health=None, exit_code=0)
    engine.add(project, "statsd-exporter")
    engine.add(project, "grafana")
    engine.add("some-other-project", "prometheus")  # must not count: another compose project

    status = backend.status()

    by_name = {s.name: s for s in status.services}
    assert list(by_name) == ["postgres", "api-server", "scheduler", "dag-processor", "triggerer",
                             "statsd-exporter", "prometheus", "grafana", "serving"]
    assert by_name["api-server"].state == "healthy"
    assert (by_name["api-server"].port, by_name["api-server"].url) == (18080, "http://127.0.0.1:18080")
    assert by_name["api-server"].pid and by_name["api-server"].uptime_seconds > 0
    assert by_name["scheduler"].state == "unhealthy" and "8974" in by_name["scheduler"].detail
    assert by_name["dag-processor"].state == "starting"
    assert by_name["triggerer"].state == "stopped" and by_name["triggerer"].detail == "exited (exit 137)"
    assert by_name["prometheus"].state == "stopped" and by_name["prometheus"].detail == "no container"
    assert status.running and not status.healthy
    lists = [q for method, path, q in engine.requests if path == "/containers/json"]
    assert lists and json.loads(lists[0]["filters"]) == {"label": [f"com.docker.compose.project={project}"]}
    assert lists[0]["all"] in ("1", "true", "True")


def test_status_lists_each_celery_worker_and_a_failed_migration(tmp_path, engine):
    backend = _backend(tmp_path, engine, executor="celery")
    project = backend.project
    for service in ("postgres", "redis", "api-server", "scheduler", "dag-processor", "triggerer",
                    "statsd-exporter", "prometheus", "grafana"):
        engine.add(project, service)
    engine.add(project, "worker", number=2)
    engine.add(project, "worker", number=1, health="starting")
    engine.add(project, "airflow-init", status="exited", health=None, exit_code=1)

    names = [(s.name, s.state) for s in backend.status().services]

    assert names[0] == ("airflow-init", "unhealthy")
    assert ("worker-1", "starting") in names and ("worker-2", "healthy") in names
    assert names.index(("worker-1", "starting")) < names.index(("worker-2", "healthy"))
    assert ("redis", "healthy") in names


def test_a_stack_never_started_is_all_stopped(tmp_path, engine):
    status = _backend(tmp_path, engine).status()
    assert status.services and not status.running


# ---------------------------------------------------------------- daemon not answering (real)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("host", ["tcp", "unix"])
def test_a_daemon_that_does_not_answer_is_one_clear_error(tmp_path, host):
    docker_host = f"tcp://127.0.0.1:{_closed_port()}" if host == "tcp" else f"unix://{tmp_path}/missing.sock"
    backend = _backend(tmp_path, None, DOCKER_HOST=docker_host)
    with pytest.raises(UnreachableError) as caught:
        backend.status()
    message = str(caught.value)
    assert caught.value.exit_code == 5
    reason = "connection refused" if host == "tcp" else "no such socket"
    assert message == f"the Docker daemon at {docker_host} is not answering ({reason})"
    assert "\n" not in message and len(message) < 300


# ---------------------------------------------------------------- up / down / logs


def test_up_builds_a_missing_image_starts_and_waits_until_healthy(tmp_path, engine, docker_cli):
    engine.healthy_after = 2
    backend = _backend(tmp_path, engine, bin_dir=docker_cli)
    reports: list[tuple[str, list]] = []
    kinds: dict[str, ProgressKind] = {}

    def progress(message, services, kind=None):
        reports.append((message, [s.state for s in services]))
        kinds[message] = ProgressKind.of(services, kind)

    status = backend.up(progress=progress, timeout=30)

    assert status.healthy and status.backend == "docker"
    assert [s.name for s in status.services] == list(backend.expected())
    calls = _calls(tmp_path)
    assert calls[0] == ["compose", "version"]
    commands = backend.commands()
    env_file = tmp_path / "state" / "docker" / "compose.env"
    assert calls[1] == commands.build()[1:]
    assert calls[2] == commands.up(["airflow-init", *backend.expected()])[1:]
    assert "--env-file" in calls[2] and str(env_file) in calls[2]
    messages = [m for m, _ in reports]
    assert messages[0].startswith("building mlwf-airflow:3.3.2-")
    assert any(m.startswith("waiting for ") and "starting" in states for m, states in reports)
    assert messages[-1] == "all services healthy" and kinds["all services healthy"] is ProgressKind.READY
    assert kinds[messages[0]] is ProgressKind.STEP
    assert {kinds[m] for m, states in reports if m.startswith("waiting for ")} == {ProgressKind.WAITING}
    for name in ("compose.env", "airflow.env"):
        assert (env_file.parent / name).stat().st_mode & 0o777 == 0o600
    assert any("secrets.json" in note for note in status.notes)
    # The image exists now: a second up on a healthy stack changes nothing.
    engine.images.add(re.search(r"MLWF_AIRFLOW_IMAGE=(\S+)", env_file.read_text()).group(1))
    again = backend.up(timeout=5)
    assert again.notes == ["the stack is already running; nothing changed"]
    assert len(_calls(tmp_path)) == 3


def test_up_celery_scales_workers_and_skips_an_existing_image(tmp_path, engine, docker_cli):
    engine.healthy_after = 1
    backend = _backend(tmp_path, engine, bin_dir=docker_cli, executor="celery")
    backend.config.home_dir.mkdir(parents=True)
    compose.write_env_files(backend.config, _secrets(backend), backend.stack)
    engine.images.add(re.search(r"MLWF_AIRFLOW_IMAGE=(\S+)",
                                (backend.config.home_dir / "docker/compose.env").read_text()).group(1))

    status = backend.up(exclude=frozenset({"monitoring"}), timeout=30)

    up = _calls(tmp_path)[-1]
    assert "build" not in [c for call in _calls(tmp_path) for c in call]
    assert up[up.index("--scale") + 1] == "worker=2" and up[up.index("--profile") + 1] == "celery"
    assert up[up.index("worker=2") + 1:] == [
        "airflow-init", "postgres", "redis", "api-server", "scheduler", "dag-processor", "triggerer", "serving", "worker"]
    assert [s.name for s in status.services if s.name.startswith("worker")] == ["worker-1", "worker-2"]
    assert "AIRFLOW__CORE__EXECUTOR=CeleryExecutor" in (backend.config.home_dir / "docker/airflow.env").read_text()


def _secrets(backend):
    from mlflowctl.secrets import load_or_create

    return load_or_create(backend.config.home_dir)


def test_up_that_times_out_stops_what_it_started(tmp_path, engine, docker_cli):
    backend = _backend(tmp_path, engine, bin_dir=docker_cli)
    with pytest.raises(StartFailed) as caught:
        backend.up(timeout=0.3)
    failure = caught.value
    assert failure.exit_code == 6  # timed out
    assert re.fullmatch(r"postgres not healthy after 0 s \(starting\)", str(failure))
    assert failure.hint == "mlwf logs postgres --tail 100"
    # The CLI prints this tail: the failing service's last lines, from `compose logs`.
    assert failure.log_tail == ["scheduler-1  | scheduler line 1", "scheduler-1  | scheduler line 2"]
    assert _calls(tmp_path)[-2] == backend.commands().logs("postgres", tail=25)[1:]
    assert _calls(tmp_path)[-1] == backend.commands().stop()[1:]


def test_up_local_after_celery_removes_the_broker_and_workers(tmp_path, engine, docker_cli):
    engine.healthy_after = 1
    backend = _backend(tmp_path, engine, bin_dir=docker_cli)
    for service in backend.expected():
        engine.add(backend.project, service)
    engine.add(backend.project, "redis")
    engine.add(backend.project, "worker", number=1)

    status = backend.up(timeout=30)

    removal = [call for call in _calls(tmp_path) if "rm" in call]
    assert removal == [backend.commands().remove(["redis", "worker"])[1:]]
    assert "removed the celery broker and workers (executor is now local)" in status.notes


def test_a_failing_compose_command_is_one_line_with_its_reason(tmp_path, engine, docker_cli):
    backend = _backend(tmp_path, engine, bin_dir=docker_cli, FAKE_DOCKER_FAIL="build")
    with pytest.raises(ComposeFailed) as caught:
        backend.up(timeout=5)
    message = str(caught.value)
    assert message == ("`docker compose build` failed (exit 1): "
                       "Error response from daemon: pull access denied for mlwf-airflow")
    assert not [s for s in backend.status().services if s.state != "stopped"]


def test_logs_and_down(tmp_path, engine, docker_cli):
    backend = _backend(tmp_path, engine, bin_dir=docker_cli)
    with pytest.raises(NotFoundError, match="no service 'nope'"):
        list(backend.logs("nope"))
    ensure_home(backend.config.home_dir, backend.config.project_root)
    compose.write_env_files(backend.config, _secrets(backend), backend.stack)

    lines = list(backend.logs("scheduler", tail=5, follow=False))

    assert lines == ["scheduler-1  | scheduler line 1", "scheduler-1  | scheduler line 2"]
    assert _calls(tmp_path)[-1] == backend.commands().logs("scheduler", tail=5)[1:]
    status = backend.down(volumes=True)
    assert _calls(tmp_path)[-1] == backend.commands().down(volumes=True)[1:]
    assert not status.running and not backend.config.home_dir.exists()
    assert any("deleted" in note for note in status.notes)


def test_down_without_env_files(tmp_path, engine, docker_cli):
    backend = _backend(tmp_path, engine, bin_dir=docker_cli)
    assert backend.down().notes == ["nothing was running"]
    assert [call for call in _calls(tmp_path) if "down" in call] == []
    # Containers of this project run but the state directory was wiped: regenerate, then stop them.
    engine.add(backend.project, "postgres")
    backend.down()
    call = _calls(tmp_path)[-1]
    assert call == backend.commands().down()[1:]
    assert (backend.config.home_dir / "docker" / "compose.env").stat().st_mode & 0o777 == 0o600


def test_logs_of_a_stack_never_started_is_stack_down(tmp_path, engine, docker_cli):
    from mlflowctl.errors import StackDownError

    with pytest.raises(StackDownError) as caught:
        list(_backend(tmp_path, engine, bin_dir=docker_cli).logs("scheduler"))
    assert caught.value.exit_code == 8 and "no docker stack was started" in str(caught.value)


def test_scale_workers_on_a_running_celery_stack(tmp_path, engine, docker_cli):
    from mlflowctl.errors import UsageError

    engine.healthy_after = 1
    with pytest.raises(UsageError, match="celery executor"):
        _backend(tmp_path, engine, bin_dir=docker_cli).scale(3)
    backend = _backend(tmp_path, engine, bin_dir=docker_cli, executor="celery")
    with pytest.raises(Exception, match="no docker stack was started"):
        backend.scale(3)
    backend.config.home_dir.mkdir(parents=True)
    compose.write_env_files(backend.config, _secrets(backend), backend.stack)
    for service in backend.expected():
        if service != "worker":
            engine.add(backend.project, service)

    status = backend.scale(3)

    assert _calls(tmp_path)[-1] == backend.commands().scale_workers(3)[1:]
    assert [s.name for s in status.services if s.name.startswith("worker")] == ["worker-1", "worker-2", "worker-3"]
    assert status.healthy


def test_restart_one_service_or_every_service_and_wait_for_health(tmp_path, engine, docker_cli):
    from mlflowctl.backends.base import Restarting
    from mlflowctl.errors import StackDownError, UsageError

    engine.healthy_after = 1
    backend = _backend(tmp_path, engine, bin_dir=docker_cli)
    assert isinstance(backend, Restarting)
    with pytest.raises(NotFoundError) as unknown:
        backend.restart("nope")
    assert unknown.value.exit_code == 4 and "services: postgres, api-server, scheduler" in str(unknown.value)
    with pytest.raises(StackDownError):  # never started: no env files
        backend.restart("scheduler")
    backend.config.home_dir.mkdir(parents=True)
    compose.write_env_files(backend.config, _secrets(backend), backend.stack)
    with pytest.raises(StackDownError):  # env files, but no container runs
        backend.restart("scheduler")
    started = [name for name in backend.expected() if name != "grafana"]  # as after `up --exclude grafana`
    for service in started:
        engine.add(backend.project, service)
    before = {s.name: s.pid for s in backend.status().services}
    reports: list[tuple[str, list[str]]] = []

    status = backend.restart("scheduler", progress=lambda m, services, kind=None: reports.append(
        (m, [s.state for s in services])), timeout=30)

    assert _calls(tmp_path)[-1] == backend.commands().restart(["scheduler"])[1:]
    after = {s.name: s.pid for s in status.services}
    assert after["scheduler"] != before["scheduler"]
    assert {n: p for n, p in after.items() if n != "scheduler"} == {
        n: p for n, p in before.items() if n not in ("scheduler", "grafana")}
    assert status.healthy and "grafana" not in after
    assert any(m.startswith("waiting for scheduler") and "starting" in states for m, states in reports)
    with pytest.raises(UsageError, match="grafana has no container"):
        backend.restart("grafana")

    everything = backend.restart(timeout=30)

    assert _calls(tmp_path)[-1] == backend.commands().restart(started)[1:]
    assert everything.healthy
    assert all(s.pid != after[s.name] for s in everything.services)
