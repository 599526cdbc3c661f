"""Stage commands (``embed``, ``fit-ot``, ``score``, ...). Each imports its stage module lazily."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach every stage command that exists to ``app``."""
    # stages are added here as they are built
    del app
