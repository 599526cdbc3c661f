"""The two measured parts of the world experiment and its markdown report (see :mod:`.experiment`).

Both parts run the ordinary stages in-process (``run_embed``, ``run_fit_ot``, ``run_score``, ``run_finetune``,
``run_generate``) with the experiment's resolved recipe or an arm's overrides of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import PiscesRuntimeError
from pisces_cli.world.experiment_data import label_folder, read_jsonl
from pisces_cli.world.experiment_report import verdict_word

if TYPE_CHECKING:
    from pisces_cli.world.experiment import _Runner


def _load_json_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise PiscesRuntimeError(
            f"{path}: missing; delete the folder's .done markers of this part and re-run"
        )
    return read_jsonl(path)


def rewards_part(runner: _Runner) -> None:
    """Claim 1: embed → fit-ot → score (token OT on / off) on the held-out clips, oracle labels, Spearman ρ."""
    from pisces_cli.stages.embed import run_embed
    from pisces_cli.stages.fit_ot import run_fit_ot
    from pisces_cli.stages.score import run_score
    from pisces_cli.world.experiment_report import reward_agreement

    root = runner.root
    heldout = str(root / "clips/heldout")
    scores = {"token_ot": root / "run/scores/token_ot", "no_token_ot": root / "run/scores/no_token_ot"}

    def embed() -> str:
        done = run_embed(runner.resolved, console=runner.console)
        return f"{done.total} clips embedded"

    def fit() -> str:
        done = run_fit_ot(runner.resolved, console=runner.console)
        return f"{done.method}: " + ", ".join(f"{k}={v:.3f}" for k, v in done.metrics.items())

    def score() -> str:
        with_ot = run_score(runner.resolved, heldout, output=str(scores["token_ot"]), console=runner.console)
        without = run_score(
            runner.variant(["reward.token_ot.enabled=false"]),
            heldout,
            output=str(scores["no_token_ot"]),
            console=runner.console,
        )
        return f"{with_ot.scored} + {without.scored} clips scored"

    def label() -> str:
        plan = _load_json_rows(root / "labels/heldout_plan.jsonl")
        rows = label_folder(root / "clips/heldout", root / "labels/heldout.jsonl", extra=plan)
        return f"{len(rows)} held-out clips judged"

    runner.step("embed", embed)
    runner.step("fit-ot", fit)
    runner.step("score", score)
    runner.step("label-heldout", label)
    labels = _load_json_rows(root / "labels/heldout.jsonl")
    rows = {run: _load_json_rows(path / "scores.jsonl") for run, path in scores.items()}
    runner.result.agreement = reward_agreement(
        labels, rows, n_boot=runner.recipe.eval.bootstrap_samples, seed=runner.recipe.seed
    )


def finetune_part(runner: _Runner) -> None:
    """Claim 2: generate with the base model; finetune arms (a)/(b)/(c); generate with each; oracle accuracy."""
    # diffusers resolves the world transformer's class from sys.modules only: import it before loading
    import pisces_cli.world.generator.transformer  # noqa: F401
    from pisces_cli.stages.finetune import run_finetune
    from pisces_cli.stages.generate import run_generate
    from pisces_cli.world.experiment import ARMS, generator_step
    from pisces_cli.world.experiment_report import generation_accuracy

    root = runner.root
    videos = root / "run/videos"
    generator_step(runner)

    def base() -> str:
        done = run_generate(runner.resolved, output=str(videos / "base"), console=runner.console)
        label_folder(videos / "base", root / "labels/videos_base.jsonl")
        return f"{_count(done)} videos"

    runner.step("generate-base", base)
    for arm, extra in ARMS.items():

        def tune(arm: str = arm, extra: list[str] = extra) -> str:
            resolved = runner.variant([*extra, f"finetune.output={root / 'run/finetune' / arm}"])
            summary = run_finetune(resolved, console=runner.console)
            if summary is None or summary.checkpoint is None:
                raise PiscesRuntimeError(f"finetune arm {arm}: no checkpoint was written")
            done = run_generate(
                resolved,
                output=str(videos / arm),
                adapter_dir=str(summary.checkpoint),
                console=runner.console,
            )
            label_folder(videos / arm, root / f"labels/videos_{arm}.jsonl")
            loss = summary.metrics.get("loss")
            text = (
                f"{summary.step} steps, last loss {loss:.4f}"
                if isinstance(loss, float)
                else f"{summary.step} steps"
            )
            return f"{text}; {_count(done)} videos"

        runner.step(f"finetune-{arm}", tune)
    labels = {arm: _load_json_rows(root / f"labels/videos_{arm}.jsonl") for arm in ("base", *ARMS)}
    runner.result.accuracy = generation_accuracy(
        labels, n_boot=runner.recipe.eval.bootstrap_samples, seed=runner.recipe.seed
    )


def _count(summary: Any) -> str:
    for name in ("total", "written", "videos"):
        value = getattr(summary, name, None)
        if isinstance(value, int):
            return str(value)
        if isinstance(value, list):
            return str(len(value))
    return "?"


def report_markdown(runner: _Runner, seconds: float) -> str:
    """``report.md``: settings, step log, the two claims' tables, an honest verdict line each, and the
    findings in sentences (:func:`~pisces_cli.world.experiment_report.findings_markdown`)."""
    import platform

    from pisces_cli import __version__
    from pisces_cli.world.experiment_report import agreement_markdown, findings_markdown, generation_markdown

    result = runner.result
    steps_total = sum(s.seconds for s in result.steps)
    earlier = any(s.skipped for s in result.steps)
    timing = f"The steps took {steps_total:.0f} s in all" + (
        f" (some in earlier calls); this call of `pisces world run` took {seconds:.0f} s."
        if earlier
        else f"; `pisces world run` took {seconds:.0f} s."
    )
    lines = [
        "# PISCES world experiment",
        "",
        f"Recipe `{runner.root / 'recipe.yaml'}` (hash {runner.resolved.hash}), seed {runner.recipe.seed}, "
        f"pisces {__version__}. {timing}",
        f"Machine: {machine_description()}, torch threads {runner.settings.threads} (Python {platform.python_version()}).",
        "",
        "| step | s | result |",
        "|---|---|---|",
    ]
    for step in result.steps:
        note = " (earlier call)" if step.skipped else ""
        lines.append(f"| {step.name} | {step.seconds:.1f}{note} | {step.result} |")
    if result.agreement is not None:
        lines += ["", "## Claim 1: OT-aligned rewards agree better with the oracle", ""]
        lines.append(agreement_markdown(result.agreement))
        lines += ["", _claim1_verdict(result.agreement)]
    if result.accuracy is not None:
        lines += ["", "## Claim 2: fine-tuning with PISCES rewards", ""]
        lines.append(generation_markdown(result.accuracy))
        lines += ["", _claim2_verdict(result.accuracy)]
    findings = findings_markdown(result.agreement, result.accuracy)
    if findings:
        lines += ["", findings]
    plots = [
        f"`{name}`"
        for name, data in (("agreement.png", result.agreement), ("generation.png", result.accuracy))
        if data
    ]
    lines += ["", f"Plots: {', '.join(plots)}; numbers: `results.json`.", ""]
    return "\n".join(lines)


def machine_description() -> str:
    """CPU model and core count (Linux ``/proc/cpuinfo``; else the platform's processor string)."""
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


def _claim1_verdict(agreement: dict[str, Any]) -> str:
    parts = []
    for name, row in agreement["ot_gain"].items():
        target = "quality" if name.startswith("quality") else "prompt_fidelity"
        parts.append(f"{name} on oracle {target}: {verdict_word(row[target])}")
    return "Verdict (95 % CI of the paired difference): " + ("; ".join(parts) or "n/a") + "."


def _claim2_verdict(accuracy: dict[str, Any]) -> str:
    parts = []
    for arm, row in accuracy["vs_base"].items():
        parts.append(f"{arm} vs base, prompt fidelity: {verdict_word(row['prompt_fidelity'])}")
    return "Verdict (95 % CI of the paired difference): " + ("; ".join(parts) or "n/a") + "."
