"""A file-based model registry with gated, atomic promotion and rollback.

Layout under the registry root::

    versions/v0001/model.skops      the model (skops: loading runs no code)
    versions/v0001/metadata.json    metrics, data fingerprint, run id, git commit, versions,
                                    created time, the model file's sha256, the promotion decision
    production.json                 pointer: {"version", "previous": [...], "updated_at", "reason"}
    events.jsonl                    audit trail: registered / promoted / not_promoted / rolled_back
    .lock                           flock serialising writers

A version directory is assembled under a temporary name (``.version.<pid>.<random>.tmp``)
with every file fsynced, and renamed into ``versions/`` in one step; the production pointer
is replaced atomically (`mlpipeline.files`). A reader therefore sees either the old state or
the new one, never half of either, even after a kill -9 or a power cut; what a crashed
writer left half-assembled is deleted by the next writer, under the lock. The model's
sha256 is checked on every load: a file that does not match its metadata is refused
before skops ever reads it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mlpipeline.files import atomic_copy, atomic_write_json, file_sha256, fsync_dir, remove_stale_temps, temp_name

MODEL_FILE = "model.skops"
METADATA_FILE = "metadata.json"
POINTER_FILE = "production.json"
EVENTS_FILE = "events.jsonl"
_VERSION_RE = re.compile(r"^v(\d{4,})$")
_LIBRARIES = ("apache-airflow", "scikit-learn", "skops", "pandas", "numpy", "pandera")


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (missing version, unreadable metadata...)."""


class RegistryNotWritableError(RegistryError):
    """The registry directory cannot be created or written."""


class PointerDamagedError(RegistryError):
    """The production pointer exists but cannot be read as one: nothing is promoted past it."""


class ModelIntegrityError(RegistryError):
    """A model file does not match the sha256 recorded for it: it is never loaded."""


class VersionNotFoundError(RegistryError):
    """No such version in the registry."""


class MetadataDamagedError(RegistryError):
    """A version's metadata.json exists but cannot be read as metadata."""


class RegistryBusyError(RegistryError):
    """Another writer (a deploy, promotion or rollback) held the lock longer than the wait allows."""


class NothingToRollBackError(RegistryError):
    """There is no production model, or no earlier one to go back to."""


class PromotionRefusedError(RegistryError):
    """The promotion gate refused the version, and the promotion was not forced."""


class NotServedError(RegistryError):
    """The model server did not come to serve the promoted version within the wait."""


class ServedMismatchError(RegistryError):
    """The model server answers holdout rows differently from the evaluated model: a retry cannot fix it."""


# ---------------------------------------------------------------- small helpers


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_commit(path: str | os.PathLike[str] | None) -> str | None:
    """The commit checked out where ``path`` lives; None if it is not a git checkout (best effort)."""
    if path is None:
        return None
    where = Path(path)
    where = where if where.is_dir() else where.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries a model depends on (no import of any of them)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _default_loader(path: Path) -> Any:
    from mlpipeline.model_training import load_model

    return load_model(path)


# ---------------------------------------------------------------- promotion gate


def check_promotion(
    metrics: Mapping[str, Any],
    thresholds: Mapping[str, float],
    tolerance: float,
    production_metrics: Mapping[str, Any] | None,
) -> tuple[bool, str]:
    """(promote?, reason). Every thresholded metric must be present, finite, >= its threshold
    and, if there is a production model, >= production's value minus ``tolerance``."""
    if not thresholds:
        raise ValueError("no promotion thresholds configured")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be a number in [0, 1), got {tolerance!r}")
    failures: list[str] = []
    for name, minimum in sorted(thresholds.items()):
        value = metrics.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            failures.append(f"{name} missing or not a number ({value!r})")
            continue
        if value < minimum:
            failures.append(f"{name} {value:.4f} < threshold {minimum:.4f}")
        if production_metrics is not None:
            current = production_metrics.get(name)
            if isinstance(current, (int, float)) and math.isfinite(current) and value < current - tolerance:
                failures.append(f"{name} {value:.4f} worse than production {current:.4f} beyond tolerance {tolerance}")
    if failures:
        return False, "not promoted: " + "; ".join(failures)
    if production_metrics is None:
        return True, "promoted: passes thresholds; no production model yet"
    return True, f"promoted: passes thresholds and is within {tolerance} of production"


