"""Find the Airflow runtime the components run on, or build a managed one.

The current interpreter is used when it has Airflow 3.3 installed (a developer's
`pip install -e .[pipeline]`). Otherwise mlwf builds a virtual environment from the
project's pinned runtime list (`requirements/runtime.txt`), with uv when it is on PATH,
else `python -m venv` and pip. Environments are cached under the user cache directory
by a hash of the requirements and the Python version, so a second `up` or a second
project with the same list reuses it. Installer output is streamed to `progress`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from mlflowctl.errors import MissingDependencyError

SUPPORTED = "3.3."
REQUIREMENTS = Path("requirements") / "runtime.txt"
#: Used when the project has no pinned list of its own.
FALLBACK_REQUIREMENTS = "apache-airflow==3.3.2\nstatsd==4.0.1\n"
COMPLETE_MARKER = ".mlwf-complete"


@dataclass(frozen=True)
class Runtime:
    bin_dir: Path
    version: str
    managed: bool

    @property
    def airflow(self) -> str:
        return str(self.bin_dir / "airflow")

    @property
    def python(self) -> str:
        return str(self.bin_dir / "python")


def current_runtime() -> Runtime | None:
    """This interpreter, when it has Airflow 3.3 and its `airflow` script beside it."""
    version = _airflow_version(Path(entry) for entry in sys.path if entry)
    bin_dir = Path(sys.executable).parent
    if not version.startswith(SUPPORTED) or not (bin_dir / "airflow").exists():
        return None
    return Runtime(bin_dir, version, managed=False)


def cache_root() -> Path:
    base = os.environ.get("MLWF_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlwf" / "runtimes"


def requirements_text(project_root: Path) -> str:
    path = project_root / REQUIREMENTS
    return path.read_text() if path.is_file() else FALLBACK_REQUIREMENTS


def runtime_key(requirements: str) -> str:
    """Hash of the meaningful requirement lines and the Python version."""
    lines = sorted(
        line.split("#", 1)[0].strip() for line in requirements.splitlines() if line.split("#", 1)[0].strip()
    )
    digest = hashlib.sha256("\n".join([f"python{sys.version_info[0]}.{sys.version_info[1]}", *lines]).encode())
    return digest.hexdigest()[:16]


def _run(argv: list[str], progress: Callable[[str], None]) -> None:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        if line:
            tail = (tail + [line])[-15:]
            progress(line)
    if process.wait() != 0:
        raise MissingDependencyError(
            f"building the Airflow runtime failed ({' '.join(argv[:3])} ...): {tail[-1] if tail else 'no output'}",
            hint="\n".join(tail[-10:]),
        )


def build_managed(requirements: str, target: Path, progress: Callable[[str], None]) -> None:
    """Create a venv in `target` and install `requirements` into it (uv, else pip)."""
    staging = target.with_name(target.name + f".building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    requirements_file = staging.with_suffix(".txt")
    requirements_file.write_text(requirements)
    try:
        uv = shutil.which("uv")
        if uv:
            progress(f"creating the runtime with uv in {target}")
            _run([uv, "venv", "--python", sys.executable, str(staging)], progress)
            _run([uv, "pip", "install", "--python", str(staging / "bin" / "python"), "-r", str(requirements_file)], progress)
        else:
            progress(f"creating the runtime with pip in {target} (install uv for a faster first start)")
            _run([sys.executable, "-m", "venv", str(staging)], progress)
            _run([str(staging / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off", "-r", str(requirements_file)], progress)
        (staging / COMPLETE_MARKER).write_text(requirements)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        requirements_file.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)


def find_runtime(project_root: Path, progress: Callable[[str], None] = lambda _line: None) -> Runtime:
    """The runtime to run Airflow with: this interpreter, a cached managed venv, or a new one."""
    runtime = current_runtime()
    if runtime is not None:
        return runtime
    target = managed_path(project_root)
    if not (target / COMPLETE_MARKER).is_file():
        build_managed(requirements_text(project_root), target, progress)
    bin_dir = target / "bin"
    version = _installed_version(bin_dir)
    if not version.startswith(SUPPORTED):
        raise MissingDependencyError(
            f"the runtime in {target} has apache-airflow {version or 'missing'}, mlwf needs {SUPPORTED}x",
            hint=f"pin apache-airflow==3.3.2 in {project_root / REQUIREMENTS}",
        )
    return Runtime(bin_dir, version, managed=True)


def managed_path(project_root: Path) -> Path:
    """Where the managed runtime for this project's pinned list lives (or would)."""
    return cache_root() / runtime_key(requirements_text(project_root))


def installed_runtime(project_root: Path) -> Runtime | None:
    """The runtime `find_runtime` would use, when there is one already (never builds; no import)."""
    runtime = current_runtime()
    if runtime is not None:
        return runtime
    target = managed_path(project_root)
    if not (target / COMPLETE_MARKER).is_file():
        return None
    return Runtime(target / "bin", _installed_version(target / "bin"), managed=True)


def _installed_version(bin_dir: Path) -> str:
    """apache-airflow's version in another environment (no import)."""
    return _airflow_version(bin_dir.parent.glob("lib/python*/site-packages"))


def _airflow_version(folders: Iterable[Path]) -> str:
    """apache-airflow's version from its dist-info in the first of `folders` that has one, as
    importlib.metadata finds it, without importing that (~20-30 ms of every command that
    starts an Airflow process); "" when none has it."""
    for folder in folders:
        for info in folder.glob("apache_airflow-*.dist-info"):
            return info.name[len("apache_airflow-") : -len(".dist-info")]
    return ""
