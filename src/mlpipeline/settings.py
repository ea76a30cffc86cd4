"""Pipeline configuration read from the environment (stdlib only, cheap to import).

Every value has a default, so a fresh checkout runs with nothing set:

- ``MLWF_DATA_ROOT``: where run data lives (default ``<cwd>/.mlwf/data``).
- ``MLWF_REGISTRY_DIR``: the model registry (default ``<data_root>/registry``).
- ``MLWF_NOTIFICATIONS_LOG``: the JSON-lines notification log
  (default ``<data_root>/notifications.jsonl``).
- ``MLWF_WEBHOOK_URL``: POST every notification there when set.
- ``MLWF_THRESHOLDS``: JSON object of minimum metrics for promotion
  (default ``mlpipeline.thresholds.PROMOTION_MINIMUMS``).
- ``MLWF_PROMOTION_TOLERANCE``: how much worse than production a candidate may be (default 0.02).
- ``MLWF_DEADLINE_MINUTES``: the ml_pipeline_dag run deadline (default 120).
- ``MLWF_PROJECT_ROOT``: the project (mlwf stacks set it); local data files may lie under it
  or under the data root, and relative paths are relative to it.
- ``MLWF_ALLOWED_DATA_DIRS``: more folders data files may be read from (``os.pathsep``-separated,
  absolute).
- ``MLWF_DOWNLOAD_MAX_BYTES``: the most a URL source may send (default 200 MiB).
- ``MLWF_DOWNLOAD_TIMEOUT``: seconds a URL source has to send all of it (default 300).

Run-scoped files go to ``<data_root>/runs/<safe run id>/``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlpipeline.thresholds import PROMOTION_MINIMUMS

DEFAULT_TOLERANCE = 0.02
DEFAULT_DEADLINE_MINUTES = 120
DEFAULT_DOWNLOAD_MAX_BYTES = 200 * 1024 * 1024
DEFAULT_DOWNLOAD_TIMEOUT = 300.0

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class SettingsError(ValueError):
    """An environment variable holds a value the pipeline cannot use."""


def safe_run_id(run_id: str) -> str:
    """A directory name for a run id: unsafe characters become ``_`` plus a short hash.

    Airflow run ids hold ``:`` and ``+`` (``manual__2026-01-01T00:00:00+00:00``); two ids
    that differ only in such characters still get different directories.
    """
    if not run_id or not run_id.strip():
        raise SettingsError("run id is empty")
    cleaned = _UNSAFE.sub("_", run_id.strip())
    if cleaned in {".", ".."} or cleaned.startswith("."):
        cleaned = "_" + cleaned
    if cleaned != run_id:
        cleaned = f"{cleaned[:100]}-{hashlib.sha1(run_id.encode()).hexdigest()[:8]}"
    return cleaned


def parse_thresholds(raw: str | Mapping[str, object] | None) -> dict[str, float]:
    """Thresholds from JSON text or a mapping: metric name -> minimum value in [0, 1]."""
    if raw is None or raw == "":
        return dict(PROMOTION_MINIMUMS)
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"MLWF_THRESHOLDS is not valid JSON: {exc}") from None
    if not isinstance(raw, Mapping):
        raise SettingsError("thresholds must be a JSON object of metric -> minimum")
    out: dict[str, float] = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SettingsError(f"threshold {name!r} must be a number, got {value!r}")
        if not 0.0 <= float(value) <= 1.0:
            raise SettingsError(f"threshold {name!r} must be between 0 and 1, got {value}")
        out[str(name)] = float(value)
    return out


def _float_env(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise SettingsError(f"{name} must be a finite number >= 0, got {raw!r}")
    return value


def _positive_env(env: Mapping[str, str], name: str, default: float, kind: type = float) -> float:
    """A number > 0 (an integer when `kind` is int), or SettingsError naming the variable."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise SettingsError(f"{name} must be {noun} > 0, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name} must be a finite number > 0, got {raw!r}")
    return value


def _dirs_env(env: Mapping[str, str], name: str) -> tuple[Path, ...]:
    """Absolute folders separated by ``os.pathsep`` (empty entries ignored)."""
    dirs = []
    for entry in env.get(name, "").split(os.pathsep):
        if not entry.strip():
            continue
        path = Path(entry.strip()).expanduser()
        if not path.is_absolute():
            raise SettingsError(f"{name} entries must be absolute paths, got {entry!r}")
        dirs.append(path)
    return tuple(dirs)


@dataclass(frozen=True)
class PipelineSettings:
    data_root: Path
    registry_dir: Path
    notifications_log: Path
    webhook_url: str | None = None
    thresholds: dict[str, float] = field(default_factory=lambda: dict(PROMOTION_MINIMUMS))
    tolerance: float = DEFAULT_TOLERANCE
    deadline_minutes: float = DEFAULT_DEADLINE_MINUTES
    project_root: Path | None = None
    allowed_data_dirs: tuple[Path, ...] = ()
    download_max_bytes: int = DEFAULT_DOWNLOAD_MAX_BYTES
    download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, cwd: Path | None = None) -> PipelineSettings:
        env = os.environ if environ is None else environ
        base = Path(cwd) if cwd is not None else Path.cwd()
        data_root = Path(env.get("MLWF_DATA_ROOT") or base / ".mlwf" / "data").expanduser().absolute()
        registry = Path(env.get("MLWF_REGISTRY_DIR") or data_root / "registry").expanduser().absolute()
        log = Path(env.get("MLWF_NOTIFICATIONS_LOG") or data_root / "notifications.jsonl").expanduser().absolute()
        project = (env.get("MLWF_PROJECT_ROOT") or "").strip()
        return cls(
            data_root=data_root,
            registry_dir=registry,
            notifications_log=log,
            webhook_url=(env.get("MLWF_WEBHOOK_URL") or "").strip() or None,
            thresholds=parse_thresholds(env.get("MLWF_THRESHOLDS")),
            tolerance=_float_env(env, "MLWF_PROMOTION_TOLERANCE", DEFAULT_TOLERANCE),
            deadline_minutes=_float_env(env, "MLWF_DEADLINE_MINUTES", DEFAULT_DEADLINE_MINUTES),
            project_root=Path(project).expanduser().absolute() if project else None,
            allowed_data_dirs=_dirs_env(env, "MLWF_ALLOWED_DATA_DIRS"),
            download_max_bytes=_positive_env(env, "MLWF_DOWNLOAD_MAX_BYTES", DEFAULT_DOWNLOAD_MAX_BYTES, int),
            download_timeout=_positive_env(env, "MLWF_DOWNLOAD_TIMEOUT", DEFAULT_DOWNLOAD_TIMEOUT),
        )

    def run_dir(self, run_id: str, *parts: str) -> Path:
        """``<data_root>/runs/<safe run id>/<parts...>`` (not created)."""
        return self.data_root.joinpath("runs", safe_run_id(run_id), *parts)

    @property
    def data_dirs(self) -> tuple[Path, ...]:
        """The folders local data files may be read from."""
        return (self.data_root, *((self.project_root,) if self.project_root else ()), *self.allowed_data_dirs)

    @property
    def health_dir(self) -> Path:
        return self.data_root / "health"


def load_settings(environ: Mapping[str, str] | None = None) -> PipelineSettings:
    return PipelineSettings.from_env(environ)
