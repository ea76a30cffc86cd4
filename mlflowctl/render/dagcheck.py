"""Pure builders for `mlwf parse`: the per-file table and its JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text

from mlflowctl.render.durations import duration
from mlflowctl.render.layout import Column, fitted
from mlflowctl.render.runs import jsonable

if TYPE_CHECKING:
    from mlflowctl.dagcheck.runner import ParseReport


PARSE_COLUMNS = (
    Column("file"), Column("parse", justify="right"), Column("dags"), Column("problem", shrink=True),
)


def parse_table(report: ParseReport, width: int | None):
    """One row per DAG file; `width` the terminal's (None: --wide)."""
    rows = []
    for parsed in report.files:
        if parsed.error:
            line = f"line {parsed.error.line}: " if parsed.error.line else ""
            problem = Text(f"{parsed.error.kind}: {line}{parsed.error.last}", style="red")
        elif parsed.slow:
            problem = Text(f"slow: {parsed.seconds / parsed.timeout:.0%} of the {parsed.timeout:g} s import timeout", style="yellow")
        else:
            problem = Text("-")
        rows.append((parsed.file, duration(parsed.seconds, millis=True), ", ".join(parsed.dags) or "-", problem))
    title = (
        f"{report.dags_folder}: {len(report.files)} files, {len(report.dag_ids)} DAGs, "
        f"{len(report.problems)} with problems ({duration(report.seconds)})"
    )
    return fitted(PARSE_COLUMNS, rows, width, title=title)


def parse_json(report: ParseReport) -> dict:
    data = jsonable(report)
    for entry, parsed in zip(data["files"], report.files):
        entry["slow"] = parsed.slow
    data["dag_ids"] = report.dag_ids
    data["ok"] = not report.problems
    return data
