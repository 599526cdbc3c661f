"""``pisces inspect FILE``: print an artifact's header (schema, producer, fingerprints, shapes)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pisces_cli.cli.common import console
from pisces_cli.errors import UsageError
from pisces_cli.rendering import print_table


def inspect(
    path: Path = typer.Argument(..., help="A pisces .safetensors artifact, or a sharded artifact folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the header as JSON."),
    recipe: bool = typer.Option(False, "--recipe", help="Also print the stored resolved recipe."),
) -> None:
    """Print an artifact's header: schema, producing stage, fingerprints, tensor shapes, metrics."""
    from pisces_cli import artifacts

    if path.is_dir():
        manifest = artifacts.read_manifest(path)
        if as_json:
            typer.echo(json.dumps(manifest, indent=2))
            return
        shards = manifest.get("shards", [])
        console.print(f"[bold]{path}[/] sharded artifact [cyan]{manifest.get('schema')}[/]")
        console.print(
            f"  complete: {manifest.get('complete')}   shards: {len(shards)}   rows: {sum(s['rows'] for s in shards)}"
        )
        if shards:
            first = path / shards[0]["file"]
            console.print(f"  first shard: {first.name}")
            _print_header(artifacts.read_header(first), artifacts.tensor_shapes(first), recipe)
        return
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    header = artifacts.read_header(path)
    shapes = artifacts.tensor_shapes(path)
    if as_json:
        data = json.loads(header.to_json())
        if not recipe:
            data.pop("recipe", None)
        data["shapes"] = {k: {"shape": s, "dtype": d} for k, (s, d) in shapes.items()}
        typer.echo(json.dumps(data, indent=2))
        return
    console.print(f"[bold]{path}[/]")
    _print_header(header, shapes, recipe)


def _print_header(header, shapes, show_recipe: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(f"  schema: [cyan]{header.schema}[/] v{header.schema_version}   stage: {header.stage}")
    console.print(
        f"  pisces {header.pisces_version}   created {header.created_utc}   recipe hash {header.recipe_hash}"
    )
    for role, fp in header.fingerprints.items():
        console.print(escape(f"  {role}: " + ", ".join(f"{k}={v}" for k, v in fp.items())))
    table = Table(show_header=True, header_style="bold")
    table.add_column("tensor")
    table.add_column("shape")
    table.add_column("dtype")
    table.add_column("meaning")
    for name, (shape, dtype) in shapes.items():
        table.add_row(
            escape(name), "×".join(map(str, shape)) or "scalar", dtype, escape(header.tensors.get(name, ""))
        )
    print_table(console, table)
    if header.metrics:
        console.print(escape("  metrics: " + json.dumps(header.metrics, default=str)))
    if header.extra:
        console.print(escape("  extra: " + json.dumps(header.extra, default=str)[:800]))
    if show_recipe and header.recipe:
        import yaml

        console.print(yaml.safe_dump(header.recipe, sort_keys=False))
