"""`mlwf models`: the commands against real registries built by the pipeline's own `deploy_model`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlflowctl.cli.main import app
from mlpipeline.files import file_sha256
from mlpipeline.model_deployment import ModelRegistry, check_promotion, deploy_model

REPO = Path(__file__).resolve().parents[1]
GATE = {"accuracy": 0.8, "f1": 0.8}
GOOD = {"accuracy": 0.95, "f1": 0.94, "roc_auc": 0.99}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No MLWF_* setting of the developer's leaks in; the gate is the one these tests choose."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("MLWF_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MLWF_THRESHOLDS", json.dumps(GATE))
    monkeypatch.setenv("MLWF_PROMOTION_TOLERANCE", "0.02")


def deploy(root: Path, model: Path, metrics: dict, run_id: str, model_type: str = "logistic_regression") -> dict:
    return deploy_model(
        model, metrics, registry_root=root, thresholds=GATE, tolerance=0.02,
        metadata={"run_id": run_id, "model_type": model_type, "data_fingerprint": f"fp-{run_id}",
                  "model_params": {"C": 1.0, "run": run_id}},
        code_path=REPO,
    )


@pytest.fixture
def registry(tmp_path, model_file) -> Path:
    """v0001 promoted, v0002 refused by the gate (accuracy 0.6), v0003 promoted: production v0003."""
    root = tmp_path / "registry"
    deploy(root, model_file, GOOD, "run-1")
    deploy(root, model_file, {**GOOD, "accuracy": 0.6}, "run-2", model_type="random_forest")
    deploy(root, model_file, {**GOOD, "accuracy": 0.96}, "run-3")
    assert ModelRegistry(root).production_version() == "v0003"
    return root


def mlwf(*args: str):
    return CliRunner().invoke(app, ["models", *args])


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the registry but its lock: 'nothing changed' means this is equal before and after."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def events(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- reading


def test_list_shows_every_version_its_gate_and_production(registry):
    result = mlwf("list", "--registry", str(registry), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["production"] == "v0003" and data["damaged"] == []
    rows = {r["version"]: r for r in data["versions"]}
    assert list(rows) == ["v0001", "v0002", "v0003"]
    assert [rows[v]["passed_gate"] for v in rows] == [True, False, True]
    assert [rows[v]["production"] for v in rows] == [False, False, True]
    assert rows["v0002"]["model_type"] == "random_forest" and rows["v0002"]["metrics"]["accuracy"] == 0.6
    assert rows["v0001"]["data_fingerprint"] == "fp-run-1" and rows["v0001"]["created_at"].endswith("+00:00")
    table = mlwf("list", "--registry", str(registry))
    assert table.exit_code == 0
    assert "v0003*" in table.stdout and "random_forest" in table.stdout and "0.6000" in table.stdout
    assert "fail" in next(line for line in table.stdout.splitlines() if line.startswith("v0002"))


def test_the_local_stacks_registry_is_found_from_the_state_directory(tmp_path, model_file):
    home = tmp_path / "state"
    deploy(home / "data" / "registry", model_file, GOOD, "run-1")
    result = mlwf("list", "--home", str(home), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["registry"] == str(home / "data" / "registry")
    elsewhere = tmp_path / "elsewhere"
    deploy(elsewhere, model_file, GOOD, "run-9")
    with_env = CliRunner().invoke(app, ["models", "list", "--home", str(home), "--json"],
                                  env={"MLWF_REGISTRY_DIR": str(elsewhere)})
    assert json.loads(with_env.stdout)["registry"] == str(elsewhere)  # as the stack's tasks would see it


def test_show_reports_all_metadata_and_checks_the_sha256(registry):
    result = mlwf("show", "2", "--registry", str(registry), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["version"] == "v0002" and data["integrity"] == "ok" and data["production"] is False
    assert data["promotion"]["promoted"] is False and "accuracy 0.6000 < threshold" in data["promotion"]["reason"]
    assert data["model_sha256"] == file_sha256(registry / "versions/v0002/model.skops")
    assert data["library_versions"]["scikit-learn"]
    assert "sha256 ok" in mlwf("show", "v0002", "--registry", str(registry)).stdout


def test_diff_puts_metrics_side_by_side_with_deltas(registry):
    result = mlwf("diff", "v1", "v0002", "--registry", str(registry), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    accuracy = next(r for r in data["metrics"] if r["name"] == "accuracy")
    assert (accuracy["a"], accuracy["b"]) == (0.95, 0.6) and accuracy["delta"] == pytest.approx(-0.35)
    run = next(r for r in data["params"] if r["name"] == "run")
    assert (run["a"], run["b"], run["same"]) == ("run-1", "run-2", False)
    fingerprint = next(r for r in data["data"] if r["name"] == "data_fingerprint")
    assert (fingerprint["a"], fingerprint["b"]) == ("fp-run-1", "fp-run-2")
    assert any(r["name"] == "scikit-learn" and r["same"] for r in data["libraries"])
    assert "-0.3500" in mlwf("diff", "1", "2", "--registry", str(registry)).stdout


def test_events_lists_the_audit_trail_and_counts_unreadable_lines(registry):
    with (registry / "events.jsonl").open("a") as log:
        log.write('{"torn": \n')
    result = mlwf("events", "--registry", str(registry), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [e["event"] for e in data["events"]] == [
        "registered", "promoted", "registered", "not_promoted", "registered", "promoted"]
    assert data["unreadable_lines"] == 1
    assert "1 unreadable line(s)" in mlwf("events", "--registry", str(registry)).stdout


# ---------------------------------------------------------------- promote and rollback


def test_promote_runs_the_deploy_gate_and_refuses_without_force(registry):
    before = snapshot(registry)
    refused = mlwf("promote", "2", "--registry", str(registry))
    assert refused.exit_code == 17
    # the very verdict deploy_model's gate gives v0002 against production v0003
    production = ModelRegistry(registry).metadata("v0003")["metrics"]
    expected = check_promotion(ModelRegistry(registry).metadata("v0002")["metrics"], GATE, 0.02, production)[1]
    assert refused.stderr.splitlines()[0] == f"error: v0002 {expected}"
    assert "--force --reason" in refused.stderr
    assert snapshot(registry) == before


def test_promote_force_needs_a_reason_and_records_it(registry):
    before = snapshot(registry)
    assert mlwf("promote", "2", "--force", "--registry", str(registry)).exit_code == 2
    assert mlwf("promote", "2", "--reason", "why", "--registry", str(registry)).exit_code == 2
    assert snapshot(registry) == before
    forced = mlwf("promote", "2", "--force", "--reason", "hotfix for INC-42", "--registry", str(registry), "--json")
    assert forced.exit_code == 0, forced.output
    data = json.loads(forced.stdout)
    assert data["version"] == "v0002" and data["replaced"] == "v0003" and data["passed_gate"] is False
    pointer = json.loads((registry / "production.json").read_text())
    assert pointer["version"] == "v0002" and pointer["previous"] == ["v0001", "v0003"]
    last = events(registry)[-1]
    assert last["event"] == "promoted" and last["forced"] is True and "hotfix for INC-42" in last["reason"]
    back = mlwf("rollback", "--registry", str(registry), "--json")  # previous production comes back
    assert back.exit_code == 0 and json.loads(back.stdout)["version"] == "v0003"


def test_promote_of_a_version_that_passes_the_gate(registry, monkeypatch):
    monkeypatch.setenv("MLWF_PROMOTION_TOLERANCE", "0.05")  # v0001 (.95) is within .05 of v0003 (.96)
    result = mlwf("promote", "v1", "--registry", str(registry))
    assert result.exit_code == 0, result.output
    assert "v0001 is in production (replaced v0003)" in result.stdout
    assert ModelRegistry(registry).production_version() == "v0001"
    assert events(registry)[-1]["forced"] is False
    assert mlwf("promote", "1", "--registry", str(registry)).exit_code == 2  # already in production


@pytest.mark.parametrize("force", [False, True])
def test_a_tampered_model_is_never_promoted(registry, force):
    model = registry / "versions/v0001/model.skops"
    model.write_bytes(model.read_bytes() + b"\0")
    before = snapshot(registry)
    shown = mlwf("show", "1", "--registry", str(registry), "--json")
    assert shown.exit_code == 16 and json.loads(shown.stdout)["integrity"] == "tampered"
    args = ["promote", "1", "--registry", str(registry)] + (["--force", "--reason", "trust me"] if force else [])
    result = mlwf(*args)
    assert result.exit_code == 16 and "does not match its recorded sha256" in result.stderr
    assert mlwf("rollback", "--to", "1", "--registry", str(registry)).exit_code == 16
    assert snapshot(registry) == before


def test_rollback_to_a_named_version_and_nothing_to_roll_back(tmp_path, model_file, registry):
    result = mlwf("rollback", "--to", "2", "--registry", str(registry), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"version": "v0002", "replaced": "v0003", "previous": ["v0001", "v0003"]}
    assert events(registry)[-1] == {**events(registry)[-1], "event": "rolled_back", "version": "v0002"}
    single = tmp_path / "single"
    deploy(single, model_file, GOOD, "run-1")
    nothing = mlwf("rollback", "--registry", str(single))
    assert nothing.exit_code == 4 and "nothing to roll back to" in nothing.stderr


# ---------------------------------------------------------------- bad input


def test_unknown_version_bad_version_and_missing_registry(registry, tmp_path):
    before = snapshot(registry)
    for command in (["show", "7"], ["promote", "7"], ["rollback", "--to", "7"], ["diff", "1", "7"]):
        result = mlwf(*command, "--registry", str(registry))
        assert result.exit_code == 4, (command, result.output)
        assert "model version v0007 not found" in result.stderr
    assert mlwf("show", "seven", "--registry", str(registry)).exit_code == 2
    assert snapshot(registry) == before
    missing = mlwf("list", "--registry", str(tmp_path / "nope"))
    assert missing.exit_code == 4 and "no model registry at" in missing.stderr
    assert not (tmp_path / "nope").exists()


def test_empty_registry(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    listed = mlwf("list", "--registry", str(empty))
    assert listed.exit_code == 0 and "no model versions yet" in listed.stdout
    assert json.loads(mlwf("list", "--registry", str(empty), "--json").stdout)["versions"] == []
    assert mlwf("events", "--registry", str(empty)).exit_code == 0
    assert mlwf("promote", "1", "--registry", str(empty)).exit_code == 4
    rolled = mlwf("rollback", "--registry", str(empty))
    assert rolled.exit_code == 4 and "no production model" in rolled.stderr
    assert sorted(p.name for p in empty.iterdir() if p.name != ".lock") in ([], ["versions"])


def test_damaged_metadata(registry):
    (registry / "versions/v0002/metadata.json").write_text('{"metrics": ')
    before = snapshot(registry)
    listed = mlwf("list", "--registry", str(registry))
    assert listed.exit_code == 16
    assert "metadata damaged" in listed.stdout and "v0003*" in listed.stdout  # the others are still shown
    assert "metadata of v0002" in listed.stderr
    for command in (["show", "2"], ["promote", "2", "--force", "--reason", "x"], ["rollback", "--to", "2"]):
        result = mlwf(*command, "--registry", str(registry))
        assert result.exit_code == 16, (command, result.output)
        assert len(result.stderr.splitlines()) == 1 and "is unreadable" in result.stderr
    assert snapshot(registry) == before


def test_damaged_pointer(registry):
    (registry / "production.json").write_text("{not json")
    before = snapshot(registry)
    for command in (["list"], ["show", "1"], ["promote", "1"], ["rollback"]):
        result = mlwf(*command, "--registry", str(registry))
        assert result.exit_code == 16, (command, result.output)
        assert "production pointer" in result.stderr and "is damaged" in result.stderr
    assert snapshot(registry) == before
    repaired = mlwf("rollback", "--to", "3", "--registry", str(registry))  # naming a version repairs it
    assert repaired.exit_code == 0, repaired.output
    assert json.loads((registry / "production.json").read_text())["version"] == "v0003"


HOLD_LOCK = """
import sys, time
from mlpipeline.model_deployment import ModelRegistry
with ModelRegistry(sys.argv[1])._locked():
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_promote_while_another_writer_holds_the_lock(registry, monkeypatch):
    monkeypatch.setenv("MLWF_PROMOTION_TOLERANCE", "0.05")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(registry), "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(registry)
        started = time.monotonic()
        result = mlwf("promote", "1", "--wait", "1", "--registry", str(registry))
        waited = time.monotonic() - started
        assert result.exit_code == 15, result.output
        assert "locked by another deploy, promotion or rollback" in result.stderr
        assert 1.0 <= waited < 10
        assert mlwf("rollback", "--wait", "0", "--registry", str(registry)).exit_code == 15
        assert snapshot(registry) == before
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert mlwf("promote", "1", "--wait", "5", "--registry", str(registry)).exit_code == 0  # lock released


