"""How every live display shows a stream of states (`up`, `trigger --wait`, `backfill --wait`,
`health --watch`): on a terminal, a view redrawn in place within the terminal's width and height;
anywhere else (a CI log, a file), one plain line per change and no redraws. The command prints
its final table once, after the display ends, in either case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Generic, Iterable, TypeVar

from mlflowctl.cli.context import App

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

T = TypeVar("T")
#: A view of a state for a terminal of (width, height).
View = Callable[[T, int, int], "RenderableType"]
#: The lines a CI log gets for the change from the previous state (None at first) to this one.
Changes = Callable[["T | None", T], Iterable["RenderableType"]]


class Watch(Generic[T]):
    """`with Watch(app, view, changes) as watch: watch.show(state)`; shows on stderr (stdout
    keeps the command's result). Nothing with --quiet."""

    def __init__(self, app: App, view: View, changes: Changes, *, console: Console | None = None) -> None:
        self.console = console or app.err
        self.view, self.changes = view, changes
        self.quiet = app.quiet
        self.last: T | None = None
        self._live = None
        if not self.quiet and app.live(self.console):
            from rich.live import Live

            # transient: the final table is printed once after it; crop: never taller than the terminal
            self._live = Live(console=self.console, auto_refresh=False, transient=True, vertical_overflow="crop")

    def __enter__(self) -> Watch[T]:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def show(self, state: T) -> None:
        if self._live is not None:
            size = self.console.size
            self._live.update(self.view(state, size.width, size.height), refresh=True)
        elif not self.quiet:
            for line in self.changes(self.last, state):
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        self.last = state

    def drain(self, states: Iterable[T]) -> T | None:
        """Show each state of `states` as it comes; the last one."""
        for state in states:
            self.show(state)
        return self.last
