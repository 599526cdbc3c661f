"""``pisces demo``: the whole pipeline, offline, on synthetic clips and tiny random-weight models.

Builds under ``DIR`` (default ``./pisces-demo``): world clips (``clips/train``, ``clips/eval``), a tiny
CLIP-style encoder (``models/encoder``), then runs every stage that exists through the same code
paths as the real commands and writes the resolved recipe to ``DIR/recipe.yaml`` so each stage can be
re-run by hand with ``--recipe DIR/recipe.yaml``. Running the demo again in the same ``DIR`` rebuilds its
clips and models and recomputes every stage into its own folders (``fit-ot``, ``score`` and ``eval`` with
``--force``: their inputs were just rewritten).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pisces_cli.config.recipe import read_yaml_mapping, resolve_data, resolve_recipe_path


@dataclass
class DemoStep:
    name: str
    seconds: float
    result: str
    paths: list[str] = field(default_factory=list)


@contextmanager
def _timed_step(steps: list[DemoStep], name: str) -> Iterator[DemoStep]:
    """Time the block and append its step (the block fills in ``result`` and ``paths``) to ``steps``."""
    step = DemoStep(name, 0.0, "")
    start = time.perf_counter()
    yield step
    step.seconds = time.perf_counter() - start
    steps.append(step)


def _rebase(data: dict[str, Any], root: Path) -> dict[str, Any]:
    """Point every ``pisces-demo/...`` path of the bundled demo recipe at ``root``."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("pisces-demo"):
            return str(root / value[len("pisces-demo") :].lstrip("/"))
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return fix(data)


def write_demo_recipe(root: Path) -> tuple[dict[str, Any], Any]:
    """Write ``root/recipe.yaml``: the bundled ``demo`` recipe rebased to ``root``, with absolute paths (the
    rule for every recipe pisces writes: it runs from any folder). Returns (raw data, resolved recipe)."""
    from pisces_cli.atomic import atomic_write_text

    root.mkdir(parents=True, exist_ok=True)
    raw = _rebase(read_yaml_mapping(resolve_recipe_path("demo")), root.resolve())
    path = (root / "recipe.yaml").resolve()
    atomic_write_text(
        path,
        f"# written by `pisces demo`; paths are absolute, so use it from any folder: --recipe {path}\n"
        + resolve_data(raw, [], "demo").portable_yaml(),
    )
    return raw, resolve_data(raw, [], str(path))


def run_demo(root: Path, *, console: Any, train_clips: int = 48, eval_clips: int = 12) -> list[DemoStep]:
    """Build the demo's data and models under ``root`` and run every stage; returns the step log."""
    import torch

    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder
    from pisces_cli.stages.embed import run_embed
    from pisces_cli.stages.fit_ot import run_fit_ot
    from pisces_cli.stages.score import run_score

    # The demo's models are tiny: per-op overhead dominates and one thread is fastest on a small CPU.
    torch.set_num_threads(1)
    steps: list[DemoStep] = []
    raw, resolved = write_demo_recipe(root)
    recipe = resolved.recipe

    with _timed_step(steps, "clips") as step:
        train = write_clip_folder(root / "clips/train", train_clips, seed=recipe.seed, frames=8, size=32)
        held = write_clip_folder(root / "clips/eval", eval_clips, seed=recipe.seed + 1000, frames=8, size=32)
        step.result = f"{len(train)} train + {len(held)} eval world clips"
        step.paths = [str(root / "clips")]
    with _timed_step(steps, "models") as step:
        from pisces_cli.world.captions import world_vocabulary

        save_tiny_clip(recipe.models.encoder.path, "clip", seed=recipe.seed, words=world_vocabulary())
        step.result = "tiny random-weight CLIP encoder"
        step.paths = [str(recipe.models.encoder.path)]

    console.rule("embed")
    with _timed_step(steps, "embed") as step:
        embed = run_embed(resolved, console=console)
        step.result = f"{embed.embedded} new / {embed.total} items, {embed.failed} failed"
        step.paths = [str(embed.output)]
    console.rule("fit-ot")
    with _timed_step(steps, "fit-ot") as step:
        fit = run_fit_ot(resolved, console=console, force=True)  # a demo re-run rebuilt its inputs
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in fit.metrics.items())
        step.result = f"{fit.method}: {metrics}"
        step.paths = [str(fit.output / "ot_map.safetensors"), str(fit.output / "report.md")]
    console.rule("score")
    with _timed_step(steps, "score") as step:
        score = run_score(resolved, str(root / "clips/eval"), report=True, console=console, force=True)
        text = ", ".join(
            f"{k}={v['mean']:.3f}"
            for k, v in score.stats.items()
            if k in ("quality", "semantic", "quality_no_ot")
        )
        step.result = f"{score.scored} scored: {text}"
        step.paths = [str(score.output / "scores.csv"), str(score.output / "report.html")]
    console.rule("internvideo2 (tiny)")
    with _timed_step(steps, "internvideo2") as step:
        _internvideo2_leg(step, root, raw, console)
    _generator_legs(steps, root, raw, resolved, train, held, console)
    return steps


