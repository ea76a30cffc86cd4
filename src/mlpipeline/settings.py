"""Pipeline configuration read from the environment (stdlib only, cheap to import).

Every value has a default, so a fresh checkout runs with nothing set:

- ``MLWF_DATA_ROOT``: where run data lives (default ``<cwd>/.mlwf/data``).
- ``MLWF_REGISTRY_DIR``: the model registry (default ``<data_root>/registry``).
- ``MLWF_NOTIFICATIONS_LOG``: the JSON-lines notification log
  (default ``<data_root>/notifications.jsonl``).
- ``MLWF_WEBHOOK_URL``: POST every notification there when set.
- ``MLWF_THRESHOLDS``: JSON object of minimum metrics for promotion
  (default ``{"accuracy": 0.7, "f1": 0.7, "roc_auc": 0.75}``).
- ``MLWF_PROMOTION_TOLERANCE``: how much worse than production a candidate may be (default 0.02).
- ``MLWF_DEADLINE_MINUTES``: the ml_pipeline_dag run deadline (default 120).

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

DEFAULT_THRESHOLDS: dict[str, float] = {"accuracy": 0.7, "f1": 0.7, "roc_auc": 0.75}
DEFAULT_TOLERANCE = 0.02
DEFAULT_DEADLINE_MINUTES = 120

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
        return dict(DEFAULT_THRESHOLDS)
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


@dataclass(frozen=True)
class PipelineSettings:
    data_root: Path
    registry_dir: Path
    notifications_log: Path
    webhook_url: str | None = None
    thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    tolerance: float = DEFAULT_TOLERANCE
    deadline_minutes: float = DEFAULT_DEADLINE_MINUTES

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, cwd: Path | None = None) -> PipelineSettings:
        env = os.environ if environ is None else environ
        base = Path(cwd) if cwd is not None else Path.cwd()
        data_root = Path(env.get("MLWF_DATA_ROOT") or base / ".mlwf" / "data").expanduser().absolute()
        registry = Path(env.get("MLWF_REGISTRY_DIR") or data_root / "registry").expanduser().absolute()
        log = Path(env.get("MLWF_NOTIFICATIONS_LOG") or data_root / "notifications.jsonl").expanduser().absolute()
        return cls(
            data_root=data_root,
            registry_dir=registry,
            notifications_log=log,
            webhook_url=(env.get("MLWF_WEBHOOK_URL") or "").strip() or None,
            thresholds=parse_thresholds(env.get("MLWF_THRESHOLDS")),
            tolerance=_float_env(env, "MLWF_PROMOTION_TOLERANCE", DEFAULT_TOLERANCE),
            deadline_minutes=_float_env(env, "MLWF_DEADLINE_MINUTES", DEFAULT_DEADLINE_MINUTES),
        )

    def run_dir(self, run_id: str, *parts: str) -> Path:
        """``<data_root>/runs/<safe run id>/<parts...>`` (not created)."""
        return self.data_root.joinpath("runs", safe_run_id(run_id), *parts)

    @property
    def health_dir(self) -> Path:
        return self.data_root / "health"


def load_settings(environ: Mapping[str, str] | None = None) -> PipelineSettings:
    return PipelineSettings.from_env(environ)
