"""Workers on other hosts without a network (issue 18): the `listen` setting's checks, the head's
certificate issued again when ADDR changes, and how `mlwf health` counts the workers.

The certificates are real (tls.ensure writes them, the `cryptography` package reads them back);
the stack's state directory is a temporary one. The real network is test_multihost_e2e.py's.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from conftest import MLWF
from mlflowctl.backends.base import CeleryWorkers
from mlflowctl.backends.local import tls, workers
from mlflowctl.config import load_config
from mlflowctl.errors import UsageError
from mlflowctl.health.gather import Gathered
from mlflowctl.health.judge import judge
from mlflowctl.health.report import HealthReport
from mlpipeline.thresholds import CELERY_WORKERS_MIN


def _config(tmp_path: Path, environ: dict | None = None, **overrides):
    return load_config({"home": str(tmp_path / "home"), **overrides}, cwd=tmp_path, environ=environ or {})


@pytest.mark.parametrize("given, kept", [("10.0.0.5", "10.0.0.5"), (" 192.168.1.20 ", "192.168.1.20"), ("", "")])
def test_listen_takes_an_ipv4_address_other_hosts_reach(tmp_path, given, kept):
    assert _config(tmp_path, listen=given).listen == kept


@pytest.mark.parametrize(
    "given, words",
    [
        ("127.0.0.1", "not an address other hosts can reach"),
        ("127.0.0.2", "not an address other hosts can reach"),  # all of 127/8 is loopback
        ("0.0.0.0", "not an address other hosts can reach"),
        ("224.0.0.1", "not an address other hosts can reach"),
        ("head.example", "not an IPv4 address"),
        ("10.0.0.256", "not an IPv4 address"),
        ("fe80::1", "not an IPv4 address"),
    ],
)
def test_listen_refuses_what_workers_cannot_reach(tmp_path, given, words):
    with pytest.raises(UsageError, match=f"listen='{given}' \\(from flag\\): .*{words}"):
        _config(tmp_path, listen=given)


def test_listen_from_the_environment_names_its_source(tmp_path):
    with pytest.raises(UsageError, match="from MLWF_LISTEN"):
        _config(tmp_path, environ={"MLWF_LISTEN": "127.0.0.1"})


def _names(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in alt.get_values_for_type(x509.IPAddress)} | set(alt.get_values_for_type(x509.DNSName))


def _verify(ca: Path, cert: Path) -> None:
    """Raises unless `cert` was signed by `ca`'s key."""
    issuer = x509.load_pem_x509_certificate(ca.read_bytes())
    issued = x509.load_pem_x509_certificate(cert.read_bytes())
    issued.verify_directly_issued_by(issuer)


