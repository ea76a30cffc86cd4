"""The one way mlwf writes a length of time: `4.2s`, `2m05s`, `3h07m`, `2d04h` (two units at most)."""

from __future__ import annotations


def duration(seconds: float | None, *, tenths: bool = True, millis: bool = False) -> str:
    """`-` for unknown. Below a minute: tenths of a second (`tenths`), else whole seconds;
    below a second as `250ms` with `millis`. From a minute on, rounded to whole seconds."""
    if seconds is None:
        return "-"
    if millis and seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if tenths else f"{int(seconds)}s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"
