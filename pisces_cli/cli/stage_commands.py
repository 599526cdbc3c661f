"""Stage commands (``embed``, ``fit-ot``, ``score``, ...). Each imports its stage module lazily."""

from __future__ import annotations

from pathlib import Path

import typer

from pisces_cli.cli.common import console, load, overrides_argument, recipe_option
from pisces_cli.rendering import print_table


def embed(
    recipe: str = recipe_option(),
    overrides: list[str] = overrides_argument(),
    output: str = typer.Option(None, "--output", "-o", help="Output folder (default: embed.output)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Embed only the first N items."),
    force: bool = typer.Option(
        False, "--force", help="Start the output folder over (its shards were made with other settings)."
    ),
) -> None:
    """Write sharded video/caption embeddings (text_cls, video_cls) — what fit-ot trains on."""
    resolved = load(recipe, overrides)
    from pisces_cli.runtime import dist_context
    from pisces_cli.stages.embed import run_embed

    summary = run_embed(resolved, output=output, limit=limit, force=force, console=console)
    if dist_context().is_main and not summary.nothing_to_do:
        console.print(
            f"[green]embedded[/] {summary.embedded} new items of {summary.total} "
            f"({summary.failed} failed, {summary.skipped_shards} shards already done) → {summary.output}",
            soft_wrap=True,
        )


def fit_ot(
    recipe: str = recipe_option(),
    overrides: list[str] = overrides_argument(),
    import_file: Path = typer.Option(
        None, "--import", help="Convert the reference implementation's released map (.pt) instead of fitting."
    ),
    fresh: bool = typer.Option(
        False, "--fresh", help="Fit again from the start: ignore saved training state and a finished fit."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace the outputs of an earlier fit in fit_ot.output (refused when they are of another method).",
    ),
) -> None:
    """Fit the distributional OT map (neural | gaussian | identity) and write ot_map.safetensors + report."""
    resolved = load(recipe, overrides)
    from pisces_cli.runtime import dist_context
    from pisces_cli.stages.fit_ot import run_fit_ot, run_import

    if import_file is not None:
        summary = run_import(resolved, str(import_file), console=console, force=force)
    else:
        summary = run_fit_ot(resolved, console=console, resume=not fresh, force=force)
    if not dist_context().is_main:  # under torchrun rank 0 alone prints
        return
    title = f"fit-ot ({summary.method}) — on the report split, {summary.report_size} held-out pairs"
    _print_metrics(title, summary.metrics)
    for note in summary.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    if getattr(summary, "nothing_to_do", False):
        console.print(
            f"nothing to do: {summary.output / 'ot_map.safetensors'} is already fit with these settings and "
            "embeddings (--fresh to fit again)"
        )
        return
    console.print(f"[green]wrote[/] {summary.output / 'ot_map.safetensors'}")


def retry_failed_option() -> bool:
    return typer.Option(False, "--retry-failed", help="Try videos that failed in an earlier run again.")


def prompts_from_names_option() -> bool:
    return typer.Option(
        None,
        "--prompts-from-names",
        help="A video without a prompt file takes its file name as prompt (data.prompts_from_names).",
    )


def score(
    videos_dir: Path = typer.Argument(
        ..., help="Folder of videos with prompts (prompts.jsonl/.csv, NAME.txt or VBench names)."
    ),
    recipe: str = recipe_option(),
    overrides: list[str] = overrides_argument(),
    output: str = typer.Option(
        None, "--output", "-o", help="Output folder (default: VIDEOS_DIR/pisces-scores)."
    ),
    ot_map: str = typer.Option(None, "--ot-map", help="OT map artifact (default: reward.ot_map)."),
    force: bool = typer.Option(
        None, "--force/--no-force", help="Rescore every video into this folder, whatever it holds."
    ),
    report: bool = typer.Option(None, "--report/--no-report", help="Also write report.html."),
    limit: int = typer.Option(None, "--limit", min=1, help="Score only the first N videos."),
    retry_failed: bool = retry_failed_option(),
    prompts_from_names: bool = prompts_from_names_option(),
) -> None:
    """Score every video of a folder: quality (OT), semantic (token OT), quality_no_ot, total."""
    resolved = load(recipe, overrides)
    from pisces_cli.runtime import dist_context
    from pisces_cli.stages.score import run_score

    summary = run_score(
        resolved,
        str(videos_dir),
        output=output,
        ot_map=ot_map,
        force=force,
        report=report,
        limit=limit,
        retry_failed=retry_failed,
        prompts_from_names=prompts_from_names,
        console=console,
    )
    if dist_context().is_main:
        _print_score_table(summary)


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    from rich.table import Table

    if not metrics:
        return
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    print_table(console, table)