# ---------------------------------------------------------------- the registry


class ModelRegistry:
    def __init__(self, root: str | os.PathLike[str], *, loader: Callable[[Path], Any] | None = None) -> None:
        self.root = Path(root).expanduser().absolute()
        self.versions_dir = self.root / "versions"
        self.pointer_path = self.root / POINTER_FILE
        self.events_path = self.root / EVENTS_FILE
        self._loader = loader or _default_loader

    # -- writing

    def ensure_writable(self) -> None:
        """Create the registry directories and prove we can write there, or raise a clear error."""
        try:
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise RegistryNotWritableError(
                f"model registry {self.root} is not writable: {exc.strerror or exc}"
                " (set MLWF_REGISTRY_DIR to a writable directory)"
            ) from None

    @contextlib.contextmanager
    def _locked(self, wait: float | None = None) -> Iterator[None]:
        """Hold the writers' lock; wait for it forever (None) or ``wait`` seconds, then RegistryBusyError."""
        self.ensure_writable()
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._acquire(fd, wait)
            remove_stale_temps(self.root)  # every writer holds this lock: a crashed one left these
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _acquire(self, fd: int, wait: float | None) -> None:
        if wait is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RegistryBusyError(
                        f"model registry {self.root} is locked by another deploy, promotion or rollback "
                        f"(waited {wait:g} s); nothing was changed"
                    ) from None
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _event(self, event: str, **fields: Any) -> None:
        from mlpipeline.notifications import append_jsonl

        append_jsonl(self.events_path, {"time": _now(), "event": event, **fields})

    def _next_version(self) -> str:
        numbers = [int(m.group(1)) for p in self.versions_dir.iterdir() if (m := _VERSION_RE.match(p.name))]
        return f"v{max(numbers, default=0) + 1:04d}"

    def register(self, model_path: str | os.PathLike[str], metadata: Mapping[str, Any]) -> dict[str, Any]:
        """Copy a model in as a new version (assembled aside, then renamed). Caller holds the lock."""
        src = Path(model_path)
        if not src.is_file():
            raise RegistryError(f"model file {src} does not exist")
        if src.suffix != ".skops":
            raise RegistryError(f"model file {src} is not a .skops file; the registry stores skops models only")
        staging = temp_name(self.root / "version")
        staging.mkdir(mode=0o755)
        try:
            atomic_copy(src, staging / MODEL_FILE)
            digest = file_sha256(staging / MODEL_FILE)
            try:  # refuse anything skops cannot load with our allow-list, before it is registered
                self._loader(staging / MODEL_FILE)
            except Exception as exc:  # noqa: BLE001 - any failure means: not a model we accept
                raise RegistryError(f"model file {src} cannot be loaded safely: {exc}") from exc
            version = self._next_version()
            meta = {**metadata, "version": version, "model_file": MODEL_FILE, "model_sha256": digest}
            # a NaN metric is recorded as it was measured (it is never promoted)
            atomic_write_json(staging / METADATA_FILE, meta, default=str, allow_nan=True)
            os.rename(staging, self.versions_dir / version)
            fsync_dir(self.versions_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return meta

    def _set_production(self, version: str, previous: list[str], reason: str) -> dict[str, Any]:
        pointer = {"version": version, "previous": previous, "updated_at": _now(), "reason": reason}
        atomic_write_json(self.pointer_path, pointer, default=str)
        return pointer

    # -- reading

    def pointer(self) -> dict[str, Any] | None:
        """The production pointer, None before the first promotion; PointerDamagedError if unusable."""
        try:
            data = json.loads(self.pointer_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._damaged(f"unreadable: {exc}") from None
        if not isinstance(data, dict) or not _VERSION_RE.match(str(data.get("version"))):
            raise self._damaged("it names no version")
        previous = data.get("previous", [])
        if not isinstance(previous, list) or not all(isinstance(v, str) and _VERSION_RE.match(v) for v in previous):
            raise self._damaged("its 'previous' is not a list of versions")
        return data

    def _damaged(self, why: str) -> PointerDamagedError:
        return PointerDamagedError(
            f"production pointer {self.pointer_path} is damaged ({why}); nothing is promoted until it is "
            f"repaired: restore it, or name a good version with `mlwf models rollback --to vNNNN "
            f"--registry {self.root}` (`mlwf models events` lists past promotions)"
        )

    def production_version(self) -> str | None:
        p = self.pointer()
        return p["version"] if p else None

    def list_versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        found = [p.name for p in self.versions_dir.iterdir() if _VERSION_RE.match(p.name) and p.is_dir()]
        return sorted(found, key=lambda v: int(v[1:]))

    def metadata(self, version: str) -> dict[str, Any]:
        if not _VERSION_RE.match(version or ""):
            raise RegistryError(f"{version!r} is not a version name (expected v0001, v0002, ...)")
        path = self.versions_dir / version / METADATA_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise VersionNotFoundError(f"model version {version} not found in {self.root}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MetadataDamagedError(f"metadata of {version} ({path}) is unreadable: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("metrics", {}), dict):
            raise MetadataDamagedError(f"metadata of {version} ({path}) is not a metadata object")
        return data

    def events(self) -> tuple[list[dict[str, Any]], int]:
        """The events log, oldest first, and how many of its lines could not be read."""
        try:
            lines = self.events_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return [], 0
        records, unreadable = [], 0
        for line in filter(str.strip, lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                unreadable += 1
        return records, unreadable

    def verify(self, version: str) -> dict[str, Any]:
        """Metadata of ``version`` after checking its model file against the recorded sha256."""
        meta = self.metadata(version)
        model = self.versions_dir / version / meta.get("model_file", MODEL_FILE)
        expected = meta.get("model_sha256")
        if not model.is_file():
            raise ModelIntegrityError(f"model file of {version} is missing ({model})")
        actual = file_sha256(model)
        if not expected or actual != expected:
            raise ModelIntegrityError(
                f"model file of {version} does not match its recorded sha256 "
                f"(expected {expected}, found {actual}): refusing to load it"
            )
        return meta

    def load(self, version: str | None = None) -> tuple[Any, dict[str, Any]]:
        """(model, metadata) of ``version`` (production by default); the sha256 is checked first."""
        version = version or self.production_version()
        if version is None:
            raise RegistryError(f"no production model in {self.root}")
        meta = self.verify(version)
        return self._loader(self.versions_dir / version / meta.get("model_file", MODEL_FILE)), meta

    def find_run(self, run_id: str | None, model_sha256: str) -> dict[str, Any] | None:
        """The version registered by ``run_id`` for this exact model file, if any (re-run safety)."""
        if not run_id:
            return None
        for version in reversed(self.list_versions()):
            with contextlib.suppress(RegistryError):
                meta = self.metadata(version)
                if meta.get("run_id") == run_id and meta.get("model_sha256") == model_sha256:
                    return meta
        return None

    # -- operations

    def deploy(
        self,
        model_path: str | os.PathLike[str],
        metrics: Mapping[str, Any],
        *,
        thresholds: Mapping[str, float],
        tolerance: float,
        metadata: Mapping[str, Any] | None = None,
        code_path: str | os.PathLike[str] | None = None,
    ) -> dict[str, Any]:
        metadata = dict(metadata or {})
        with self._locked():
            digest = file_sha256(model_path) if Path(model_path).is_file() else None
            existing = self.find_run(metadata.get("run_id"), digest) if digest else None
            if existing is not None:  # same run, same model: report what was decided then
                self._finish_interrupted_promotion(existing)
                return self._result(existing, reused=True)
            current, promoted, reason = self._gate(metrics, thresholds, tolerance)
            meta = self.register(
                model_path,
                {
                    **metadata,
                    "metrics": dict(metrics),
                    "created_at": _now(),
                    "dag_git_commit": metadata.get("dag_git_commit") or git_commit(code_path),
                    "library_versions": library_versions(),
                    "promotion": {
                        "promoted": promoted,
                        "reason": reason,
                        "thresholds": dict(thresholds),
                        "tolerance": tolerance,
                        "compared_with": current,
                    },
                },
            )
            self._event("registered", version=meta["version"], run_id=metadata.get("run_id"))
            if promoted:
                previous = (self.pointer() or {}).get("previous", [])
                self._set_production(meta["version"], [*previous, current] if current else previous, reason)
                self._event("promoted", version=meta["version"], replaced=current, reason=reason)
            else:
                self._event("not_promoted", version=meta["version"], production=current, reason=reason)
            return self._result(meta, reused=False)

    def _gate(
        self, metrics: Mapping[str, Any], thresholds: Mapping[str, float], tolerance: float
    ) -> tuple[str | None, bool, str]:
        """(production version, promote?, reason): `check_promotion` against the production model."""
        current = self.production_version()
        current_metrics = self.metadata(current).get("metrics", {}) if current else None
        return (current, *check_promotion(metrics, thresholds, tolerance, current_metrics))

    def promote(
        self,
        version: str,
        *,
        thresholds: Mapping[str, float],
        tolerance: float,
        force_reason: str | None = None,
        wait: float | None = None,
    ) -> dict[str, Any]:
        """Make ``version`` production if the gate of `deploy` passes it against today's production,
        or regardless of the gate when ``force_reason`` says why. A tampered model is never promoted."""
        with self._locked(wait):
            meta = self.verify(version)
            current, passed, verdict = self._gate(meta.get("metrics", {}), thresholds, tolerance)
            if version == current:
                raise RegistryError(f"{version} is already in production")
            if not passed and force_reason is None:
                raise PromotionRefusedError(f"{version} {verdict}")
            previous = (self.pointer() or {}).get("previous", [])
            reason = verdict if passed else f"forced: {force_reason} (gate: {verdict})"
            self._set_production(version, [*previous, current] if current else previous, reason)
            self._event("promoted", version=version, replaced=current, reason=reason, forced=not passed)
            return {"version": version, "replaced": current, "passed_gate": passed, "reason": reason}

    def _finish_interrupted_promotion(self, meta: Mapping[str, Any]) -> None:
        """A version decided 'promoted' whose pointer switch never happened (crash in between)."""
        pointer = self.pointer() or {"version": None, "previous": []}
        version = meta["version"]
        if not meta.get("promotion", {}).get("promoted"):
            return
        if version == pointer["version"] or version in pointer.get("previous", []):
            return
        current = pointer["version"]
        previous = [*pointer.get("previous", []), current] if current else list(pointer.get("previous", []))
        self._set_production(version, previous, meta["promotion"]["reason"])
        self._event("promoted", version=version, replaced=current, reason="completed an interrupted promotion")

    def _result(self, meta: Mapping[str, Any], *, reused: bool) -> dict[str, Any]:
        decision = meta.get("promotion", {})
        return {
            "version": meta["version"],
            "promoted": bool(decision.get("promoted")),
            "reason": decision.get("reason"),
            "production_version": self.production_version(),
            "model_sha256": meta.get("model_sha256"),
            "metadata_path": str(self.versions_dir / meta["version"] / METADATA_FILE),
            "registry_root": str(self.root),
            "reused": reused,
        }

    def rollback(self, to_version: str | None = None, *, wait: float | None = None) -> dict[str, Any]:
        """Point production at ``to_version``, or at the version production replaced last."""
        with self._locked(wait):
            try:
                pointer = self.pointer()
            except PointerDamagedError:
                if to_version is None:
                    raise
                pointer = {"version": None, "previous": []}  # naming a version repairs the pointer
            if pointer is None:
                raise NothingToRollBackError(f"nothing to roll back: no production model in {self.root}")
            current, previous = pointer["version"], list(pointer.get("previous", []))
            if to_version is None:
                if not previous:
                    raise NothingToRollBackError(f"nothing to roll back to: {current} is the only version ever promoted")
                target, remaining = previous[-1], previous[:-1]
            else:
                if to_version == current:
                    raise RegistryError(f"{to_version} is already in production")
                target, remaining = to_version, [*previous, current] if current else previous
            self.verify(target)  # never roll back onto a missing or tampered model
            self._set_production(target, remaining, f"rollback from {current or 'a damaged pointer'}")
            self._event("rolled_back", version=target, replaced=current)
            return {"version": target, "replaced": current, "previous": remaining}


# ---------------------------------------------------------------- task-level functions


def deploy_model(
    model_path: str | os.PathLike[str],
    metrics: Mapping[str, Any],
    *,
    registry_root: str | os.PathLike[str],
    thresholds: Mapping[str, float],
    tolerance: float,
    metadata: Mapping[str, Any] | None = None,
    code_path: str | os.PathLike[str] | None = None,
    loader: Callable[[Path], Any] | None = None,
) -> dict[str, Any]:
    """Register the model as a new version and promote it if the gate allows.

    Returns ``{"version", "promoted", "reason", "production_version", "model_sha256",
    "metadata_path", "registry_root", "reused"}``. Re-running with the same run id and the
    same model file returns the earlier decision instead of registering a duplicate.
    """
    registry = ModelRegistry(registry_root, loader=loader)
    return registry.deploy(
        model_path, metrics, thresholds=thresholds, tolerance=tolerance, metadata=metadata, code_path=code_path
    )


def rollback(registry_root: str | os.PathLike[str], to_version: str | None = None) -> dict[str, Any]:
    return ModelRegistry(registry_root).rollback(to_version)


def load_production_model(
    registry_root: str | os.PathLike[str], *, loader: Callable[[Path], Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    return ModelRegistry(registry_root, loader=loader).load()



# ---------------------------------------------------------------- served == evaluated

#: How long deploy_model waits for the model server to serve what it promoted (it polls the
#: pointer every 0.25 s and loads a model in about a second; the rest is slack for a loaded machine).
SERVED_WAIT_S = 120.0
#: Holdout rows whose served predictions must equal the evaluated model's.
SERVED_CHECK_ROWS = 5
PROBABILITY_TOLERANCE = 1e-6


def verify_served(
    serving_url: str,
    version: str,
    model_path: str | os.PathLike[str],
    holdout_path: str | os.PathLike[str],
    *,
    label: str,
    wait_s: float = SERVED_WAIT_S,
    rows: int = SERVED_CHECK_ROWS,
) -> dict[str, Any]:
    """Wait until the model server at ``serving_url`` serves ``version``, then check that the
    first holdout rows get the predictions the evaluated model file gives them.

    NotServedError when it does not serve the version in time, ServedMismatchError when it
    answers differently. A server name that does not resolve means the stack runs without
    one (docker, ``--exclude serving``): nothing to check."""
    import socket
    import urllib.parse

    import httpx

    from mlpipeline.model_training import load_model
    from mlpipeline.storage import read_parquet

    host = urllib.parse.urlsplit(serving_url).hostname or ""
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror:
        return {"checked": False, "reason": f"no model server at {serving_url} in this stack"}
    model = load_model(model_path)
    frame = read_parquet(holdout_path, "holdout split").drop(columns=[label]).head(rows)
    frame = frame[list(model.feature_names_in_)]
    expected = model.predict(frame).tolist()
    probabilities = model.predict_proba(frame).tolist()
    deadline, last = time.monotonic() + wait_s, "no answer yet"
    with httpx.Client(base_url=serving_url.rstrip("/"), timeout=10, trust_env=False) as http:
        while True:
            try:
                health = http.get("/health").json()
                if health.get("served") == version:
                    break
                last = f"serving {health.get('served')}: {health.get('reason') or health.get('status')}"
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise NotServedError(f"the model server at {serving_url} did not serve {version} within {wait_s:g} s ({last})")
            time.sleep(0.25)
        answer = http.post("/predict", json={"rows": frame.to_dict("records")})
    body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
    if answer.status_code != 200 or body.get("version") != version:
        raise ServedMismatchError(f"the model server refused holdout rows of {version}: {answer.status_code} {body}")
    # Labels must be equal; probabilities within 1e-6: the server computes in float64, while a
    # holdout stored as float32 is evaluated in float32 by scikit-learn.
    close = all(
        math.isclose(a, b, rel_tol=PROBABILITY_TOLERANCE, abs_tol=PROBABILITY_TOLERANCE)
        for got, want in zip(body["probabilities"], probabilities, strict=True)
        for a, b in zip(got, want, strict=True)
    )
    if body["predictions"] != expected or not close:
        raise ServedMismatchError(
            f"the model server's predictions for {rows} holdout rows differ from the evaluated {version}: "
            f"served {body['predictions']}, evaluated {expected} (probabilities compared within {PROBABILITY_TOLERANCE:g})"
        )
    return {"checked": True, "version": version, "rows": len(expected), "url": serving_url}
