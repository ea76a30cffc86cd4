"""Pure builders for `mlwf health`: a headline, the degraded notes, one table per section.

Every row shows its status and the value that decided it; durations by task carry a
sparkline of the mean duration per step of the window (from a Prometheus range query).
"""

from __future__ import annotations

import math
from typing import Iterable

from rich.console import Group
from rich.text import Text

from mlflowctl.health.report import SECTIONS, HealthReport, Row
from mlflowctl.render.durations import duration
from mlflowctl.render.layout import Column, fitted

STATUS_STYLES = {
    "ok": "green",
    "warning": "yellow",
    "critical": "bold red",
    "info": "cyan",
    "unknown": "magenta",
}
SPARKS = "▁▂▃▄▅▆▇█"
GAP = "·"


def sparkline(values: Iterable[float | None] | None) -> str:
    """One character per point, scaled between the smallest and largest value; gaps as `·`."""
    points = list(values or [])
    real = [v for v in points if v is not None and math.isfinite(v)]
    if not real:
        return ""
    low, high = min(real), max(real)
    out = []
    for v in points:
        if v is None or not math.isfinite(v):
            out.append(GAP)
        elif high == low:
            out.append(SPARKS[len(SPARKS) // 2])
        else:
            out.append(SPARKS[min(len(SPARKS) - 1, int((v - low) / (high - low) * len(SPARKS)))])
    return "".join(out)


def value_text(row: Row) -> str:
    v = row.value
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if row.unit == "s":
        return duration(float(v), millis=True)
    if row.unit == "ratio":
        return f"{float(v):.0%}"
    if row.unit == "/s":
        return f"{float(v):.2f}/s"
    return f"{float(v):g}"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def headline(report: HealthReport) -> Text:
    worst = report.worst
    text = Text("health: ")
    text.append(worst.upper(), style=STATUS_STYLES.get(worst, ""))
    if report.degraded:
        text.append("  DEGRADED", style="bold yellow")
    counts = {s: sum(1 for f in report.findings if f.severity == s) for s in ("ok", "warning", "critical")}
    text.append(
        f"  ({counts['critical']} critical, {counts['warning']} warning, {counts['ok']} ok)"
        f"  window {report.window}  at {report.generated_at}"
    )
    return text


def _columns(report: HealthReport, with_trend: bool) -> tuple[Column, ...]:
    trend = (Column(f"trend ({report.window})", drop=1),) if with_trend else ()
    return (Column("check"), Column("status"), Column("value", "right"), *trend, Column("detail", shrink=True))


def section_table(report: HealthReport, section: str, *, width: int | None = None, rows: list[Row] | None = None):
    rows = report.section(section) if rows is None else rows
    if not rows:
        return None
    with_trend = section == "task_durations"
    cells = []
    for row in rows:
        line: list = [row.name, status_text(row.status), value_text(row)]
        if with_trend:
            line.append(sparkline(row.trend))
        line.append(row.detail)
        cells.append(line)
    return fitted(_columns(report, with_trend), cells, width, title=Text(SECTIONS[section], style="bold"))


QUIET_STATUSES = ("ok", "info")


def report_view(report: HealthReport, *, width: int | None = None, height: int | None = None) -> Group:
    """The whole report as one renderable (what `--watch` redraws). Within `height` lines (a
    live view) only the rows that need a look are listed, with a count of the others."""
    head: list = [headline(report), *(Text(note, style="yellow") for note in report.notes)]
    head.append(Text(f"airflow {report.airflow_url or '-'}   prometheus {report.prometheus_url or '-'}", style="dim"))
    sections = {name: report.section(name) for name in SECTIONS}
    lines = len(head) + 1 + sum(len(rows) + 3 for rows in sections.values() if rows)  # headline may wrap: +1
    hidden = 0
    if height is not None and lines > height:
        for name, rows in sections.items():
            kept = [row for row in rows if row.status not in QUIET_STATUSES]
            hidden += len(rows) - len(kept)
            sections[name] = kept
    parts = list(head)
    for name, rows in sections.items():
        table = section_table(report, name, width=width, rows=rows)
        if table is not None:
            parts.append(table)
    if hidden:
        parts.append(Text(f"{hidden} ok or info rows not shown: a taller terminal or --json shows them", style="dim"))
    return Group(*parts)


def report_changes(before: HealthReport | None, after: HealthReport) -> list[Text]:
    """A log's lines for `--watch`: the headline when the overall status changes, and each row
    whose status changed, with its value."""
    lines = []
    if before is None or (before.worst, before.degraded) != (after.worst, after.degraded):
        lines.append(headline(after))
    was = {} if before is None else {(row.section, row.name): row.status for row in before.rows}
    for row in after.rows:
        old = was.get((row.section, row.name))
        if before is not None and old != row.status:
            line = Text(f"{SECTIONS.get(row.section, row.section)}: {row.name} {old or 'new'} -> ")
            line.append_text(status_text(row.status))
            line.append(f" ({value_text(row)})")
            lines.append(line)
    return lines
