#!/usr/bin/env python
"""Benchmark the pipeline's stage functions in-process on synthetic data.

For each size (default 10k, 100k, 1M rows x 20 features, logistic regression) a fresh
subprocess runs download -> validate -> preprocess -> feature_engineering -> train ->
evaluate in a temporary directory and reports, per stage, the wall time and the peak RSS
(sampled every few milliseconds with psutil while the stage runs), plus the process's
exact peak RSS (getrusage ru_maxrss). The parent prints a table, the growth factor per
10x rows, and whether the targets hold: 1M rows end to end <= 60 s and <= 2 GiB peak RSS,
cost growing no worse than linearly.

    .venv/bin/python bench/pipeline_bench.py                 # all sizes, table
    .venv/bin/python bench/pipeline_bench.py --markdown      # tables for BENCHMARKS.md
    .venv/bin/python bench/pipeline_bench.py --sizes 10000 --check   # exit 1 if a target is missed
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STAGES = ("download", "validate", "preprocess", "features", "train", "evaluate")
TARGET_SECONDS = 60.0
TARGET_RSS_MIB = 2048.0
TARGET_ROWS = 1_000_000
# growth per 10x rows above this counts as worse than linear (10x, plus 25 % for timing noise)
LINEAR_LIMIT = 12.5


class PeakSampler:
    """Samples this process's RSS in a background thread; `peak` since the last `reset`."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self._interval)

    def reset(self) -> None:
        self.peak = self._process.memory_info().rss

    def __enter__(self) -> PeakSampler:
        self.reset()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system  # all threads of this process


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_child(rows: int, features: int, workdir: Path, model_type: str) -> dict[str, Any]:
    """Run every stage once on `rows` synthetic rows; return the per-stage figures."""
    started = time.perf_counter()
    from mlpipeline import model_training as mt
    from mlpipeline.download import download_data
    from mlpipeline.features import feature_engineering
    from mlpipeline.preprocessing import preprocess_data
    from mlpipeline.validation import validate_data

    import_seconds = time.perf_counter() - started
    baseline = _maxrss_mib()
    out = workdir / "run"
    state: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("download", lambda: download_data(f"synthetic:rows={rows},features={features},seed=7", out)),
        ("validate", lambda: validate_data(state["download"]["path"], out)),
        ("preprocess", lambda: preprocess_data(state["download"]["path"], out)),
        ("features", lambda: feature_engineering(
            state["preprocess"]["train_path"], state["preprocess"]["holdout_path"], out)),
        ("train", lambda: mt.train_model(state["features"]["train_path"], out, model_type=model_type)),
        ("evaluate", lambda: mt.evaluate_model(state["train"]["model_path"], state["features"]["holdout_path"], out)),
    ]
    stages: dict[str, dict[str, float]] = {}
    with PeakSampler() as sampler:
        for name, step in steps:
            sampler.reset()
            t0, c0 = time.perf_counter(), _cpu_seconds()
            state[name] = step()
            seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
            stages[name] = {
                "seconds": round(seconds, 3),
                "cpu_seconds": round(cpu, 3),
                "peak_rss_mib": round(max(sampler.peak, sampler._process.memory_info().rss) / 2**20, 1),
            }
    return {
        "rows": rows,
        "features": features,
        "model_type": model_type,
        "import_seconds": round(import_seconds, 3),
        "baseline_rss_mib": round(baseline, 1),
        "stages": stages,
        "total_seconds": round(sum(s["seconds"] for s in stages.values()), 3),
        "total_cpu_seconds": round(sum(s["cpu_seconds"] for s in stages.values()), 3),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "peak_rss_mib": round(_maxrss_mib(), 1),
        "accuracy": round(state["evaluate"]["accuracy"], 4),
        "roc_auc": round(state["evaluate"]["roc_auc"], 4),
        "file_mib": {
            p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(out.glob("*.parquet"))
        },
    }


