"""The one place consoles are made, so tests can swap in a recording console."""

from __future__ import annotations

from functools import lru_cache

from rich.console import Console


@lru_cache(maxsize=None)
def stdout() -> Console:
    return Console()


@lru_cache(maxsize=None)
def stderr() -> Console:
    return Console(stderr=True)