def _generator_legs(
    steps: list[DemoStep],
    root: Path,
    raw: dict[str, Any],
    resolved: Any,
    train: list,
    held: list,
    console: Any,
) -> None:
    """finetune (backprop, then GRPO) → generate (base and fine-tuned) → eval both → eval compare."""
    from pisces_cli.atomic import atomic_write_text
    from pisces_cli.backbones.tiny import save_tiny_hunyuan
    from pisces_cli.cli.stage_commands import print_comparison
    from pisces_cli.stages.eval import run_eval
    from pisces_cli.stages.eval_compare import run_compare
    from pisces_cli.stages.finetune import run_finetune
    from pisces_cli.stages.generate import run_generate

    recipe = resolved.recipe
    atomic_write_text(Path(recipe.finetune.data.prompts), "\n".join(r.prompt for r in train) + "\n")
    generation_prompts = [r.prompt for r in held[:6]]
    atomic_write_text(Path(recipe.generate.prompts), "\n".join(generation_prompts) + "\n")
    with _timed_step(steps, "generator") as step:
        save_tiny_hunyuan(recipe.models.generator.path, seed=recipe.seed)
        step.result = "tiny random-weight HunyuanVideo pipeline"
        step.paths = [str(recipe.models.generator.path)]

    console.rule("finetune (backprop + consistency distillation)")
    with _timed_step(steps, "finetune") as step:
        tuned = run_finetune(resolved, console=console, fresh=True)  # a demo re-run rebuilt its inputs
        assert tuned is not None
        step.result = f"backprop: {tuned.step} steps, loss {_fmt(tuned, 'loss')}"
        step.paths = [str(tuned.checkpoint)]
    console.rule("finetune (GRPO)")
    with _timed_step(steps, "grpo") as step:
        grpo_out = root / "run/finetune-grpo"
        grpo = resolve_data(
            raw,
            [
                "finetune.algorithm=grpo",
                f"finetune.output={grpo_out}",
                "finetune.max_steps=2",
                "finetune.gradient_accumulation_steps=1",
            ],
            str(root / "recipe.yaml"),
        )
        grpo_summary = run_finetune(grpo, console=console, fresh=True)
        assert grpo_summary is not None
        step.result = f"GRPO: {grpo_summary.step} steps (ratio check passed)"
        step.paths = [str(grpo_summary.checkpoint)]

    console.rule("generate (base and fine-tuned)")
    with _timed_step(steps, "generate") as step:
        base_dir = root / "run/videos/base"
        tuned_dir = root / "run/videos/finetuned"
        for folder in (base_dir, tuned_dir):  # a demo re-run rebuilt the generator and the adapter
            shutil.rmtree(folder, ignore_errors=True)
        run_generate(resolved, output=str(base_dir), console=console)
        run_generate(resolved, output=str(tuned_dir), adapter_dir=str(tuned.checkpoint), console=console)
        step.result = f"{len(generation_prompts)} prompts × base and fine-tuned"
        step.paths = [str(base_dir), str(tuned_dir)]

    console.rule("eval and eval compare")
    with _timed_step(steps, "eval") as step:
        run_eval(resolved, str(base_dir), console=console, force=True)
        run_eval(resolved, str(tuned_dir), console=console, force=True)
        comparison = run_compare(
            str(base_dir),
            str(tuned_dir),
            output=str(root / "run/compare"),
            n_boot=recipe.eval.bootstrap_samples,
            seed=recipe.seed,
        )
        print_comparison(comparison)
        step.result = "base vs fine-tuned: eval.json ×2, compare.html"
        step.paths = [str(comparison.output / "compare.html")]


def _fmt(summary: Any, key: str) -> str:
    metrics = getattr(summary, "metrics", None) or getattr(summary, "last_metrics", None) or {}
    value = metrics.get(key) if isinstance(metrics, dict) else None
    return f"{value:.4f}" if isinstance(value, float) else "n/a"


def _internvideo2_leg(step: DemoStep, root: Path, raw: dict[str, Any], console: Any) -> None:
    """embed → fit-ot (gaussian) → score with a tiny InternVideo2 built by the demo (the paper's backend);
    fills in ``step``."""
    from pisces_cli.encoders.internvideo2.tiny import save_tiny_internvideo2
    from pisces_cli.stages.embed import run_embed
    from pisces_cli.stages.fit_ot import run_fit_ot
    from pisces_cli.stages.score import run_score
    from pisces_cli.world.captions import world_vocabulary

    model_dir = root / "models/internvideo2"
    save_tiny_internvideo2(model_dir, world_vocabulary(), seed=0)
    run_dir = root / "run/internvideo2"
    overrides = [
        "models.encoder.backend=internvideo2",
        f"models.encoder.path={model_dir}",
        "models.encoder.num_frames=8",
        f"embed.output={run_dir}/embeddings",
        "fit_ot.method=gaussian",
        f"fit_ot.output={run_dir}/ot",
        f"reward.ot_map={run_dir}/ot/ot_map.safetensors",
        f"score.output={root}/clips/eval/pisces-scores-internvideo2",
        "score.report=false",
    ]
    resolved = resolve_data(raw, overrides, "demo (internvideo2)")
    run_embed(resolved, console=console)
    fit = run_fit_ot(resolved, console=console, force=True)
    score = run_score(resolved, str(root / "clips/eval"), console=console, force=True)
    text = ", ".join(f"{k}={v['mean']:.3f}" for k, v in score.stats.items() if k in ("quality", "semantic"))
    step.result = f"embed + fit-ot ({fit.method}) + score: {text}"
    step.paths = [str(run_dir), str(score.output / "scores.csv")]


def print_summary(console: Any, steps: list[DemoStep], root: Path, total_s: float) -> None:
    from rich.table import Table

    from pisces_cli.rendering import print_table

    table = Table(title=f"pisces demo — {total_s:.0f} s")
    table.add_column("step", style="bold cyan")
    table.add_column("s", justify="right")
    table.add_column("result")
    table.add_column("wrote")
    for step in steps:
        table.add_row(step.name, f"{step.seconds:.1f}", step.result, "\n".join(step.paths))
    print_table(console, table)
    console.print(f"re-run any stage by hand: [bold]pisces <stage> --recipe {root / 'recipe.yaml'}[/]")
