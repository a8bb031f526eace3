"""Text that fits the cells it is given, cut in the middle (or at the end).

Rich lays out a table (and a progress bar's row) by measuring each cell, then squeezing the
widest columns when the row is too wide. A plain ``Text`` holding one long path measures as
one unbreakable word and pushes the bar off the line; `Fit` measures as "this long at most,
a few cells at least" and renders shortened to whatever width the layout settles on, so a
60-column terminal keeps its bars and every row keeps the start and the end of its key.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.style import StyleType
from rich.text import Text

from pipeloom._text import shorten_middle

__all__ = ["Fit"]

MIN_CELLS = 8
"""A fitted text asks for at least this many cells (less when it is shorter)."""


class Fit:
    """A one-line text shortened to its cell's width: in the middle, or at the end.

    Args:
        text: what to show, already made safe with `pipeloom._text.printable`.
        style: Rich style of the whole text.
        middle: cut the middle (keys, names, paths) rather than the end (messages).
        indent: blank cells kept before the text, never cut.
    """

    def __init__(
        self, text: str, style: StyleType = "", *, middle: bool = True, indent: int = 0
    ) -> None:
        """Keep the text; nothing is measured until Rich lays it out."""
        self.text = text
        self.style = style
        self.middle = middle
        self.indent = indent

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        """Ask for the full width at most and a few cells at least."""
        full = self.indent + cell_len(self.text)
        least = min(full, self.indent + MIN_CELLS)
        return Measurement(least, full).clamp(max_width=options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Render on one line, shortened to the width given."""
        room = max(0, options.max_width - self.indent)
        if self.middle:
            shown = Text(shorten_middle(self.text, room), style=self.style, no_wrap=True)
        else:
            shown = Text(self.text, style=self.style, no_wrap=True)
            shown.truncate(room, overflow="ellipsis")
        if self.indent:
            shown = Text(" " * self.indent) + shown
        shown.end = ""
        yield shown