def _print_score_table(summary) -> None:
    from rich.table import Table

    from pisces_cli.evaluation.display import fixed, interval

    table = Table(
        title=f"pisces score — {summary.scored} scored, {summary.failed} failed "
        f"({summary.skipped} kept from an earlier run)"
    )
    table.add_column("column")
    table.add_column("mean", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("n", justify="right")
    for column, stat in summary.stats.items():
        table.add_row(column, fixed(stat["mean"]), interval(stat["ci_low"], stat["ci_high"]), str(stat["n"]))
    print_table(console, table)
    done = (
        "results in" if getattr(summary, "nothing_to_do", False) else "[green]wrote[/]"
    )  # no file was touched
    console.print(f"{done} {summary.output}/scores.jsonl, scores.csv, summary.json", soft_wrap=True)


def demo(
    directory: Path = typer.Option(Path("pisces-demo"), "--dir", help="Where to build the demo."),
) -> None:
    """Run every stage offline on synthetic clips and tiny random-weight models (CPU, minutes)."""
    import time

    from pisces_cli.demo import print_summary, run_demo

    start = time.perf_counter()
    steps = run_demo(directory, console=console)
    print_summary(console, steps, directory, time.perf_counter() - start)


def finetune(
    recipe: str = recipe_option(),
    overrides: list[str] = overrides_argument(),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the resolved plan and a memory estimate; load nothing."
    ),
    fresh: bool = typer.Option(
        False,
        "--fresh",
        help="Start over: remove this output's checkpoints, logs and validation videos; train from step 0.",
    ),
    max_steps: int = typer.Option(
        None,
        "--max-steps",
        min=1,
        help="Stop after N optimizer steps (default: finetune.max_steps, which also sets the length of a "
        "linear/cosine lr schedule).",
    ),
    sanity: bool = typer.Option(
        False,
        "--sanity",
        help="GRPO only: check the policy ratio is exactly 1 before any update, then exit (1 on failure).",
    ),
) -> None:
    """Post-train the generator with the PISCES rewards (backprop + consistency distillation, or GRPO)."""
    resolved = load(recipe, overrides)
    from pisces_cli.runtime import dist_context
    from pisces_cli.stages.finetune import run_finetune, run_sanity

    if sanity:
        metrics = run_sanity(resolved, console=console)
        if not dist_context().is_main:  # every rank checked its own rollout (a failure raises); rank 0 prints
            return
        _print_metrics("GRPO sanity check (ratio must be 1 before the first update)", metrics)
        console.print("[green]sanity check passed[/]")
        return

    summary = run_finetune(resolved, console=console, dry_run=dry_run, fresh=fresh, max_steps=max_steps)
    if summary is not None:
        if dist_context().is_main and getattr(summary, "nothing_to_do", False):
            console.print(
                f"nothing to do: {summary.checkpoint} already reached step {summary.step} "
                "(raise finetune.max_steps or --max-steps to train on, --fresh to start over)"
            )
        elif dist_context().is_main:
            console.print(
                f"[green]finetuned[/] to step {summary.step} ({summary.skipped_steps} skipped) → "
                f"{summary.checkpoint}"
            )


def generate(
    prompts: str = typer.Argument(
        None, help="Prompt file (.txt/.jsonl/.json) or suite name (vbench, moviegenbench)."
    ),
    recipe: str = recipe_option(),
    overrides: list[str] = overrides_argument(),
    output: str = typer.Option(None, "--output", "-o", help="Output folder (default: generate.output)."),
    adapter: str = typer.Option(
        None, "--adapter", help="LoRA to apply: a finetune checkpoint folder or diffusers LoRA."
    ),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N prompts."),
) -> None:
    """Sample {prompt}-{index}.mp4 videos (VBench names) + prompts.jsonl + manifest.json; resumable."""
    if prompts and ("=" in prompts or prompts.startswith("~")) and not Path(prompts).exists():
        overrides, prompts = [prompts, *(overrides or [])], None  # no PROMPTS given, only overrides
    resolved = load(recipe, overrides)
    from pisces_cli.stages.generate import run_generate

    summary = run_generate(
        resolved, prompts=prompts, output=output, adapter_dir=adapter, limit=limit, console=console
    )
    from pisces_cli.runtime import dist_context

    if not dist_context().is_main:
        return
    if summary.total and summary.skipped == summary.total:
        console.print(f"nothing to do: all {summary.total} videos are already in {summary.output}")
        return
    console.print(
        f"[green]generated[/] {summary.written} videos ({summary.skipped} already there, "
        f"{summary.total} in all) → {summary.output}"
    )


