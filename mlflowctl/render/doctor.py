"""`mlwf doctor`: one row per finding, its fix beside it."""

from __future__ import annotations

from dataclasses import asdict
from typing import Sequence

from rich.text import Text

from mlflowctl.doctor import Finding
from mlflowctl.render.layout import Column, fitted

STYLES = {"ok": "green", "warn": "yellow", "block": "bold red", "skip": "dim"}
COLUMNS = (Column("status"), Column("check"), Column("finding", shrink=True), Column("fix", drop=1, shrink=True))


def findings_table(findings: Sequence[Finding], *, width: int | None = None):
    rows = [(Text(f.status, style=STYLES[f.status]), f.check, f.detail, f.fix) for f in findings]
    return fitted(COLUMNS, rows, width)


def findings_json(findings: Sequence[Finding]) -> dict:
    return {"ok": not any(f.status == "block" for f in findings), "findings": [asdict(f) for f in findings]}
