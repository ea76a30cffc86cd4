"""The README's pictures of mlwf in a terminal, taken from the real output.

Starts a stack in a temporary copy of the project on free ports, runs `mlwf up` and
`mlwf trigger ml_pipeline_dag --unpause --wait` in an 80 x 24 pseudo-terminal, reads the final
screens back through a terminal emulator (pyte) and writes them as SVG (rich) into docs/.
Then stops that stack and deletes its state (`mlwf down --volumes --yes` in the temporary
project only). Takes about a minute.

Usage: .venv/bin/python scripts/pictures.py
"""

from __future__ import annotations

import io
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import Stack  # noqa: E402  (a project copy on free ports, as the tests make it)
from terminal import in_terminal, screen_of  # noqa: E402

DAG = "ml_pipeline_dag"
COLS, ROWS = 80, 24


def colour(name: str) -> str | None:
    """A pyte colour name as rich spells it."""
    if name == "default":
        return None
    if re.fullmatch(r"[0-9a-f]{6}", name):
        return f"#{name}"
    name = name.replace("brown", "yellow")  # pyte's name for ANSI 33
    return f"bright_{name[6:]}" if name.startswith("bright") else name


def save_svg(screen, path: Path, title: str) -> None:
    from rich.console import Console
    from rich.style import Style
    from rich.text import Text

    lines = []
    for y in range(screen.lines):
        line = Text(no_wrap=True, end="")
        for x in range(screen.columns):
            char = screen.buffer[y][x]
            line.append(char.data, Style(color=colour(char.fg), bgcolor=colour(char.bg), bold=char.bold,
                                         italic=char.italics, underline=char.underscore, reverse=char.reverse))
        line.rstrip()
        lines.append(line)
    while len(lines) > 1 and not lines[-2].plain.strip():  # the screen's empty bottom rows but one
        lines.pop()
    console = Console(record=True, width=screen.columns, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor")
    console.print(Text("\n").join(lines))
    console.save_svg(str(path), title=title)


def picture(stack: Stack, args: tuple[str, ...], path: Path, timeout: float) -> None:
    command = "mlwf " + " ".join(args)
    ran = in_terminal(stack, *args, cols=COLS, rows=ROWS, timeout=timeout)
    if ran.code != 0:
        raise SystemExit(f"{command} exited {ran.code}:\n{ran.shown.decode(errors='replace')}")
    save_svg(screen_of(ran.shown, COLS, ROWS, typed=command), path, title=command)
    print(f"wrote {path.relative_to(REPO)}: {command}")


def main() -> None:
    docs = REPO / "docs"
    with tempfile.TemporaryDirectory(prefix="mlwf-pictures-") as root:
        stack = Stack.create(Path(root))
        del stack.env["MLWF_BACKEND"]  # the default backend, as a user sees it
        try:
            picture(stack, ("up",), docs / "up.svg", timeout=300)
            stack.wait_for_dags([DAG])
            picture(stack, ("trigger", DAG, "--unpause", "--wait"), docs / "trigger-wait.svg", timeout=600)
        finally:
            stack.mlwf("down", "--volumes", "--yes", timeout=180)


if __name__ == "__main__":
    main()
