"""Pure builders for `mlwf health`: a headline, the degraded notes, one table per section.

Every row shows its status and the value that decided it; durations by task carry a
sparkline of the mean duration per step of the window (from a Prometheus range query).
"""

from __future__ import annotations

import math
from typing import Iterable

from rich.console import Group
from rich.table import Table
from rich.text import Text

from mlflowctl.health.report import SECTIONS, HealthReport, Row
from mlflowctl.render.durations import duration

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


def section_table(report: HealthReport, section: str) -> Table | None:
    rows = report.section(section)
    if not rows:
        return None
    with_trend = section == "task_durations"
    table = Table(title=SECTIONS[section], title_justify="left", expand=False)
    table.add_column("check", overflow="fold")
    table.add_column("status")
    table.add_column("value", justify="right")
    if with_trend:
        table.add_column(f"trend ({report.window})", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for row in rows:
        cells: list = [row.name, status_text(row.status), value_text(row)]
        if with_trend:
            cells.append(sparkline(row.trend))
        cells.append(row.detail)
        table.add_row(*cells)
    return table


def report_view(report: HealthReport) -> Group:
    """The whole report as one renderable (what `--watch` redraws)."""
    parts: list = [headline(report)]
    for note in report.notes:
        parts.append(Text(note, style="yellow"))
    parts.append(Text(f"airflow {report.airflow_url or '-'}   prometheus {report.prometheus_url or '-'}", style="dim"))
    for section in SECTIONS:
        table = section_table(report, section)
        if table is not None:
            parts.append(table)
    return Group(*parts)
