"""``pisces generate``: sample videos from the (fine-tuned) generator into a VBench-style folder.

For every prompt and index ``i < videos_per_prompt`` the video ``{prompt}-{i}.mp4`` (:func:`vbench_filename`) is
sampled with seed ``generate.seeds[i]`` (or ``seed + i``) by ``generate.sampler`` — by default the checkpoint's own
scheduler, so a video equals what the backbone's diffusers pipeline gives for the same noise — and written
atomically. The folder also gets:

- ``prompts.jsonl``: ``{"file", "prompt", "index", "seed"}`` per video (what ``pisces score`` reads);
- ``manifest.json``: every setting (backbone, weights, adapter, steps, guidance, shift, geometry, fps, seeds) and
  the file → prompt map.

Existing videos are skipped, so an interrupted run resumes; a folder made with other settings is refused, and so
are videos of this run's names with no ``manifest.json`` (nothing says what made them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import UsageError
from pisces_cli.preflight import check_stage
from pisces_cli.preflight.generator import check_geometry

if TYPE_CHECKING:
    import torch

    from pisces_cli.backbones.base import BackboneAdapter
    from pisces_cli.config import ResolvedRecipe

MANIFEST = "manifest.json"
#: the ``schema`` of a generated-videos folder's ``manifest.json``
MANIFEST_SCHEMA = "pisces.generated_videos"
PROMPTS_FILE = "prompts.jsonl"


@dataclass
class GenerateSummary:
    output: Path
    written: int
    skipped: int
    total: int


@dataclass(frozen=True)
class VideoJob:
    prompt: str
    index: int
    seed: int
    file: str


def load_prompts(spec: str | None) -> list[str]:
    """Prompt texts of a .txt/.jsonl/.json file or a bundled suite (``vbench``, ``vbench:<dim>``, ``moviegenbench``)."""
    if not spec:
        raise UsageError("no prompts: pass PROMPTS (a file or suite name) or set generate.prompts")
    from pisces_cli.evaluation.prompt_suites import load_suite

    return list(dict.fromkeys(prompt.text for prompt in load_suite(spec)))


def video_seeds(resolved: ResolvedRecipe) -> list[int]:
    section = resolved.recipe.generate
    if section.seeds:
        return [int(s) for s in section.seeds]
    return [resolved.recipe.seed + index for index in range(section.videos_per_prompt)]


def plan_jobs(prompts: list[str], seeds: list[int]) -> list[VideoJob]:
    from pisces_cli.io.writer import vbench_filename

    jobs, names = [], set()
    for prompt in prompts:
        for index, seed in enumerate(seeds):
            name = vbench_filename(prompt, index)
            if name in names:
                raise UsageError(f"two prompts map to the same file name {name!r}")
            names.add(name)
            jobs.append(VideoJob(prompt, index, seed, name))
    return jobs


def apply_adapter(adapter: BackboneAdapter, adapter_dir: str) -> None:
    """Load a LoRA: a pisces checkpoint folder (``pisces_lora.json``) or any diffusers LoRA folder/file."""
    from pisces_cli.artifacts import check_safetensors_file
    from pisces_cli.backbones.lora import METADATA_FILE, load_lora
    from pisces_cli.errors import PiscesError

    path = Path(adapter_dir)
    if not path.exists():
        raise UsageError(f"--adapter: {adapter_dir} does not exist")
    for weights in [path] if path.is_file() else sorted(path.rglob("*.safetensors")):
        check_safetensors_file(weights, what="--adapter")  # a truncated file: a clear error, not a crash
    try:
        if path.is_dir() and (path / METADATA_FILE).is_file():
            load_lora(path, adapter)
        elif path.is_file():
            adapter.pipeline.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="pisces")
        else:
            adapter.pipeline.load_lora_weights(str(path), adapter_name="pisces")
    except PiscesError:
        raise
    except Exception as error:  # diffusers/peft/safetensors raise many types for a bad adapter
        raise UsageError(
            f"--adapter: cannot load a LoRA from {adapter_dir}: {type(error).__name__}: {error}"
        ) from error


def load_generator(resolved: ResolvedRecipe, adapter_dir: str | None = None) -> BackboneAdapter:
    """The recipe's backbone on ``runtime.device`` (+ the LoRA at ``adapter_dir``)."""
    from pisces_cli.backbones.registry import load_backbone
    from pisces_cli.rewards.build import quiet_model_loading
    from pisces_cli.runtime import check_reduced_precision, resolve_dtype, stage_device
    from pisces_cli.training.trainer import quiet_diffusers

    recipe = resolved.recipe
    generator = recipe.models.generator
    if not generator.path:
        raise UsageError("models.generator.path is not set: give a diffusers-format directory or hub id")
    quiet_model_loading()
    quiet_diffusers()
    family = {"hunyuan": "hunyuan_video", "wan": "wan"}[generator.backbone]
    device, dtype = stage_device(recipe.runtime), resolve_dtype(generator.dtype)
    check_reduced_precision(dtype, device, "models.generator.dtype")
    adapter = load_backbone(generator.path, family=family, dtype=dtype, device=device)
    if adapter_dir:
        apply_adapter(adapter, adapter_dir)
    return adapter