def register(app: typer.Typer) -> None:
    """Attach every stage command that exists to ``app``."""
    app.command("embed", rich_help_panel="Stages")(embed)
    app.command("fit-ot", rich_help_panel="Stages")(fit_ot)
    app.command("score", rich_help_panel="Stages")(score)
    app.command("demo", rich_help_panel="Tools")(demo)
    app.command("finetune", rich_help_panel="Stages")(finetune)
    app.command("generate", rich_help_panel="Stages")(generate)
    register_eval(app)


# ------------------------------------------------------------------------------------------------ eval


def _eval_group_class() -> type:
    """A typer group where ``pisces eval VIDEOS_DIR ...`` means ``pisces eval run VIDEOS_DIR ...``."""
    from typer.core import TyperGroup

    class EvalGroup(TyperGroup):
        def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
            if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
                args = ["run", *args]
            return super().parse_args(ctx, args)

    return EvalGroup


eval_app = typer.Typer(
    cls=_eval_group_class(),
    no_args_is_help=True,
    help=(
        "Evaluate generated videos: `pisces eval VIDEOS_DIR -r RECIPE` (= `pisces eval run ...`), "
        "`pisces eval aggregate RESULTS.json`, `pisces eval compare RUN_A RUN_B`."
    ),
)


@eval_app.command("run")
def eval_run(
    videos_dir: Path = typer.Argument(
        ..., help="Folder of videos with prompts (the `generate` output, or any prompted folder)."
    ),
    recipe: str = recipe_option(),
    overrides: list[str] = overrides_argument(),
    output: str = typer.Option(
        None, "--output", "-o", help="Output folder (default: VIDEOS_DIR/pisces-eval)."
    ),
    ot_map: str = typer.Option(None, "--ot-map", help="OT map artifact (default: reward.ot_map)."),
    vbench: bool = typer.Option(
        None, "--vbench/--no-vbench", help="Also run the installed vbench package (default: eval.vbench)."
    ),
    limit: int = typer.Option(None, "--limit", min=1, help="Evaluate only the first N videos."),
    force: bool = typer.Option(
        False, "--force", help="Evaluate every video again into this folder, whatever it holds."
    ),
    retry_failed: bool = retry_failed_option(),
    prompts_from_names: bool = prompts_from_names_option(),
) -> None:
    """Rewards, no-OT cosine, consistency, flicker and dynamic-degree proxy per video → eval.json.

    `pisces eval VIDEOS_DIR ...` is short for this command (spell out `eval run` for a folder named
    run, aggregate or compare).
    """
    resolved = load(recipe, overrides)
    from pisces_cli.runtime import dist_context
    from pisces_cli.stages.eval import run_eval

    summary = run_eval(
        resolved,
        str(videos_dir),
        output=output,
        ot_map=ot_map,
        vbench=vbench,
        limit=limit,
        force=force,
        retry_failed=retry_failed,
        prompts_from_names=prompts_from_names,
        console=console,
    )
    if dist_context().is_main:
        _print_eval_table(summary)


#: what a metric's value covers, printed after its name in the eval and compare tables.
METRIC_LABELS = {"temporal_flickering": " (static videos)", "dynamic_degree": " (proxy)"}


def _print_vbench_differences(metrics: list[str]) -> None:
    """One line per shown metric that is named after a VBench dimension but computed differently."""
    from pisces_cli.stages.eval_metrics import VBENCH_DIFFERENCES

    for metric in metrics:
        if metric in VBENCH_DIFFERENCES:
            console.print(f"[dim]vs VBench, {metric}: {VBENCH_DIFFERENCES[metric]}[/]", highlight=False)


