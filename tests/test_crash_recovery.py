"""A crash loses nothing: writers killed mid-write, a damaged production pointer, and a whole
stack killed with SIGKILL in the middle of `ml_pipeline_dag`, then brought back with `mlwf up`.

The unit tests kill real writer processes (no fakes); the stack test runs on its own stack
(`make_stack`), since it kills every process of it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from conftest import REPO, stack_processes, stack_sessions
from mlpipeline.files import atomic_write_bytes, is_temp, temp_name
from mlpipeline.model_deployment import ModelRegistry, PointerDamagedError, deploy_model, rollback
from mlpipeline.model_training import load_model
from mlpipeline.storage import ensure_out_dir, read_parquet, write_parquet

THRESHOLDS = {"accuracy": 0.8}
GOOD = {"accuracy": 0.95}


def temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if is_temp(p.name))


def start_and_kill(code: str, *args: str, ready: str = "ready") -> None:
    """Run `code` in a new interpreter, SIGKILL it once it prints `ready` (bounded wait)."""
    child = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    try:
        deadline = time.monotonic() + 60
        line = child.stdout.readline()
        assert line.strip() == ready, f"child said {line!r} (exit {child.poll()})"
        assert time.monotonic() < deadline
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL


def _deploy(registry: Path, model: Path, run_id: str, metrics=GOOD, loader=None):
    return deploy_model(
        model, metrics, registry_root=registry, thresholds=THRESHOLDS, tolerance=0.02,
        metadata={"run_id": run_id}, loader=loader,
    )


# -- unit: writers killed half-way ----------------------------------------------------------


def test_a_stage_output_killed_mid_write_is_never_read_and_is_swept(tmp_path):
    out = tmp_path / "preprocess"
    target = out / "train.parquet"
    old = pd.DataFrame({"x": [1.0, 2.0, 3.0], "target": [0, 1, 0]})
    ensure_out_dir(out)
    write_parquet(old, target)
    # A writer that has written the start of a new Parquet file when the machine "loses power".
    code = (
        "import sys, time\n"
        "from mlpipeline.files import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    with open(tmp, 'wb') as fh:\n"
        "        fh.write(b'PAR1' + bytes(4096)); fh.flush()\n"
        "        print('ready', flush=True); time.sleep(120)\n"
    )
    start_and_kill(code, str(target))
    left = temps(out)
    assert len(left) == 1 and left[0].startswith(".train.parquet.")  # the half file, under a temp name
    pd.testing.assert_frame_equal(read_parquet(target), old)  # the final name still holds the old file
    # A live writer's temporary file is left alone; the dead one's goes when the stage runs again.
    live = temp_name(target)
    live.write_bytes(b"in progress")
    ensure_out_dir(out)
    assert temps(out) == [live.name]
    live.unlink()
    assert sorted(p.name for p in out.iterdir()) == ["train.parquet"]


def test_a_json_output_killed_before_its_rename_keeps_the_old_content(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_bytes(target, b'{"accuracy": 0.9}\n')
    code = (
        "import os, sys, time\n"
        "from mlpipeline import files\n"
        "real = os.replace\n"
        "def stall(*a):\n"
        "    print('ready', flush=True); time.sleep(120)\n"
        "os.replace = stall\n"  # the whole new file is written and fsynced; the kill comes before the rename
        "files.atomic_write_json(sys.argv[1], {'accuracy': 0.1})\n"
    )
    start_and_kill(code, str(target))
    assert json.loads(target.read_text()) == {"accuracy": 0.9}
    assert len(temps(tmp_path)) == 1


def test_a_deploy_killed_while_assembling_a_version_leaves_production_whole(tmp_path, model_file):
    reg = tmp_path / "registry"
    assert _deploy(reg, model_file, "first")["production_version"] == "v0001"
    # A deploy killed after copying its model in, before its metadata and rename: a real process,
    # stopped inside the registry by the loader it was given.
    code = (
        "import sys, time\n"
        "from mlpipeline.model_deployment import deploy_model\n"
        "def stall(path):\n"
        "    print('ready', flush=True); time.sleep(120)\n"
        "deploy_model(sys.argv[2], {'accuracy': 0.99}, registry_root=sys.argv[1], thresholds={'accuracy': 0.8},\n"
        "             tolerance=0.02, metadata={'run_id': 'killed'}, loader=stall)\n"
    )
    start_and_kill(code, str(reg), str(model_file))
    assert len(temps(reg)) == 1  # the half-assembled version, never under versions/
    registry = ModelRegistry(reg)
    assert registry.list_versions() == ["v0001"]
    model, meta = registry.load()
    assert meta["version"] == "v0001" and hasattr(model, "predict")
    # The next writer sweeps the leftover under the lock and registers a whole new version.
    again = _deploy(reg, model_file, "second", metrics={"accuracy": 0.96})
    assert again["version"] == "v0002" and again["production_version"] == "v0002"
    assert temps(reg) == [] and registry.list_versions() == ["v0001", "v0002"]
    assert registry.load()[1]["version"] == "v0002"


# -- unit: a damaged production pointer -----------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"version": "v00',  # truncated
        b'["v0001"]',
        b'{"version": "../../etc"}',
        b'{"version": "v0001", "previous": "v0000"}',
        b"\xff\xfe\x00",
    ],
    ids=["empty", "truncated", "list", "bad-version", "bad-previous", "binary"],
)
def test_a_damaged_pointer_is_one_clear_line_and_never_promotes_past_it(tmp_path, model_file, content):
    reg = tmp_path / "registry"
    _deploy(reg, model_file, "first")
    pointer = reg / "production.json"
    pointer.write_bytes(content)
    with pytest.raises(PointerDamagedError) as caught:
        _deploy(reg, model_file, "better", metrics={"accuracy": 0.99})
    message = str(caught.value)
    assert "\n" not in message and str(pointer) in message and "mlwf models rollback --to" in message
    assert pointer.read_bytes() == content  # nothing was promoted over it
    assert ModelRegistry(reg).list_versions() == ["v0001"]  # nor registered
    with pytest.raises(PointerDamagedError):
        ModelRegistry(reg).load()
    with pytest.raises(PointerDamagedError):
        rollback(reg)  # no version named: nothing to go back to
    # Naming a good version repairs it.
    assert rollback(reg, "v0001") == {"version": "v0001", "replaced": None, "previous": []}
    assert ModelRegistry(reg).load()[1]["version"] == "v0001"


# -- the whole stack killed in the middle of ml_pipeline_dag --------------------------------

PIPELINE = "ml_pipeline_dag"
# ~7-15 s of training (a forest of fully grown trees, on one core): long enough to kill
# the stack while train_model runs, short enough to train again after the crash.
SLOW_CONF = {
    "source": "synthetic:rows=20000,features=20,seed=7",
    "model_type": "random_forest",
    "model_params": {"n_estimators": 100, "n_jobs": 1},
}


def _api(stack, path: str, headers: dict) -> dict:
    response = httpx.get(f"{stack.url}/api/v2/dags/{PIPELINE}/{path}", headers=headers, timeout=30)
    response.raise_for_status()
    return response.json()


def _task_states(stack, run_id: str, headers: dict) -> dict[str, str]:
    tis = _api(stack, f"dagRuns/{run_id}/taskInstances", headers)["task_instances"]
    return {t["task_id"]: t["state"] for t in tis}


def _kill_everything(stack) -> int:
    """SIGKILL every process of the stack until none is left (a power cut, as far as it can tell)."""
    sessions = stack_sessions(stack.home)
    killed: set[int] = set()
    deadline = time.monotonic() + 30
    while pids := stack_processes(stack.home, sessions, stack.project):
        assert time.monotonic() < deadline, f"processes survived SIGKILL: {pids}"
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    return len(killed)


def _check_file(path: Path) -> None:
    """A stage output under its final name is whole: it reads as what its name says."""
    if path.suffix == ".parquet":
        read_parquet(path)
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".skops":
        load_model(path)


@pytest.mark.stack
@pytest.mark.slow
def test_kill_9_of_the_whole_stack_mid_pipeline_then_up_recovers(make_stack):
    stack = make_stack()
    stack.up()
    stack.wait_for_dags([PIPELINE])
    first = stack.mlwf("trigger", PIPELINE, "--unpause", "--wait", "--timeout", "300", timeout=360)
    assert first.returncode == 0, first.stdout + first.stderr
    registry = ModelRegistry(stack.home / "data" / "registry")
    assert registry.production_version() is not None

    started = stack.mlwf("trigger", PIPELINE, "--conf", json.dumps(SLOW_CONF), timeout=60)
    assert started.returncode == 0, started.stderr
    interrupted = started.stdout.strip()
    headers = {"Authorization": f"Bearer {stack.token()}"}
    deadline = time.monotonic() + 180
    while _task_states(stack, interrupted, headers).get("train_model") != "running":
        assert time.monotonic() < deadline, f"train_model never ran: {_task_states(stack, interrupted, headers)}"
        time.sleep(0.3)
    time.sleep(2)  # inside the fit, with its inputs read

    crashed_at, crashed_wall = time.monotonic(), time.time()
    assert _kill_everything(stack) >= 5  # api-server, scheduler, dag-processor, triggerer, the task...
    assert stack_processes(stack.home, project=stack.project) == []
    down = stack.mlwf("status", "--json", timeout=60)
    assert down.returncode in (8, 9), down.stdout + down.stderr  # not running

    stack.up()  # fails the test with the logs unless the stack is healthy again
    status = stack.mlwf("status", "--json", timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    up_seconds = time.monotonic() - crashed_at

    # The interrupted run ends: its orphaned task is reset and tried again (or the run fails).
    headers = {"Authorization": f"Bearer {stack.token()}"}
    deadline = time.monotonic() + 300
    while (run := _api(stack, f"dagRuns/{interrupted}", headers))["state"] not in ("success", "failed"):
        assert time.monotonic() < deadline, f"interrupted run still {run['state']}: {_task_states(stack, interrupted, headers)}"
        time.sleep(1)
    ended_seconds = time.monotonic() - crashed_at
    train = next(
        t for t in _api(stack, f"dagRuns/{interrupted}/taskInstances", headers)["task_instances"]
        if t["task_id"] == "train_model"
    )
    retried = dt.datetime.fromisoformat(train["start_date"]).timestamp() - crashed_wall if train["start_date"] else None
    print(f"crash -> healthy {up_seconds:.0f} s, -> train_model try {train['try_number']} started {retried or 0:.0f} s,"
          f" -> interrupted run {run['state']} {ended_seconds:.0f} s")
    assert train["try_number"] >= 2 or run["state"] == "failed"

    # A new run succeeds, and reads only whole files of its own.
    again = stack.mlwf("trigger", PIPELINE, "--wait", "--timeout", "300", "--json", timeout=360)
    assert again.returncode == 0, again.stdout + again.stderr
    new_run = json.loads(again.stdout)["run_id"]
    state = _api(stack, f"dagRuns/{new_run}/taskInstances/deploy_model/xcomEntries/return_value", headers)["value"]
    paths = [Path(v) for k, v in state.items() if k.endswith("_path")]
    assert len(paths) >= 6, state
    from mlpipeline.settings import safe_run_id

    own = stack.home / "data" / "runs" / safe_run_id(new_run)
    for path in paths:
        assert path.is_relative_to(own) and not is_temp(path.name), path
        _check_file(path)

    # Every stage output under a final name, in every run, the interrupted one included, is whole.
    outputs = [p for p in (stack.home / "data" / "runs").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(outputs) >= 20
    for path in outputs:
        _check_file(path)

    # The registry: production names a complete model that loads; no half-assembled version.
    model, meta = registry.load()
    assert hasattr(model, "predict") and meta["version"] == registry.production_version()
    for version in registry.list_versions():
        registry.verify(version)
    assert temps(registry.root) == [] and temps(registry.versions_dir) == []
    stack.down_and_check()
