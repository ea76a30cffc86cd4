"""Helpers for the exporter tests: a text-format reader, free ports, the exporter as a process.

The reader is deliberately independent of prometheus_client (whose parser renames
counter samples to `<name>_total`): it reads names, labels, values and TYPE lines as
Prometheus would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAPPING = REPO / "stack" / "statsd" / "mapping.yml"
AIRFLOW_LINES = REPO / "tests" / "data" / "airflow_statsd_lines.txt"

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

SeriesKey = tuple[str, frozenset]


@dataclass
class Exposition:
    types: dict[str, str]  # family name from `# TYPE` -> type
    samples: dict[SeriesKey, float]  # (sample name, labels) -> value

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def series(self, name: str) -> dict[frozenset, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def parse_exposition(text: str) -> Exposition:
    types: dict[str, str] = {}
    samples: dict[SeriesKey, float] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        assert m, f"not a text-format sample line: {line!r}"
        labels = frozenset((k, v.replace('\\"', '"').replace("\\\\", "\\")) for k, v in _LABEL_RE.findall(m.group(2) or ""))
        key = (m.group(1), labels)
        assert key not in samples, f"duplicate series {key}"
        samples[key] = float(m.group(3))
    return Exposition(types, samples)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
        return resp.read()


def send_udp(port: int, payloads: list[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for payload in payloads:
            s.sendto(payload.encode(), ("127.0.0.1", port))


@dataclass
class ExporterProcess:
    proc: subprocess.Popen
    statsd_port: int
    http_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def metrics(self) -> Exposition:
        return parse_exposition(http_get(self.url + "/metrics").decode())

    def status(self) -> dict:
        return json.loads(http_get(self.url + "/status"))

    def wait_lines(self, count: int, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status["lines"] >= count or time.monotonic() > deadline:
                return status
            time.sleep(0.05)

    def stop(self) -> int:
        return stop_process_group(self.proc)


def stop_process_group(proc: subprocess.Popen, timeout: float = 10) -> int:
    """TERM the process group we started, KILL it if it lingers; the exit code."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def exporter_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlflowctl.metrics.exporter", *args]


def start_exporter(tmp_path: Path, mapping: Path | None = MAPPING, *extra: str, timeout: float = 15.0) -> ExporterProcess:
    """The exporter as the local backend starts it (own session), on ports the kernel picks."""
    ready = tmp_path / f"exporter-ready-{time.monotonic_ns()}.json"
    args = ["--statsd-host", "127.0.0.1", "--statsd-port", "0", "--http-host", "127.0.0.1", "--http-port", "0",
            "--ready-file", str(ready), *extra]
    if mapping is not None:
        args = ["--mapping", str(mapping), *args]
    log = open(tmp_path / "exporter.log", "ab")
    proc = subprocess.Popen(exporter_command(*args), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True, cwd=REPO)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError(f"exporter did not start: {(tmp_path / 'exporter.log').read_text()}")
        time.sleep(0.02)
    info = json.loads(ready.read_text())
    return ExporterProcess(proc, info["statsd_port"], info["http_port"])
