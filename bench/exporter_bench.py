"""Throughput of the embedded StatsD exporter: a burst of StatsD lines over loopback UDP.

    .venv/bin/python bench/exporter_bench.py [--lines 200000] [--rate 50000] [--rate 0] [--per-packet 1] [--json]

Starts `python -m mlflowctl.metrics.exporter` with stack/statsd/mapping.yml exactly as the
local backend does (own process, free ports), then sends `--lines` lines taken in turn
from the real Airflow capture (tests/data/airflow_statsd_lines.txt), one line per
datagram by default as Airflow's StatsD client sends them, paced at `--rate` lines/s
(0: as fast as the sender can). Each `--rate` is one run against a fresh exporter.
It reports, from the exporter's own /status counters once they stop moving:

- received and lost lines (sent - received: dropped by the kernel's receive buffer),
- the exporter's processing rate (lines received / time from first send to last line
  handled), and the sender's achieved rate.

The target (issue 5): none lost at 50k lines/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAPPING = REPO / "stack" / "statsd" / "mapping.yml"
LINES = REPO / "tests" / "data" / "airflow_statsd_lines.txt"


def status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())


def start_exporter(workdir: Path) -> tuple[subprocess.Popen, int, int]:
    ready = workdir / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflowctl.metrics.exporter", "--mapping", str(MAPPING),
         "--statsd-port", "0", "--http-port", "0", "--ready-file", str(ready)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, cwd=REPO,
    )
    deadline = time.monotonic() + 20
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("exporter did not start")
        time.sleep(0.02)
    info = json.loads(ready.read_text())
    return proc, info["statsd_port"], info["http_port"]


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def payloads(total: int, per_packet: int) -> list[bytes]:
    source = [line for line in LINES.read_text().splitlines() if line]
    lines = [source[i % len(source)] for i in range(total)]
    return ["\n".join(lines[i : i + per_packet]).encode() for i in range(0, total, per_packet)]


def run(total: int, rate: float, per_packet: int) -> dict:
    packets = payloads(total, per_packet)
    with tempfile.TemporaryDirectory(prefix="mlwf-exporter-bench-") as tmp:
        proc, statsd_port, http_port = start_exporter(Path(tmp))
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            target = ("127.0.0.1", statsd_port)
            batch = max(1, int(rate / 1000 / per_packet)) if rate else len(packets)  # ~1 ms of lines per batch
            interval = batch * per_packet / rate if rate else 0.0
            wall_start = time.time()
            start = time.perf_counter()
            next_at = start
            for i in range(0, len(packets), batch):
                for data in packets[i : i + batch]:
                    sock.sendto(data, target)
                if interval:
                    next_at += interval
                    delay = next_at - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
            sent_s = time.perf_counter() - start
            sock.close()
            # wait until the exporter's counters stop moving
            last, last_change = -1, time.perf_counter()
            while time.perf_counter() - last_change < 1.0:
                st = status(http_port)
                if st["lines"] != last:
                    last, last_change = st["lines"], time.perf_counter()
                if last >= total:
                    break
                time.sleep(0.02)
            st = status(http_port)
            done_s = st["last_line_at"] - wall_start if st["last_line_at"] else sent_s
        finally:
            stop(proc)
    received = st["lines"]
    return {
        "lines_sent": total,
        "lines_per_packet": per_packet,
        "target_rate": rate or None,
        "sender_rate": round(total / sent_s),
        "lines_received": received,
        "lines_lost": total - received,
        "processed_rate": round(received / max(done_s, sent_s, 1e-9)),
        "parse_errors": st["parse_errors"],
        "seconds": round(max(done_s, sent_s), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=200_000)
    p.add_argument("--rate", type=float, action="append", help="lines/s, repeatable; 0 = unpaced (default: 50000 and 0)")
    p.add_argument("--per-packet", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results = [run(args.lines, rate, args.per_packet) for rate in (args.rate or [50_000, 0])]
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()}
    if args.json:
        print(json.dumps({"machine": machine, "runs": results}, indent=2))
        return
    print(f"embedded StatsD exporter, {args.lines} lines, {args.per_packet} line(s)/packet, "
          f"Python {machine['python']}, {machine['cpus']} CPUs")
    print(f"{'target/s':>9} {'sent/s':>9} {'handled/s':>10} {'received':>9} {'lost':>6} {'errors':>6} {'seconds':>8}")
    for r in results:
        target = f"{r['target_rate']:.0f}" if r["target_rate"] else "unpaced"
        print(f"{target:>9} {r['sender_rate']:>9} {r['processed_rate']:>10} {r['lines_received']:>9} "
              f"{r['lines_lost']:>6} {r['parse_errors']:>6} {r['seconds']:>8}")


if __name__ == "__main__":
    main()
