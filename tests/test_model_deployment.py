"""The file-based model registry, with real skops model files on disk."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mlpipeline.files import file_sha256, is_temp
from mlpipeline.model_deployment import (
    ModelIntegrityError,
    ModelRegistry,
    RegistryError,
    RegistryNotWritableError,
    check_promotion,
    deploy_model,
    git_commit,
    load_production_model,
    rollback,
)

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = {"accuracy": 0.8, "f1": 0.8}
GOOD = {"accuracy": 0.95, "f1": 0.94, "roc_auc": 0.99}


def _deploy(registry: Path, model: Path, metrics=GOOD, run_id="run-1", **kw):
    return deploy_model(
        model, metrics, registry_root=registry, thresholds=kw.pop("thresholds", THRESHOLDS),
        tolerance=kw.pop("tolerance", 0.02), metadata={"run_id": run_id, "data_fingerprint": "abc123", **kw},
        code_path=REPO,
    )


def test_first_deploy_promotes_and_records_metadata(tmp_path, model_file):
    reg = tmp_path / "registry"
    result = _deploy(reg, model_file)
    assert result["version"] == "v0001" and result["promoted"] is True
    assert result["production_version"] == "v0001" and "no production model yet" in result["reason"]
    meta = json.loads((reg / "versions" / "v0001" / "metadata.json").read_text())
    assert meta["metrics"] == GOOD
    assert meta["run_id"] == "run-1" and meta["data_fingerprint"] == "abc123"
    assert meta["model_sha256"] == file_sha256(model_file) == file_sha256(reg / "versions/v0001/model.skops")
    assert meta["library_versions"]["apache-airflow"] == "3.3.2"
    assert meta["library_versions"]["scikit-learn"] and meta["library_versions"]["skops"]
    assert meta["created_at"].endswith("+00:00")
    assert meta["dag_git_commit"] == git_commit(REPO) and len(meta["dag_git_commit"]) == 40
    assert json.loads((reg / "production.json").read_text())["version"] == "v0001"
    model, loaded_meta = load_production_model(reg)
    assert loaded_meta["version"] == "v0001"
    assert model.predict(__import__("sklearn.datasets").datasets.load_breast_cancer().data[:3]).shape == (3,)
    assert not [p for p in reg.iterdir() if is_temp(p.name)]


def test_git_commit_is_none_outside_a_checkout(tmp_path):
    assert git_commit(tmp_path) is None
    assert git_commit(None) is None


def test_below_threshold_is_registered_but_not_promoted(tmp_path, model_file):
    reg = tmp_path / "registry"
    _deploy(reg, model_file)
    result = _deploy(reg, model_file, metrics={"accuracy": 0.7, "f1": 0.95}, run_id="run-2")
    assert result["version"] == "v0002" and result["promoted"] is False
    assert "accuracy 0.7000 < threshold 0.8000" in result["reason"]
    assert result["production_version"] == "v0001"
    meta = ModelRegistry(reg).metadata("v0002")
    assert meta["promotion"]["promoted"] is False and meta["promotion"]["compared_with"] == "v0001"
    events = [json.loads(line)["event"] for line in (reg / "events.jsonl").read_text().splitlines()]
    assert events == ["registered", "promoted", "registered", "not_promoted"]


def test_worse_than_production_beyond_tolerance_is_not_promoted(tmp_path, model_file):
    reg = tmp_path / "registry"
    _deploy(reg, model_file)  # accuracy .95
    worse = _deploy(reg, model_file, metrics={**GOOD, "accuracy": 0.92}, run_id="run-2")
    assert worse["promoted"] is False and "worse than production 0.9500 beyond tolerance 0.02" in worse["reason"]
    within = _deploy(reg, model_file, metrics={**GOOD, "accuracy": 0.935}, run_id="run-3")
    assert within["promoted"] is True and within["production_version"] == "v0003"


def test_missing_or_nan_metric_is_not_promoted(tmp_path, model_file):
    r = _deploy(tmp_path / "r", model_file, metrics={"accuracy": 0.99, "f1": float("nan")})
    assert r["promoted"] is False and "f1 missing or not a number" in r["reason"]
    assert ModelRegistry(tmp_path / "r").production_version() is None


def test_check_promotion_rules():
    assert check_promotion({"a": 0.8}, {"a": 0.8}, 0.0, None)[0] is True  # equal to threshold passes
    assert check_promotion({"a": 0.8}, {"a": 0.8}, 0.0, {"a": 0.8})[0] is True  # equal to production passes
    assert check_promotion({"a": 0.8}, {"a": 0.5}, 0.01, {"a": 0.82})[0] is False
    with pytest.raises(ValueError, match="thresholds"):
        check_promotion({"a": 1}, {}, 0.0, None)
    with pytest.raises(ValueError, match="tolerance"):
        check_promotion({"a": 1}, {"a": 0.5}, -0.1, None)


def test_rerun_of_same_run_reuses_the_version(tmp_path, model_file):
    reg = tmp_path / "registry"
    first = _deploy(reg, model_file)
    again = _deploy(reg, model_file)
    assert again["version"] == first["version"] and again["reused"] is True and again["promoted"] is True
    assert ModelRegistry(reg).list_versions() == ["v0001"]


def test_tampered_model_is_never_loaded(tmp_path, model_file):
    reg = tmp_path / "registry"
    _deploy(reg, model_file)
    target = reg / "versions" / "v0001" / "model.skops"
    target.write_bytes(target.read_bytes() + b"\x00evil")
    calls = []
    with pytest.raises(ModelIntegrityError, match="does not match its recorded sha256"):
        ModelRegistry(reg, loader=calls.append).load()
    assert calls == []  # the loader was never reached
    target.unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        load_production_model(reg)


def test_non_skops_and_unloadable_files_are_refused(tmp_path, model_file):
    reg = tmp_path / "registry"
    pkl = tmp_path / "model.pkl"
    pkl.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(RegistryError, match="skops models only"):
        _deploy(reg, pkl)
    fake = tmp_path / "fake.skops"
    fake.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(RegistryError, match="cannot be loaded safely"):
        _deploy(reg, fake)
    with pytest.raises(RegistryError, match="does not exist"):
        _deploy(reg, tmp_path / "absent.skops")
    assert ModelRegistry(reg).list_versions() == [] and not [p for p in reg.iterdir() if is_temp(p.name)]


def test_rollback(tmp_path, model_file):
    reg = tmp_path / "registry"
    with pytest.raises(RegistryError, match="no production model"):
        rollback(reg)
    _deploy(reg, model_file, run_id="a")
    with pytest.raises(RegistryError, match="only version ever promoted"):
        rollback(reg)
    _deploy(reg, model_file, run_id="b", metrics={**GOOD, "accuracy": 0.96})
    assert ModelRegistry(reg).production_version() == "v0002"
    back = rollback(reg)
    assert back == {"version": "v0001", "replaced": "v0002", "previous": []}
    assert json.loads((reg / "production.json").read_text())["reason"] == "rollback from v0002"
    forward = rollback(reg, "v0002")
    assert forward["version"] == "v0002" and forward["previous"] == ["v0001"]
    with pytest.raises(RegistryError, match="already in production"):
        rollback(reg, "v0002")
    with pytest.raises(RegistryError, match="not found"):
        rollback(reg, "v0009")
    with pytest.raises(RegistryError, match="not a version name"):
        rollback(reg, "../x")
    # rolling back onto a tampered file is refused and production stays put
    (reg / "versions" / "v0001" / "model.skops").write_bytes(b"junk")
    with pytest.raises(ModelIntegrityError):
        rollback(reg)
    assert ModelRegistry(reg).production_version() == "v0002"


def test_registry_path_that_is_a_file_is_a_clear_error(tmp_path, model_file):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RegistryNotWritableError, match="not writable.*MLWF_REGISTRY_DIR"):
        _deploy(blocker / "registry", model_file)


def test_read_only_registry_is_a_clear_error(tmp_path, model_file):
    """Run as an unprivileged user when we are root (root ignores directory modes)."""
    reg = tmp_path / "registry"
    reg.mkdir()
    os.chmod(reg, 0o555)
    os.chmod(tmp_path, 0o755)
    os.chmod(model_file, 0o644)
    code = (
        "import os, sys\n"
        "from mlpipeline.model_deployment import deploy_model, RegistryNotWritableError\n"
        "if os.geteuid() == 0: os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        f"    deploy_model({str(model_file)!r}, {{'accuracy': 1.0}}, registry_root={str(reg)!r},"
        " thresholds={'accuracy': 0.5}, tolerance=0.0)\n"
        "except RegistryNotWritableError as e:\n"
        "    print('REFUSED', e); sys.exit(0)\n"
        "print('WROTE'); sys.exit(1)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "REFUSED model registry" in out.stdout and "not writable" in out.stdout
    assert list(reg.iterdir()) == []


def test_concurrent_deploys_get_distinct_versions(tmp_path, model_file):
    reg = tmp_path / "registry"
    results: list[dict] = []

    def go(i: int) -> None:
        results.append(_deploy(reg, model_file, run_id=f"r{i}"))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["version"] for r in results) == ["v0001", "v0002", "v0003", "v0004"]
    assert ModelRegistry(reg).list_versions() == ["v0001", "v0002", "v0003", "v0004"]


def test_corrupt_pointer_is_a_clear_error(tmp_path, model_file):
    reg = tmp_path / "registry"
    _deploy(reg, model_file)
    (reg / "production.json").write_text("{not json")
    with pytest.raises(RegistryError, match="production pointer .* is damaged"):
        _deploy(reg, model_file, run_id="x")
