"""`mlwf open` and `mlwf password`: URLs from config, a real $BROWSER, real secrets files."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlflowctl.cli.main import app
from mlflowctl.ui import has_display
from mlflowctl.errors import NotAvailableError, NotFoundError, UnreachableError, UsageError
from mlflowctl.secrets import load_or_create

MLWF = str(Path(sys.executable).parent / "mlwf")


@pytest.fixture
def listening():
    """A real TCP socket listening on a free port: a service that 'answers'."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory with its own mlwf.toml; each test writes the settings it needs."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("MLWF_"):
            monkeypatch.delenv(name)

    def write(**settings) -> Path:
        lines = [f"{name} = {json.dumps(value)}" for name, value in settings.items()]
        (tmp_path / "mlwf.toml").write_text("\n".join(lines) + "\n")
        return tmp_path

    return write


def run(*args: str, env: dict | None = None):
    # Typer >= 0.16's CliRunner keeps stdout and stderr apart.
    return CliRunner().invoke(app, list(args), env=env)


# ------------------------------------------------------------------------ open --print


def test_print_airflow_url_comes_from_config(project):
    port = free_port()
    project(backend="local", airflow_port=port)
    result = run("open", "--print")
    assert result.exit_code == 0
    assert result.stdout == f"http://127.0.0.1:{port}\n"
    # Nothing listens there: --print still prints, and says so on stderr only.
    assert "nothing answers" in result.stderr


@pytest.mark.parametrize(
    ("settings", "args"),
    [
        (lambda port: {"backend": "local", "airflow_url": f"http://127.0.0.1:{port}/"}, ["open", "airflow", "--print"]),
        (lambda port: {"backend": "local", "prometheus_port": port}, ["open", "Prometheus", "--print"]),
        # Choosing the docker backend needs no daemon: only starting it would.
        (lambda port: {"backend": "docker", "grafana_port": port}, ["open", "grafana", "--print"]),
    ],
    ids=["explicit-airflow-url", "prometheus-any-case", "grafana-on-docker"],
)
def test_print_service_url(project, listening, settings, args):
    project(**settings(listening))
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"http://127.0.0.1:{listening}\n"
    assert result.stderr == ""


def test_grafana_is_not_available_on_the_local_backend(project):
    project(backend="local")
    result = run("open", "grafana", "--print")
    assert result.exit_code == NotAvailableError.exit_code
    assert result.stdout == ""
    assert "Grafana does not run on the local backend" in result.stderr
    assert "mlwf open prometheus" in result.stderr


def test_unknown_service_is_a_usage_error(project):
    project(backend="local")
    result = run("open", "kibana", "--print")
    assert result.exit_code == UsageError.exit_code
    assert result.stdout == ""
    assert result.stderr.splitlines()[0] == (
        "error: unknown service 'kibana': choose one of airflow, prometheus, grafana"
    )


# ------------------------------------------------------------------------ open (browser or not)


def test_open_without_display_prints_url_and_how_to_log_in(project, listening):
    root = project(backend="local", airflow_port=listening)
    secrets = load_or_create(root / ".mlwf")
    result = run("open", env={"DISPLAY": None, "WAYLAND_DISPLAY": None, "BROWSER": None})
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"http://127.0.0.1:{listening}\n"
    assert "no display here" in result.stderr
    assert "mlwf password" in result.stderr
    # The password itself is never shown unless asked for.
    assert secrets.admin_password not in result.stderr + result.stdout


def test_open_refuses_a_service_that_does_not_answer(project):
    port = free_port()
    project(backend="local", prometheus_port=port)
    result = run("open", "prometheus", env={"DISPLAY": None, "BROWSER": None})
    assert result.exit_code == UnreachableError.exit_code
    assert result.stdout == ""
    assert f"nothing answers at http://127.0.0.1:{port}: prometheus is not running" in result.stderr


@pytest.fixture
def fake_browser(tmp_path):
    """A real $BROWSER command that writes down the URL it was given: (environment, that file)."""
    seen = tmp_path / "browser-saw.txt"
    command = tmp_path / "fake-browser"
    command.write_text(f'#!/bin/sh\nprintf "%s" "$1" > "{seen}"\n')
    command.chmod(command.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWF_")}
    env.update({"BROWSER": str(command), "DISPLAY": ":0"})
    return env, seen


def mlwf_process(root: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    # A process of its own: `webbrowser` reads $BROWSER once per process.
    return subprocess.run([MLWF, *args], cwd=root, env=env, capture_output=True, text=True, timeout=60)


def test_open_starts_the_users_browser(project, listening, fake_browser):
    env, seen = fake_browser
    result = mlwf_process(project(backend="local", prometheus_port=listening), env, "open", "prometheus")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"http://127.0.0.1:{listening}\n"
    assert seen.read_text() == f"http://127.0.0.1:{listening}"


def test_print_never_starts_a_browser(project, listening, fake_browser):
    env, seen = fake_browser
    result = mlwf_process(project(backend="local", airflow_port=listening), env, "open", "--print")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"http://127.0.0.1:{listening}\n"
    assert not seen.exists()


@pytest.mark.parametrize(
    ("environ", "platform", "expected"),
    [
        ({}, "linux", False),
        ({"DISPLAY": ":0"}, "linux", True),
        ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
        ({"BROWSER": "lynx"}, "linux", True),
        ({}, "darwin", True),
        ({}, "win32", True),
    ],
)
def test_has_display(environ, platform, expected):
    assert has_display(environ, platform) is expected


# ------------------------------------------------------------------------ password


def test_password_prints_the_generated_admin_password(project):
    root = project(backend="local")
    secrets = load_or_create(root / ".mlwf")
    result = run("password")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == secrets.admin_password + "\n"
    grafana = run("password", "grafana")
    assert grafana.stdout == secrets.grafana_password + "\n"


def test_password_honours_home(project, tmp_path):
    project(backend="local")
    secrets = load_or_create(tmp_path / "elsewhere")
    result = run("password", "--home", str(tmp_path / "elsewhere"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == secrets.admin_password + "\n"


def test_password_without_a_stack_says_how_to_get_one(project):
    project(backend="local")
    result = run("password")
    assert result.exit_code == NotFoundError.exit_code
    assert result.stdout == ""
    assert "no generated password in" in result.stderr and "mlwf up" in result.stderr


def test_password_of_an_unknown_service(project):
    project(backend="local")
    result = run("password", "prometheus")
    assert result.exit_code == UsageError.exit_code
    assert "choose one of airflow, grafana" in result.stderr


# ------------------------------------------------------------------------ on the session's stack


@pytest.mark.stack
def test_password_and_url_of_the_session_stack(stack):
    password = stack.mlwf("password", check=True)
    assert password.stdout == stack.password + "\n"
    url = stack.mlwf("open", "airflow", "--print", check=True)
    assert url.stdout == stack.url + "\n"
    assert url.stderr == ""
    # The printed URL and password really log in.
    import httpx

    response = httpx.post(
        f"{url.stdout.strip()}/auth/token",
        json={"username": stack.user, "password": password.stdout.strip()},
        timeout=60,
    )
    assert response.status_code == 201
