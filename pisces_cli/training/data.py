"""Training data for ``finetune``: prompts, or videos encoded once into a cached latents artifact.

Sources (``finetune.data``):

- ``prompts``: a ``.txt`` (one per line) / ``.jsonl`` / ``.json`` prompt file or a bundled suite name
  (``vbench``, ``moviegenbench``) → prompt-only batches (``latents=None``).
- ``videos`` (a folder with prompts.jsonl / NAME.txt / VBench names) or ``manifest`` (JSONL ``{video, caption}``)
  → each clip is read (the first ``num_frames`` frames, the last frame repeated if the clip is shorter), resized
  on its short side and centre-cropped to ``height × width``, encoded with ``adapter.encode_video`` (posterior
  mode) and written to the cache ``finetune.data.latents`` (default ``{finetune.output}/latents``): a sharded
  ``pisces.finetune_latents`` artifact (``latents [N, C, F, h, w]`` fp32; the captions in the manifest), resumable.
- ``latents`` alone: an existing cache.

Batches are a pure function of (seed, step, rank): the flat sample position
``p = ((step·G + m)·W + rank)·B + b`` (G micro-batches per step, W ranks, B per micro-batch) maps to item
``perm_e[p mod N]`` with ``e = p // N`` and ``perm_e = randperm(N)`` seeded by (seed, e). A resumed run therefore
draws exactly the batches an uninterrupted run would, and ranks never share a sample within an epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from pisces_cli.errors import PiscesRuntimeError, UsageError
from pisces_cli.training.algorithm import PromptBatch

if TYPE_CHECKING:
    from pisces_cli.backbones.base import BackboneAdapter
    from pisces_cli.config import ResolvedRecipe

LATENTS_SCHEMA = "pisces.finetune_latents"
LATENT_SHARD_SIZE = 16


def derived_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (numpy ``SeedSequence`` mixing)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


@dataclass
class TrainingData:
    """Items to train on: ``prompts[i]`` and, for video data, ``latents[i]`` ``[C, F, h, w]`` (fp32, CPU)."""

    prompts: list[str]
    latents: torch.Tensor | None = None
    keys: list[str] = field(default_factory=list)
    seed: int = 0
    #: what the latents were made from (the latents cache's shard identities), for :meth:`digest`
    sources: str | None = None
    _permutations: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def digest(self) -> str:
        """SHA-256 of the items (prompts and keys, in order, and for video data what its latents were made
        from: a clip rewritten under the same name changes it): what a step's batch is drawn from."""
        import hashlib
        import json

        items: list = [self.prompts, self.keys]
        if self.sources is not None:
            items.append(self.sources)
        return hashlib.sha256(json.dumps(items).encode()).hexdigest()

    def __post_init__(self) -> None:
        if not self.prompts:
            raise UsageError("finetune.data: no training items (the prompt file or video folder is empty)")
        if self.latents is not None and self.latents.shape[0] != len(self.prompts):
            raise PiscesRuntimeError(f"{self.latents.shape[0]} latents but {len(self.prompts)} captions")
        if not self.keys:
            self.keys = [str(i) for i in range(len(self.prompts))]

    def __len__(self) -> int:
        return len(self.prompts)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, 0xDA7A, epoch))
            self._permutations = {epoch: torch.randperm(len(self), generator=generator)}
        return self._permutations[epoch]

    def item_index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self))
        return int(self._permutation(epoch)[offset])

    def micro_batches(
        self, step: int, *, accumulation: int, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> list[PromptBatch]:
        """The ``accumulation`` micro-batches of ``batch_size`` items this rank trains on at ``step``."""
        batches = []
        for micro in range(accumulation):
            base = ((step * accumulation + micro) * world_size + rank) * batch_size
            indices = [self.item_index(base + b) for b in range(batch_size)]
            latents = None if self.latents is None else self.latents[indices]
            batches.append(
                PromptBatch(
                    prompts=[self.prompts[i] for i in indices],
                    latents=latents,
                    keys=[self.keys[i] for i in indices],
                )
            )
        return batches


# ------------------------------------------------------------------------------------------------ loading
def load_prompt_texts(spec: str) -> list[str]:
    """Prompt strings of a prompt file (.txt/.jsonl/.json) or bundled suite name."""
    from pisces_cli.evaluation.prompt_suites import load_suite

    return [prompt.text for prompt in load_suite(spec)]


def resize_center_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8/float frames ``[T, H, W, 3]`` → pixels ``[T, 3, height, width]`` in [0, 1].

    Scale so the frame covers the target (``s = max(height/H, width/W)``, bilinear, antialiased), then crop
    the centre window.
    """
    pixels = frames.permute(0, 3, 1, 2).float()
    if frames.dtype == torch.uint8:
        pixels = pixels / 255.0
    source_h, source_w = pixels.shape[-2:]
    scale = max(height / source_h, width / source_w)
    new_h, new_w = max(height, round(source_h * scale)), max(width, round(source_w * scale))
    if (new_h, new_w) != (source_h, source_w):
        pixels = F.interpolate(
            pixels, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return pixels[:, :, top : top + height, left : left + width].clamp(0.0, 1.0)


def read_training_clip(source: str, num_frames: int, height: int, width: int) -> torch.Tensor:
    """The first ``num_frames`` frames of a video (last frame repeated if short) → ``[T, 3, H, W]`` in [0, 1]."""
    from pisces_cli.io.video import read_clip

    def first_frames(total: int, fps: float) -> list[int]:
        del fps
        return [min(i, total - 1) for i in range(num_frames)]

    frames, _info, _ = read_clip(source, first_frames)
    return resize_center_crop(torch.from_numpy(np.ascontiguousarray(frames)), height, width)


def _video_items(section) -> list:
    from pisces_cli.io.prompts import collect_prompted_videos, read_manifest

    if section.data.videos:
        if not Path(section.data.videos).is_dir():
            raise UsageError(f"finetune.data.videos: {section.data.videos} is not a folder")
        items = collect_prompted_videos(section.data.videos)
    else:
        items = read_manifest(section.data.manifest)
    usable = [item for item in items if item.error is None]
    if not usable:
        problems = "; ".join(item.error for item in items[:3] if item.error)
        raise UsageError(f"finetune.data: no usable (video, caption) pairs ({problems or 'empty'})")
    return usable


def cache_folder(resolved: ResolvedRecipe) -> Path:
    section = resolved.recipe.finetune
    return Path(section.data.latents) if section.data.latents else Path(section.output) / "latents"


def encode_latent_cache(
    resolved: ResolvedRecipe,
    adapter: BackboneAdapter,
    *,
    rank: int = 0,
    world_size: int = 1,
    console: Any = None,
    shard_size: int = LATENT_SHARD_SIZE,
) -> Path:
    """Encode every (video, caption) pair of ``finetune.data`` into the latents cache; returns its folder.

    Shard ``i`` (``shard_size`` items) is encoded by rank ``i mod W``; shards already listed with the same items
    (their ``items_sha256``: keys, captions, file sizes and mtimes) are skipped, any other is encoded again. With
    several ranks each records its shards in ``manifest-rank{r}.json`` and rank 0 merges them into
    ``manifest.json`` (marked complete once every shard exists).
    """
    from pisces_cli.artifacts import MANIFEST, ArtifactHeader, ShardedArtifactWriter
    from pisces_cli.runtime import barrier
    from pisces_cli.stages.progress import progress_bar

    section = resolved.recipe.finetune
    items = _video_items(section)
    folder = cache_folder(resolved)
    header = ArtifactHeader(
        schema=LATENTS_SCHEMA,
        stage="finetune",
        recipe_hash=resolved.hash,
        tensors={"latents": "[N, C, F, h, w] fp32 clean latents in transformer latent space"},
        extra={
            "recipe_fingerprint": _cache_fingerprint(resolved),
            "backbone": adapter.family,
            "num_frames": section.num_frames,
            "height": section.height,
            "width": section.width,
            "shard_size": shard_size,
        },
    )
    shards = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
    digests = [_items_digest(shard) for shard in shards]
    # a listed shard is reused only when it was made from the same items (a clip added, removed or rewritten in
    # the folder shifts what every later shard index holds)
    done = {
        int(entry["index"])
        for entry in _manifest_entries(folder)
        if int(entry["index"]) < len(shards) and entry.get("items_sha256") == digests[int(entry["index"])]
    }
    manifest_name = MANIFEST if world_size == 1 else f"manifest-rank{rank}.json"
    # every rank opens its writer (which removes stale temp files) before any rank starts writing
    writer = ShardedArtifactWriter(folder, "latents", header, manifest_name=manifest_name)
    barrier()
    mine = [i for i in range(len(shards)) if i % world_size == rank and i not in done]
    adapter.validate_geometry(section.num_frames, section.height, section.width)
    with progress_bar(console if rank == 0 else None, "encode latents", len(mine)) as advance:
        for shard_index in mine:
            latents = []
            for item in shards[shard_index]:
                pixels = read_training_clip(item.source, section.num_frames, section.height, section.width)
                latents.append(
                    adapter.encode_video(pixels[None].to(adapter.device, adapter.vae.dtype))[0].cpu()
                )
            writer.write_shard(
                shard_index,
                {"latents": torch.stack(latents)},
                [i.key for i in shards[shard_index]],
                captions=[i.prompt for i in shards[shard_index]],
                items_sha256=digests[shard_index],
            )
            advance()
    barrier()
    if rank == 0:
        entries = {
            int(e["index"]): e
            for e in _manifest_entries(folder)
            if int(e["index"]) < len(shards) and e.get("items_sha256") == digests[int(e["index"])]
        }
        missing = sorted(set(range(len(shards))) - set(entries))
        if missing:
            raise PiscesRuntimeError(
                f"{folder}: latent shards {missing[:5]} were not written; re-run to resume"
            )
        final = ShardedArtifactWriter(folder, "latents", header)
        final.manifest["shards"] = [entries[i] for i in sorted(entries)]
        final.finalize(num_items=len(items))
    barrier()
    return folder


def _manifest_entries(folder: Path) -> list[dict]:
    """Shard entries of ``manifest.json`` and every ``manifest-rank*.json`` whose files exist."""
    import json

    entries = []
    for path in [folder / "manifest.json", *sorted(folder.glob("manifest-rank*.json"))]:
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            entries.extend(e for e in data.get("shards", []) if (folder / e["file"]).is_file())
    return entries


def _items_digest(items: list) -> str:
    """Hash of a shard's (video, caption) items in order: key, caption and the file's size and mtime."""
    import hashlib
    import json
    import os

    digest = hashlib.sha256()
    for item in items:
        try:
            stat = os.stat(item.source)
            identity = [stat.st_size, stat.st_mtime_ns]
        except (OSError, TypeError):
            identity = None
        digest.update(json.dumps([item.key, item.prompt, identity]).encode())
    return digest.hexdigest()


def _cache_fingerprint(resolved: ResolvedRecipe) -> str:
    import hashlib
    import json

    recipe = resolved.recipe
    section = recipe.finetune
    key = {
        "generator": recipe.models.generator.path,
        "videos": section.data.videos,
        "manifest": section.data.manifest,
        "geometry": [section.num_frames, section.height, section.width],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_latent_cache(folder: str | Path) -> tuple[torch.Tensor, list[str], list[str]]:
    """``(latents [N, C, F, h, w], captions, keys)`` of a complete cache folder."""
    from pisces_cli.artifacts import load_sharded, read_manifest

    tensors, keys, _header = load_sharded(folder, expect_schema=LATENTS_SCHEMA)
    captions: list[str] = []
    for entry in read_manifest(folder)["shards"]:
        captions.extend(entry.get("captions") or [])
    if len(captions) != len(keys):
        raise UsageError(f"{folder}: the latents cache has {len(keys)} items but {len(captions)} captions")
    return tensors["latents"].float(), captions, keys


def build_training_data(
    resolved: ResolvedRecipe,
    adapter: BackboneAdapter | None,
    *,
    rank: int = 0,
    world_size: int = 1,
    console: Any = None,
) -> TrainingData:
    """The :class:`TrainingData` of ``finetune.data`` (encoding the latents cache first if needed)."""
    recipe = resolved.recipe
    data = recipe.finetune.data
    if data.prompts:
        return TrainingData(prompts=load_prompt_texts(data.prompts), seed=recipe.seed)
    if data.videos or data.manifest:
        if adapter is None:
            raise PiscesRuntimeError("encoding the latents cache needs the loaded backbone")
        folder = encode_latent_cache(resolved, adapter, rank=rank, world_size=world_size, console=console)
    else:
        folder = Path(data.latents)
    latents, captions, keys = load_latent_cache(folder)
    return TrainingData(
        prompts=captions, latents=latents, keys=keys, seed=recipe.seed, sources=latent_cache_sources(folder)
    )


def latent_cache_sources(folder: str | Path) -> str:
    """SHA-256 of what a complete latents cache was made from: each shard's ``items_sha256`` (keys, captions,
    the source videos' sizes and mtimes) where pisces encoded it, else the shard file's size and mtime."""
    import hashlib
    import json

    from pisces_cli.artifacts import read_manifest

    identities = []
    for entry in read_manifest(folder).get("shards", []):
        identity = entry.get("items_sha256")
        if identity is None:
            stat = (Path(folder) / entry["file"]).stat()
            identity = [entry["file"], stat.st_size, stat.st_mtime_ns]
        identities.append(identity)
    return hashlib.sha256(json.dumps(identities).encode()).hexdigest()
