#!/usr/bin/env python
"""Benchmark the pipeline's stage functions in-process on synthetic data, for each model type.

For each model type (default: all three) and each size (default 10k, 100k, 1M rows x 20
features) a fresh subprocess runs download -> validate -> preprocess -> feature_engineering
-> train -> evaluate in a temporary directory and reports, per stage, the wall time and the
peak RSS (sampled every few milliseconds with psutil while the stage runs), plus the
process's exact peak RSS (getrusage ru_maxrss). Each subprocess first imports this project's
`task_preload` modules, as every task of its stack starts with them, so a stage pays only
the imports a task pays.

At the largest size, a second fresh subprocess then reads the very arrays the train and
evaluate stages read (the feature files) and times two bare scripts on them:

- the floor: the estimator the pipeline chose, with the same effective parameters, fit and
  scored (predict_proba, accuracy, ROC AUC), nothing else;
- the reference: scikit-learn's estimator with default parameters (LogisticRegression,
  RandomForestClassifier, GradientBoostingClassifier; same seed), for the quality bar. The
  default forest's fully grown trees would not fit in memory at once at a million rows, so
  it is grown as 10 forests of 10 trees with different seeds whose probabilities are
  averaged: the same estimator, since a forest's probability is the mean of its trees'.

The parent prints tables and whether the targets hold: 1M rows end to end <= 60 s and
<= 2 GiB peak RSS, cost growing no worse than linearly, accuracy and ROC AUC no more than
0.01 below the reference, and the model stages (train + evaluate) at most 1.3x the floor.

    .venv/bin/python bench/pipeline_bench.py                 # every type, all sizes, table
    .venv/bin/python bench/pipeline_bench.py --markdown      # tables for BENCHMARKS.md
    .venv/bin/python bench/pipeline_bench.py --sizes 1000000 --model-types random_forest
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
MODEL_TYPES = ("logistic_regression", "random_forest", "gradient_boosting")
TARGET_SECONDS = 60.0
TARGET_RSS_MIB = 2048.0
TARGET_ROWS = 1_000_000
# growth per 10x rows above this counts as worse than linear (10x, plus 25 % for timing noise)
LINEAR_LIMIT = 12.5
QUALITY_MARGIN = 0.01  # accuracy and ROC AUC may be at most this much below the reference
FLOOR_RATIO = 1.3  # train + evaluate at most this many times the bare fit + score
REFERENCE_CHUNKS = 10  # the default forest is grown as this many forests of n_estimators / chunks trees


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


def preload() -> list[str]:
    """Import what a task of this project's stack starts with (`task_preload`), so the stages are
    timed as they run there rather than paying imports the stack's tasks never pay."""
    import importlib

    from mlflowctl.config import load_config

    names = list(load_config(cwd=Path(__file__).resolve().parent.parent).task_preload)
    for name in names:
        importlib.import_module(name)
    return names


def run_child(rows: int, features: int, workdir: Path, model_type: str) -> dict[str, Any]:
    """Run every stage once on `rows` synthetic rows; return the per-stage figures."""
    started = time.perf_counter()
    preloaded = preload()
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
        "preloaded": preloaded,
        "baseline_rss_mib": round(baseline, 1),
        "stages": stages,
        "total_seconds": round(sum(s["seconds"] for s in stages.values()), 3),
        "total_cpu_seconds": round(sum(s["cpu_seconds"] for s in stages.values()), 3),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "peak_rss_mib": round(_maxrss_mib(), 1),
        "accuracy": round(state["evaluate"]["accuracy"], 4),
        "roc_auc": round(state["evaluate"]["roc_auc"], 4),
        "params": state["train"]["params"],
        "train_path": state["features"]["train_path"],
        "holdout_path": state["features"]["holdout_path"],
        "file_mib": {
            p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(out.glob("*.parquet"))
        },
    }


def _scored(model: Any, x: Any, y: Any) -> dict[str, float]:
    return _quality(model.predict_proba(x)[:, 1], y)


def _quality(proba: Any, y: Any) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, roc_auc_score

    return {"accuracy": round(float(accuracy_score(y, proba > 0.5)), 4), "roc_auc": round(float(roc_auc_score(y, proba)), 4)}


