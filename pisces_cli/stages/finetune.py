"""``pisces finetune``: post-train the generator with the PISCES rewards (``finetune`` recipe section).

Writes into ``finetune.output``: ``checkpoint-{step}/`` (a LoRA loadable by diffusers ``load_lora_weights`` and
peft, plus ``training_state/`` to resume; see :mod:`pisces_cli.training.checkpoint`), ``logs/metrics.jsonl``
and ``recipe.yaml`` (the resolved recipe). ``--dry-run`` prints the plan and a memory estimate and loads nothing.
Launch with ``torchrun --nproc_per_node N -m pisces_cli finetune ...`` for several processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.preflight import check_stage

if TYPE_CHECKING:
    from pisces_cli.config import ResolvedRecipe
    from pisces_cli.training.memory import MemoryEstimate
    from pisces_cli.training.trainer import FinetuneSummary


def plan_rows(resolved: ResolvedRecipe, world_size: int, max_steps: int) -> list[tuple[str, str]]:
    """The resolved plan as (key, value) rows for ``--dry-run``."""
    recipe = resolved.recipe
    section = recipe.finetune
    effective = section.batch_size * section.gradient_accumulation_steps * world_size
    data = section.data
    source = next(
        (
            f"{k}: {getattr(data, k)}"
            for k in ("prompts", "videos", "manifest", "latents")
            if getattr(data, k)
        ),
        "none",
    )
    trainable = (
        "full fine-tuning"
        if section.full_finetune
        else f"LoRA r={section.lora.rank} alpha={section.lora.alpha} targets={section.lora.targets} "
        f"dropout={section.lora.dropout} init={section.lora.init}"
    )
    return [
        ("algorithm", section.algorithm),
        (
            "generator",
            f"{recipe.models.generator.backbone} {recipe.models.generator.path} ({recipe.models.generator.dtype})",
        ),
        ("reward encoder", f"{recipe.models.encoder.backend} {recipe.models.encoder.path}"),
        (
            "reward",
            f"weights q={recipe.reward.weights.quality} s={recipe.reward.weights.semantic}, "
            f"ot_map={recipe.reward.ot_map}",
        ),
        ("trainable", trainable),
        ("data", source),
        (
            "steps",
            f"{max_steps} (checkpoint every {section.checkpointing_steps}, keep {section.checkpoints_total_limit})",
        ),
        (
            "batch",
            f"{section.batch_size} × accumulation {section.gradient_accumulation_steps} × world {world_size} "
            f"= {effective} videos per step",
        ),
        (
            "optimizer",
            f"AdamW lr={section.learning_rate} betas={section.adam_betas} wd={section.weight_decay} "
            f"eps={section.adam_eps}, {section.lr_scheduler} (warmup {section.lr_warmup_steps}), "
            f"clip {section.max_grad_norm}",
        ),
        (
            "precision",
            f"{section.mixed_precision} autocast, reward model in "
            f"{section.reward_dtype or recipe.models.encoder.dtype}, "
            f"transformer checkpointing {section.gradient_checkpointing}, "
            f"VAE decode checkpointing {section.vae.decode_checkpointing}, tiling {section.vae.tiling}",
        ),
        ("gradient scaler", _scaler_row(recipe)),
        ("geometry", f"{section.num_frames} frames × {section.height}×{section.width}"),
        ("schedule", f"shift {section.schedule.shift}, {section.schedule.euler_steps}-point Euler grid"),
        ("consistency", f"weight {section.consistency.weight}, pseudo-Huber c={section.consistency.huber_c}"),
        ("validation", _validation_row(recipe)),
        ("output", f"{section.output} (resume: {section.resume})"),
        ("distributed", f"{section.distributed}, world size {world_size}"),
    ]


def _scaler_row(recipe) -> str:
    from pisces_cli.training.precision import precision_plan

    plan = precision_plan(recipe, None)
    if plan.scaled:
        return f"yes: fp16 in the gradient path ({', '.join(plan.fp16_in_gradient_path)})"
    return "no (no fp16 in the gradient path)"


def _validation_row(recipe) -> str:
    validation = recipe.finetune.validation
    if validation.every <= 0:
        return "off (finetune.validation.every = 0)"
    prompts = (
        f"{len(validation.prompts)} prompts"
        if validation.prompts
        else f"first {validation.num_prompts} prompts"
    )
    return (
        f"every {validation.every} steps: {prompts}, seeds {validation.seed}+i, {validation.steps} "
        f"{recipe.generate.sampler} steps, guidance {recipe.generate.guidance}"
    )


def estimate(resolved: ResolvedRecipe) -> MemoryEstimate:
    """Memory estimate without loading weights (reads only configs and safetensors headers, or pisces' table of
    known hub ids)."""
    from pisces_cli.runtime import dist_context
    from pisces_cli.training.memory import estimate_step_memory

    recipe = resolved.recipe
    family = {"hunyuan": "hunyuan_video", "wan": "wan"}[recipe.models.generator.backbone]
    pattern = None
    if not recipe.finetune.full_finetune:
        pattern = _lora_pattern_without_weights(family, recipe.finetune.lora.targets)
    return estimate_step_memory(recipe, family, pattern, world_size=dist_context().world_size)


def _lora_pattern_without_weights(family: str, targets: list[str]) -> str:
    from pisces_cli.backbones.registry import adapter_class
    from pisces_cli.training.trainer import lora_pattern

    class _Patterns:  # only the pattern method of the adapter class is used, no instance state
        lora_target_modules = adapter_class(family).lora_target_modules
        _check_preset = adapter_class(family)._check_preset

    return lora_pattern(_Patterns(), targets)  # type: ignore[arg-type]


def print_plan(resolved: ResolvedRecipe, console: Any, max_steps: int) -> None:
    from rich.table import Table

    from pisces_cli.rendering import print_table
    from pisces_cli.runtime import dist_context

    table = Table(title="pisces finetune — plan (dry run: nothing loaded)", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in plan_rows(resolved, dist_context().world_size, max_steps):
        table.add_row(key, value)
    print_table(console, table)
    memory = estimate(resolved)
    if memory.parts:
        mem_table = Table(title="estimated peak memory per process (GiB)")
        mem_table.add_column("part")
        mem_table.add_column("GiB", justify="right")
        for name, value in memory.rows():
            mem_table.add_row(name, f"{value:.3f}")
        print_table(console, mem_table)
    for note in memory.notes:
        console.print(f"[dim]note: {note}[/]")
    if memory.parts:
        console.print("[dim]not included in the estimate:[/]")
        for item in memory.excluded:
            console.print(f"[dim]  - {item}[/]")
    console.print("[dim]formulas: pisces_cli/training/memory.py (module docstring)[/]")


def run_finetune(
    resolved: ResolvedRecipe,
    *,
    console: Any = None,
    dry_run: bool = False,
    fresh: bool = False,
    max_steps: int | None = None,
) -> FinetuneSummary | FinishedRun | None:
    """Train per ``resolved.recipe.finetune``; ``fresh`` ignores existing checkpoints; returns the summary
    (a :class:`FinishedRun` when the checkpoint to resume already reached the steps asked for)."""
    return _run(resolved, console=console, dry_run=dry_run, fresh=fresh, max_steps=max_steps)


def run_sanity(resolved: ResolvedRecipe, *, console: Any = None) -> dict[str, float]:
    """GRPO's pre-update check: a fresh rollout re-scored by the training code path must give ratio == 1.

    Builds the trainer exactly as ``finetune`` does (resuming the latest checkpoint unless there is none),
    then runs :meth:`GRPOAlgorithm.sanity_check`. Raises PiscesRuntimeError (exit 1) when a ratio is not
    1 within tolerance; UsageError (exit 2) for ``finetune.algorithm != grpo``.
    """
    from pisces_cli.errors import UsageError
    from pisces_cli.runtime import dist_context
    from pisces_cli.training.trainer import Trainer

    if resolved.recipe.finetune.algorithm != "grpo":
        raise UsageError("--sanity applies to finetune.algorithm=grpo (the ratio check of GRPO)")
    is_main = dist_context().is_main
    trainer = Trainer(
        resolved,
        console=console if is_main else None,
        resume=True,
        max_steps=resolved.recipe.finetune.max_steps,
    )
    trainer.check_plan()
    try:
        trainer.setup()
        return trainer.algorithm.sanity_check()
    finally:
        trainer.cleanup()


@dataclass(frozen=True)
class FinishedRun:
    """A re-run with nothing to do: the checkpoint to resume already reached the steps asked for."""

    output: Path
    step: int
    checkpoint: Path
    skipped_steps: int
    nothing_to_do: bool = True


def finished_run(resolved: ResolvedRecipe, steps: int) -> FinishedRun | None:
    """The checkpoint ``finetune.resume`` points at when it already reached ``steps``, else None.

    Reads only its ``state.json`` (no model, not even the trainer's modules, is loaded); a checkpoint made
    under other training settings is refused exactly as resuming it would be.
    """
    import json

    from pisces_cli.encoders.fingerprint import hash_weight_files
    from pisces_cli.runtime import dist_context
    from pisces_cli.training.checkpoint import (
        STATE_DIR,
        check_training_key,
        find_resume_checkpoint,
        training_key,
    )

    section = resolved.recipe.finetune
    folder = find_resume_checkpoint(section.output, section.resume)
    if folder is None:
        return None
    try:
        meta = json.loads((folder / STATE_DIR / "state.json").read_text(encoding="utf-8"))
        step = int(meta["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # let the trainer's resume name what is wrong with it
    if step < steps:
        return None
    key = training_key(resolved.portable_data(), dist_context().world_size)
    ot_map = resolved.recipe.reward.ot_map
    if ot_map and Path(ot_map).is_file():  # a map refit at the same path is not "done" (small file: hash it)
        key["contents"] = {"ot_map_sha256": hash_weight_files([ot_map])}
    check_training_key(folder, meta, key)
    return FinishedRun(Path(section.output), step, folder, int(meta.get("skipped_steps", 0)))


def _run(
    resolved: ResolvedRecipe,
    *,
    console: Any,
    dry_run: bool,
    fresh: bool,
    max_steps: int | None,
) -> FinetuneSummary | FinishedRun | None:
    from pisces_cli.atomic import atomic_write_text
    from pisces_cli.runtime import dist_context

    steps = max_steps if max_steps is not None else resolved.recipe.finetune.max_steps
    if dry_run:
        if console is not None:
            print_plan(resolved, console, steps)
        return None
    check_stage("finetune", resolved)
    if not fresh:
        finished = finished_run(resolved, steps)
        if finished is not None:
            return finished
    from pisces_cli.preflight.generator import check_geometry
    from pisces_cli.training.trainer import Trainer

    check_geometry(resolved.recipe, "finetune")  # from the folder's configs: before minutes of loading
    is_main = dist_context().is_main
    if fresh and is_main:
        from pisces_cli.training.checkpoint import clear_training_output

        clear_training_output(resolved.recipe.finetune.output)
    trainer = Trainer(resolved, console=console if is_main else None, resume=not fresh, max_steps=steps)
    trainer.check_plan()
    if is_main:
        output = Path(resolved.recipe.finetune.output)
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output / "recipe.yaml", resolved.portable_yaml())
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.cleanup()
