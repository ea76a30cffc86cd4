"""The `serving` service of a real local stack: started by `mlwf up`, fed by the pipeline's deploy_model."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import httpx
import pytest

from mlpipeline.model_deployment import ModelRegistry, deploy_model
from mlpipeline.storage import read_parquet

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def serving_row(stack) -> dict:
    services = json.loads(stack.mlwf("status", "--json").stdout)["services"]
    return next(s for s in services if s["name"] == "serving")


def served_version(url: str, wanted: str, timeout: float = 15) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if httpx.get(f"{url}/health", timeout=5).json().get("served") == wanted:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{wanted} not served within {timeout} s: {httpx.get(f'{url}/health').text}")


def test_the_pipeline_run_is_served_and_checked_and_promotions_are_followed(stack):
    url = f"http://127.0.0.1:{stack.ports['serving_port']}"
    row = serving_row(stack)
    assert row["state"] == "healthy" and row["port"] == stack.ports["serving_port"], row

    run = stack.mlwf("trigger", "ml_pipeline_dag", "--unpause", "--wait", "--timeout", "900", "--json", timeout=1000)
    assert run.returncode == 0, run.stdout + run.stderr
    run_id = json.loads(run.stdout)["run_id"]
    registry = ModelRegistry(stack.home / "data" / "registry")
    version = registry.production_version()
    assert registry.metadata(version)["run_id"] == run_id  # this run's model is production
    # deploy_model itself waited for the server and compared holdout rows: its XCom says so
    entry = httpx.get(
        f"{stack.url}/api/v2/dags/ml_pipeline_dag/dagRuns/{quote(run_id, safe='')}/taskInstances/deploy_model"
        "/xcomEntries/return_value", headers={"Authorization": f"Bearer {stack.token()}"}, timeout=10,
    ).json()
    value = entry["value"] if isinstance(entry["value"], dict) else json.loads(entry["value"])
    assert value["deployment"]["served"] == {"checked": True, "version": version, "rows": 5, "url": url}
    assert serving_row(stack)["detail"] == f"serving {version}"

    model, _ = registry.load(version)
    holdout = read_parquet(value["holdout_path"], "holdout")  # this run's own holdout split
    features = holdout[list(model.feature_names_in_)].head(40)
    answer = httpx.post(f"{url}/predict", json={"rows": features.to_dict("records")}, timeout=10).json()
    assert answer["version"] == version
    assert answer["predictions"] == model.predict(features).tolist()

    # a second version, then promote/rollback through the CLI: followed within seconds
    model_file = registry.versions_dir / version / "model.skops"
    second = deploy_model(model_file, {"accuracy": 0.99, "f1": 0.99, "roc_auc": 0.99},
                          registry_root=registry.root, thresholds={"accuracy": 0.5}, tolerance=0.02,
                          metadata={"run_id": "by-hand"})
    assert second["promoted"]
    assert served_version(url, second["version"]) < 10
    rolled = stack.mlwf("models", "rollback", "--json")
    assert rolled.returncode == 0, rolled.stderr
    assert served_version(url, version) < 10
    assert serving_row(stack)["detail"] == f"serving {version}"

    # mlwf health reads the server's metrics through Prometheus: served == production, judged ok
    deadline = time.monotonic() + 90
    while True:
        report = json.loads(stack.mlwf("health", "--json").stdout)
        rows = {row["name"]: row for row in report["sections"]["serving"]}
        served = rows.get("served version", {})
        if served.get("status") == "ok" and served.get("value") == int(version[1:]):
            break
        assert time.monotonic() < deadline, rows
        time.sleep(3)
    assert served["detail"] == f"serving production {version}"
