"""``pisces inspect PATH``: what a file or folder pisces wrote is, and what it holds.

Artifacts (pisces header): schema, producer, fingerprints, tensor shapes, metrics. Sharded artifact folders:
the manifest and the first shard's header. Checkpoints, their LoRA and training-state files, and the fit-ot
training state: recognised by :mod:`pisces_cli.cli.file_kinds` (what each is, facts, tensors). Anything
else is refused with exit code 2 saying what ``inspect`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pisces_cli.cli.common import console
from pisces_cli.errors import UsageError
from pisces_cli.rendering import print_table
from pisces_cli.stages.generate import MANIFEST_SCHEMA as GENERATED_VIDEOS_SCHEMA

#: Rows of a tensor table shown for a file without a pisces header (LoRA and optimizer files hold many).
MAX_TENSOR_ROWS = 40

KNOWN = (
    "pisces .safetensors artifacts, sharded artifact folders (manifest.json), fine-tuning checkpoints "
    "(checkpoint-N/ and the files in it) and the fit-ot training state (ot/state/)"
)


def inspect(
    path: Path = typer.Argument(
        ...,
        help="A pisces artifact, sharded artifact folder, checkpoint (folder or file) or fit-ot state file.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the header as JSON."),
    recipe: bool = typer.Option(False, "--recipe", help="Also print the stored resolved recipe."),
) -> None:
    """Say what a file pisces wrote is: artifact headers, checkpoints, training state, tensor shapes."""
    from pisces_cli import artifacts
    from pisces_cli.cli.file_kinds import identify

    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    if not path.is_dir() and not path.is_file():  # a FIFO: reading it would wait for ever
        raise UsageError(f"{path}: not a regular file or folder (a pipe or a device?)")
    if path.is_dir() and _is_sharded(path):
        _inspect_sharded(path, as_json, recipe)
        return
    header = _pisces_header(path) if path.suffix == ".safetensors" else None
    if header is not None:
        _inspect_artifact(path, header, as_json, recipe)
        return
    known = identify(path)
    if known is None:
        if path.suffix == ".safetensors":
            raise UsageError(f"{path}: safetensors file without a pisces header (not written by pisces?)")
        raise UsageError(f"{path}: not a file pisces inspect knows; it reads {KNOWN}")
    shapes = artifacts.tensor_shapes(known.tensors) if known.tensors is not None else {}
    if as_json:
        data = {"path": str(path), "kind": known.kind, "what": known.what, "facts": known.facts}
        if known.contents:
            data["contents"] = known.contents
        if shapes:
            data["shapes"] = {k: {"shape": s, "dtype": d} for k, (s, d) in shapes.items()}
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    _print_known(path, known, shapes)


def _is_sharded(folder: Path) -> bool:
    """A folder whose ``manifest.json`` is a sharded artifact's (it lists shards)."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return True  # let the typed reader say what is wrong with it
    if isinstance(data, dict) and data.get("schema") == GENERATED_VIDEOS_SCHEMA:
        return False  # a `pisces generate` folder: file_kinds describes it
    return not isinstance(data, dict) or "shards" in data or "schema" in data


def _pisces_header(path: Path):
    """The pisces header of a safetensors file, ``None`` if it has none (UsageError if it is not one)."""
    from pisces_cli import artifacts

    if artifacts.HEADER_KEY not in artifacts.safetensors_header_of(path).metadata:
        return None
    return artifacts.read_header(path)


def _inspect_sharded(path: Path, as_json: bool, recipe: bool) -> None:
    from pisces_cli import artifacts

    manifest = artifacts.read_manifest(path)
    if as_json:
        typer.echo(json.dumps(manifest, indent=2))
        return
    shards = manifest["shards"]
    console.print(f"[bold]{path}[/] sharded artifact [cyan]{manifest['schema']}[/]")
    console.print(
        f"  complete: {manifest['complete']}   shards: {len(shards)}   rows: {sum(s['rows'] for s in shards)}"
    )
    if shards:
        first = path / shards[0]["file"]
        console.print(f"  first shard: {first.name}")
        _print_header(artifacts.read_header(first), artifacts.tensor_shapes(first), recipe)


def _inspect_artifact(path: Path, header, as_json: bool, recipe: bool) -> None:
    from pisces_cli import artifacts

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


def _print_known(path: Path, known, shapes) -> None:
    from rich.markup import escape

    console.print(f"[bold]{escape(str(path))}[/]: {escape(known.what)}")
    for key, value in known.facts.items():
        console.print(escape(f"  {key}: {value}"))
    if known.contents:
        console.print(escape(f"  files: {', '.join(known.contents)}"))
    if shapes:
        _print_tensors(shapes, {}, MAX_TENSOR_ROWS)


def _print_tensors(shapes, meanings, limit: int | None = None) -> None:
    """The tensor table (name, shape, dtype, meaning), cut after ``limit`` rows when given."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    for column in ("tensor", "shape", "dtype", "meaning"):
        table.add_column(column)
    items = list(shapes.items())
    for name, (shape, dtype) in items[:limit]:
        table.add_row(
            escape(name), "×".join(map(str, shape)) or "scalar", dtype, escape(meanings.get(name, ""))
        )
    print_table(console, table)
    if limit is not None and len(items) > limit:
        console.print(f"  ... and {len(items) - limit} more tensors ({len(items)} in all)")


def _print_header(header, shapes, show_recipe: bool) -> None:
    from rich.markup import escape

    console.print(
        f"  schema: [cyan]{escape(header.schema)}[/] v{header.schema_version}   stage: {escape(header.stage)}"
    )
    console.print(
        escape(
            f"  pisces {header.pisces_version}   created {header.created_utc}   recipe hash {header.recipe_hash}"
        )
    )
    for role, fp in header.fingerprints.items():
        console.print(escape(f"  {role}: " + ", ".join(f"{k}={v}" for k, v in fp.items())))
    _print_tensors(shapes, header.tensors)
    if header.metrics:
        console.print(escape("  metrics: " + json.dumps(header.metrics, default=str)))
    if header.extra:
        console.print(escape("  extra: " + json.dumps(header.extra, default=str)[:800]))
    if show_recipe and header.recipe:
        import yaml

        console.print(escape(yaml.safe_dump(header.recipe, sort_keys=False)))