def _reference(model_type: str, x: Any, y: Any, xh: Any, yh: Any, seed: int) -> dict[str, Any]:
    """scikit-learn's estimator with default parameters (n_jobs only where it changes nothing but speed)."""
    import numpy as np
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    if model_type == "random_forest":
        trees = RandomForestClassifier().n_estimators
        proba = np.zeros(len(yh))
        for chunk in range(REFERENCE_CHUNKS):
            forest = RandomForestClassifier(n_estimators=trees // REFERENCE_CHUNKS, n_jobs=-1, random_state=seed + chunk)
            proba += forest.fit(x, y).predict_proba(xh)[:, 1] / REFERENCE_CHUNKS
            del forest
        scores = _quality(proba, yh)
        name = f"RandomForestClassifier() as {REFERENCE_CHUNKS} x {trees // REFERENCE_CHUNKS} trees"
    else:
        cls = GradientBoostingClassifier if model_type == "gradient_boosting" else LogisticRegression
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs's default 100 iterations may not converge: it is the reference
            scores = _scored(cls(random_state=seed).fit(x, y), xh, yh)
        name = f"{cls.__name__}()"
    return {"estimator": name, "seconds": round(time.perf_counter() - t0, 2), **scores}


def run_floor(model_type: str, params: dict[str, Any], train_path: Path, holdout_path: Path,
              *, reference: bool = True) -> dict[str, Any]:
    """The chosen estimator fit and scored by a bare script on the pipeline's own arrays; then the reference."""
    preload()
    import pandas as pd

    from mlpipeline import model_training as mt
    from mlpipeline.storage import LABEL

    train, holdout = pd.read_parquet(train_path), pd.read_parquet(holdout_path)
    x, y = train.drop(columns=[LABEL]), train[LABEL].to_numpy()
    xh, yh = holdout.drop(columns=[LABEL]), holdout[LABEL].to_numpy()
    estimator, effective = mt.build_estimator(model_type, params)
    assert effective == params, (effective, params)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    scores = _scored(estimator.fit(x, y), xh, yh)
    floor = {"seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(_cpu_seconds() - c0, 2), **scores}
    del estimator
    result = {"floor": floor, "load_average": [round(v, 2) for v in os.getloadavg()]}
    if reference:
        result["reference"] = _reference(model_type, x, y, xh, yh, params.get("random_state", 42))
    return result


def _child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(rows: int, features: int, model_type: str, *, compare: bool = False, reference: bool = True) -> dict[str, Any]:
    """Run one size in a fresh interpreter so its peak RSS is its own; with `compare`, then the
    floor and (unless not `reference`) the reference in another one, on the same feature files."""
    with tempfile.TemporaryDirectory(prefix="mlwf-bench-") as tmp:
        result = _child(["--child", "--rows", str(rows), "--features", str(features),
                         "--model-types", model_type, "--workdir", tmp])
        if compare:
            result.update(_child(["--floor", "--model-types", model_type, "--params", json.dumps(result["params"]),
                                  *([] if reference else ["--no-reference"]),
                                  "--workdir", tmp, result["train_path"], result["holdout_path"]]))
        return result


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
        if "reference" in r:
            ref = r["reference"]
            for metric in ("accuracy", "roc_auc"):
                found.append((f"{r['rows']:,} rows {metric} {r[metric]:.4f} vs reference {ref[metric]:.4f} "
                              f"(at most {QUALITY_MARGIN} below)", r[metric] >= ref[metric] - QUALITY_MARGIN))
        if "floor" in r:
            model = model_seconds(r)
            found.append((f"{r['rows']:,} rows train + evaluate {model:.1f} s <= {FLOOR_RATIO} x floor "
                          f"{r['floor']['seconds']:.1f} s (x{model / r['floor']['seconds']:.2f})",
                          model <= FLOOR_RATIO * r["floor"]["seconds"]))
            whole = r["total_seconds"]
            found.append((f"{r['rows']:,} rows end to end {whole:.1f} s <= {FLOOR_RATIO} x floor "
                          f"{r['floor']['seconds']:.1f} s (x{whole / r['floor']['seconds']:.2f})",
                          whole <= FLOOR_RATIO * r["floor"]["seconds"]))
    for g in growths:
        found.append((f"total time growth {g['from']:,} -> {g['to']:,} rows: x{g['total']} per 10x rows (linear: x10)",
                      g["total"] <= LINEAR_LIMIT))
        found.append((f"total CPU time growth {g['from']:,} -> {g['to']:,} rows: x{g['total_cpu']} per 10x rows",
                      g["total_cpu"] <= LINEAR_LIMIT))
        found.append((f"peak RSS growth {g['from']:,} -> {g['to']:,} rows: x{g['peak_rss']} per 10x rows",
                      g["peak_rss"] <= LINEAR_LIMIT))
    return found


def model_seconds(result: dict[str, Any]) -> float:
    return result["stages"]["train"]["seconds"] + result["stages"]["evaluate"]["seconds"]


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
    compared = [r for r in results if "floor" in r]
    if compared:
        header = ["rows", "", "estimator", "wall s", "accuracy", "roc_auc"]
        body = []
        for r in compared:
            floor, ref = r["floor"], r.get("reference")
            chosen = ", ".join(f"{k}={v}" for k, v in sorted(r["params"].items()) if k != "random_state")
            body += [
                [f"{r['rows']:,}", "pipeline (train + evaluate)", chosen, f"{model_seconds(r):.2f}",
                 f"{r['accuracy']:.4f}", f"{r['roc_auc']:.4f}"],
                ["", "floor (bare fit + score)", "same", f"{floor['seconds']:.2f}",
                 f"{floor['accuracy']:.4f}", f"{floor['roc_auc']:.4f}"],
                ["", "pipeline end to end", f"x{r['total_seconds'] / floor['seconds']:.2f} the floor",
                 f"{r['total_seconds']:.2f}", "", ""],
            ]
            if ref is not None:
                body += [
                    ["", "reference (defaults)", ref["estimator"], f"{ref['seconds']:.2f}",
                     f"{ref['accuracy']:.4f}", f"{ref['roc_auc']:.4f}"],
                    ["", "pipeline - reference", "", "", f"{r['accuracy'] - ref['accuracy']:+.4f}",
                     f"{r['roc_auc'] - ref['roc_auc']:+.4f}"],
                ]
        parts += ["", "Quality against scikit-learn's defaults, and the floor, on the same split",
                  _table(header, body, markdown)]
    parts += ["", "Targets"]
    parts += [f"{'- ' if markdown else ''}{'PASS' if ok else 'MISS'}: {text}" for text, ok in verdicts(results, growths)]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated row counts")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--model-types", default=",".join(MODEL_TYPES), help="comma-separated model types")
    parser.add_argument("--no-compare", action="store_true", help="skip the floor and the reference")
    parser.add_argument("--no-reference", action="store_true",
                        help="time the floor but skip the reference (scikit-learn's defaults; slow for the trees)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--report", type=Path, help="print the tables of an earlier --json file, run nothing")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    types = [t.strip() for t in args.model_types.split(",") if t.strip()]
    if args.child:
        print(json.dumps(run_child(args.rows, args.features, args.workdir, types[0])))
        return 0
    if args.floor:
        print(json.dumps(run_floor(types[0], json.loads(args.params), *args.paths, reference=not args.no_reference)))
        return 0
    if args.report:
        for model_type, saved in json.loads(args.report.read_text()).items():
            print(f"Pipeline stages, {model_type}\n\n{report(saved['results'], args.markdown)}\n")
        return 0
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    everything: dict[str, Any] = {}
    missed = []
    for model_type in types:
        results = []
        for rows in sizes:
            print(f"running {model_type}, {rows:,} rows x {args.features} features ...", file=sys.stderr, flush=True)
            results.append(measure(rows, args.features, model_type, compare=rows == max(sizes) and not args.no_compare,
                                   reference=not args.no_reference))
        print(f"Pipeline stages, {model_type}, {args.features} features; {machine}\n")
        print(report(results, args.markdown) + "\n", flush=True)
        everything[model_type] = {"results": results, "growth": growth(results)}
        missed += [text for text, ok in verdicts(results, growth(results)) if not ok]
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2) + "\n")
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