RACER = """
import sys
from mlpipeline.model_deployment import ModelRegistry, deploy_model
root, what, model, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for i in range(rounds):
    if what == "deploy":
        deploy_model(model, {"accuracy": 0.97, "f1": 0.95}, registry_root=root, thresholds={"accuracy": 0.8},
                     tolerance=0.5, metadata={"run_id": f"race-{i}"})
    else:
        try:
            ModelRegistry(root).rollback()
        except Exception as exc:
            if "nothing to roll back" not in str(exc):
                raise
"""


def test_concurrent_deploys_and_rollbacks_never_leave_a_half_written_pointer(registry, model_file):
    """Writers race in separate processes while this one reads: every pointer read is whole and
    names a complete version whose model matches its sha256."""
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(registry), what, str(model_file), "8"])
        for what in ("deploy", "rollback", "rollback")
    ]
    reads = 0
    reader = ModelRegistry(registry)
    deadline = time.monotonic() + 120
    try:
        while any(r.poll() is None for r in racers) and time.monotonic() < deadline:
            version = reader.production_version()  # raises PointerDamagedError on a torn pointer
            assert reader.verify(version)["version"] == version
            reads += 1
    finally:
        for r in racers:
            if r.poll() is None:
                r.kill()
            r.wait(timeout=10)
    assert [r.returncode for r in racers] == [0, 0, 0]
    assert reads > 0
    listed = json.loads(mlwf("list", "--registry", str(registry), "--json").stdout)
    assert len(listed["versions"]) == 3 + 8 and listed["damaged"] == []
    rollbacks = [e for e in events(registry) if e["event"] == "rolled_back"]
    assert rollbacks, "no rollback ran while the deploys did"


def test_the_commands_import_no_pandas_sklearn_or_skops(registry):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from mlflowctl.cli.main import app\n"
        f"r = CliRunner().invoke(app, ['models', 'show', '3', '--registry', {str(registry)!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in ('pandas', 'sklearn', 'skops', 'numpy', 'httpx') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_docker_backend_and_bad_settings_are_one_line_each(registry, tmp_path, monkeypatch):
    (tmp_path / "mlwf.toml").write_text('backend = "docker"\n')
    docker = mlwf("list")
    assert docker.exit_code == 14 and "pipeline-data volume" in docker.stderr
    assert mlwf("list", "--registry", str(registry)).exit_code == 0  # an explicit path still works
    monkeypatch.setenv("MLWF_THRESHOLDS", "{not json")
    before = snapshot(registry)
    bad = mlwf("promote", "1", "--registry", str(registry))
    assert bad.exit_code == 2 and "MLWF_THRESHOLDS is not valid JSON" in bad.stderr
    assert snapshot(registry) == before
