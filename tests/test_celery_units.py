"""Celery plugin pieces without a stack: the executor record, refusals, binaries, Redis, PostgreSQL.

Redis and PostgreSQL run for real here (the installed binaries, free ports, a temporary
state directory); missing binaries are simulated by emptying the search path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import MLWF, free_ports, port_open
from mlflowctl.backends import celery_local, executors
from mlflowctl.config import load_config
from mlflowctl.errors import MissingDependencyError, UsageError
from mlflowctl.secrets import load_or_create


def _config(tmp_path, **overrides):
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "mlwf.toml").write_text("")
    return load_config({"home": str(tmp_path / "home"), **overrides}, cwd=project, environ={})


def test_effective_config_follows_the_started_stack_unless_the_user_says_otherwise(tmp_path):
    config = _config(tmp_path)
    assert executors.effective_config(config).executor == "local"
    executors.write_record(config.home_dir, executor="celery", workers=3)
    effective = executors.effective_config(config)
    assert (effective.executor, effective.workers) == ("celery", 3)
    explicit = executors.effective_config(_config(tmp_path, executor="local", workers=5))
    assert (explicit.executor, explicit.workers) == ("local", 5)


def test_switching_databases_under_existing_data_is_refused(tmp_path):
    config = _config(tmp_path, executor="celery")
    executors.check_switch(config)  # fresh state: fine
    sqlite = config.home_dir / "airflow" / "airflow.db"
    sqlite.parent.mkdir(parents=True)
    sqlite.write_bytes(b"")
    with pytest.raises(UsageError, match="SQLite.*mlwf down --volumes"):
        executors.check_switch(config)
    # A user-given database is the user's business.
    executors.check_switch(_config(tmp_path, executor="celery", database_url="postgresql://x@db/airflow"))
    sqlite.unlink()
    executors.write_record(config.home_dir, executor="celery")
    with pytest.raises(UsageError, match="PostgreSQL.*mlwf down --volumes"):
        executors.check_switch(_config(tmp_path, executor="local"))


def test_missing_binaries_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(celery_local, "REDIS_DIRS", (str(tmp_path),))
    monkeypatch.setattr(celery_local, "POSTGRES_GLOBS", (str(tmp_path / "nothing-*"),))
    with pytest.raises(MissingDependencyError, match="apt-get install redis-server"):
        celery_local.find_redis()
    with pytest.raises(MissingDependencyError, match="apt-get install postgresql"):
        celery_local.find_postgres_bin()


def test_user_urls_are_used_as_given(tmp_path):
    config = _config(tmp_path, executor="celery", broker_url="redis://broker:6379/1", database_url="postgresql://u@db/a")
    assert celery_local.urls(config, load_or_create(config.home_dir)) == {
        "database_url": "postgresql://u@db/a",
        "broker_url": "redis://broker:6379/1",
    }
    own = _config(tmp_path, executor="celery")
    urls = celery_local.urls(own, load_or_create(own.home_dir))
    assert urls["database_url"].startswith("postgresql+psycopg2://airflow:")
    assert urls["broker_url"].startswith("redis://:") and f"127.0.0.1:{own.redis_port}/0" in urls["broker_url"]


def test_own_redis_needs_its_password_and_keeps_nothing(tmp_path):
    (port,) = free_ports(1)
    config = _config(tmp_path, executor="celery", redis_port=port)
    secrets = load_or_create(config.home_dir)
    conf = celery_local.write_redis_config(config, secrets)
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    server = subprocess.Popen([celery_local.find_redis(), str(conf)], stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not celery_local.redis_ping(port, celery_local.redis_password(secrets))[0]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert celery_local.redis_ping(port, "wrong") == (False, "refused the password")
        assert celery_local.queue_length(celery_local.broker_url(config, secrets)) == 0
        assert celery_local._redis_status(config, secrets) == (True, "0 tasks queued")
        assert celery_local.queue_length(f"redis://127.0.0.1:{port}/0") is None  # no password: refused
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)
    assert not any((config.home_dir / "redis").glob("*.rdb")) and not any((config.home_dir / "redis").glob("*.aof"))


def test_own_postgres_initialises_serves_the_password_and_stops_fast(tmp_path):
    (port,) = free_ports(1)
    config = _config(tmp_path, executor="celery", postgres_port=port)
    secrets = load_or_create(config.home_dir)
    celery_local.init_postgres(config, secrets)
    base = celery_local.postgres_dir(config)
    assert (base / "data" / "PG_VERSION").is_file()
    assert json.loads((config.home_dir / "executor.json").read_text())["postgres_dir"] == str(base)
    server = subprocess.Popen(celery_local.postgres_argv(config), start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not celery_local.postgres_accepts(config):
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.2)
        import psycopg2

        url = celery_local.database_url(config, secrets).replace("postgresql+psycopg2", "postgresql")
        with psycopg2.connect(url) as connection, connection.cursor() as cursor:
            cursor.execute("select current_database()")
            assert cursor.fetchone() == ("airflow",)
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(url.replace(secrets.postgres_password, "wrong")).close()
        # A client still connected: TERM (smart shutdown) becomes a fast shutdown.
        held = psycopg2.connect(url)
        started = time.monotonic()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(15)
        assert time.monotonic() - started < 10
        held.close()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    assert not port_open(port)
    assert celery_local.remove_data(config) in (None, f"deleted {base}")


def _mlwf(tmp_path, *args):
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "mlwf.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLWF_", "AIRFLOW__"))}
    env.update({"MLWF_HOME": str(tmp_path / "home"), "MLWF_BACKEND": "local"})
    return subprocess.run([MLWF, *args], cwd=project, env=env, capture_output=True, text=True, timeout=120)


def test_scale_refuses_what_it_cannot_do(tmp_path):
    wrong = _mlwf(tmp_path, "scale", "schedulers", "2")
    assert wrong.returncode == 2 and "only `mlwf scale workers N`" in wrong.stderr
    zero = _mlwf(tmp_path, "scale", "workers", "0")
    assert zero.returncode == 2 and "at least 1" in zero.stderr
    absurd = _mlwf(tmp_path, "scale", "workers", "100000")
    assert absurd.returncode == 2 and "at most 32" in absurd.stderr and not (tmp_path / "home").exists()
    local = _mlwf(tmp_path, "scale", "workers", "2")
    assert local.returncode == 2 and "needs the celery executor" in local.stderr
    executors.write_record(tmp_path / "home", executor="celery", workers=2)
    down = _mlwf(tmp_path, "scale", "workers", "3")
    assert down.returncode == 8 and "not running" in down.stderr
    assert [line for line in down.stderr.splitlines() if line.startswith("error:")] == ["error: the stack is not running"]
