"""``pisces world run``: the end-to-end synthetic-world experiment measuring the two PISCES claims.

Everything lives under one folder ``ROOT`` (default ``./world-exp``)::

    recipe.yaml               the resolved recipe every stage ran with (``recipes/world.yaml`` rebased to ROOT)
    clips/train               clean world clips: the encoder's embedding set for ``embed`` → ``fit-ot``
    clips/heldout             held-out clips, clean and corrupted (every kind × severity), prompt = clean caption
    clips/finetune            clean clips whose latents drive consistency distillation in ``finetune``
    prompts/heldout.txt       held-out prompts for ``generate``
    models/encoder            the trained world video-text encoder (reward backend ``world``)
    models/generator          the trained world generator (diffusers Wan directory)
    run/...                   stage outputs (embeddings, ot, scores, finetune/<arm>, videos/<arm>)
    labels/*.jsonl            the oracle's verdicts per clip (held-out clips, generated videos per arm)
    results.json, report.md, agreement.png, generation.png

Claim 1 (OT-aligned rewards agree better with ground truth): ``score`` the held-out clips twice (token OT on /
off) and correlate quality (with / without the OT map) and semantic (with / without partial OT) with the
oracle's quality, prompt fidelity and their mean (Spearman ρ, bootstrap CIs, paired OT − no-OT differences).
Claim 2 (fine-tuning with them helps): ``finetune`` the generator for the same steps with (a) PISCES rewards,
(b) no-OT rewards, (c) consistency only, ``generate`` the held-out prompts with the base model and each arm,
and report the oracle's per-attribute accuracy and quality with CIs.

Each step is skipped when its outputs exist (``ROOT/.done/<step>.json``), so an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pisces_cli.config.recipe import read_yaml_mapping, resolve_data, resolve_recipe_path
from pisces_cli.errors import UsageError

#: Placeholder prefix of every path in ``recipes/world.yaml``; replaced by the experiment folder.
PATH_PREFIX = "world-exp"

#: The fine-tuning arms: name → recipe overrides (on top of the experiment recipe).
ARMS: dict[str, list[str]] = {
    "pisces": [],
    "no_ot": ["reward.ot_map=null", "reward.token_ot.enabled=false"],
    "consistency": ["reward.weights.quality=0", "reward.weights.semantic=0"],
}

#: Recipe overrides of ``--quick`` (the CI smoke run): a few steps of every part.
QUICK_OVERRIDES: list[str] = [
    "fit_ot.method=gaussian",
    "reward.token_ot.max_iter=10",
    "finetune.max_steps=1",
    "finetune.batch_size=1",
    "generate.steps=2",
    "eval.bootstrap_samples=50",
]


@dataclass(frozen=True)
class ExperimentSettings:
    """Sizes of the experiment that are not stage settings (those live in the recipe).

    ``frames`` / ``size``: clip geometry (frames, pixels) of every clip and model. ``encoder_*`` /
    ``generator_*``: training steps, clips and batch of the two world models. ``train_clips``: clean clips
    embedded for ``fit-ot``. ``kinds`` × ``severities`` × ``per_cell`` corrupted held-out clips plus
    ``per_cell`` clean ones. ``finetune_clips``: clips for consistency distillation. ``heldout_prompts``:
    prompts generated per arm. ``threads``: torch threads of the whole run (1 is fastest for these tiny
    models on a small CPU, see benchmarks/RESULTS.md "World models"). ``tiny_models``: the smallest
    encoder / generator sizes (smoke runs only).
    """

    frames: int = 9
    size: int = 32
    fps: float = 8.0
    encoder_steps: int = 600
    encoder_clips: int = 1024
    encoder_batch: int = 32
    generator_steps: int = 1500
    generator_clips: int = 1024
    generator_batch: int = 16
    train_clips: int = 256
    kinds: tuple[str, ...] = (
        "flicker", "blur", "noise", "frozen", "wrong_color", "wrong_count", "wrong_direction",
    )  # fmt: skip
    severities: tuple[float, ...] = (0.25, 0.5, 1.0)
    per_cell: int = 10
    finetune_clips: int = 128
    heldout_prompts: int = 128
    threads: int = 1
    tiny_models: bool = False

    @classmethod
    def quick(cls) -> ExperimentSettings:
        """The CI smoke version: a few steps and clips of every part (well under a minute)."""
        return cls(
            encoder_steps=2, encoder_clips=8, encoder_batch=4, generator_steps=2, generator_clips=8,
            generator_batch=4, train_clips=16, kinds=("blur", "wrong_color"), severities=(1.0,), per_cell=3,
            finetune_clips=2, heldout_prompts=3, tiny_models=True,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ExperimentStep:
    """One step: ``name``, wall ``seconds`` it took (in the call that ran it), a short ``result``, and
    ``skipped`` (done by an earlier call)."""

    name: str
    seconds: float
    result: str
    skipped: bool = False


@dataclass
class ExperimentResult:
    root: Path
    steps: list[ExperimentStep] = field(default_factory=list)
    agreement: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    report: Path | None = None
    seconds: float = 0.0  # this call, from its start to the written report (what report.md and the CLI say)


# ------------------------------------------------------------------------------------------ seeds


def data_seed(seed: int, part: str) -> int:
    """The world-clip seed of one data set, derived from the recipe seed (distinct sets never share a seed)."""
    offsets = {
        "encoder": 101,
        "generator": 202,
        "train": 303,
        "heldout": 404,
        "finetune": 505,
        "prompts": 606,
    }
    return int(seed) * 1000 + offsets[part]


# ------------------------------------------------------------------------------------------ models


def train_encoder(out_dir: Path, settings: ExperimentSettings, seed: int) -> dict[str, Any]:
    """Train the world reward encoder into ``out_dir`` (the one place the experiment calls its trainer)."""
    from pisces_cli.world.encoder import WordTokenizer, WorldEncoderConfig, train_world_encoder

    config = None
    if settings.tiny_models:
        vocab = len(WordTokenizer.for_world())
        config = WorldEncoderConfig(
            vocab_size=vocab, size=settings.size, width=32, embed_dim=32, text_layers=1
        )
    return train_world_encoder(
        out_dir, seed=data_seed(seed, "encoder"), steps=settings.encoder_steps, clips=settings.encoder_clips,
        frames=settings.frames, size=settings.size, batch_size=settings.encoder_batch,
        eval_clips=min(32, settings.encoder_clips), threads=settings.threads, config=config,
    )  # fmt: skip


def train_generator(out_dir: Path, settings: ExperimentSettings, seed: int) -> dict[str, Any]:
    """Train the world generator into ``out_dir`` (the one place the experiment calls its trainer)."""
    from pisces_cli.world.generator import GeneratorArchitecture, train_world_generator

    arch = None
    if settings.tiny_models:
        arch = GeneratorArchitecture(
            patch=8, heads=2, head_dim=12, layers=1, ffn_dim=32, text_dim=16, text_layers=1
        )
    return train_world_generator(
        out_dir, seed=data_seed(seed, "generator"), steps=settings.generator_steps,
        clips=settings.generator_clips, frames=settings.frames, size=settings.size,
        batch_size=settings.generator_batch, threads=settings.threads, architecture=arch,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ recipe


def rebase(data: Any, root: Path) -> Any:
    """Replace the ``world-exp`` prefix of every path string in ``data`` by ``root``."""
    if isinstance(data, str) and (data == PATH_PREFIX or data.startswith(PATH_PREFIX + "/")):
        return str(root / data[len(PATH_PREFIX) :].lstrip("/"))
    if isinstance(data, dict):
        return {k: rebase(v, root) for k, v in data.items()}
    if isinstance(data, list):
        return [rebase(v, root) for v in data]
    return data


class _Runner:
    """Holds the resolved recipe and runs the experiment's steps, skipping finished ones."""

    def __init__(
        self,
        root: Path,
        raw: dict[str, Any],
        overrides: list[str],
        settings: ExperimentSettings,
        console: Any,
    ) -> None:
        self.root = root
        self.raw = raw
        self.overrides = overrides
        self.settings = settings
        self.console = console
        self.resolved = resolve_data(raw, overrides, str(root / "recipe.yaml"))
        self.recipe = self.resolved.recipe
        self.result = ExperimentResult(root)

    def variant(self, extra: list[str]) -> Any:
        """The experiment recipe with ``extra`` overrides applied after the run's own."""
        return resolve_data(self.raw, [*self.overrides, *extra], str(self.root / "recipe.yaml"))

    def step(self, name: str, action: Callable[[], str]) -> None:
        marker = self.root / ".done" / f"{name}.json"
        if marker.is_file():
            done = json.loads(marker.read_text(encoding="utf-8"))
            seconds = float(done.get("seconds", 0.0))
            self.result.steps.append(ExperimentStep(name, seconds, done.get("result", ""), skipped=True))
            return
        if self.console is not None:
            self.console.rule(f"world: {name}")
        started = time.perf_counter()
        text = action()
        seconds = time.perf_counter() - started
        from pisces_cli.atomic import atomic_write_json

        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, {"result": text, "seconds": seconds})
        self.result.steps.append(ExperimentStep(name, seconds, text))
        if self.console is not None:
            self.console.print(f"[green]{name}[/] {seconds:.1f} s — {text}")


