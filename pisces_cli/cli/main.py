"""Entry point of the ``pisces`` command. Heavy libraries are imported inside commands only."""

from __future__ import annotations

import os
import sys

import typer

from pisces_cli.cli import env_command, inspect_command, recipe_commands
from pisces_cli.cli.common import hide_flag_value_types, keep_help_words_whole

hide_flag_value_types()
keep_help_words_whole()

app = typer.Typer(
    name="pisces",
    help=(
        "pisces — post-train text-to-video models with optimal-transport-aligned rewards (PISCES).\n\n"
        "Stages read a YAML recipe (--recipe NAME|PATH) plus key=value overrides and read/write "
        "safetensors artifacts. Exit codes: 0 ok, 1 runtime failure, 2 usage/recipe error."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from pisces_cli import __version__

        typer.echo(f"pisces {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        help="Print the pisces version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    pass


app.command("ls", rich_help_panel="Recipes")(recipe_commands.ls)
app.command("cp", rich_help_panel="Recipes")(recipe_commands.cp)
app.command("cat", rich_help_panel="Recipes")(recipe_commands.cat)
app.command("validate", rich_help_panel="Recipes")(recipe_commands.validate)
app.command("inspect", rich_help_panel="Tools")(inspect_command.inspect)
app.command("env", rich_help_panel="Tools")(env_command.env)


def _register_stages() -> None:
    from pisces_cli.cli import stage_commands, world_commands

    stage_commands.register(app)
    world_commands.register(app)


_register_stages()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and map errors to exit codes (0 ok, 1 runtime failure, 2 usage/recipe error)."""
    from pisces_cli.errors import PiscesError
    from pisces_cli.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    exit_types, abort_types, click_error_types = _click_exception_types()
    empty = _empty_argument(sys.argv[1:] if argv is None else argv)
    if empty is not None:
        return _print_error(empty, 2)
    try:
        result = app(args=argv, prog_name="pisces", standalone_mode=False)
    except exit_types as exc:
        code = int(getattr(exc, "exit_code", 0) or 0)
        return _interrupted() if code == INTERRUPTED else code
    except (*abort_types, KeyboardInterrupt):
        return _interrupted()
    except click_error_types as exc:
        exc.show()
        return int(exc.exit_code)
    except PiscesError as exc:
        return _print_error(str(exc), exc.exit_code)
    except OSError as exc:
        return _print_error(*_os_error_message(exc))
    except Exception as exc:  # unexpected: a runtime failure
        if os.environ.get("PISCES_DEBUG"):
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (set PISCES_DEBUG=1 for the traceback)", err=True)
        return 1
    if result == INTERRUPTED:  # typer turns Ctrl-C into a plain return of 130
        return _interrupted()
    return int(result) if isinstance(result, int) else 0


def _empty_argument(args: list[str]) -> str | None:
    """Why ``args`` hold an empty argument (``-o ""``, ``--ot-map=``, ``score ""``), else ``None``.

    No pisces argument is meaningfully empty; an empty one is almost always an unset shell variable, and
    taken as given it would mean the current folder or the recipe's default without a word.
    """
    for position, arg in enumerate(args):
        if arg.startswith("-") and "=" in arg and not arg.split("=", 1)[1].strip():
            return (
                f"{arg!r} gives an empty value (an unset shell variable?); give one, or leave the option out"
            )
        if not arg.strip():
            after = f" after {args[position - 1]!r}" if position else ""
            return f"an empty argument{after} (an unset shell variable?); give a value, or leave it out"
    return None


#: Exit code of an interrupted command (Ctrl-C), as shells report SIGINT.
INTERRUPTED = 130


def _interrupted() -> int:
    typer.echo("interrupted: finished work is saved; run the same command again to resume", err=True)
    return INTERRUPTED


def _print_error(message: str, code: int) -> int:
    from pisces_cli.cli.common import err_console

    err_console.print("[bold red]error:[/] ", end="")
    err_console.print(message, highlight=False, markup=False)
    return code


def _os_error_message(exc: OSError) -> tuple[str, int]:
    """A readable message and exit code for an ``OSError`` no stage turned into a pisces error.

    A path that is a file where a folder is needed (``--output FILE``) or the other way round is a usage
    error (2); anything else (a full disk, permissions) a runtime failure (1). The file is named.
    """
    import errno

    where = exc.filename or "a file"
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and exc.filename:
        from pathlib import Path

        blocking = next((p for p in (Path(where), *Path(where).parents) if p.exists()), Path(where))
        target = f" (to write {where})" if str(blocking) != str(where) else ""
        return (
            f"{blocking} is a file, but pisces needs a folder there{target}; "
            "check --output and the recipe's *.output keys",
            2,
        )
    if isinstance(exc, IsADirectoryError):
        return f"{where}: is a folder, expected a file", 2
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = f"cannot write {exc.filename}" if exc.filename else "cannot write"
        return f"{what}: no space left on the device (finished work is saved; free space and re-run)", 1
    return f"{where}: {exc.strerror or exc}", 1


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """Exit/Abort/ClickException classes of click and of typer's own copies (typer >= 0.20 vendors click)."""
    import click.exceptions

    exits: list[type] = [click.exceptions.Exit]
    aborts: list[type] = [click.exceptions.Abort]
    errors: list[type] = [click.exceptions.ClickException]
    try:
        import typer.exceptions as typer_exceptions

        exits += [getattr(typer_exceptions, "Exit", click.exceptions.Exit)]
        aborts += [getattr(typer_exceptions, "Abort", click.exceptions.Abort)]
    except ImportError:
        pass
    try:
        from typer._click import exceptions as vendored  # type: ignore[attr-defined]

        errors.append(vendored.ClickException)
    except ImportError:
        pass
    return tuple(exits), tuple(aborts), tuple(errors)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
