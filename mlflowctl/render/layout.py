"""Tables that fit the terminal they are printed to, as gh, kubectl and docker compose print them.

No borders (a header rule, three spaces between columns), one line per row. Identifiers (a
service, DAG id, task id, run id, URL, version) are never cut or wrapped: when the row is too
wide, columns of free text (`shrink`) are cut with an ellipsis first, then the less important
columns leave (`drop`: 1 leaves first). `width=None` is `--wide`: every column, whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence, Union

from rich import box
from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

Cell = Union[str, Text]
GAP = 3  # a column's right padding, the (blank) rule between columns, the next one's left padding
SHRUNK_MIN = 12  # a free-text column narrower than this says too little to keep


@dataclass(frozen=True)
class Column:
    header: str
    justify: Literal["left", "right"] = "left"
    drop: int = 0  # 0: always shown; otherwise the order in which it leaves a narrow terminal
    shrink: bool = False  # free text, may be cut with an ellipsis (never an identifier)


def cell_width(cell: Cell) -> int:
    text = cell if isinstance(cell, Text) else Text(cell)
    return max((line.cell_len for line in text.split()), default=0)


def plan(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], width: int | None) -> list[tuple[int, int]]:
    """Which columns to show and how wide: [(index, width)], widest natural layout that fits."""
    natural = [max([cell_width(c.header), *(cell_width(row[i]) for row in rows)]) for i, c in enumerate(columns)]
    shown = list(range(len(columns)))
    if width is None:
        return [(i, natural[i]) for i in shown]

    def least(i: int) -> int:
        return min(natural[i], SHRUNK_MIN) if columns[i].shrink else natural[i]

    while sum(least(i) for i in shown) + GAP * (len(shown) - 1) > width:
        droppable = [i for i in shown if columns[i].drop]
        if not droppable:  # only identifiers left: they stay whole, the terminal wraps the line
            break
        shown.remove(min(droppable, key=lambda i: (columns[i].drop, -i)))
    fixed = sum(natural[i] for i in shown if not columns[i].shrink) + GAP * (len(shown) - 1)
    free = [i for i in shown if columns[i].shrink]
    room = max(width - fixed, 0)
    widths = {i: natural[i] for i in shown}
    # Share the room among the free-text columns, the narrowest first keeping its natural width.
    for n, i in enumerate(sorted(free, key=lambda i: natural[i])):
        share = room // (len(free) - n)
        widths[i] = max(min(natural[i], share), least(i))
        room -= widths[i]
    return [(i, widths[i]) for i in shown]


def fitted(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    width: int | None,
    *,
    title: Cell | None = None,
    layout: list[tuple[int, int]] | None = None,
) -> RenderableType:
    """A table of `rows` laid out by `plan` for `width` (None: --wide), under an optional title line."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), header_style="bold")
    layout = layout if layout is not None else plan(columns, rows, width)
    for i, size in layout:
        column = columns[i]
        table.add_column(
            column.header,
            justify=column.justify,
            no_wrap=True,
            overflow="ellipsis" if column.shrink else "ignore",
            min_width=size if width is not None else None,
            max_width=size if width is not None else None,
        )
    for row in rows:
        table.add_row(*(row[i] for i, _ in layout))
    return titled(title, table)


def titled(title: Cell | None, body: RenderableType) -> RenderableType:
    """A heading line above a table (a rich title would wrap to the table's width). It wraps
    between words only, so an identifier in it stays whole."""
    if title is None:
        return body
    return Group(title if isinstance(title, Text) else Text(title, style="bold"), body)


def whole(text: Cell, style: str = "") -> Text:
    """A line the user may copy from (a URL, a path, a command): never wrapped or cut by rich."""
    line = text.copy() if isinstance(text, Text) else Text(text, style=style)
    line.no_wrap, line.overflow = True, "ignore"
    return line


def pairs(rows: Sequence[tuple[str, Cell, str]], width: int | None, *, title: Cell | None = None) -> RenderableType:
    """Name, value and a dim note per line (a detail view, `kubectl describe`-like): values beside
    their names when they fit, else under them, indented. A value is never cut or wrapped by rich."""
    pad = max((len(name) for name, _, _ in rows), default=0)
    lines: list[RenderableType] = []
    for name, value, note in rows:
        shown = value if isinstance(value, Text) else Text(value)
        aside = Text(f"  ({note})", style="dim") if note else Text("")
        if width is None or pad + GAP + shown.cell_len + aside.cell_len <= width:
            lines.append(whole(Text(name.ljust(pad + GAP), style="bold").append_text(shown).append_text(aside)))
        else:
            lines.append(whole(Text(name, style="bold").append_text(aside)))
            # one token (a path, a digest) stays whole, with no trailing blanks to copy along with
            # it; a list of words wraps between them
            lines.append(Padding(shown, (0, 0, 0, 4)) if " " in shown.plain else whole(Text("    ").append_text(shown)))
    return titled(title, Group(*lines))
