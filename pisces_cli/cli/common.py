"""Console and argument helpers shared by the CLI commands."""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.console import Console

# Not on a terminal (a log file, a pipe), printed lines are not broken at 80 columns (rich's width there):
# a path stays on one line. Tables go through pisces_cli.rendering.print_table, which never cuts a cell.
console = Console(soft_wrap=not sys.stdout.isatty())
err_console = Console(stderr=True, soft_wrap=not sys.stderr.isatty())

RECIPE_OPTION_HELP = "Bundled recipe name (see `pisces ls`) or path to a YAML recipe."
OVERRIDES_HELP = (
    "Recipe overrides: key.path=value (typed by the schema; lists as \\[a,b]) or ~key.path to remove."
)


def recipe_option(required: bool = True) -> Any:
    return typer.Option(... if required else None, "--recipe", "-r", help=RECIPE_OPTION_HELP)


def overrides_argument() -> Any:
    return typer.Argument(None, help=OVERRIDES_HELP, show_default=False)


def hide_flag_value_types() -> None:
    """Show no value type after boolean flags in ``--help`` (typer >= 0.2x prints ``--json <bool>``).

    A flag takes no value, so a type there reads as if it needed one. Typer builds every option,
    ``--help`` included, as a ``TyperOption`` whose ``display_type_rich`` gives the type column; flags
    get none. Older typers, which have no such method, already print nothing and are left alone.
    """
    try:
        from typer.core import TyperOption
    except ImportError:  # pragma: no cover - typer without its core module
        return
    original = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "hides_flag_types", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False):
            return None
        return original(self, ctx)

    display_type_rich.hides_flag_types = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def load(recipe: str, overrides: list[str] | None):
    """Resolve and validate a recipe (raises UsageError → exit 2)."""
    from pisces_cli.config import load_recipe

    return load_recipe(recipe, overrides or [])
