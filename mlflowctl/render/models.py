"""Pure builders for `mlwf models`: rich tables from the plain data `mlflowctl.models` returns."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text

from mlflowctl.render.layout import GAP, Column, fitted, pairs, whole


def number(value: Any, signed: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:+d}" if signed else str(value)
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _gate(passed: Any) -> Text:
    if passed is None:
        return Text("-")
    return Text("pass", style="green") if passed else Text("fail", style="yellow")


VERSION_COLUMNS = (
    Column("version"),
    Column("created (UTC)", drop=2),
    Column("model type"),
    Column("acc", "right"),
    Column("f1", "right"),
    Column("auc", "right"),
    Column("data", drop=1),
    Column("gate"),
)


def versions_table(data: dict[str, Any], *, width: int | None = None):
    if not data["versions"]:
        return whole(f"no model versions yet in {data['registry']}")
    rows = []
    for row in data["versions"]:
        name = Text(f"{row['version']}*", style="bold green") if row["production"] else Text(f"{row['version']} ")
        if "damaged" in row:
            rows.append([name, "", Text("metadata damaged", style="bold red"), "", "", "", "", ""])
            continue
        metrics = row["metrics"]
        rows.append([
            name,
            (row["created_at"] or "-").replace("T", " ")[:16],
            row["model_type"] or "-",
            *(number(metrics[name]) for name in ("accuracy", "f1", "roc_auc")),
            (row["data_fingerprint"] or "-")[:8],
            _gate(row["passed_gate"]),
        ])
    title = Group(whole(Text(f"model registry {data['registry']}", style="bold")), Text("* = production", style="dim"))
    return Group(title, fitted(VERSION_COLUMNS, rows, width))


def _scalar(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def version_detail(data: dict[str, Any], *, width: int | None = None):
    styles = {"ok": "green", "tampered": "bold red", "missing": "bold red"}
    rows: list[tuple[str, Any, str]] = [
        ("integrity", Text(f"sha256 {data['integrity']}", style=styles[data["integrity"]]), ""),
        ("production", "yes" if data["production"] else "no", ""),
    ]
    for key in sorted(k for k in data if k not in ("integrity", "production", "version")):
        value = data[key]
        if isinstance(value, dict) and value:
            rows.extend((f"{key}.{sub}", _scalar(value[sub]), "") for sub in sorted(value))
        else:
            rows.append((key, _scalar(value), ""))
    return pairs(rows, width, title=f"model {data['version']}")


def _pairs(title: str, rows: list[dict[str, Any]], a: str, b: str, *, delta: bool = False, width: int | None = None):
    """Values side by side; values too long for that (run ids, fingerprints) each under its name."""
    if not delta and width is not None:
        widest = [max([len(h), *(len(_scalar(row[k])) for row in rows)]) for h, k in (("name", "name"), (a, "a"), (b, "b"))]
        if sum(widest) + 2 * GAP > width:
            lines: list[tuple[str, Any, str]] = []
            for row in rows:
                lines.append((row["name"], "" if row["same"] else Text("differs", style="bold"), ""))
                lines.extend([(f"  {a}", _scalar(row["a"]), ""), (f"  {b}", _scalar(row["b"]), "")])
            return pairs(lines, width, title=title)
    columns = [Column("name"), Column(a, "right"), Column(b, "right")]
    if delta:
        columns.append(Column("delta", "right"))
    cells = []
    for row in rows:
        style = "" if row["same"] else "bold"
        line = [Text(row["name"], style=style), number(row["a"]) if delta else _scalar(row["a"]),
                number(row["b"]) if delta else _scalar(row["b"])]
        if delta:
            line.append(number(row["delta"], signed=True))
        cells.append(line)
    return fitted(columns, cells, width, title=title)


def diff_tables(data: dict[str, Any], *, width: int | None = None) -> Group:
    a, b = data["a"], data["b"]
    return Group(
        _pairs("metrics", data["metrics"], a, b, delta=True, width=width),
        _pairs("parameters", data["params"], a, b, width=width),
        _pairs("data", data["data"], a, b, width=width),
        _pairs("library versions", data["libraries"], a, b, width=width),
    )


def change_line(data: dict[str, Any]) -> Text:
    """One line for a promotion or a rollback."""
    replaced = data.get("replaced") or "nothing"
    if "passed_gate" in data:
        return Text(f"{data['version']} is in production (replaced {replaced}); {data['reason']}")
    return Text(f"rolled back: {data['version']} is in production (replaced {replaced})")


EVENT_COLUMNS = (
    Column("time"),
    Column("event"),
    Column("version"),
    Column("replaced", drop=1),
    Column("detail", shrink=True),
)


def events_table(data: dict[str, Any], *, width: int | None = None):
    note = Text(f"{data['unreadable_lines']} unreadable line(s) of the events log skipped", style="yellow")
    if not data["events"]:
        empty = whole(f"no events yet in {data['registry']}")
        return Group(empty, note) if data["unreadable_lines"] else empty
    rows = []
    for event in data["events"]:
        replaced = event.get("replaced", event.get("production"))
        detail = event.get("reason") or (f"run {event['run_id']}" if event.get("run_id") else "")
        rows.append([
            str(event.get("time", "-")).replace("T", " ").removesuffix("+00:00"),
            str(event.get("event", "-")),
            str(event.get("version") or "-"),
            str(replaced or "-"),
            detail,
        ])
    table = Group(whole(Text(f"events of {data['registry']}", style="bold")), fitted(EVENT_COLUMNS, rows, width))
    return Group(table, note) if data["unreadable_lines"] else table