def test_the_server_certificate_is_issued_again_when_the_address_changes(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    first = tls.ensure(home, "10.0.0.5")
    assert _names(first.cert) == {"127.0.0.1", "localhost", "10.0.0.5"}
    _verify(first.ca, first.cert)
    for path in (first.key, first.ca.parent / "ca.key"):
        assert path.stat().st_mode & 0o777 == 0o600
    ca, cert, key = first.ca.read_bytes(), first.cert.read_bytes(), first.key.read_bytes()

    again = tls.ensure(home, "10.0.0.5")  # same address: nothing issued, the workers' join file stays valid
    assert (again.ca.read_bytes(), again.cert.read_bytes(), again.key.read_bytes()) == (ca, cert, key)

    moved = tls.ensure(home, "10.0.0.9")
    assert _names(moved.cert) == {"127.0.0.1", "localhost", "10.0.0.9"}  # the old address is no longer named
    assert moved.key.read_bytes() != key
    assert moved.ca.read_bytes() == ca  # the same CA: joined hosts keep trusting it
    _verify(moved.ca, moved.cert)


def test_a_damaged_or_foreign_server_certificate_is_replaced(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    found = tls.ensure(home, "10.0.0.5")
    found.cert.write_text("not a certificate")
    _verify(tls.ensure(home, "10.0.0.5").ca, found.cert)

    (tmp_path / "other").mkdir()
    foreign = tls.ensure(tmp_path / "other", "10.0.0.5")  # another head's CA signed this one
    found.cert.write_bytes(foreign.cert.read_bytes())
    replaced = tls.ensure(home, "10.0.0.5")
    assert replaced.cert.read_bytes() != foreign.cert.read_bytes()
    _verify(replaced.ca, replaced.cert)


def test_a_listening_head_whose_broker_is_down_says_it_could_not_count_other_hosts(tmp_path):
    """Nothing runs in a fresh state directory: no own workers, and the broker cannot be asked."""
    head = _config(tmp_path, executor="celery", listen="10.0.0.5")
    assert workers.census(head) == CeleryWorkers(0, None, True)
    assert workers.census(_config(tmp_path, executor="celery")) is None  # not listening: none can join


def _row(count: CeleryWorkers):
    report = HealthReport("t", "1h", 3600, "http://a", "http://p", {})
    judge(Gathered(prometheus="not configured", api="not configured", workers=count), report,
          dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    return next(r for r in report.section("executor") if r.name == "celery workers")


def test_health_counts_the_workers_other_hosts_joined():
    row = _row(CeleryWorkers(2, {"r1@b": 0, "r2@b": 1}, True))
    assert (row.status, row.value, row.threshold) == ("ok", 4, CELERY_WORKERS_MIN)
    assert row.detail == "4 live Celery worker(s): 2 on this host, 2 joined from other hosts (r1@b, r2@b)"

    alone = _row(CeleryWorkers(0, {"r1@b": 2}, True))  # the head's own died: the remote one still takes the queue
    assert (alone.status, alone.value) == ("ok", 1)

    none = _row(CeleryWorkers(0, {}, True))
    assert (none.status, none.value) == ("critical", 0)
    assert none.detail == "0 live Celery worker(s): 0 on this host, 0 joined from other hosts; queued tasks will wait"

    unasked = _row(CeleryWorkers(0, None, True))
    assert unasked.status == "critical" and "those of other hosts not counted (the broker could not be asked)" in unasked.detail


def test_the_broadcast_finds_every_worker_on_the_broker_from_the_runtimes_python(tmp_path):
    """A real Redis and a real Celery worker: the broadcast (run in the runtime's python, here
    this one) names it; a broker nobody serves gives None, within its bound."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import free_ports
    from mlflowctl.backends.local import broker, joining
    from mlflowctl.secrets import load_or_create

    port, closed = free_ports(2)
    config = _config(tmp_path, executor="celery", redis_port=port)
    secrets = load_or_create(config.home_dir)
    url = broker.broker_url(config, secrets)
    server = subprocess.Popen([broker.find_redis(), str(broker.write_config(config, secrets))],
                              stdout=subprocess.DEVNULL, start_new_session=True)
    worker = None
    try:
        deadline = time.monotonic() + 20
        while not broker.ping(url)[0]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert joining.cluster_workers(url, sys.executable) == {}  # the broker answers; no worker yet
        worker = subprocess.Popen([sys.executable, "-m", "celery", "worker", "-n", "r1@test", "--pool", "solo"],
                                  env={**os.environ, "CELERY_BROKER_URL": url}, cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while (found := joining.cluster_workers(url, sys.executable)) != {"r1@test": 0}:
            assert time.monotonic() < deadline, found
        started = time.monotonic()
        assert joining.cluster_workers(f"redis://127.0.0.1:{closed}/0", sys.executable) is None
        assert time.monotonic() - started < 35
    finally:
        for process in (worker, server):
            if process is not None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(20)


def test_up_refuses_a_listen_address_that_is_not_this_machines_before_anything_starts(tmp_path):
    """192.0.2.1 (TEST-NET-1) is never an address of this machine: one line, exit 2, no state."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "mlwf.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLWF_", "AIRFLOW__"))}
    env.update({"MLWF_HOME": str(tmp_path / "home"), "MLWF_BACKEND": "local"})
    result = subprocess.run(
        [MLWF, "up", "--executor", "celery", "--listen", "192.0.2.1", "--timeout", "30"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: 192.0.2.1 is not an address of this machine, so nothing could listen on it"]
    assert "hint: use one of its addresses" in result.stderr and "Traceback" not in result.stderr
    # `up` holds the state directory's lock (its marker and lock file); nothing else was made.
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == [".lock", ".mlwf-state"]