def sample_videos(adapter: BackboneAdapter, prompts: list[str], seeds: list[int], section) -> torch.Tensor:
    """Pixels ``[B, T, 3, H, W]`` in [0, 1] for ``prompts[b]`` with ``seeds[b]`` per the ``generate`` section."""
    from pisces_cli.backbones.sampling import generate

    embeds = adapter.encode_prompts(prompts, negative_prompt=section.negative_prompt)
    return generate(
        adapter,
        prompts,
        num_frames=section.num_frames,
        height=section.height,
        width=section.width,
        steps=section.steps,
        shift=section.shift,
        guidance=section.guidance,
        seeds=seeds,
        prompt_embeds=embeds,
        decode_tiling=section.vae_tiling,
        sampler=section.sampler,
    )


def requested_settings(resolved: ResolvedRecipe, adapter_dir: str | None, seeds: list[int]) -> dict[str, Any]:
    """The settings of a run known before the pipeline is loaded: what a folder's existing videos are checked
    against first, so a re-run with another adapter or sampler is refused even when no video is missing.
    ``adapter_files``: names, sizes and mtimes of the adapter's files (a rewritten checkpoint differs)."""
    from pisces_cli.stages.run_key import files_signature

    section = resolved.recipe.generate
    generator = resolved.recipe.models.generator
    record: dict[str, Any] = {
        "generator": generator.path,
        "dtype": generator.dtype,
        "adapter": str(Path(adapter_dir).resolve()) if adapter_dir else None,
        "adapter_files": files_signature([Path(adapter_dir)]) if adapter_dir else None,
        "steps": section.steps,
        "num_frames": section.num_frames,
        "height": section.height,
        "width": section.width,
        "fps": section.fps,
        "crf": section.crf,
        "seeds": seeds,
        "negative_prompt": section.negative_prompt,
        "vae_tiling": section.vae_tiling,
        "sampler_choice": section.sampler,
        # as asked (null = the checkpoint's default); settings_record adds the values they resolve to
        "guidance_requested": section.guidance,
        "shift_requested": section.shift,
        "allow_tf32": resolved.recipe.runtime.allow_tf32,  # TF32 matmuls/convolutions on CUDA
    }
    return record


def settings_record(
    resolved: ResolvedRecipe, adapter: BackboneAdapter, adapter_dir: str | None, seeds: list[int]
) -> dict[str, Any]:
    """:func:`requested_settings` completed with what the loaded pipeline says (its defaults, its sampler)."""
    from pisces_cli.backbones.sampling import describe_sampler

    section = resolved.recipe.generate
    return {
        **requested_settings(resolved, adapter_dir, seeds),
        "backbone": adapter.family,
        "guidance": adapter.default_guidance if section.guidance is None else section.guidance,
        "shift": adapter.scheduler_shift() if section.shift is None else section.shift,
        "sampler": describe_sampler(adapter, section.sampler, section.shift),
    }


def _check_existing(folder: Path, settings: dict[str, Any], jobs: list[VideoJob]) -> None:
    """Refuse a folder whose videos were made under other settings, or whose videos nothing vouches for."""
    path = folder / MANIFEST
    if not path.is_file():
        present = [job.file for job in jobs if (folder / job.file).is_file()]
        if present:
            raise UsageError(
                f"{folder} already holds {len(present)} of the videos to write (e.g. {present[0]}) but no "
                f"{MANIFEST} saying what made them, so they cannot be kept as this run's; choose another "
                "--output or delete them"
            )
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: not valid JSON ({error}); delete it to start over") from error
    differing = sorted(k for k in settings if k in old and old[k] != settings[k])
    if differing:
        raise UsageError(
            f"{folder} holds videos made with other settings ({', '.join(differing)}): they would be kept "
            "under the new settings' name; choose another --output or delete the folder"
        )


