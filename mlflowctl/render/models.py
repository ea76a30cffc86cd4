"""Pure builders for `mlwf models`: rich tables from the plain data `mlflowctl.models` returns."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text


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


def versions_table(data: dict[str, Any]) -> Table | Text:
    if not data["versions"]:
        return Text(f"no model versions yet in {data['registry']}")
    table = Table(title=f"model registry {data['registry']} (* = production)", title_justify="left",
                  box=box.SIMPLE_HEAD, padding=0, show_edge=False)
    for column in ("version", "created (UTC)", "model type", "acc", "f1", "auc", "data", "gate"):
        table.add_column(column, no_wrap=True,
                         justify="right" if column in ("acc", "f1", "auc") else "left")
    for row in data["versions"]:
        name = Text(f"{row['version']}*", style="bold green") if row["production"] else Text(f"{row['version']} ")
        if "damaged" in row:
            table.add_row(name, Text("metadata damaged", style="bold red"), "", "", "", "", "", "")
            continue
        metrics = row["metrics"]
        table.add_row(
            name,
            (row["created_at"] or "-").replace("T", " ")[:16],
            row["model_type"] or "-",
            *(number(metrics[name]) for name in ("accuracy", "f1", "roc_auc")),
            (row["data_fingerprint"] or "-")[:8],
            _gate(row["passed_gate"]),
        )
    return table


def _scalar(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def version_detail(data: dict[str, Any]) -> Table:
    table = Table(title=f"model {data['version']}", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    styles = {"ok": "green", "tampered": "bold red", "missing": "bold red"}
    table.add_row("integrity", Text(f"sha256 {data['integrity']}", style=styles[data["integrity"]]))
    table.add_row("production", "yes" if data["production"] else "no")
    for key in sorted(k for k in data if k not in ("integrity", "production", "version")):
        value = data[key]
        if isinstance(value, dict) and value:
            for sub in sorted(value):
                table.add_row(f"{key}.{sub}", _scalar(value[sub]))
        else:
            table.add_row(key, _scalar(value))
    return table


def _pairs(title: str, rows: list[dict[str, Any]], a: str, b: str, delta: bool = False) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("name")
    table.add_column(a, justify="right", overflow="fold")
    table.add_column(b, justify="right", overflow="fold")
    if delta:
        table.add_column("delta", justify="right")
    for row in rows:
        style = "" if row["same"] else "bold"
        cells = [Text(row["name"], style=style), number(row["a"]) if delta else _scalar(row["a"]),
                 number(row["b"]) if delta else _scalar(row["b"])]
        if delta:
            cells.append(number(row["delta"], signed=True))
        table.add_row(*cells)
    return table


def diff_tables(data: dict[str, Any]) -> Group:
    a, b = data["a"], data["b"]
    return Group(
        _pairs("metrics", data["metrics"], a, b, delta=True),
        _pairs("parameters", data["params"], a, b),
        _pairs("data", data["data"], a, b),
        _pairs("library versions", data["libraries"], a, b),
    )


def change_line(data: dict[str, Any]) -> Text:
    """One line for a promotion or a rollback."""
    replaced = data.get("replaced") or "nothing"
    if "passed_gate" in data:
        return Text(f"{data['version']} is in production (replaced {replaced}); {data['reason']}")
    return Text(f"rolled back: {data['version']} is in production (replaced {replaced})")


def events_table(data: dict[str, Any]) -> Group | Text:
    note = Text(f"{data['unreadable_lines']} unreadable line(s) of the events log skipped", style="yellow")
    if not data["events"]:
        empty = Text(f"no events yet in {data['registry']}")
        return Group(empty, note) if data["unreadable_lines"] else empty
    table = Table(title=f"events of {data['registry']}", title_justify="left")
    for column in ("time", "event", "version", "replaced", "detail"):
        table.add_column(column, overflow="fold")
    for event in data["events"]:
        replaced = event.get("replaced", event.get("production"))
        detail = event.get("reason") or (f"run {event['run_id']}" if event.get("run_id") else "")
        table.add_row(
            str(event.get("time", "-")).replace("T", " ").removesuffix("+00:00"),
            str(event.get("event", "-")),
            str(event.get("version") or "-"),
            str(replaced or "-"),
            detail,
        )
    return Group(table, note) if data["unreadable_lines"] else table