def _check_root(root: Path, recipe_text: str) -> None:
    """Refuse to resume a folder whose ``recipe.yaml`` (settings header + resolved recipe) differs."""
    previous = root / "recipe.yaml"
    if previous.is_file() and previous.read_text(encoding="utf-8") != recipe_text:
        raise UsageError(
            f"{previous}: this folder holds a run of another recipe or settings; choose another --out or "
            "delete the folder"
        )


def run_world_experiment(
    root: str | Path,
    *,
    recipe: str = "world",
    overrides: list[str] | None = None,
    quick: bool = False,
    settings: ExperimentSettings | None = None,
    parts: tuple[str, ...] = ("rewards", "finetune"),
    console: Any = None,
) -> ExperimentResult:
    """Run the world experiment into ``root`` (see the module docstring); returns steps and results.

    ``recipe``: bundled name or path of a recipe shaped like ``recipes/world.yaml``. ``overrides``:
    ``key=value`` recipe overrides. ``quick``: the CI smoke version (:meth:`ExperimentSettings.quick` and
    :data:`QUICK_OVERRIDES`). ``parts``: ``rewards`` (claim 1) and/or ``finetune`` (claim 2).
    """
    import torch

    from pisces_cli.atomic import atomic_write_json, atomic_write_text

    started = time.perf_counter()
    unknown = set(parts) - {"rewards", "finetune"}
    if unknown or not parts:
        raise UsageError(f"parts: expected a non-empty subset of rewards, finetune; got {sorted(parts)}")
    root = Path(root).resolve()
    settings = settings or (ExperimentSettings.quick() if quick else ExperimentSettings())
    all_overrides = [*(QUICK_OVERRIDES if quick else []), *(overrides or [])]
    raw = rebase(read_yaml_mapping(resolve_recipe_path(recipe)), root)
    runner = _Runner(root, raw, all_overrides, settings, console)
    header = f"# written by `pisces world run`; experiment settings: {json.dumps(settings.to_dict())}\n"
    _check_root(root, header + runner.resolved.portable_yaml())
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "recipe.yaml", header + runner.resolved.portable_yaml())
    torch.set_num_threads(settings.threads)

    _data_steps(runner)
    from pisces_cli.world.experiment_parts import finetune_part, rewards_part

    if "rewards" in parts:
        rewards_part(runner)
    if "finetune" in parts:
        finetune_part(runner)

    from pisces_cli.world.experiment_report import write_plots

    result = runner.result
    total = time.perf_counter() - started
    result_json = {
        "settings": settings.to_dict(),
        "quick": quick,
        "recipe_hash": runner.resolved.hash,
        "seed": runner.recipe.seed,
        "steps": [dataclasses.asdict(s) for s in result.steps],
        "seconds_this_call": total,
        "seconds_all_steps": sum(s.seconds for s in result.steps),
        "agreement": result.agreement,
        "generation": result.accuracy,
    }
    atomic_write_json(root / "results.json", result_json)
    write_plots(root, result.agreement, result.accuracy)
    from pisces_cli.world.experiment_parts import report_markdown

    atomic_write_text(root / "report.md", report_markdown(runner, total))
    result.report = root / "report.md"
    result.seconds = total
    return result


