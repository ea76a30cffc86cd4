"""`mlwf models`: the pipeline's model registry (`mlpipeline.model_deployment`) from the terminal.

Works on the registry's files alone, no server needed: the local stack's registry, or any
``--registry PATH``. Everything that changes the registry (promote, rollback) goes through
`ModelRegistry`, so it takes the same lock, runs the same promotion gate and writes the
pointer the same atomic way as the pipeline's `deploy_model` task. Stdlib only, like the
registry module itself: no pandas, scikit-learn or skops is imported here.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflowctl.errors import (
    DamagedStateError,
    NotAvailableError,
    NotFoundError,
    PromotionRefusedError,
    StateBusyError,
    UsageError,
)
from mlpipeline import model_deployment as md
from mlpipeline.files import file_sha256

#: How long promote and rollback wait for another writer holding the registry's lock.
LOCK_WAIT_S = 30.0
#: The metrics `list` shows; `show` and `diff` show all of them.
HEADLINE_METRICS = ("accuracy", "f1", "roc_auc")
_VERSION_ARG = re.compile(r"^[vV]?0*(\d{1,9})$")


def _settings(config: Any):
    """The pipeline's settings as the local stack's tasks see them: this environment, with the
    data root mlwf gives its stacks (`mlflowctl.backends.local.environment.data_root`)."""
    from mlflowctl.backends.local.environment import data_root
    from mlpipeline.settings import PipelineSettings, SettingsError

    try:
        return PipelineSettings.from_env({**os.environ, "MLWF_DATA_ROOT": str(data_root(config))})
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


def open_registry(home: str | None, registry: str | None) -> tuple[md.ModelRegistry, Any]:
    """The registry named by ``--registry``, else the local stack's; and the pipeline settings."""
    from mlflowctl.config import load_config

    config = load_config({"home": home})
    settings = _settings(config)
    if registry is None and config.backend == "docker":
        raise NotAvailableError(
            "the docker backend keeps the model registry inside its pipeline-data volume",
            hint="copy it out or point --registry at the volume (README: The docker backend)",
        )
    root = Path(registry).expanduser() if registry is not None else settings.registry_dir
    if not root.is_dir():
        raise NotFoundError(
            f"no model registry at {root}",
            hint=None if registry else "no model has been registered yet: run ml_pipeline_dag, or pass --registry PATH",
        )
    return md.ModelRegistry(root), settings


def version_name(text: str) -> str:
    """`3`, `v3` and `v0003` all name v0003."""
    match = _VERSION_ARG.match(text.strip())
    if match is None:
        raise UsageError(f"{text!r} is not a model version (expected e.g. 3, v3 or v0003)")
    return f"v{int(match.group(1)):04d}"


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """The registry's errors as mlwf's, each with its documented exit code."""
    try:
        yield
    except md.VersionNotFoundError as exc:
        raise NotFoundError(str(exc), hint="`mlwf models list` shows the versions") from None
    except md.NothingToRollBackError as exc:
        raise NotFoundError(str(exc)) from None
    except (md.PointerDamagedError, md.MetadataDamagedError, md.ModelIntegrityError) as exc:
        raise DamagedStateError(str(exc)) from None
    except md.RegistryBusyError as exc:
        raise StateBusyError(str(exc)) from None
    except md.PromotionRefusedError as exc:
        raise PromotionRefusedError(str(exc), hint="--force --reason TEXT promotes it anyway") from None
    except md.RegistryError as exc:
        raise UsageError(str(exc)) from None


def integrity(registry: md.ModelRegistry, version: str, meta: dict[str, Any]) -> str:
    """`ok`, `tampered` (the file differs from its recorded sha256) or `missing`."""
    model = registry.versions_dir / version / str(meta.get("model_file", md.MODEL_FILE))
    if not model.is_file():
        return "missing"
    return "ok" if meta.get("model_sha256") and file_sha256(model) == meta["model_sha256"] else "tampered"


def _row(version: str, meta: dict[str, Any], production: str | None) -> dict[str, Any]:
    metrics = meta.get("metrics") or {}
    promotion = meta.get("promotion") or {}
    return {
        "version": version,
        "production": version == production,
        "created_at": meta.get("created_at"),
        "model_type": meta.get("model_type"),
        "metrics": {name: metrics.get(name) for name in HEADLINE_METRICS},
        "data_fingerprint": meta.get("data_fingerprint"),
        "passed_gate": promotion.get("promoted"),
        "run_id": meta.get("run_id"),
    }


def list_versions(registry: md.ModelRegistry) -> dict[str, Any]:
    """Every version, oldest first; a version whose metadata is damaged is listed as such."""
    with _translated():
        production = registry.production_version()
    rows, damaged = [], []
    for version in registry.list_versions():
        try:
            rows.append(_row(version, registry.metadata(version), production))
        except md.MetadataDamagedError as exc:
            rows.append({"version": version, "production": version == production, "damaged": str(exc)})
            damaged.append(str(exc))
    return {"registry": str(registry.root), "production": production, "versions": rows, "damaged": damaged}


def show(registry: md.ModelRegistry, version: str) -> dict[str, Any]:
    """All of a version's metadata, whether it is in production, and its model file's integrity."""
    with _translated():
        meta = registry.metadata(version)
        production = registry.production_version()
    return {**meta, "version": version, "production": version == production,
            "integrity": integrity(registry, version, meta)}


def _delta(a: Any, b: Any) -> float | None:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return b - a if numbers else None


def _side_by_side(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": k, "a": a.get(k), "b": b.get(k), "same": a.get(k) == b.get(k)} for k in sorted({*a, *b})]


def diff(registry: md.ModelRegistry, first: str, second: str) -> dict[str, Any]:
    """Metrics with deltas (second minus first), parameters, data and library versions side by side."""
    with _translated():
        a, b = registry.metadata(first), registry.metadata(second)
    metrics = _side_by_side(a.get("metrics") or {}, b.get("metrics") or {})
    for row in metrics:
        row["delta"] = _delta(row["a"], row["b"])
    facts = ("model_type", "data_fingerprint", "data_source", "data_rows", "run_id", "created_at", "dag_git_commit")
    return {
        "a": first,
        "b": second,
        "metrics": metrics,
        "params": _side_by_side(a.get("model_params") or {}, b.get("model_params") or {}),
        "data": _side_by_side({k: a.get(k) for k in facts}, {k: b.get(k) for k in facts}),
        "libraries": _side_by_side(a.get("library_versions") or {}, b.get("library_versions") or {}),
    }


def promote(
    registry: md.ModelRegistry, settings: Any, version: str, *, force_reason: str | None, wait: float = LOCK_WAIT_S
) -> dict[str, Any]:
    """The gate `deploy_model` applies (thresholds and tolerance as the tasks read them)."""
    with _translated():
        result = registry.promote(
            version, thresholds=settings.thresholds, tolerance=settings.tolerance, force_reason=force_reason, wait=wait
        )
    return {**result, "thresholds": settings.thresholds, "tolerance": settings.tolerance}


def rollback(registry: md.ModelRegistry, to_version: str | None, *, wait: float = LOCK_WAIT_S) -> dict[str, Any]:
    with _translated():
        return registry.rollback(to_version, wait=wait)


def events(registry: md.ModelRegistry) -> dict[str, Any]:
    records, unreadable = registry.events()
    return {"registry": str(registry.root), "events": records, "unreadable_lines": unreadable}
