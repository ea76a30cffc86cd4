"""The model server (`mlpipeline.serving`) as a real process on loopback, over a real registry.

Every test starts `python -m mlpipeline.serving` on a free port and talks HTTP to it; the
registry is built by the pipeline's own `deploy_model` and changed with `mlwf models`, as a
user would. The stack-wide tests (the service started by `mlwf up`) are in test_serving_stack.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from mlflowctl.cli.main import app
from mlpipeline.files import atomic_write_json
from mlpipeline.model_deployment import ModelRegistry, deploy_model

from conftest import free_ports

REPO = Path(__file__).resolve().parents[1]
METRICS = {"accuracy": 0.95, "f1": 0.95, "roc_auc": 0.99}
START_S = 90  # a cold start imports scikit-learn and skops on a loaded machine


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(as_frame=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory, data) -> dict[str, Path]:
    """The pipeline's three estimators, fitted on named columns as the pipeline fits them."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    from mlpipeline.model_training import save_model

    folder = tmp_path_factory.mktemp("models")
    estimators = {
        "logistic_regression": LogisticRegression(solver="newton-cholesky", max_iter=1000),
        "random_forest": RandomForestClassifier(n_estimators=25, random_state=0),
        "gradient_boosting": HistGradientBoostingClassifier(max_iter=30, random_state=0),
    }
    paths = {}
    for name, estimator in estimators.items():
        paths[name] = folder / f"{name}.skops"
        save_model(estimator.fit(data.data, data.target), paths[name])
    return paths


@pytest.fixture
def registry(tmp_path, models) -> Path:
    """v0001 logistic regression, v0002 random forest, v0003 gradient boosting; production v0003."""
    root = tmp_path / "registry"
    for i, (kind, path) in enumerate(models.items(), 1):
        deploy_model(path, METRICS, registry_root=root, thresholds={"accuracy": 0.5}, tolerance=0.02,
                     metadata={"run_id": f"run-{i}", "model_type": kind})
    assert ModelRegistry(root).production_version() == "v0003"
    return root


