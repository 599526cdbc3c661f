"""``pisces ls / cp / cat / validate``: discover, copy and check recipes."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from pisces_cli.cli.common import console, load, overrides_argument
from pisces_cli.errors import UsageError
from pisces_cli.rendering import print_table


def ls() -> None:
    """List the bundled recipes with a one-line description."""
    from rich.table import Table

    from pisces_cli.config.recipe import list_bundled

    table = Table(title="bundled recipes", show_lines=False)
    table.add_column("recipe", style="bold cyan")
    table.add_column("description")
    for name, description, _path in list_bundled():
        table.add_row(name, description)
    print_table(console, table)
    console.print("copy one to edit: [bold]pisces cp NAME DEST[/]   resolved view: [bold]pisces cat NAME[/]")


def cp(
    name: str = typer.Argument(..., help="Bundled recipe name."),
    dest: Path = typer.Argument(..., help="Destination file or folder."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing file."),
) -> None:
    """Copy a bundled recipe to DEST so you can edit it."""
    from pisces_cli.config.recipe import list_bundled, resolve_recipe_path

    if name not in {n for n, _, _ in list_bundled()} and name.removesuffix(".yaml") not in {
        n for n, _, _ in list_bundled()
    }:
        resolve_recipe_path(name.removesuffix(".yaml"))  # raises a helpful UsageError
    source = resolve_recipe_path(name.removesuffix(".yaml"))
    target = dest / source.name if dest.is_dir() else dest
    if target.exists() and not force:
        raise UsageError(f"{target} exists; pass --force to overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    console.print(f"copied [cyan]{source.stem}[/] to {target}")


def cat(
    recipe: str = typer.Argument(..., help="Bundled recipe name or YAML path."),
    overrides: list[str] = overrides_argument(),
) -> None:
    """Print the fully resolved recipe (defaults filled in, overrides and ${...} applied)."""
    resolved = load(recipe, overrides)
    typer.echo(f"# resolved from {resolved.source} (hash {resolved.hash})")
    typer.echo(resolved.to_yaml(), nl=False)


def validate(
    recipe: str = typer.Argument(..., help="Bundled recipe name or YAML path."),
    overrides: list[str] = overrides_argument(),
    weights: bool = typer.Option(
        False,
        "--weights",
        help="Also check every model file, the OT map, outputs, GPUs and the memory plan (loads no weights).",
    ),
    stage: list[str] = typer.Option(
        None, "--stage", help="With --weights: check only what this stage needs (repeatable; default: all)."
    ),
) -> None:
    """Check a recipe against the schema without running anything (exit 2 on errors).

    With --weights, a preflight checks in seconds that every file the recipe names is there and loads: model
    paths (or hub ids in the local cache), InternVideo2 checkpoint keys and shapes, diffusers folders against
    the backbone, tokenizer, OT map width and encoder, writable outputs with a disk estimate, GPUs against
    WORLD_SIZE/LOCAL_WORLD_SIZE, and finetune's memory plan per rank.
    """
    resolved = load(recipe, overrides)
    console.print(f"[green]ok[/]: {resolved.source} is valid (hash {resolved.hash})")
    if stage and not weights:
        raise UsageError("--stage applies to --weights (the preflight of that stage)")
    if not weights:
        return
    from pisces_cli.preflight import STAGES, Status, run_preflight

    report = run_preflight(resolved, stages=tuple(stage) if stage else STAGES)
    _print_report(report, Status)
    if not report.ok:
        console.print(f"[bold red]{len(report.failed)} check(s) failed[/]")
        raise typer.Exit(2)
    console.print("[green]preflight passed[/]")


def _print_report(report, status_type) -> None:
    from rich.table import Table
    from rich.text import Text

    style = {
        status_type.OK: "green",
        status_type.FAIL: "bold red",
        status_type.WARN: "yellow",
        status_type.SKIP: "dim",
    }
    table = Table(title="preflight", show_lines=False)
    table.add_column("", no_wrap=True)
    table.add_column("check", overflow="fold")
    table.add_column("recipe key", style="cyan", overflow="fold")
    table.add_column("detail", overflow="fold")
    for check in report.checks:
        table.add_row(
            Text(check.status.value, style=style[check.status]), check.name, check.key, Text(check.detail)
        )
    console.print(table, highlight=False)