def _todo_hash(todo: list[VideoJob]) -> str:
    """Hash of the videos still to do (file, prompt, seed): equal on every rank planning the same work."""
    import hashlib

    return hashlib.sha256(json.dumps([[j.file, j.prompt, j.seed] for j in todo]).encode()).hexdigest()


def _write_index(
    folder: Path, settings: dict[str, Any], jobs: list[VideoJob], resolved: ResolvedRecipe
) -> None:
    from pisces_cli.atomic import atomic_write_json, atomic_write_text

    done = [job for job in jobs if (folder / job.file).is_file()]
    lines = [json.dumps({"file": j.file, "prompt": j.prompt, "index": j.index, "seed": j.seed}) for j in done]
    atomic_write_text(folder / PROMPTS_FILE, "".join(line + "\n" for line in lines))
    atomic_write_json(
        folder / MANIFEST,
        {
            "schema": MANIFEST_SCHEMA,
            "recipe_hash": resolved.hash,
            "settings": settings,
            "complete": len(done) == len(jobs),
            "videos": {j.file: j.prompt for j in done},
        },
    )


def run_generate(
    resolved: ResolvedRecipe,
    *,
    prompts: str | None = None,
    output: str | None = None,
    adapter_dir: str | None = None,
    limit: int | None = None,
    console: Any = None,
) -> GenerateSummary:
    """Generate every missing video of the prompt list into ``output`` (default ``generate.output``).

    Under ``torchrun`` each of the W ranks renders every W-th missing video (on its own GPU); rank 0 writes
    ``prompts.jsonl`` / ``manifest.json``.
    """
    from pisces_cli.io.writer import write_mp4
    from pisces_cli.runtime import barrier, init_distributed
    from pisces_cli.stages.progress import progress_bar
    from pisces_cli.stages.resume import agree_across_ranks

    check_stage("generate", resolved, prompts=prompts, output=output, adapter=adapter_dir)
    section = resolved.recipe.generate
    texts = load_prompts(prompts or section.prompts)
    if limit is not None:
        texts = texts[:limit]
    seeds = video_seeds(resolved)
    jobs = plan_jobs(texts, seeds)
    folder = Path(output or section.output)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [job for job in jobs if not (folder / job.file).is_file()]
    adapter_dir = adapter_dir or section.adapter
    _check_existing(folder, requested_settings(resolved, adapter_dir, seeds), jobs)  # before any skip or load
    if not todo:
        return GenerateSummary(folder, 0, len(jobs), len(jobs))
    check_geometry(resolved.recipe, "generate")  # from the folder's configs: before minutes of loading
    dist = init_distributed()
    # each rank listed the folder itself: refuse together when the lists differ (a video skipped or made twice)
    agree_across_ranks(_todo_hash(todo), "the videos still to do")
    mine = todo[dist.rank :: dist.world_size]
    adapter = load_generator(resolved, adapter_dir)
    adapter.validate_geometry(section.num_frames, section.height, section.width)
    settings = settings_record(resolved, adapter, adapter_dir, seeds)
    _check_existing(folder, settings, jobs)
    if dist.is_main:  # the settings go on record before the first video, so a killed run's videos have them
        _write_index(folder, settings, jobs, resolved)
    with progress_bar(console if dist.is_main else None, "generate", len(mine)) as advance:
        for start in range(0, len(mine), section.batch_size):
            chunk = mine[start : start + section.batch_size]
            pixels = sample_videos(adapter, [j.prompt for j in chunk], [j.seed for j in chunk], section)
            for job, video in zip(chunk, pixels):
                write_mp4(folder / job.file, video, section.fps, crf=section.crf)
                advance(video=job.file)
            if dist.is_main:
                _write_index(folder, settings, jobs, resolved)
    barrier()
    if dist.is_main:
        _write_index(folder, settings, jobs, resolved)
    written = sum(1 for job in todo if (folder / job.file).is_file())
    return GenerateSummary(folder, written, len(jobs) - len(todo), len(jobs))
