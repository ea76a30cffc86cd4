"""Atomic, durable file writes and file digests: the one implementation of each, for the
pipeline's stages and registry and for mlwf's own state files (``mlflowctl.state``).

A writer fills a temporary file in the target's own directory, named
``.<name>.<pid>.<random>.tmp`` and created afresh (never through a planted symlink), fsyncs
it, renames it over the target (``os.replace``) and fsyncs the directory. Readers only ever
open the final names, so they see the old file or the new one, whole, even after a kill -9
or a power cut; a crash leaves at most a stray temporary file, which `remove_stale_temps`
deletes once its writer is gone.
Stdlib only: cheap to import anywhere, the CLI included.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

_TEMP = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def temp_name(path: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside `path` that no reader opens and `remove_stale_temps` knows."""
    final = Path(path)
    return final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def is_temp(name: str) -> bool:
    return _TEMP.match(name) is not None


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new entry in `path` durable (best effort where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of the file at `path`."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, mode: int = 0o666) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it becomes `path`, durably.

    The temporary file already exists, empty, with `mode` (less the umask), which writing it
    keeps. On error it is removed and `path` is left as it was.
    """
    final = Path(path)
    tmp = temp_name(final)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode))
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o666) -> str:
    """Write `data` to `path` atomically, a new file with `mode`; return its sha256 hex digest."""
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _plain(value: Any) -> Any:
    """numpy scalars become Python numbers; anything else JSON cannot hold is an error."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def atomic_write_json(
    path: str | os.PathLike[str],
    payload: Mapping[str, Any],
    *,
    default: Callable[[Any], Any] = _plain,
    allow_nan: bool = False,
) -> str:
    """Write `payload` as stable (sorted, indented) JSON to `path` atomically; return the path."""
    text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=allow_nan, default=default) + "\n"
    atomic_write_bytes(path, text.encode())
    return str(path)


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy `src` to `dst` atomically and durably."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temps(directory: str | os.PathLike[str]) -> list[str]:
    """Delete the temporary files and directories in `directory` whose writing process is gone
    (a crash mid-write); return their names. A live writer's temporary file is left alone."""
    removed: list[str] = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return removed
