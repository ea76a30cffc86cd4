"""scripts/setup.sh installs what the main job needs, and the test-only packages only with --test.

The script runs for real on a copy, with a PATH on which none of the system binaries it looks
for exist; `apt-get` and `uv` there are small recorders (installing for real would change this
shared machine), so the test sees exactly what the script asks for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

RECORDER = "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> \"$RECORD\"\n"
TEST_ONLY = {"chromium", "chromium-driver", "docker-compose"}


def run_setup(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup.sh", repo / "scripts")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "ls", "id", "basename"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    for tool in ("apt-get", "uv"):
        (bin_dir / tool).write_text(RECORDER)
        (bin_dir / tool).chmod(0o755)
    venv_python = repo / ".venv" / "bin" / "python"  # an existing venv: compileall and the path query
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f"#!/bin/sh\necho {tmp_path}\n")
    venv_python.chmod(0o755)
    record = tmp_path / "record.txt"
    result = subprocess.run(
        ["/bin/bash", str(repo / "scripts" / "setup.sh"), *args],
        env={"PATH": str(bin_dir), "RECORD": str(record), "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=60,
    )
    return result, record.read_text().splitlines() if record.exists() else []


def requested(calls: list[str]) -> set[str]:
    """The packages of the `apt-get install` call (none when nothing was missing)."""
    install = [c for c in calls if c.startswith("apt-get install")]
    return {word for word in install[0].split()[2:] if not word.startswith("-")} if install else set()


@pytest.mark.skipif(os.geteuid() != 0, reason="setup.sh installs system packages only as root")
def test_the_main_setup_installs_no_test_only_package(tmp_path):
    result, calls = run_setup(tmp_path)
    assert result.returncode == 0, result.stderr
    assert {"prometheus", "redis-server"} <= requested(calls)
    assert not requested(calls) & TEST_ONLY
    assert any(c.startswith("uv pip install") and c.endswith("-e .[pipeline]") for c in calls), calls


@pytest.mark.skipif(os.geteuid() != 0, reason="setup.sh installs system packages only as root")
def test_setup_for_tests_adds_the_browser_its_driver_and_compose(tmp_path):
    result, calls = run_setup(tmp_path, "--test")
    assert result.returncode == 0, result.stderr
    assert TEST_ONLY | {"prometheus", "redis-server"} <= requested(calls)
    assert any(c.startswith("uv pip install") and c.endswith("-e .[pipeline,test]") for c in calls), calls


def test_setup_refuses_an_unknown_option(tmp_path):
    result, calls = run_setup(tmp_path, "--tests")
    assert result.returncode == 2 and "usage:" in result.stderr and calls == []
