"""`mlwf objects import` and `mlwf up`: what became of each declared connection, variable and pool."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Sequence

from rich.text import Text

from mlflowctl.objects import Applied
from mlflowctl.render.layout import Column, fitted

STYLES = {"created": "green", "updated": "yellow", "resent": "cyan", "unchanged": "dim"}
COLUMNS = (Column("kind"), Column("name"), Column("status"), Column("fields", drop=2, shrink=True),
           Column("note", drop=1, shrink=True))


def summary(applied: Sequence[Applied]) -> str:
    """One line: '5 objects applied: 3 created, 2 unchanged'."""
    counts = Counter(item.status for item in applied)
    parts = ", ".join(f"{counts[status]} {status}" for status in STYLES if counts[status])
    return f"{len(applied)} Airflow object(s) applied: {parts}"


def applied_table(applied: Sequence[Applied], *, width: int | None = None):
    rows = [
        (item.kind, item.name, Text(item.status, style=STYLES.get(item.status, "")), ", ".join(item.fields), item.note)
        for item in applied
    ]
    return fitted(COLUMNS, rows, width)


def applied_json(applied: Sequence[Applied]) -> dict:
    counts = Counter(item.status for item in applied)
    return {"objects": [asdict(item) for item in applied], "counts": dict(counts)}
