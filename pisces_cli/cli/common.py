"""Console and argument helpers shared by the CLI commands."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

RECIPE_OPTION_HELP = "Bundled recipe name (see `pisces ls`) or path to a YAML recipe."
OVERRIDES_HELP = (
    "Recipe overrides: key.path=value (typed by the schema; lists as \\[a,b]) or ~key.path to remove."
)


def recipe_option(required: bool = True) -> Any:
    return typer.Option(... if required else None, "--recipe", "-r", help=RECIPE_OPTION_HELP)


def overrides_argument() -> Any:
    return typer.Argument(None, help=OVERRIDES_HELP, show_default=False)


def load(recipe: str, overrides: list[str] | None):
    """Resolve and validate a recipe (raises UsageError → exit 2)."""
    from pisces_cli.config import load_recipe

    return load_recipe(recipe, overrides or [])