def _data_steps(runner: _Runner) -> None:
    """Clips, prompts and the reward encoder."""
    s, seed, root = runner.settings, runner.recipe.seed, runner.root

    def clips() -> str:
        prompt_file = Path(runner.recipe.generate.prompts or root / "prompts/heldout.txt")
        return build_data(root, s, seed, prompt_file)

    def encoder() -> str:
        metrics = train_encoder(Path(runner.recipe.models.encoder.path), s, seed)
        wanted = ("t2v_top1", "v2t_top1", "itm_hard_negative_accuracy")
        held = {k: v for k, v in (metrics.get("held_out") or {}).items() if k in wanted}
        return (
            f"{s.encoder_steps} steps, loss {metrics['loss_first']:.3f} → {metrics['loss_last']:.3f}; "
            + ", ".join(f"held-out {k}={float(v):.3f}" for k, v in held.items())
        )

    runner.step("clips", clips)
    runner.step("encoder", encoder)


def generator_step(runner: _Runner) -> None:
    """Train the world generator (the first step of the fine-tuning part)."""
    s = runner.settings

    def generator() -> str:
        metrics = train_generator(Path(runner.recipe.models.generator.path), s, runner.recipe.seed)
        return f"{s.generator_steps} steps, loss {metrics['loss_first']:.4f} → {metrics['loss_last']:.4f}"

    runner.step("generator", generator)