class Server:
    """A running `python -m mlpipeline.serving` and its URL."""

    def __init__(self, root: Path, log: Path) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlpipeline.serving", "--port", str(self.port), "--registry", str(root), "--poll", "0.1"],
            stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        self.log = log

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            with contextlib.suppress(httpx.TransportError):
                httpx.get(self.url + "/health", timeout=2)
                return
            time.sleep(0.2)
        raise AssertionError(f"server not answering after {START_S} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def predict(self, rows: list[dict], **kwargs) -> httpx.Response:
        return httpx.post(self.url + "/predict", json={"rows": rows}, timeout=10, **kwargs)

    def wait_for(self, version: str, timeout: float = 15) -> float:
        """Seconds until the server serves `version` (bounded)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if httpx.get(self.url + "/model", timeout=5).json().get("version") == version:
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"{version} not served after {timeout} s; health: {httpx.get(self.url + '/health').text}")


@contextlib.contextmanager
def serving(root: Path, log: Path) -> Iterator[Server]:
    server = Server(root, log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(registry, tmp_path) -> Iterator[Server]:
    with serving(registry, tmp_path / "serving.log") as handle:
        yield handle


def models_cli(*args: str) -> None:
    result = CliRunner().invoke(app, ["models", *args])
    assert result.exit_code == 0, result.output


def rows_of(data, n: int) -> list[dict]:
    return data.data.head(n).to_dict("records")


# ---------------------------------------------------------------- answers


def test_predictions_equal_the_models_own_for_each_estimator(server, registry, data):
    """Served predictions and probabilities are the in-process ones, row for row, for all three model types."""
    rows = rows_of(data, 60)
    for version in ("v0003", "v0002", "v0001"):
        if version != "v0003":
            models_cli("rollback", "--to", version, "--registry", str(registry))
            server.wait_for(version)
        model, _ = ModelRegistry(registry).load(version)
        answer = server.predict(rows)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["version"] == version
        assert body["predictions"] == model.predict(data.data.head(60)).tolist()
        expected = model.predict_proba(data.data.head(60))
        assert len(body["probabilities"]) == 60
        for got, want in zip(body["probabilities"], expected.tolist()):
            assert got == pytest.approx(want, abs=1e-12)
        assert body["classes"] == [0, 1]


def test_model_health_and_metrics_describe_what_is_served(server, registry, data):
    info = httpx.get(server.url + "/model", timeout=5).json()
    assert info["version"] == "v0003" and info["production"] == "v0003"
    assert info["features"] == list(data.data.columns)
    assert info["metadata"]["model_type"] == "gradient_boosting"
    assert info["metadata"]["model_sha256"] == ModelRegistry(registry).metadata("v0003")["model_sha256"]
    assert httpx.get(server.url + "/health", timeout=5).json() == {"status": "ok", "served": "v0003", "production": "v0003"}
    server.predict(rows_of(data, 1))
    server.predict([{"nope": 1}])
    text = httpx.get(server.url + "/metrics", timeout=5).text
    assert 'mlpipeline_serving_requests_total{code="200"} 1.0' in text
    assert 'mlpipeline_serving_requests_total{code="422"} 1.0' in text
    assert 'mlpipeline_serving_errors_total{kind="bad_request"} 1.0' in text
    assert "mlpipeline_serving_request_seconds_count 2.0" in text
    assert "mlpipeline_serving_served_version 3.0" in text
    assert "mlpipeline_serving_production_version 3.0" in text


# ---------------------------------------------------------------- following the registry


def test_promote_and_rollback_are_followed_within_seconds(server, registry, data, monkeypatch):
    monkeypatch.setenv("MLWF_THRESHOLDS", json.dumps({"accuracy": 0.5}))
    models_cli("rollback", "--registry", str(registry))  # back to v0002
    assert server.wait_for("v0002", timeout=10) < 10
    models_cli("promote", "1", "--force", "--reason", "test", "--registry", str(registry))
    assert server.wait_for("v0001", timeout=10) < 10
    assert server.predict(rows_of(data, 2)).json()["version"] == "v0001"


def tamper(registry: Path, version: str) -> None:
    model = registry / "versions" / version / "model.skops"
    model.write_bytes(model.read_bytes() + b"\0")


def point_production_at(registry: Path, version: str) -> None:
    """What a hand-restored production.json does: the registry's own commands refuse tampered versions."""
    atomic_write_json(registry / "production.json", {"version": version, "previous": [], "updated_at": "now", "reason": "by hand"})


def test_a_tampered_model_is_refused_and_the_previous_one_keeps_serving(server, registry, data):
    tamper(registry, "v0001")
    point_production_at(registry, "v0001")
    deadline = time.monotonic() + 10
    while (health := httpx.get(server.url + "/health", timeout=5)).status_code != 503:
        assert time.monotonic() < deadline, health.text
        time.sleep(0.05)
    body = health.json()
    assert body["status"] == "unhealthy" and body["served"] == "v0003" and body["production"] == "v0001"
    assert "v0001 refused" in body["reason"] and "sha256" in body["reason"]
    answer = server.predict(rows_of(data, 3))
    assert answer.status_code == 200 and answer.json()["version"] == "v0003"
    assert "mlpipeline_serving_healthy 0.0" in httpx.get(server.url + "/metrics").text
    point_production_at(registry, "v0002")  # production moves on: healthy again
    server.wait_for("v0002")
    assert httpx.get(server.url + "/health", timeout=5).json()["status"] == "ok"


class Smuggled:
    """A type no allow-list trusts: skops must refuse a file that holds one."""

    def __init__(self) -> None:
        self.payload = "not a model"


def test_a_file_skops_refuses_is_never_served_even_with_a_matching_sha256(server, registry):
    import skops.io as sio

    from mlpipeline.files import file_sha256

    folder = registry / "versions" / "v0001"
    (folder / "model.skops").write_bytes(sio.dumps(Smuggled()))
    meta = json.loads((folder / "metadata.json").read_text())
    atomic_write_json(folder / "metadata.json", {**meta, "model_sha256": file_sha256(folder / "model.skops")})
    point_production_at(registry, "v0001")
    deadline = time.monotonic() + 10
    while (health := httpx.get(server.url + "/health", timeout=5)).status_code != 503:
        assert time.monotonic() < deadline, health.text
        time.sleep(0.05)
    assert "untrusted types" in health.json()["reason"] and "Smuggled" in health.json()["reason"]
    assert httpx.get(server.url + "/model", timeout=5).json()["version"] == "v0003"


def test_with_no_production_model_it_waits_then_serves_the_first_one(tmp_path, models, data):
    root = tmp_path / "empty"
    root.mkdir()
    with serving(root, tmp_path / "log") as server:
        assert httpx.get(server.url + "/health", timeout=5).json()["status"] == "waiting"
        refused = server.predict(rows_of(data, 1))
        assert refused.status_code == 503 and refused.json() == {"error": "no production model to serve yet"}
        # With nothing to serve it holds no scikit-learn (its extension modules are mapped once imported).
        assert not _maps_sklearn(server.process.pid)
        deploy_model(models["logistic_regression"], METRICS, registry_root=root, thresholds={"accuracy": 0.5},
                     tolerance=0.02, metadata={"run_id": "first"})
        server.wait_for("v0001")
        assert server.predict(rows_of(data, 1)).status_code == 200
        assert _maps_sklearn(server.process.pid)


def _maps_sklearn(pid: int) -> bool:
    return "/sklearn/" in Path(f"/proc/{pid}/maps").read_text()


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"not json", 400, "body is not JSON"),
        (b'{"rows": [{"a": NaN}]}', 400, "NaN is not JSON"),
        (b"[1, 2]", 422, 'expected {"rows"'),
        (b'{"rows": []}', 422, "rows is empty"),
        (b'{"rows": [1]}', 422, "row 0 is not an object"),
        (b'{"rows": [{"mean radius": 1}]}', 422, "row 0 lacks"),
        (b'{"rows": ' + json.dumps([{}] * 1001).encode() + b"}", 422, "1001 rows; at most 1000"),
        (b'{"x": "' + b"a" * (1024 * 1024) + b'"}', 413, "body over 1048576 bytes"),
        (b"[" * 100000, 400, "body is not JSON"),
    ],
    ids=["not-json", "nan", "not-an-object", "no-rows", "row-not-object", "wrong-columns", "too-many-rows",
         "too-large", "deeply-nested"],
)
def test_bad_requests_get_a_4xx_with_one_json_line(server, body, status, says):
    answer = httpx.post(server.url + "/predict", content=body, timeout=10)
    assert answer.status_code == status, answer.text
    assert says in answer.json()["error"]
    assert "\n" not in answer.text


