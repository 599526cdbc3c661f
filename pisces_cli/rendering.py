"""Console output that never cuts a number or a path.

rich lays a table out in the console's width (80 columns when the output is a file or a pipe) and, when
the columns do not fit, shortens cells with an ellipsis: a loss became ``-0.30…`` and a path ``/runs/…``.
Here every table is printed so that nothing is cut:

- output to a file or pipe (not a terminal): the table keeps its natural width, one line per row, however
  wide (a log is read with ``less -S`` or grep, not on an 80-column screen);
- a terminal: text columns wrap (long words and paths fold onto the next line of their cell), right-
  justified columns (numbers) never wrap, and a table whose numbers alone are wider than the terminal is
  printed wider than it (the terminal wraps the lines) rather than cut.

Import-light: rich is imported inside the functions.
"""

from __future__ import annotations

from typing import Any

#: a width no table reaches; used to measure a table's natural width.
_UNBOUNDED = 1 << 16


def _text_width(value: Any) -> int:
    """Printed width of a cell given as a string (rich markup) or a ``Text``; 0 for other renderables."""
    from rich.cells import cell_len
    from rich.errors import MarkupError
    from rich.text import Text

    if isinstance(value, str):
        try:
            value = Text.from_markup(value)
        except MarkupError:
            return max((cell_len(line) for line in value.splitlines()), default=0)
    if isinstance(value, Text):
        return max((cell_len(line) for line in value.plain.splitlines()), default=0)
    return 0


def prepare_table(table: Any) -> Any:
    """Set every column of a rich ``Table`` so that no cell is ever ellipsised; returns the table.

    Right-justified columns (numbers, in pisces' tables) and columns already marked ``no_wrap`` never
    wrap: their minimum width becomes their widest cell or header, so rich's layout cannot shrink them
    (it measures a cell's minimum as its longest word, which would let ``[-0.0043, +0.0265]`` shrink to 8
    columns and be cut). Every other column folds a word longer than the column onto the next line.
    """
    for column in table.columns:
        column.overflow = "fold"
        if column.justify == "right":
            column.no_wrap = True
        if column.no_wrap:
            widest = max([_text_width(column.header), *(_text_width(cell) for cell in column.cells)])
            column.min_width = max(column.min_width or 0, widest)
    return table


class Unclipped:
    """Render ``renderable`` no narrower than it needs (see the module docstring).

    ``natural=True`` renders it at its natural (widest) width; otherwise at the available width, widened
    to the renderable's minimum (its unbreakable cells) when that is wider.
    """

    def __init__(self, renderable: Any, *, natural: bool) -> None:
        self.renderable = renderable
        self.natural = natural

    def _width(self, console: Any, options: Any) -> int:
        from rich.measure import Measurement

        measured = Measurement.get(console, options.update_width(_UNBOUNDED), self.renderable)
        return max(options.max_width, measured.maximum if self.natural else measured.minimum)

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield from console.render(self.renderable, options.update_width(self._width(console, options)))

    def __rich_measure__(self, console: Any, options: Any) -> Any:
        from rich.measure import Measurement

        width = self._width(console, options)
        return Measurement(width, width)


def print_table(console: Any, table: Any) -> None:
    """Print a rich ``Table`` on ``console`` without cutting any cell (module docstring)."""
    prepare_table(table)
    console.print(Unclipped(table, natural=not console.is_terminal), crop=False)


def fits(console: Any, renderable: Any, width: int) -> bool:
    """Whether ``renderable`` can be laid out in ``width`` columns without cutting (its minimum width)."""
    from rich.measure import Measurement

    options = console.options.update_width(_UNBOUNDED)
    return Measurement.get(console, options, renderable).minimum <= width
