"""The model server (`python -m mlpipeline.serving`) under load from a second process on loopback.

    .venv/bin/python bench/serving_bench.py [--seconds 10] [--connections 8] [--mlflow] [--json]

Builds a registry in a temporary folder with the pipeline's own `deploy_model` (two
logistic regressions on breast_cancer's 30 named columns, as the pipeline fits them),
starts the server on a free port, then runs a load client in another process (asyncio,
raw HTTP/1.1 keep-alive: a small client of our own, no wrk here). Side by side:

- the floor: the same model's prediction on one row in-process, the way the server calls
  it (a float array) and the naive way (a one-row DataFrame, `predict` + `predict_proba`);
- throughput: `--connections` clients sending single-row predictions back to back;
- latency at 100 requests/s, open loop (each latency counts from the request's scheduled
  time, so a stall is not hidden by the client waiting);
- ten swaps under 100 requests/s: production alternates v0001/v0002 ten times (each swap
  waited for), every answer is checked for status 200.

With `--mlflow`, the same fitted model (the one production serves, v0002) is saved as an MLflow
sklearn model and served by `mlflow models serve --env-manager local` (one uvicorn worker, as
ours is one process) after ours has stopped, and the same client measures throughput and
latency at 100 requests/s on its `/invocations`. MLflow lives in its own virtual environment
under the user's cache folder (`uv venv` + `uv pip install mlflow` with the project's pinned
scikit-learn and skops), never in the project's. The model crosses over as the skops file
`deploy_model` wrote, loaded there with the project's own allow-list.

The targets (issue 20): >= 1,000 requests/s, p99 <= 20 ms at 100 requests/s, zero failed
requests during the swaps. The machine's load average is printed with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
MLFLOW_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlwf-bench" / "mlflow-venv"


# ---------------------------------------------------------------- the load client (its own process)


async def _one(reader, writer, request: bytes) -> int:
    writer.write(request)
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def _closed_loop(port: int, request: bytes, connections: int, seconds: float) -> dict:
    codes: dict[int, int] = {}
    end = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < end:
            code = await _one(reader, writer, request)
            codes[code] = codes.get(code, 0) + 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    total = sum(codes.values())
    return {"requests": total, "per_second": round(total / elapsed), "codes": codes}


async def _open_loop(port: int, request: bytes, rate: float, seconds: float, pool: int = 16) -> dict:
    """`rate` requests/s on a schedule, over a pool of keep-alive connections."""
    connections = asyncio.Queue()
    for _ in range(pool):
        connections.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    codes: dict[int | str, int] = {}
    start = time.perf_counter()

    async def fire(at: float) -> None:
        reader, writer = await connections.get()
        try:
            code = await _one(reader, writer, request)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            code = type(exc).__name__
        connections.put_nowait((reader, writer))
        latencies.append(time.perf_counter() - at)
        codes[code] = codes.get(code, 0) + 1

    tasks = []
    for i in range(int(rate * seconds)):
        at = start + i / rate
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        tasks.append(asyncio.ensure_future(fire(at)))
    await asyncio.gather(*tasks)
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)  # noqa: E731
    return {"requests": len(latencies), "codes": codes, "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": pick(1.0)}


def client_main(argv: list[str]) -> None:
    mode, port, seconds, extra = argv[0], int(argv[1]), float(argv[2]), float(argv[3])
    body, path = Path(argv[4]).read_bytes(), argv[5]
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    if mode == "closed":
        result = asyncio.run(_closed_loop(port, request, int(extra), seconds))
    else:
        result = asyncio.run(_open_loop(port, request, extra, seconds))
    print(json.dumps(result))


# ---------------------------------------------------------------- the bench


def _client(mode: str, port: int, seconds: float, extra: float, body: Path, path: str = "/predict") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, "--client", mode, str(port), str(seconds), str(extra), str(body), path],
        stdout=subprocess.PIPE, text=True,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(port: int, body: Path, path: str, seconds: float, connections: int) -> dict:
    """Warm-up, then throughput (closed loop) and latency at 100 requests/s (open loop)."""
    _client("closed", port, 2, 2, body, path).communicate(timeout=60)
    closed = _client("closed", port, seconds, connections, body, path)
    throughput = json.loads(closed.communicate(timeout=seconds + 60)[0])
    paced = _client("open", port, seconds, 100, body, path)
    return {"throughput": throughput, "latency_at_100_per_s": json.loads(paced.communicate(timeout=seconds + 60)[0])}


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (MLflow's CLI starts uvicorn as a child), bounded."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


_MLFLOW_SAVE = """
import sys, json, skops.io, mlflow, mlflow.sklearn
source, target, trusted = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
refused = set(skops.io.get_untrusted_types(file=source)) - set(trusted)
assert not refused, refused
mlflow.sklearn.save_model(skops.io.load(source, trusted=trusted), target)
print(mlflow.__version__)
"""


def _mlflow_venv() -> Path:
    """MLflow's own environment (made once, kept in the cache), with the project's pins."""
    pins = [line.strip() for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines()
            if line.startswith(("scikit-learn==", "skops=="))]
    if not (MLFLOW_VENV / "bin" / "python").exists():
        subprocess.run(["uv", "venv", "--python", platform.python_version(), str(MLFLOW_VENV)],
                       check=True, capture_output=True, timeout=300)
    subprocess.run(["uv", "pip", "install", "--python", str(MLFLOW_VENV / "bin" / "python"), "mlflow", *pins],
                   check=True, capture_output=True, timeout=900)
    return MLFLOW_VENV


def _mlflow(model_file: Path, row: dict, expected: dict, folder: Path, seconds: float, connections: int) -> dict:
    """The same model behind `mlflow models serve`, under the same client."""
    import httpx

    from mlpipeline.model_training import TRUSTED_TYPES

    venv = _mlflow_venv()
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _MLFLOW_SAVE, str(model_file), str(folder / "mlflow-model"),
         json.dumps(list(TRUSTED_TYPES))], check=True, capture_output=True, text=True, timeout=300,
    ).stdout.split()[-1]
    body = folder / "mlflow-body.json"
    body.write_text(json.dumps({"dataframe_split": {"columns": list(row), "data": [list(row.values())]}}))
    port = _free_port()
    log = folder / "mlflow-serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(venv / "bin" / "mlflow"), "models", "serve", "-m", str(folder / "mlflow-model"),
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            env={**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        while True:
            try:
                if httpx.get(url + "/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() - started > 120:
                raise RuntimeError(f"mlflow models serve did not answer /ping: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        startup = round(time.monotonic() - started, 1)
        answer = httpx.post(url + "/invocations", content=body.read_bytes(),
                            headers={"Content-Type": "application/json"}, timeout=10).json()
        if answer["predictions"] != expected["predictions"]:
            raise RuntimeError(f"MLflow predicts {answer} where ours predicts {expected}")
        return {"mlflow_version": version, "seconds_to_first_ping": startup, **_load(port, body, "/invocations", seconds, connections)}
    finally:
        _stop(server)


def _wait_served(url: str, version: str, timeout: float = 30) -> float:
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if httpx.get(url + "/health", timeout=2).json().get("served") == version:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{version} not served after {timeout} s")


def _floor(model_path: Path, row: dict) -> dict:
    import pandas as pd

    from mlpipeline.model_training import load_model
    from mlpipeline.serving import Served

    model = load_model(model_path)
    served = Served.build("v0001", model, {})
    frame = pd.DataFrame([row])[list(served.features)]

    def per_call(fn, n: int = 2000) -> float:
        fn()
        started = time.perf_counter()
        for _ in range(n):
            fn()
        return round((time.perf_counter() - started) / n * 1e6, 1)

    import sklearn

    with sklearn.config_context(assume_finite=True):
        as_served = per_call(lambda: served.predict(served.matrix([row])))
    naive = per_call(lambda: (model.predict(frame), model.predict_proba(frame)), 500)
    return {"as_served_us": as_served, "dataframe_predict_and_proba_us": naive}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--mlflow", action="store_true", help="also serve the same model with `mlflow models serve`")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import warnings

    import httpx
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    from mlpipeline.model_deployment import ModelRegistry, deploy_model
    from mlpipeline.model_training import save_model

    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    data = load_breast_cancer(as_frame=True)
    row = data.data.iloc[0].to_dict()
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "loadavg_before": [round(x, 2) for x in os.getloadavg()]}}
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        folder = Path(tmp)
        for i, c in enumerate((1.0, 0.5), 1):
            model = LogisticRegression(C=c, solver="newton-cholesky", max_iter=1000).fit(data.data, data.target)
            save_model(model, folder / f"m{i}.skops")
            deploy_model(folder / f"m{i}.skops", {"accuracy": 0.95}, registry_root=folder / "registry",
                         thresholds={"accuracy": 0.5}, tolerance=0.5, metadata={"run_id": f"bench-{i}"})
        results["floor"] = _floor(folder / "m1.skops", row)
        body = folder / "body.json"
        body.write_text(json.dumps({"rows": [row]}))

        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "mlpipeline.serving", "--port", str(port), "--registry", str(folder / "registry")],
            env={**os.environ, "PYTHONPATH": str(REPO / "src")}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            _wait_served(url, "v0002", timeout=120)
            ours = httpx.post(url + "/predict", content=body.read_bytes(), timeout=10).json()
            results.update(_load(port, body, "/predict", args.seconds, args.connections))

            registry = ModelRegistry(folder / "registry")
            under_load = _client("open", port, 60, 100, body)
            swaps = []
            for i in range(10):
                target = "v0001" if i % 2 == 0 else "v0002"
                registry.rollback(target)
                swaps.append(round(_wait_served(url, target), 3))
                time.sleep(0.3)
            # the client runs its fixed schedule; the swaps were done well within it
            results["swaps_under_100_per_s"] = {**json.loads(under_load.communicate(timeout=180)[0]),
                                                "swaps": len(swaps), "seconds_to_serve_each": swaps}
            metrics = httpx.get(url + "/metrics", timeout=5).text
            results["server_swaps_total"] = next(
                float(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith("mlpipeline_serving_model_swaps_total"))
        finally:
            _stop(server)
        if args.mlflow:
            results["mlflow"] = _mlflow(folder / "m2.skops", row, ours, folder, args.seconds, args.connections)
    results["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    t, lat, sw = results["throughput"], results["latency_at_100_per_s"], results["swaps_under_100_per_s"]
    print(f"machine: {results['machine']}")
    print(f"floor, in-process, one row: as served {results['floor']['as_served_us']} us; "
          f"DataFrame predict+predict_proba {results['floor']['dataframe_predict_and_proba_us']} us")
    print(f"throughput ({args.connections} connections, {args.seconds:g} s): {t['per_second']} req/s, codes {t['codes']}")
    print(f"latency at 100 req/s: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms, codes {lat['codes']}")
    print(f"10 swaps under 100 req/s: {sw['requests']} requests, codes {sw['codes']}, p99 {sw['p99_ms']} ms, "
          f"each swap served after {sw['seconds_to_serve_each']} s")
    if args.mlflow:
        m = results["mlflow"]
        mt, ml = m["throughput"], m["latency_at_100_per_s"]
        print(f"mlflow {m['mlflow_version']} models serve, same model (up after {m['seconds_to_first_ping']} s): "
              f"throughput {mt['per_second']} req/s, codes {mt['codes']}; at 100 req/s p50 {ml['p50_ms']} ms, "
              f"p99 {ml['p99_ms']} ms, max {ml['max_ms']} ms, codes {ml['codes']}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        client_main(sys.argv[2:])
    else:
        main()