def test_wrong_types_extra_columns_and_methods_are_refused_and_it_lives_on(server, data):
    row = rows_of(data, 1)[0]
    for value, shown in ((True, "true"), ("1.0", '"1.0"'), (None, "null"), ([1], "[1]"), (1e400, "Infinity")):
        answer = server.predict([{**row, "mean radius": value}]) if value != 1e400 else httpx.post(
            server.url + "/predict", content=json.dumps({"rows": [row]}).replace(str(row["mean radius"]), "1e400", 1), timeout=5)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"].startswith("row 0 column 'mean radius': expected a finite number"), answer.text
    extra = server.predict([{**row, "surprise": 1}])
    assert extra.status_code == 422 and "has unknown surprise" in extra.json()["error"]
    chunked = httpx.post(server.url + "/predict", content=iter([b"{", b"x" * (1024 * 1024 + 10)]), timeout=10)
    assert chunked.status_code == 413  # a body without Content-Length is counted as it arrives
    assert httpx.get(server.url + "/predict", timeout=5).json() == {"error": "Method Not Allowed"}
    assert httpx.get(server.url + "/nowhere", timeout=5).status_code == 404
    assert server.predict([row]).status_code == 200  # and nothing of that hurt the server


# ---------------------------------------------------------------- swaps under load


