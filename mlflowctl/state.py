"""The stack's state directory: private, marked as mlwf's, one writer at a time, deleted only when ours.

A CI job with an unset variable must never turn "the state directory" into the project
checkout or a home directory: mlwf writes a marker file when it creates a state directory,
refuses directories that can never be one (`/`, a home, the project root or its parents),
and deletes only a marked directory. `up`, `restart`, `down` and `scale` hold an exclusive `flock` on
it, so two of them never interleave. State files are read through `read_json`, so a
damaged one is one line naming it, never a traceback or a silent default.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pwd
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from mlflowctl.errors import DamagedStateError, StateBusyError, UsageError
from mlpipeline.files import atomic_write_bytes

MARKER = ".mlwf-state"
MARKER_TEXT = "This directory was created by mlwf; `mlwf down --volumes` may delete it.\n"
LOCK_FILE = ".lock"
#: Files that only an mlwf state directory holds: an unmarked directory with one of them is a
#: state directory made before markers existed, and is adopted.
_LEGACY_SIGNS = ("secrets.json", "executor.json")


def _forbidden(project_root: Path) -> set[Path]:
    """Directories that are never a state directory, whatever a variable says."""
    homes = {Path.home(), Path(os.path.expanduser("~"))}
    for name in filter(None, (os.environ.get("SUDO_USER"), os.environ.get("USER"))):
        try:
            homes.add(Path(pwd.getpwnam(name).pw_dir))
        except KeyError:
            pass
    root = Path(project_root).resolve()
    return {Path("/"), root, *root.parents, *(home.resolve() for home in homes)}


def check_home(home: Path, project_root: Path) -> Path:
    """The resolved state directory, or a usage error (exit 2) for one that can never be ours.

    (An empty MLWF_HOME or --home never gets here: the config refuses it.)"""
    resolved = Path(home).resolve()
    if resolved in _forbidden(project_root):
        raise UsageError(
            f"refusing {resolved} as the state directory: it is /, a home directory, the project root or one of "
            "its parents",
            hint="set MLWF_HOME (or --home) to a folder of its own, e.g. .mlwf inside the project",
        )
    return resolved


def is_ours(home: Path) -> bool:
    """True when mlwf created `home` (it carries the marker, a regular file, not a link)."""
    try:
        return (Path(home) / MARKER).lstat().st_mode & 0o170000 == 0o100000
    except OSError:
        return False


def ensure_home(home: Path, project_root: Path) -> Path:
    """Create the state directory 0700 with its marker, or check that an existing one is mlwf's."""
    home = check_home(home, project_root)
    created = False
    try:
        home.mkdir(parents=True, mode=0o700)
        created = True
    except FileExistsError:
        if not home.is_dir() or home.is_symlink():
            raise UsageError(f"the state directory {home} exists and is not a folder") from None
    if not is_ours(home):
        if not created and any(home.iterdir()) and not any((home / name).is_file() for name in _LEGACY_SIGNS):
            raise UsageError(
                f"{home} is not an mlwf state directory (it has files but no {MARKER})",
                hint="choose an empty or new folder for MLWF_HOME / --home",
            )
        mark(home)
    if home.stat().st_mode & 0o077:
        home.chmod(0o700)
    return home


def mark(home: Path) -> None:
    """Write the marker that says mlwf created `home` (never through a link, never twice)."""
    try:
        descriptor = os.open(home / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return  # a concurrent `up` wrote it
    with os.fdopen(descriptor, "w") as handle:
        handle.write(MARKER_TEXT)


def check_removable(path: Path, project_root: Path) -> Path:
    """`path` resolved when mlwf may delete it (missing, or marked as created by mlwf); else exit 2."""
    path = check_home(path, project_root)
    if path.exists() and not is_ours(path):
        raise UsageError(
            f"refusing to delete {path}: it has no {MARKER} marker, so mlwf did not create it",
            hint="nothing was deleted; delete it yourself if you are sure",
        )
    return path


def remove_tree(path: Path, project_root: Path) -> bool:
    """Delete a directory mlwf created (state directory or PostgreSQL's data); refuse anything else.

    Returns False when there was nothing to delete."""
    path = check_removable(path, project_root)
    if not path.exists():
        return False
    shutil.rmtree(path)
    return True


# ----------------------------------------------------------------------------- the lock


@contextmanager
def locked(
    home: Path,
    project_root: Path,
    *,
    command: str,
    wait: float,
    on_wait: Callable[[str], None] = lambda _message: None,
    create: bool = True,
) -> Iterator[Path | None]:
    """Hold the state directory's exclusive lock for `command`; wait at most `wait` seconds.

    With `create=False` (down) a missing directory is not made and nothing is locked.
    The holder's pid and command are written into the lock file so a waiter can say whom
    it waits for.
    """
    if not create and not Path(home).exists():
        yield None
        return
    started = time.monotonic()
    deadline = started + wait
    told = False
    while True:
        home = ensure_home(home, project_root)
        descriptor = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(descriptor)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = _holder(home / LOCK_FILE)  # None for a moment: the holder writes it after locking
            if time.monotonic() >= deadline:
                raise StateBusyError(
                    f"{home} is held by {holder or 'another mlwf command'}; gave up after {wait:.0f} s",
                    hint="wait for it to finish, or raise MLWF_LOCK_WAIT",
                ) from None
            if not told and (holder or time.monotonic() >= started + 1):
                on_wait(f"waiting for {holder or 'another mlwf command'} to finish with {home} (at most {wait:.0f} s)")
                told = True
            time.sleep(0.2)
            continue
        if _same_file(descriptor, home / LOCK_FILE):
            break
        os.close(descriptor)  # the directory was deleted (down --volumes) while we waited
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, json.dumps({"pid": os.getpid(), "command": command}).encode())
        yield home
    finally:
        os.ftruncate(descriptor, 0)  # no stale holder for the next waiter to name
        os.close(descriptor)


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        here, there = os.fstat(descriptor), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _holder(path: Path) -> str | None:
    """Who holds the lock, as the holder wrote it; None until it has, or when the writer is gone."""
    try:
        data = json.loads(path.read_text())
        pid = int(data["pid"])
        os.kill(pid, 0)
        return f"`{data['command']}` (pid {pid})"
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------- state files


def read_json(path: Path, *, expect: type = dict, fix: str) -> object | None:
    """A state file's JSON, None when it does not exist, else one line naming it and `fix`."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedStateError(f"cannot read {path}: {exc}", hint=fix) from None
    try:
        data = json.loads(text)
    except ValueError:
        reason = "it is empty" if not text.strip() else "it is not valid JSON (truncated?)"
        raise DamagedStateError(f"{path} is damaged: {reason}", hint=fix) from None
    if not isinstance(data, expect):
        raise DamagedStateError(f"{path} is damaged: it holds a JSON {type(data).__name__}", hint=fix)
    return data


def write_durably(path: Path, text: str, *, mode: int = 0o600) -> None:
    """Replace `path` atomically with `text`, fsynced with its directory: a crash leaves old or new, never half.

    State files are private (0600) unless `mode` says otherwise; the write is `mlpipeline.files`'s.
    """
    atomic_write_bytes(path, text.encode(), mode=mode)
