"""Celery executor pieces without a stack: the executor record, refusals, binaries, Redis.

Redis runs for real here (the installed binary, a free port, a temporary state directory);
a missing binary is simulated by emptying the search path. PostgreSQL, which both executors
use, has its own tests (test_postgres_units.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from conftest import MLWF, free_ports
from mlflowctl.backends.local import broker, celery_executor, record
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
    assert record.effective_config(config).executor == "local"
    record.write_record(config.home_dir, executor="celery", workers=3)
    effective = record.effective_config(config)
    assert (effective.executor, effective.workers) == ("celery", 3)
    explicit = record.effective_config(_config(tmp_path, executor="local", workers=5))
    assert (explicit.executor, explicit.workers) == ("local", 5)


def test_celery_on_sqlite_is_refused_and_an_existing_sqlite_stack_is_not_moved(tmp_path):
    record.check_switch(_config(tmp_path, executor="celery"))  # fresh state, default database: fine
    with pytest.raises(UsageError, match="celery executor needs PostgreSQL, and database = sqlite"):
        record.check_switch(_config(tmp_path, executor="celery", database="sqlite"))
    sqlite = tmp_path / "home" / "airflow" / "airflow.db"  # a local stack from before the record said so
    sqlite.parent.mkdir(parents=True)
    sqlite.write_bytes(b"")
    with pytest.raises(UsageError, match="keeps its metadata in SQLite") as refused:
        record.check_switch(_config(tmp_path, executor="celery"))
    assert "mlwf down --volumes" in refused.value.hint and "no automatic migration" in refused.value.hint
    # A user-given database is the user's business.
    record.check_switch(_config(tmp_path, executor="celery", database_url="postgresql://x@db/airflow"))
    # A Celery stack (PostgreSQL) may go on with the LocalExecutor: same database.
    sqlite.unlink()
    record.write_record(tmp_path / "home", executor="celery")
    record.check_switch(_config(tmp_path, executor="local"))
    assert record.effective_config(_config(tmp_path, executor="local")).database == "postgres"


def test_missing_redis_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(broker, "REDIS_DIRS", (str(tmp_path),))
    with pytest.raises(MissingDependencyError, match="apt-get install redis-server"):
        broker.find_redis()


def test_user_urls_are_used_as_given(tmp_path):
    config = _config(tmp_path, executor="celery", broker_url="redis://broker:6379/1")
    assert celery_executor.urls(config, load_or_create(config.home_dir)) == {"broker_url": "redis://broker:6379/1"}
    own = _config(tmp_path, executor="celery")
    urls = celery_executor.urls(own, load_or_create(own.home_dir))
    assert urls["broker_url"].startswith("redis://:") and f"127.0.0.1:{own.redis_port}/0" in urls["broker_url"]


def test_own_redis_needs_its_password_and_keeps_nothing(tmp_path):
    (port,) = free_ports(1)
    config = _config(tmp_path, executor="celery", redis_port=port)
    secrets = load_or_create(config.home_dir)
    conf = broker.write_config(config, secrets)
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    server = subprocess.Popen([broker.find_redis(), str(conf)], stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not broker.ping(broker.broker_url(config, secrets))[0]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert broker.ping(f"redis://:wrong@127.0.0.1:{port}/0") == (False, "refused the password")
        assert broker.queue_length(broker.broker_url(config, secrets)) == 0
        assert broker.status(config, secrets) == (True, "0 tasks queued")
        assert broker.queue_length(f"redis://127.0.0.1:{port}/0") is None  # no password: refused
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)
    assert not any((config.home_dir / "redis").glob("*.rdb")) and not any((config.home_dir / "redis").glob("*.aof"))


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
    record.write_record(tmp_path / "home", executor="celery", workers=2)
    down = _mlwf(tmp_path, "scale", "workers", "3")
    assert down.returncode == 8 and "not running" in down.stderr
    assert [line for line in down.stderr.splitlines() if line.startswith("error:")] == ["error: the stack is not running"]