def measure(rows: int, features: int, model_type: str) -> dict[str, Any]:
    """Run one size in a fresh interpreter so its peak RSS is its own."""
    with tempfile.TemporaryDirectory(prefix="mlwf-bench-") as tmp:
        cmd = [sys.executable, __file__, "--child", "--rows", str(rows), "--features", str(features),
               "--model-type", model_type, "--workdir", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"benchmark child for {rows} rows failed:\n{proc.stderr}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def growth(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratio of each stage's time and peak RSS between consecutive sizes, per 10x rows."""
    rows = []
    for small, big in zip(results, results[1:]):
        decades = math.log10(big["rows"] / small["rows"]) or 1.0

        def per10(a: float, b: float, decades: float = decades) -> float:
            return round((b / a) ** (1 / decades), 2) if a > 0 else float("inf")

        entry: dict[str, Any] = {"from": small["rows"], "to": big["rows"]}
        for stage in STAGES:
            entry[stage] = per10(small["stages"][stage]["seconds"], big["stages"][stage]["seconds"])
        entry["total"] = per10(small["total_seconds"], big["total_seconds"])
        entry["total_cpu"] = per10(small["total_cpu_seconds"], big["total_cpu_seconds"])
        entry["peak_rss"] = per10(small["peak_rss_mib"], big["peak_rss_mib"])
        rows.append(entry)
    return rows


def verdicts(results: list[dict[str, Any]], growths: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    found = []
    for r in results:
        if r["rows"] == TARGET_ROWS:
            found.append((f"1M rows end to end {r['total_seconds']:.1f} s <= {TARGET_SECONDS:.0f} s",
                          r["total_seconds"] <= TARGET_SECONDS))
            found.append((f"1M rows peak RSS {r['peak_rss_mib']:.0f} MiB <= {TARGET_RSS_MIB:.0f} MiB",
                          r["peak_rss_mib"] <= TARGET_RSS_MIB))
    for g in growths:
        found.append((f"total time growth {g['from']:,} -> {g['to']:,} rows: x{g['total']} per 10x rows (linear: x10)",
                      g["total"] <= LINEAR_LIMIT))
        found.append((f"total CPU time growth {g['from']:,} -> {g['to']:,} rows: x{g['total_cpu']} per 10x rows",
                      g["total_cpu"] <= LINEAR_LIMIT))
        found.append((f"peak RSS growth {g['from']:,} -> {g['to']:,} rows: x{g['peak_rss']} per 10x rows",
                      g["peak_rss"] <= LINEAR_LIMIT))
    return found


def _table(header: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*row) for row in [header, *body])


def report(results: list[dict[str, Any]], markdown: bool) -> str:
    sizes = [f"{r['rows']:,}" for r in results]
    time_rows = [[stage] + [f"{r['stages'][stage]['seconds']:.2f}" for r in results] for stage in STAGES]
    time_rows.append(["**total**" if markdown else "TOTAL"] + [f"{r['total_seconds']:.2f}" for r in results])
    cpu_rows = [[stage] + [f"{r['stages'][stage]['cpu_seconds']:.2f}" for r in results] for stage in STAGES]
    cpu_rows.append(["**total**" if markdown else "TOTAL"] + [f"{r['total_cpu_seconds']:.2f}" for r in results])
    cpu_rows.append(["load average (1 min) after"] + [f"{r['load_average'][0]:.1f}" for r in results])
    mem_rows = [[stage] + [f"{r['stages'][stage]['peak_rss_mib']:.0f}" for r in results] for stage in STAGES]
    mem_rows.append(["process peak (ru_maxrss)"] + [f"{r['peak_rss_mib']:.0f}" for r in results])
    mem_rows.append(["after imports"] + [f"{r['baseline_rss_mib']:.0f}" for r in results])
    growths = growth(results)
    parts = [
        "Wall time per stage (s)",
        _table(["stage", *sizes], time_rows, markdown),
        "",
        "CPU time per stage, user + system, all threads (s)",
        _table(["stage", *sizes], cpu_rows, markdown),
        "",
        "Peak RSS during each stage (MiB)",
        _table(["stage", *sizes], mem_rows, markdown),
    ]
    if growths:
        header = ["per 10x rows", *[f"{g['from']:,} -> {g['to']:,}" for g in growths]]
        body = [[k] + [f"x{g[k]}" for g in growths] for k in (*STAGES, "total", "total_cpu", "peak_rss")]
        parts += ["", "Growth factor per 10x rows (linear = x10)", _table(header, body, markdown)]
    quality = [[f"{r['rows']:,}", f"{r['accuracy']:.4f}", f"{r['roc_auc']:.4f}",
                ", ".join(f"{k} {v}" for k, v in r["file_mib"].items())] for r in results]
    parts += ["", "Model quality and file sizes (MiB)", _table(["rows", "accuracy", "roc_auc", "files"], quality, markdown)]
    parts += ["", "Targets"]
    parts += [f"{'- ' if markdown else ''}{'PASS' if ok else 'MISS'}: {text}" for text, ok in verdicts(results, growths)]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated row counts")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--model-type", default="logistic_regression")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.rows, args.features, args.workdir, args.model_type)))
        return 0
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    results = []
    for rows in sizes:
        print(f"running {rows:,} rows x {args.features} features ...", file=sys.stderr, flush=True)
        results.append(measure(rows, args.features, args.model_type))
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(f"Pipeline stages, {args.model_type}, {args.features} features; {machine}\n")
    print(report(results, args.markdown))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "growth": growth(results)}, indent=2) + "\n")
    missed = [text for text, ok in verdicts(results, growth(results)) if not ok]
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
