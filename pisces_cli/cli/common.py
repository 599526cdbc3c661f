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


def keep_help_words_whole() -> None:
    """Never cut an option name, a default or a path in ``--help``, however narrow the terminal.

    Typer lays each option out as a rich table row ``[*], long name, short name, negative long and short names, <type>, help`` whose
    columns rich shortens with an ellipsis when the terminal is narrow (``--prompts-from-…``,
    ``VIDEOS_DIR/pisces…`` at 80 columns). Here the name columns never wrap and the type and help columns
    fold a word too long for them onto the next line instead of cutting it. Below
    :data:`PLAIN_HELP_BELOW` columns a command's help is click's plain two-column text instead (the
    table would leave its help column a few characters wide). The table class is swapped when help is
    first rendered, so start-up imports nothing more.
    """
    try:
        from typer.core import TyperCommand, TyperGroup
    except ImportError:  # pragma: no cover - typer without its core module
        return
    for command_class in (TyperCommand, TyperGroup):
        original = command_class.format_help
        if getattr(original, "keeps_words_whole", False):
            continue

        def format_help(
            self: Any, ctx: Any, formatter: Any, _original: Any = original, _class: type = command_class
        ) -> None:
            import shutil

            if _class is TyperCommand and shutil.get_terminal_size().columns < PLAIN_HELP_BELOW:
                super(_class, self).format_help(ctx, formatter)  # click's own layout: wraps, never cuts
                formatter.buffer[:] = [part.replace("\\[", "[") for part in formatter.buffer]  # rich escapes
                return
            _use_whole_word_tables()
            _original(self, ctx, formatter)

        format_help.keeps_words_whole = True  # type: ignore[attr-defined]
        command_class.format_help = format_help  # type: ignore[method-assign]


#: terminals narrower than this get a command's ``--help`` as plain text rather than rich tables.
PLAIN_HELP_BELOW = 80

#: columns of a typer option row after the optional required marker: 4 names, the type, the help.
_OPTION_ROW_COLUMNS = 6


def _use_whole_word_tables() -> None:
    """Make ``typer.rich_utils`` build its tables with :class:`WholeWordHelpTable` (idempotent)."""
    from rich.table import Table
    from rich.text import Text
    from typer import rich_utils

    if getattr(rich_utils.Table, "keeps_words_whole", False):
        return

    class WholeWordHelpTable(Table):
        """An option table whose name columns never wrap and whose other columns fold, never cut."""

        keeps_words_whole = True

        def add_row(self, *renderables: Any, **kwargs: Any) -> None:
            for renderable in renderables:  # a Text's own overflow wins over its column's
                for text in getattr(renderable, "renderables", [renderable]):
                    if isinstance(text, Text):
                        text.overflow = "fold"
            super().add_row(*renderables, **kwargs)
            if self.show_header or len(self.columns) < _OPTION_ROW_COLUMNS:
                return  # not an option table (the commands table names its columns itself)
            names = self.columns[-_OPTION_ROW_COLUMNS:-2]
            for column in self.columns:
                column.overflow = "fold"
                column.no_wrap = column in names

    rich_utils.Table = WholeWordHelpTable  # type: ignore[misc]


def load(recipe: str, overrides: list[str] | None):
    """Resolve and validate a recipe (raises UsageError → exit 2)."""
    from pisces_cli.config import load_recipe

    return load_recipe(recipe, overrides or [])