def _print_eval_table(summary) -> None:
    from rich.table import Table

    from pisces_cli.evaluation.display import fixed, interval

    table = Table(title=f"pisces eval — {summary.evaluated} videos evaluated, {summary.failed} failed")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("n", justify="right")
    for metric, stat in summary.aggregate.items():
        name = metric + METRIC_LABELS.get(metric, "")
        if stat.get("mean") is None:
            table.add_row(name, "–", "", str(stat.get("n", 0)))
            continue
        table.add_row(name, fixed(stat["mean"]), interval(stat["ci_low"], stat["ci_high"]), str(stat["n"]))
    print_table(console, table)
    _print_vbench_differences(list(summary.aggregate))
    if summary.vbench:
        console.print(
            f"VBench ({summary.vbench['mode']}): total {summary.vbench['total']:.2f}, "
            f"quality {summary.vbench['quality']:.2f}, semantic {summary.vbench['semantic']:.2f}"
        )
    for note in summary.notes:
        console.print(f"[yellow]note:[/] {note}")
    done = "results in" if getattr(summary, "nothing_to_do", False) else "[green]wrote[/]"
    console.print(f"{done} {summary.output}/eval.json", soft_wrap=True)


@eval_app.command("aggregate")
def eval_aggregate(
    results: list[Path] = typer.Argument(
        ..., help="VBench *_eval_results.json, or JSON/CSV of dimension → score."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON object (total/quality/semantic in percent)."
    ),
    output: str = typer.Option(None, "--output", "-o", help="Also write the JSON to this file."),
) -> None:
    """VBench Total / Quality / Semantic from per-dimension scores (VBench's exact normalisation and weights)."""
    from pisces_cli.cli.common import err_console
    from pisces_cli.stages.eval import run_aggregate

    result = run_aggregate([str(p) for p in results], output=output)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if as_json:
        typer.echo(result.to_json())
        return
    from pisces_cli.evaluation.vbench_aggregate import render_vbench_table

    console.print(f"input scale: {result.input_scale} (detected)")
    print_table(console, render_vbench_table(result))
    if output:
        console.print(f"[green]wrote[/] {output}")


@eval_app.command("compare")
def eval_compare(
    run_a: Path = typer.Argument(..., help="Eval output A (eval.json or its folder): the baseline."),
    run_b: Path = typer.Argument(..., help="Eval output B (eval.json or its folder)."),
    output: str = typer.Option(
        None, "--output", "-o", help="Output folder (default: compare/ next to B's eval.json)."
    ),
    metric: str = typer.Option(
        None, "--metric", help="Metric for the frame strips of largest wins/losses (default: total)."
    ),
    bootstrap: int = typer.Option(2000, "--bootstrap", min=1, help="Paired bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Bootstrap seed."),
    strips: int = typer.Option(
        3, "--strips", min=0, help="Largest wins and losses shown as frame strips (0: none)."
    ),
) -> None:
    """Per-metric B − A with paired bootstrap 95% CI and win rate over prompts → compare.json + compare.html."""
    from pisces_cli.stages.eval_compare import run_compare

    summary = run_compare(
        str(run_a), str(run_b), output=output, metric=metric, n_boot=bootstrap, seed=seed, strip_count=strips
    )
    print_comparison(summary)
    _print_vbench_differences(list(summary.vbench_differences))
    for note in summary.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"[green]wrote[/] {summary.output}/compare.json, compare.html")


def print_comparison(summary) -> None:
    """The per-metric table of ``eval compare`` (B − A, paired bootstrap CI, win rate)."""
    from rich.table import Table

    from pisces_cli.evaluation.display import fixed, interval

    comparison = summary.comparison
    table = Table(
        title=f"{comparison.label_b} vs {comparison.label_a} ({len(comparison.item_scores)} metrics, items = prompts)"
    )
    for column in ("metric", "n", "mean A", "mean B", "B − A", "95% CI", "win rate B"):
        table.add_column(
            column, justify="left" if column == "metric" else "right", no_wrap=column == "metric"
        )
    for m in comparison.metrics:
        table.add_row(
            m.metric + METRIC_LABELS.get(m.metric, ""),
            str(m.n),
            fixed(m.mean_a),
            fixed(m.mean_b),
            fixed(m.diff, signed=True),
            interval(m.ci_low, m.ci_high, signed=True),
            fixed(m.win_rate, 3),
        )
    print_table(console, table)


def register_eval(app: typer.Typer) -> None:
    """Attach the ``eval`` command family."""
    app.add_typer(eval_app, name="eval", rich_help_panel="Stages")
