"""The compose command lines of every operation, for both flavours, and which flavour is picked.

v2 (`docker compose`) cannot be installed here, so its lines are checked as exact argv lists;
v1 (Debian's docker-compose 1.29) is really run with each line against a closed Docker port:
a line v1 cannot parse stops at its usage text, a line it accepts gets as far as asking the
daemon for its version. That proves both flavours get options they understand.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from mlflowctl.backends import compose
from mlflowctl.backends.docker import DockerBackend
from mlflowctl.config import load_config
from mlflowctl.errors import MissingDependencyError, UsageError
from mlflowctl.secrets import load_or_create

ROOT = Path(__file__).resolve().parents[1]
FILE = ROOT / "stack" / "docker-compose.yml"
ENV = Path("/state/docker/compose.env")


def _commands(flavour: compose.Flavour) -> compose.ComposeCommands:
    return compose.ComposeCommands(flavour=flavour, project="mlwf-demo-abc123", file=FILE, env_file=ENV)


def _base(prefix: list[str], *, celery: bool) -> list[str]:
    argv = [*prefix, "--project-name", "mlwf-demo-abc123", "--env-file", str(ENV), "--file", str(FILE)]
    return argv + (["--profile", "celery"] if celery else [])


FLAVOURS = [(compose.V2, ["docker", "compose"]), (compose.V1, ["docker-compose"])]


@pytest.mark.parametrize("flavour,prefix", FLAVOURS)
def test_command_lines(flavour, prefix):
    c = _commands(flavour)
    assert c.build() == [*_base(prefix, celery=False), "build", "airflow-init"]
    assert c.up(["airflow-init", "postgres", "api-server"]) == [
        *_base(prefix, celery=False), "up", "--detach", "--remove-orphans", "airflow-init", "postgres", "api-server"]
    assert c.up(["airflow-init", "redis", "worker"], workers=3) == [
        *_base(prefix, celery=True), "up", "--detach", "--remove-orphans", "--scale", "worker=3",
        "airflow-init", "redis", "worker"]
    assert c.down() == [*_base(prefix, celery=True), "down", "--remove-orphans"]
    assert c.down(volumes=True) == [*_base(prefix, celery=True), "down", "--remove-orphans", "--volumes"]
    assert c.stop() == [*_base(prefix, celery=True), "stop"]
    assert c.remove(["redis", "worker"]) == [*_base(prefix, celery=True), "rm", "--stop", "--force", "redis", "worker"]
    assert c.ps() == [*_base(prefix, celery=True), "ps", "--all"]
    assert c.logs() == [*_base(prefix, celery=True), "logs", "--no-color", "--tail=100"]
    assert c.logs("scheduler", tail=20, follow=True) == [
        *_base(prefix, celery=True), "logs", "--no-color", "--tail=20", "--follow", "scheduler"]
    assert c.restart(["scheduler"]) == [*_base(prefix, celery=True), "restart", "scheduler"]
    assert c.restart(["postgres", "api-server", "worker"]) == [
        *_base(prefix, celery=True), "restart", "postgres", "api-server", "worker"]
    assert c.scale_workers(4) == [
        *_base(prefix, celery=True), "up", "--detach", "--no-deps", "--no-recreate", "--scale", "worker=4", "worker"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (v1) not installed")
def test_v1_accepts_every_command_line(tmp_path):
    config = load_config({"home": str(tmp_path / "state"), "executor": "celery"}, cwd=ROOT, environ={})
    files = compose.write_env_files(config, load_or_create(config.home_dir), compose.stack_dir(config))
    c = compose.ComposeCommands(compose.V1, "mlwf-test", FILE, files.compose)
    env = {"PATH": "/usr/bin:/bin", "DOCKER_HOST": f"tcp://127.0.0.1:{_closed_port()}"}
    lines = {
        "build": c.build(), "up": c.up(["airflow-init", "api-server"], workers=2), "down": c.down(volumes=True),
        "stop": c.stop(), "rm": c.remove(["redis", "worker"]), "ps": c.ps(), "logs": c.logs("scheduler", tail=5, follow=True),
        "scale": c.scale_workers(3), "restart": c.restart(["postgres", "scheduler"]),
    }
    for operation, argv in lines.items():
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        output = result.stdout + result.stderr
        assert "Usage:" not in output, f"{operation}: v1 rejected {argv}: {output[-400:]}"
        assert "Error while fetching server API version" in output, f"{operation}: {output[-400:]}"
    # The same check catches a line v1 does not understand.
    bad = subprocess.run([*c.base(celery=True), "logs", "--since-forever"], env=env, capture_output=True, text=True)
    assert "Usage:" in bad.stdout + bad.stderr


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_neither_flavour_is_a_missing_dependency(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    with pytest.raises(MissingDependencyError, match=r"neither `docker compose` \(v2\) nor `docker-compose` \(v1\)"):
        compose.detect_flavour({"PATH": str(empty)})
    with pytest.raises(MissingDependencyError) as caught:
        DockerBackend(load_config({"home": str(tmp_path / "s")}, cwd=ROOT, environ={}), environ={"PATH": str(empty)}).up()
    assert caught.value.exit_code == 11
    assert not (tmp_path / "s").exists()  # nothing written before the error


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (v1) not installed")
def test_v1_is_the_fallback_when_docker_has_no_compose_plugin(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(shutil.which("docker-compose"), bin_dir / "docker-compose")
    assert compose.detect_flavour({"PATH": f"{bin_dir}:/usr/bin:/bin"}) is compose.V1
    # A docker CLI without the compose plugin (`docker compose version` fails) falls back too.
    _executable(bin_dir / "docker", "#!/bin/sh\necho \"docker: 'compose' is not a docker command.\" >&2\nexit 1\n")
    assert compose.detect_flavour({"PATH": f"{bin_dir}:/usr/bin:/bin"}) is compose.V1


def test_v2_wins_when_the_plugin_answers(tmp_path):
    # No compose v2 plugin can be installed here: a stand-in `docker` that answers like one.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "docker", '#!/bin/sh\n[ "$1 $2" = "compose version" ] && echo "Docker Compose version v2.30.3"\n')
    assert compose.detect_flavour({"PATH": f"{bin_dir}:/usr/bin:/bin"}) is compose.V2


def test_project_name_is_per_state_directory(tmp_path):
    one = load_config({"home": str(tmp_path / "a")}, cwd=ROOT, environ={})
    two = load_config({"home": str(tmp_path / "b")}, cwd=ROOT, environ={})
    assert compose.project_name(one).startswith(f"mlwf-{ROOT.name.lower()}-")
    assert compose.project_name(one) != compose.project_name(two)
    assert compose.project_name(one) == compose.project_name(load_config({"home": str(tmp_path / "a")}, cwd=ROOT, environ={}))


def test_image_tag_follows_the_runtime_list(tmp_path):
    requirements, dockerfile = tmp_path / "runtime.txt", tmp_path / "Dockerfile"
    requirements.write_text("pandas==3.1.1\n")
    dockerfile.write_text("FROM apache/airflow:3.3.2\n")
    first = compose.image_tag(requirements, dockerfile)
    assert first.startswith("mlwf-airflow:3.3.2-")
    requirements.write_text("pandas==3.1.2\n")
    assert compose.image_tag(requirements, dockerfile) != first


def test_env_file_refuses_values_compose_would_mangle():
    from mlflowctl.errors import UsageError

    assert compose.render_env({"A": "x y", "B": '{"k":1}'}) == 'A=x y\nB={"k":1}\n'
    with pytest.raises(UsageError, match="WEBHOOK"):
        compose.render_env({"WEBHOOK": "http://h/$path"})


def test_sqlite_is_refused_by_the_docker_backend_before_anything_runs(tmp_path):
    """The compose stack's metadata lives in its PostgreSQL container: an explicit SQLite choice
    is a usage error naming where it came from, not silently ignored."""
    empty = tmp_path / "bin"
    empty.mkdir()
    config = load_config({"home": str(tmp_path / "s")}, cwd=ROOT, environ={"MLWF_DATABASE": "sqlite"})
    with pytest.raises(UsageError, match=r"database=sqlite \(from MLWF_DATABASE\): the docker backend") as caught:
        DockerBackend(config, environ={"PATH": str(empty)}).up()
    assert caught.value.exit_code == 2
    assert not (tmp_path / "s").exists()
    given = load_config({"home": str(tmp_path / "s")}, cwd=ROOT, environ={"MLWF_DATABASE": "sqlite", "MLWF_DATABASE_URL": "postgresql://u:p@db/a"})
    assert DockerBackend(given).database_name() == "database_url"  # the user's own database: nothing to refuse
    assert DockerBackend(load_config({}, cwd=ROOT, environ={})).database_name() == "postgres"