def build_data(root: Path, settings: ExperimentSettings, seed: int, prompt_file: Path) -> str:
    """Write ``clips/train``, ``clips/heldout`` (+ ``labels/heldout_plan.jsonl``), ``clips/finetune`` under
    ``root`` and the held-out prompts to ``prompt_file``; returns a one-line summary."""
    from pisces_cli.atomic import atomic_write_text
    from pisces_cli.world.experiment_data import corruption_plan, write_heldout_folder, write_world_folder
    from pisces_cli.world.generator import held_out_prompts

    s = settings
    geometry = {"frames": s.frames, "size": s.size, "fps": s.fps}
    write_world_folder(root / "clips/train", data_seed(seed, "train"), s.train_clips, **geometry)
    plan = corruption_plan(s.kinds, s.severities, s.per_cell)
    meta = write_heldout_folder(root / "clips/heldout", data_seed(seed, "heldout"), plan, **geometry)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "labels/heldout_plan.jsonl", "".join(json.dumps(m) + "\n" for m in meta))
    write_world_folder(root / "clips/finetune", data_seed(seed, "finetune"), s.finetune_clips, **geometry)
    prompts = held_out_prompts(data_seed(seed, "prompts"), s.heldout_prompts, s.frames, s.size)
    prompt_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(prompt_file, "\n".join(prompts) + "\n")
    return (
        f"{s.train_clips} train, {len(meta)} held-out ({len(s.kinds)} kinds × {len(s.severities)} severities "
        f"+ clean), {s.finetune_clips} finetune clips, {len(prompts)} held-out prompts"
    )


def build_data_only(root: str | Path, settings: ExperimentSettings, seed: int) -> str:
    """``pisces world build-data``: :func:`build_data` with the prompts at ``root/prompts/heldout.txt``."""
    root = Path(root).resolve()
    return build_data(root, settings, seed, root / "prompts/heldout.txt")
