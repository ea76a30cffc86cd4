"""Pure builders for `mlwf parse`: the per-file table and its JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from mlflowctl.render.durations import duration
from mlflowctl.render.runs import jsonable, titled

if TYPE_CHECKING:
    from mlflowctl.dagcheck.runner import ParseReport


def parse_table(report: ParseReport):
    table = Table()
    for column in ("file", "parse", "dags", "problem"):
        table.add_column(column, justify="right" if column == "parse" else "left")
    for parsed in report.files:
        if parsed.error:
            line = f"line {parsed.error.line}: " if parsed.error.line else ""
            problem = Text(f"{parsed.error.kind}: {line}{parsed.error.last}", style="red")
        elif parsed.slow:
            problem = Text(f"slow: {parsed.seconds / parsed.timeout:.0%} of the {parsed.timeout:g} s import timeout", style="yellow")
        else:
            problem = Text("-")
        table.add_row(parsed.file, duration(parsed.seconds, millis=True), ", ".join(parsed.dags) or "-", problem)
    title = (
        f"{report.dags_folder}: {len(report.files)} files, {len(report.dag_ids)} DAGs, "
        f"{len(report.problems)} with problems ({duration(report.seconds)})"
    )
    return titled(title, table)


def parse_json(report: ParseReport) -> dict:
    data = jsonable(report)
    for entry, parsed in zip(data["files"], report.files):
        entry["slow"] = parsed.slow
    data["dag_ids"] = report.dag_ids
    data["ok"] = not report.problems
    return data
