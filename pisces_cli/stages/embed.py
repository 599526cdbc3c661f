"""``pisces embed``: cached text/video embeddings (``pisces.embeddings`` shards) for ``fit-ot``.

Items are processed in a deterministic order and grouped into shards of ``embed.shard_size`` items.
Each shard holds ``text_cls [n, D]`` and ``video_cls [n, D]`` (projected, not normalised; row i is
``keys[i]``), optionally ``video_tokens [n, M, Dv]``. Under torchrun each rank takes shards
``i ≡ rank (mod world)`` and writes its own ``manifest.rank{r}.json``; rank 0 merges them into
``manifest.json``. A re-run skips completed shards. Bad videos become error rows in ``errors.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import PiscesRuntimeError

if TYPE_CHECKING:
    from pisces_cli.config import ResolvedRecipe

EMBEDDINGS_SCHEMA = "pisces.embeddings"


@dataclass
class EmbedSummary:
    output: Path
    total: int
    embedded: int
    failed: int
    skipped_shards: int
    errors: list[dict[str, Any]] = field(default_factory=list)


def settings_fingerprint(encoder_fp: dict[str, Any], recipe_data: dict[str, Any], num_frames: int) -> str:
    """Hash of what determines the embeddings (encoder, inputs, frames, crop): resume refuses a change."""
    relevant = {
        "encoder": encoder_fp,
        "data": recipe_data["data"],
        "num_frames": num_frames,
        "shard_size": recipe_data["embed"]["shard_size"],
        "save_tokens": recipe_data["embed"]["save_tokens"],
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_embed(
    resolved: ResolvedRecipe,
    *,
    output: str | None = None,
    limit: int | None = None,
    console: Any = None,
) -> EmbedSummary:
    """Embed every (video, caption) of the recipe's data; returns counts and error rows."""
    import torch

    from pisces_cli.artifacts import ArtifactHeader, ShardedArtifactWriter
    from pisces_cli.atomic import atomic_write_json
    from pisces_cli.io.dataset import error_detail, make_loader
    from pisces_cli.io.preprocess import Preprocessing
    from pisces_cli.rewards.build import encoder_num_frames, load_encoder_from_recipe
    from pisces_cli.runtime import (
        barrier,
        cpu_threads_beside_workers,
        init_distributed,
        resolve_device,
        seed_everything,
    )
    from pisces_cli.stages.inputs import items_from_recipe
    from pisces_cli.stages.progress import progress_bar

    recipe = resolved.recipe
    ctx = init_distributed()
    seed_everything(recipe.seed)
    out_dir = Path(output or recipe.embed.output)
    items = items_from_recipe(recipe)
    limit = limit if limit is not None else recipe.embed.limit
    if limit is not None:
        items = items[:limit]
    device = resolve_device(recipe.runtime.device)
    encoder = load_encoder_from_recipe(recipe, device)
    num_frames = encoder_num_frames(recipe, encoder)
    prep = encoder.preprocessing
    preprocessing = Preprocessing(
        size=prep.size, mean=prep.mean, std=prep.std, interpolation=prep.interpolation
    )
    fingerprint = encoder.fingerprint()
    header = ArtifactHeader(
        schema=EMBEDDINGS_SCHEMA,
        stage="embed",
        recipe_hash=resolved.hash,
        recipe=resolved.data,
        fingerprints={"encoder": fingerprint},
        tensors={
            "text_cls": "[n, D] projected caption embeddings (not normalised); row i = keys[i]",
            "video_cls": "[n, D] projected video embeddings (not normalised); row i = keys[i]",
            **({"video_tokens": "[n, M, Dv] video token features"} if recipe.embed.save_tokens else {}),
        },
        extra={
            "recipe_fingerprint": settings_fingerprint(fingerprint, resolved.data, num_frames),
            "num_frames": num_frames,
            "embed_dim": encoder.embed_dim,
        },
    )
    manifest_name = "manifest.json" if not ctx.distributed else f"manifest.rank{ctx.rank}.json"
    writer = ShardedArtifactWriter(out_dir, "embeddings", header, manifest_name=manifest_name)
    shard_size = recipe.embed.shard_size
    num_shards = (len(items) + shard_size - 1) // shard_size
    mine = [i for i in range(num_shards) if i % ctx.world_size == ctx.rank]
    todo = [i for i in mine if i not in writer.done_indices()]
    errors: list[dict[str, Any]] = []
    embedded = 0
    with progress_bar(
        console,
        f"embed → {out_dir}",
        total=sum(len(items[i * shard_size : (i + 1) * shard_size]) for i in todo),
    ) as advance:
        for shard in todo:
            shard_items = items[shard * shard_size : (shard + 1) * shard_size]
            loader = make_loader(
                shard_items,
                num_frames=num_frames,
                frame_rate=recipe.data.fps,
                preprocessing=preprocessing,
                batch_size=recipe.embed.batch_size,
                num_workers=recipe.runtime.num_workers,
                crop=recipe.data.crop,
                seed=recipe.seed,
                decode_timeout_s=recipe.runtime.decode_timeout_s,
            )
            text_rows, video_rows, token_rows, keys, shard_errors = [], [], [], [], []
            with cpu_threads_beside_workers(device, loader.num_workers):
                for batch in loader:
                    for row in batch.errors:
                        shard_errors.append(
                            {
                                "key": row["key"],
                                "source": row["source"],
                                "error": row["error"],
                                **error_detail(row),
                            }
                        )
                    if batch.clips is not None:
                        with torch.no_grad():
                            text = encoder.encode_text([str(p) for p in batch.prompts])
                            video = encoder.encode_video(batch.clips.to(device))
                        text_rows.append(text.global_embedding.float().cpu())
                        video_rows.append(video.global_embedding.float().cpu())
                        if recipe.embed.save_tokens:
                            token_rows.append(video.tokens.float().cpu())
                        keys.extend(batch.keys)
                    advance(len(batch.keys) + len(batch.errors))
            errors.extend(shard_errors)
            if keys:
                tensors = {"text_cls": torch.cat(text_rows), "video_cls": torch.cat(video_rows)}
                if token_rows:
                    tensors["video_tokens"] = torch.cat(token_rows)
                writer.write_shard(shard, tensors, keys, errors=shard_errors)
                embedded += len(keys)
            else:
                writer.manifest.setdefault("empty_shards", []).append(
                    {"index": shard, "errors": shard_errors}
                )
    writer.finalize(num_items=len(items), num_shards=num_shards)
    if errors:
        _append_errors(
            out_dir / ("errors.jsonl" if not ctx.distributed else f"errors.rank{ctx.rank}.jsonl"), errors
        )
    skipped = len(mine) - len(todo)
    counts = {"embedded_now": embedded, "failed_now": len(errors), "skipped_shards": skipped}
    if ctx.distributed:
        atomic_write_json(out_dir / f"summary.rank{ctx.rank}.json", counts)
    barrier()
    if ctx.distributed and ctx.is_main:
        _merge_rank_manifests(out_dir, ctx.world_size)
        counts = _sum_rank_summaries(out_dir, ctx.world_size)
    if ctx.is_main:
        atomic_write_json(out_dir / "summary.json", {"items": len(items), **counts})
    if ctx.is_main and counts["embedded_now"] == 0 and counts["skipped_shards"] == 0 and items:
        raise PiscesRuntimeError(
            f"embed: every one of {len(items)} videos failed (see {out_dir}/errors.jsonl)"
        )
    return EmbedSummary(out_dir, len(items), embedded, len(errors), skipped, errors)


def _append_errors(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def _sum_rank_summaries(out_dir: Path, world_size: int) -> dict[str, int]:
    """Add up the ``summary.rank{r}.json`` counts every rank wrote before the barrier."""
    totals: dict[str, int] = {}
    for rank in range(world_size):
        counts = json.loads((out_dir / f"summary.rank{rank}.json").read_text())
        for name, value in counts.items():
            totals[name] = totals.get(name, 0) + int(value)
    return totals


def _merge_rank_manifests(out_dir: Path, world_size: int) -> None:
    """``manifest.json`` = rank 0's manifest with the shards of every rank; complete when all ranks are."""
    from pisces_cli.atomic import atomic_write_json

    manifests = [
        json.loads((out_dir / f"manifest.rank{rank}.json").read_text()) for rank in range(world_size)
    ]
    merged = manifests[0]
    merged["shards"] = sorted(
        (shard for data in manifests for shard in data.get("shards", [])), key=lambda s: int(s["index"])
    )
    merged["complete"] = all(bool(data.get("complete")) for data in manifests)
    atomic_write_json(out_dir / "manifest.json", merged)
