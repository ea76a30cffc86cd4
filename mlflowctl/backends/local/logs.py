"""A local stack's logs: the last lines of a file, read from its end, and following several."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator


def tail_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines of a file, read from its end (logs can be large)."""
    if count <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            block, data = 8192, b""
            while size > 0 and data.count(b"\n") <= count:
                step = min(block, size)
                size -= step
                handle.seek(size)
                data = handle.read(step) + data
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-count:]


def follow_logs(files: dict[str, Path], *, tail: int, follow: bool, prefix: bool) -> Iterator[str]:
    """The last `tail` lines of each file (interleaved by their leading timestamps), then new lines."""
    width = max((len(n) for n in files), default=0)

    def label(name: str, line: str) -> str:
        return f"{name.ljust(width)} | {line}" if prefix else line

    collected: list[tuple[str, int, str, str]] = []
    for name, path in files.items():
        last_stamp = ""
        for index, line in enumerate(tail_lines(path, tail)):
            stamp = _leading_timestamp(line) or last_stamp
            last_stamp = stamp
            collected.append((stamp, index, name, line))
    if len(files) > 1:
        collected.sort(key=lambda item: (item[0], item[2], item[1]))
    for _stamp, _index, name, line in collected:
        yield label(name, line)
    if not follow:
        return
    handles = {}
    for name, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        handle = open(path, "r", errors="replace")
        handle.seek(0, 2)
        handles[name] = handle
    try:
        while True:
            quiet = True
            for name, handle in handles.items():
                for line in handle.readlines():
                    quiet = False
                    yield label(name, line.rstrip("\n"))
            if quiet:
                time.sleep(0.2)
    finally:
        for handle in handles.values():
            handle.close()


def _leading_timestamp(line: str) -> str:
    """An ISO-like timestamp at the start of a log line ('2026-11-25T08:41:10.1Z' or '[2026-11-25 ...')."""
    text = line.lstrip("[")
    if len(text) >= 19 and text[4] == "-" and text[7] == "-" and text[10] in "T " and text[13] == ":":
        return text[:26].replace("T", " ")
    return ""
