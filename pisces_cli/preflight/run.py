"""Which checks each stage needs, and the two entry points: the full preflight of ``pisces validate --weights``
and the cheap one every stage runs before heavy work.

A stage reads: ``embed`` the encoder, ``data.*`` and writes ``embed.output``; ``fit-ot`` reads
``fit_ot.embeddings`` and writes ``fit_ot.output``; ``score`` the encoder and ``reward.ot_map`` (or ``--ot-map``),
writes ``score.output``; ``finetune`` the encoder, the OT map, the generator and ``finetune.data.*``, writes
``finetune.output`` (and needs GPUs and memory); ``generate`` the generator, its prompts and ``--adapter``, writes
``generate.output``; ``eval`` the encoder and the OT map when it computes rewards or consistency. When several
stages are checked together, an input that an earlier one of them writes and that is not there yet is shown as
``–`` (written by that stage), not as a failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pisces_cli.errors import UsageError
from pisces_cli.preflight.report import PreflightReport, Status
from pisces_cli.textfile import read_text

if TYPE_CHECKING:
    from pisces_cli.config import Recipe, ResolvedRecipe
    from pisces_cli.encoders.base import EncoderIdentity
    from pisces_cli.preflight.outputs import Output
    from pisces_cli.training.memory import MemoryEstimate

STAGES = ("embed", "fit-ot", "score", "finetune", "generate", "eval")
ENCODER_STAGES = frozenset({"embed", "score", "finetune", "eval"})
REWARD_STAGES = frozenset({"score", "finetune", "eval"})
GENERATOR_STAGES = frozenset({"finetune", "generate"})
OT_MAP_FILE = "ot_map.safetensors"


@dataclass(frozen=True)
class StageInputs:
    """Command-line values that replace recipe keys for one run (``None``: the recipe's)."""

    videos_dir: str | None = None
    output: str | None = None
    ot_map: str | None = None
    prompts: str | None = None
    adapter: str | None = None


def run_preflight(
    resolved: ResolvedRecipe,
    *,
    stages: tuple[str, ...] = STAGES,
    deep: bool = True,
    inputs: StageInputs | None = None,
    identify: bool = True,
) -> PreflightReport:
    """Check what ``stages`` of the recipe read and write; ``deep`` adds the weight, disk and device checks.

    ``identify=False`` leaves out what needs the encoder's code (its identity from its config, and the OT map
    compared with it): the rest imports no torch, so a stage can run it before knowing whether it has work.
    """
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise UsageError(f"unknown stage(s) {', '.join(unknown)}; expected one of {', '.join(STAGES)}")
    from pisces_cli.preflight.encoder import check_encoder, check_ot_map
    from pisces_cli.preflight.generator import check_generator

    recipe = resolved.recipe
    inputs = inputs or StageInputs()
    report = PreflightReport()
    chosen = set(stages)
    identity = None
    if chosen & _encoder_stages(recipe):
        identity = check_encoder(recipe, report, deep=deep, identify=identify)
    if chosen & _reward_stages(recipe):
        ot_map = inputs.ot_map if inputs.ot_map is not None else recipe.reward.ot_map
        key = "--ot-map" if inputs.ot_map is not None else "reward.ot_map"
        writer = (
            "fit-ot"
            if "fit-ot" in chosen and _same(ot_map, Path(recipe.fit_ot.output) / OT_MAP_FILE)
            else None
        )
        check_ot_map(
            recipe, report, identity, path=ot_map, key=key, deep=deep, produced_by=writer, compared=identify
        )
    if deep and identity is None and "fit-ot" in chosen:
        identity = _quiet_identity(recipe)  # the map's width, for the disk estimate
    if chosen & GENERATOR_STAGES:
        check_generator(recipe, report, deep=deep, sections=tuple(sorted(chosen & GENERATOR_STAGES)))
    for stage in stages:
        _check_inputs(stage, recipe, inputs, report, chosen)
    estimate = _memory_estimate(recipe, report) if deep and "finetune" in chosen else None
    if deep and "finetune" in chosen:
        _check_resume(resolved, report)
    trainable = None
    if estimate is not None and not isinstance(estimate, str) and "trainable_fp32" in estimate.parts:
        trainable = int(estimate.parts["trainable_fp32"] // 4)
    from pisces_cli.preflight.outputs import check_output

    for stage in stages:
        for output in _outputs(stage, recipe, inputs, identity, trainable):
            check_output(output, report, deep=deep)
    if deep and chosen & (ENCODER_STAGES | GENERATOR_STAGES):
        from pisces_cli.preflight.devices import check_gpus, check_memory_plan, check_precision

        gpus = check_gpus(recipe, report)
        check_precision(recipe, report, chosen)
        if estimate is not None:
            check_memory_plan(report, gpus, estimate)
    return report


def _check_resume(resolved: ResolvedRecipe, report: PreflightReport) -> None:
    """The checkpoint ``finetune`` would resume, compared with the recipe as ``finetune`` compares it."""
    from pisces_cli.runtime import dist_context
    from pisces_cli.training.checkpoint import (
        check_training_key,
        find_resume_checkpoint,
        read_training_meta,
        training_key,
    )

    section = resolved.recipe.finetune
    key = "finetune.resume"
    try:
        folder = find_resume_checkpoint(section.output, section.resume)
        if folder is None:
            report.add(
                "resume", key, Status.SKIP, f"{section.resume}: no checkpoint to resume; starts at step 0"
            )
            return
        meta = read_training_meta(folder)
        check_training_key(folder, meta, training_key(resolved.portable_data(), dist_context().world_size))
    except UsageError as error:
        report.add("resume", key, Status.FAIL, str(error))
        return
    report.add(
        "resume",
        key,
        Status.OK,
        f"{folder}: step {meta.get('step')} under the same settings (what the OT map, encoder weights and "
        "training data hold is compared when finetune loads them)",
    )


def check_stage(stage: str, resolved: ResolvedRecipe, *, identify: bool = True, **inputs: str | None) -> None:
    """The cheap preflight of ``stage`` (milliseconds: paths, config headers, the OT map header, writable
    outputs); raises :class:`UsageError` (exit 2) listing every failed check with its recipe key.

    Stages that can find they have nothing to do (score, eval, embed) call it first with ``identify=False``
    (no torch import) and again, in full, just before they load the encoder.
    """
    report = run_preflight(
        resolved, stages=(stage,), deep=False, inputs=StageInputs(**inputs), identify=identify
    )
    if report.failed:
        lines = "\n".join(f"  {check.line()}" for check in report.failed)
        raise UsageError(
            f"{stage}: the preflight failed before loading anything:\n{lines}\n"
            f"(`pisces validate RECIPE --weights --stage {stage}` runs every check)"
        )


def _quiet_identity(recipe: Recipe) -> EncoderIdentity | None:
    from pisces_cli.encoders.registry import encoder_identity

    section = recipe.models.encoder
    try:
        return encoder_identity(section.backend, section.path) if section.path else None
    except UsageError:
        return None


def _encoder_stages(recipe: Recipe) -> frozenset[str]:
    uses_encoder = recipe.eval.rewards or recipe.eval.consistency
    return ENCODER_STAGES if uses_encoder else ENCODER_STAGES - {"eval"}


def _reward_stages(recipe: Recipe) -> frozenset[str]:
    return REWARD_STAGES if recipe.eval.rewards else REWARD_STAGES - {"eval"}


def _same(path: str | None, other: Path) -> bool:
    return bool(path) and Path(path).expanduser().absolute() == other.expanduser().absolute()


def _check_inputs(
    stage: str, recipe: Recipe, inputs: StageInputs, report: PreflightReport, chosen: set[str]
) -> None:
    """Rows for the data a stage reads (folders, files, shard patterns, prompt suites, adapters)."""
    if stage == "embed":
        _check_data(recipe, report)
    elif stage == "fit-ot":
        folder = recipe.fit_ot.embeddings
        if not Path(folder).is_dir() and "embed" in chosen and _same(folder, Path(recipe.embed.output)):
            report.add(
                "input", "fit_ot.embeddings", Status.SKIP, f"{folder} is written by embed (not there yet)"
            )
        else:
            _path_row(report, "fit_ot.embeddings", folder, "folder", hint=" (run `pisces embed` first)")
    elif stage in ("score", "eval") and inputs.videos_dir is not None:
        _path_row(report, "VIDEOS_DIR", inputs.videos_dir, "folder")
    if stage == "eval" and recipe.eval.vbench_dimensions:
        _check_vbench_dimensions(recipe.eval.vbench_dimensions, report)
    elif stage == "finetune":
        _check_finetune_data(recipe, report)
    elif stage == "generate":
        prompts_key = "PROMPTS" if inputs.prompts else "generate.prompts"
        _check_prompts(inputs.prompts or recipe.generate.prompts, prompts_key, report)
        adapter = inputs.adapter or recipe.generate.adapter
        if adapter:
            _path_row(report, "--adapter" if inputs.adapter else "generate.adapter", adapter, "path")


def _check_vbench_dimensions(names: list[str], report: PreflightReport) -> None:
    """One row: every ``eval.vbench_dimensions`` entry names a VBench dimension (a typo would otherwise pass
    unnoticed until ``--vbench`` plans its run)."""
    from pisces_cli.evaluation.vbench_aggregate import canonical_dimension_name

    problems = []
    for name in names:
        try:
            canonical_dimension_name(name)
        except UsageError as error:
            problems.append(str(error))
    if problems:
        report.add("eval", "eval.vbench_dimensions", Status.FAIL, "; ".join(problems))
    else:
        report.add("eval", "eval.vbench_dimensions", Status.OK, f"{len(names)} VBench dimension(s)")


def _path_row(report: PreflightReport, key: str, value: str, kind: str, hint: str = "") -> bool:
    """One input row: ``value`` must be an existing ``folder``, ``file`` or either (``path``); returns found."""
    path = Path(value)
    found = {"folder": path.is_dir, "file": path.is_file, "path": path.exists}[kind]()
    if found:
        report.add("input", key, Status.OK, f"{value}: found")
    else:
        what = "is not a folder" if kind == "folder" else "does not exist"
        report.add("input", key, Status.FAIL, f"{value} {what}{hint}")
    return found


def _check_data(recipe: Recipe, report: PreflightReport) -> None:
    data = recipe.data
    if data.videos:
        _path_row(report, "data.videos", data.videos, "folder")
    elif data.manifest:
        _path_row(report, "data.manifest", data.manifest, "file")
    elif data.shards:
        from pisces_cli.io.prompts import expand_shard_spec

        try:
            shards = expand_shard_spec(data.shards)
        except UsageError as error:
            report.add("input", "data.shards", Status.FAIL, str(error))
            return
        report.add("input", "data.shards", Status.OK, f"{data.shards}: {len(shards)} shard(s)")
    else:
        report.add(
            "input", "data", Status.FAIL, "no input videos: set data.videos, data.manifest or data.shards"
        )


def _check_finetune_data(recipe: Recipe, report: PreflightReport) -> None:
    data = recipe.finetune.data
    if data.prompts:
        _check_prompts(data.prompts, "finetune.data.prompts", report)
    elif data.videos or data.manifest:
        key, value, kind = (
            ("finetune.data.videos", data.videos, "folder")
            if data.videos
            else ("finetune.data.manifest", data.manifest, "file")
        )
        # the videos are listed even with a latents cache (to match the cache to them), so they must be there
        _path_row(report, key, value, kind)
    elif data.latents:
        _path_row(report, "finetune.data.latents", data.latents, "folder")


def _check_prompts(spec: str | None, key: str, report: PreflightReport) -> None:
    from pisces_cli.evaluation.prompt_suites import load_suite

    if not spec:
        report.add("input", key, Status.FAIL, "not set: a prompt file or a bundled suite name")
        return
    try:
        count = len(load_suite(spec))
    except UsageError as error:
        report.add("input", key, Status.FAIL, str(error))
        return
    if count == 0:
        report.add("input", key, Status.FAIL, f"{spec}: no prompt in it")
        return
    report.add("input", key, Status.OK, f"{spec}: {count} prompt(s)")


def _outputs(
    stage: str, recipe: Recipe, inputs: StageInputs, identity: EncoderIdentity | None, trainable: int | None
) -> list[Output]:
    """The output folder of ``stage`` with its disk estimate."""
    from pisces_cli.preflight import outputs as out

    embed_dim = identity.embed_dim if identity is not None else None
    if stage == "embed":
        size = out.embed_bytes(_count_items(recipe), embed_dim, recipe.embed.save_tokens)
        return [out.Output(*_folder(inputs.output, "--output", recipe.embed.output, "embed.output"), *size)]
    if stage == "fit-ot":
        size = out.fit_ot_bytes(recipe.fit_ot.method, embed_dim, recipe.fit_ot.neural.hidden_dim)
        return [out.Output("fit_ot.output", Path(recipe.fit_ot.output), *size)]
    if stage in ("score", "eval"):
        section = recipe.score if stage == "score" else recipe.eval
        default = "pisces-scores" if stage == "score" else "pisces-eval"
        videos = inputs.videos_dir
        recipe_folder = section.output or (str(Path(videos) / default) if videos else None)
        if inputs.output is None and recipe_folder is None:
            return []  # written under VIDEOS_DIR, which only the command line names
        count = _count_videos(videos) if videos else None
        size = out.score_bytes(count, stage == "score" and recipe.score.report)
        return [out.Output(*_folder(inputs.output, "--output", recipe_folder, f"{stage}.output"), *size)]
    if stage == "finetune":
        size = out.finetune_bytes(trainable, recipe.finetune.checkpoints_total_limit)
        return [out.Output("finetune.output", Path(recipe.finetune.output), *size)]
    section = recipe.generate
    count = _count_prompts(inputs.prompts or section.prompts)
    videos = None if count is None else count * section.videos_per_prompt
    size = out.generate_bytes(videos, section.num_frames, section.height, section.width, section.crf)
    return [out.Output(*_folder(inputs.output, "--output", section.output, "generate.output"), *size)]


def _folder(option: str | None, option_key: str, value: str, key: str) -> tuple[str, Path]:
    return (option_key, Path(option)) if option is not None else (key, Path(value))


def _count_items(recipe: Recipe) -> int | None:
    data = recipe.data
    if data.videos and Path(data.videos).is_dir():
        return _count_videos(data.videos)
    if data.manifest and Path(data.manifest).is_file():
        try:  # any encoding the stage reads; an unreadable manifest is the stage's clear error, not ours
            return sum(1 for line in read_text(data.manifest).splitlines() if line.strip())
        except UsageError:
            return None
    return None


def _count_videos(folder: str) -> int | None:
    from pisces_cli.io.prompts import list_videos

    return len(list_videos(folder)) if Path(folder).is_dir() else None


def _count_prompts(spec: str | None) -> int | None:
    from pisces_cli.evaluation.prompt_suites import load_suite

    try:
        return len(load_suite(spec)) if spec else None
    except UsageError:
        return None


def _memory_estimate(recipe: Recipe, report: PreflightReport) -> MemoryEstimate | str:
    """The memory plan, or why it cannot be made (the generator check failed, or its configs do not build)."""
    from pisces_cli.preflight.devices import memory_estimate

    if any(check.key == "models.generator.path" and check.status is Status.FAIL for check in report.checks):
        return "not estimated: the generator check failed"
    try:
        return memory_estimate(recipe)
    except Exception as error:  # noqa: BLE001 - a plan that cannot be made is reported, not raised
        return f"not estimated: {type(error).__name__}: {error}"
