"""A progress bar whose numbers are never cut, and a plain line when the output is not a terminal."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any


def _format_fields(fields: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


@contextlib.contextmanager
def progress_bar(console: Any, description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)``, the number of items just finished and the latest values to show.

    On a terminal: a live bar (description, bar, done/total, elapsed, remaining, the fields); the count and
    the times never wrap and are never shortened, the bar shrinks and the fields fold onto the next line
    when the terminal is narrow. Not on a terminal (a log file, a pipe): no bar, one line when the block
    ends, ``description: done/total in H:MM:SS  fields``. ``console=None``: nothing.
    """
    if console is None:
        yield lambda n=1, **fields: None
        return
    if not console.is_terminal:
        state: dict[str, Any] = {"done": 0, "info": ""}

        def count(n: int = 1, **fields: Any) -> None:
            state["done"] += n
            if fields:
                state["info"] = _format_fields(fields)

        start = time.perf_counter()
        try:
            yield count
        finally:
            of = f"/{total}" if total is not None else ""
            line = f"{description}: {state['done']}{of} in {_clock(time.perf_counter() - start)}"
            text = f"{line}  {state['info']}" if state["info"] else line
            console.print(text, highlight=False, markup=False, soft_wrap=True)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Column

    def fixed() -> Column:
        return Column(no_wrap=True)

    with Progress(
        TextColumn("[bold]{task.description}", table_column=fixed()),
        BarColumn(bar_width=None, table_column=Column(min_width=4)),
        MofNCompleteColumn(table_column=fixed()),
        TimeElapsedColumn(table_column=fixed()),
        TimeRemainingColumn(table_column=fixed()),
        TextColumn("{task.fields[info]}", table_column=Column(overflow="fold")),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: Any) -> None:
            progress.update(task, advance=n, **({"info": _format_fields(fields)} if fields else {}))

        yield advance