@pytest.mark.slow
def test_ten_swaps_under_load_fail_no_request(server, registry, data):
    """Four clients predict without pause while production alternates v0002/v0003 ten times."""
    rows = rows_of(data, 1)
    stop = threading.Event()
    outcomes: Counter = Counter()
    versions: Counter = Counter()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            while not stop.is_set():
                try:
                    answer = http.post("/predict", json={"rows": rows})
                    code, version = answer.status_code, answer.json().get("version")
                except httpx.HTTPError as exc:
                    code, version = type(exc).__name__, None
                with lock:
                    outcomes[code] += 1
                    versions[version] += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for i in range(10):
            target = "v0002" if i % 2 == 0 else "v0003"
            models_cli("rollback", "--to", target, "--registry", str(registry))
            server.wait_for(target, timeout=20)
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert set(outcomes) == {200}, outcomes
    assert outcomes[200] > 100 and versions["v0002"] > 0 and versions["v0003"] > 0, (outcomes, versions)
    metrics = httpx.get(server.url + "/metrics", timeout=5).text
    assert "mlpipeline_serving_model_swaps_total 11.0" in metrics  # the first load and ten swaps


# ---------------------------------------------------------------- the health rules (mlwf health, thresholds.py)


def test_the_serving_rules_grade_by_the_limits_in_thresholds():
    from mlpipeline import monitoring as rules
    from mlpipeline.thresholds import LIMITS

    assert rules.check_served_version(3, 3, True).severity == rules.OK
    assert rules.check_served_version(2, 3, True).severity == rules.WARNING  # loading, or stuck: the alert waits
    refused = rules.check_served_version(2, 3, False)
    assert refused.severity == rules.CRITICAL and "serving v0002, production is v0003" in refused.message
    errors, latency = LIMITS["serving_error_rate"], LIMITS["serving_latency_p95"]
    for check, limits in ((rules.check_serving_error_rate, errors), (rules.check_serving_latency, latency)):
        assert check(limits.warning * 0.99).severity == rules.OK
        assert check(limits.warning).severity == rules.WARNING
        assert check(limits.critical).severity == rules.CRITICAL


# ---------------------------------------------------------------- the service on the local backend


def test_the_serving_group_is_on_by_default_and_exclude_leaves_it_and_its_url_out(tmp_path):
    from mlflowctl.backends.local import serving as serving_local
    from mlflowctl.backends.local.backend import LocalBackend
    from mlflowctl.config import load_config

    backend = LocalBackend(load_config({"serving_port": 18085}, cwd=tmp_path, environ={}))
    specs = backend.services()
    serving = next(spec for spec in specs if spec.name == "serving")
    assert serving.group == "serving" and serving.argv[1:4] == ["-m", "mlpipeline.serving", "--host"]
    assert serving.argv[-2:] == ["--port", "18085"] and serving.url == "http://127.0.0.1:18085"
    assert [need.setting for need in serving.ports] == ["serving_port"]
    assert serving_local.task_environment(specs) == {"MLWF_SERVING_URL": "http://127.0.0.1:18085"}
    without = backend.services(frozenset({"serving"}))
    assert "serving" not in {spec.name for spec in without}
    assert serving_local.task_environment(without) == {}


def test_the_status_probe_names_the_version_or_the_reason(server, registry):
    from mlflowctl.backends.local import serving as serving_local

    with httpx.Client() as client:
        assert serving_local.probe(client, server.url) == (True, "serving v0003")
        tamper(registry, "v0001")
        point_production_at(registry, "v0001")
        deadline = time.monotonic() + 10
        while (found := serving_local.probe(client, server.url))[0]:
            assert time.monotonic() < deadline, found
            time.sleep(0.05)
        assert found[1].startswith("serving v0003; v0001 refused: model file of v0001 does not match its recorded sha256")
        assert serving_local.probe(client, "http://127.0.0.1:1") == (False, "not answering http://127.0.0.1:1/health")
