"""``pisces world ...``: the synthetic-world experiment (claims 1 and 2 of PISCES, measured against an oracle).

Imports nothing heavy at module level: the experiment modules load inside each command.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pisces_cli.cli.common import console, overrides_argument

world_app = typer.Typer(
    no_args_is_help=True,
    help=(
        "The synthetic-world experiment: rewards vs a ground-truth oracle (Spearman ρ, with and without OT) "
        "and fine-tuning arms (PISCES / no-OT / consistency only) judged by the oracle."
    ),
)

_OUT_HELP = "Experiment folder (data, models, stage outputs, report.md)."


def _settings(quick: bool):
    from pisces_cli.world.experiment import ExperimentSettings

    return ExperimentSettings.quick() if quick else ExperimentSettings()


@world_app.command("run")
def run(
    recipe: str = typer.Option("world", "--recipe", "-r", help="Recipe shaped like recipes/world.yaml."),
    overrides: list[str] = overrides_argument(),
    out: Path = typer.Option(Path("world-exp"), "--out", "-o", help=_OUT_HELP),
    quick: bool = typer.Option(False, "--quick", help="Smoke version: a few steps of every part (< 1 min)."),
    part: list[str] = typer.Option(
        None, "--part", help="Run only this part: rewards (claim 1) or finetune (claim 2); repeatable."
    ),
) -> None:
    """Run the whole experiment end to end (resumable) and write OUT/report.md, results.json and PNGs."""
    from pisces_cli.world.experiment import run_world_experiment

    result = run_world_experiment(
        out,
        recipe=recipe,
        overrides=list(overrides or []),
        quick=quick,
        parts=tuple(part) if part else ("rewards", "finetune"),
        console=console,
    )
    if result.report is not None:
        console.print(
            result.report.read_text(encoding="utf-8"), markup=False, highlight=False, soft_wrap=True
        )
    if result.steps and all(step.skipped for step in result.steps):
        console.print(
            f"nothing to do: every step in {out} was done by an earlier call (only the report was rebuilt)",
            soft_wrap=True,
        )
    console.print(f"[green]done[/] in {result.seconds:.0f} s (as report.md says) → {result.report}")


@world_app.command("build-data")
def build_data(
    out: Path = typer.Option(Path("world-exp"), "--out", "-o", help=_OUT_HELP),
    quick: bool = typer.Option(False, "--quick", help="Smoke-sized data."),
    seed: int = typer.Option(
        0, "--seed", min=0, max=2**32 - 1, help="Recipe seed the data seeds derive from."
    ),
) -> None:
    """Write the experiment's clip folders and held-out prompts (what `world run` builds first)."""
    from pisces_cli.world.experiment import build_data_only

    text = build_data_only(out, _settings(quick), seed)
    console.print(f"[green]wrote[/] {text} → {out}")


@world_app.command("train-encoder")
def train_encoder(
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint folder to write."),
    quick: bool = typer.Option(False, "--quick", help="A few steps only."),
    seed: int = typer.Option(
        0, "--seed", min=0, max=2**32 - 1, help="Recipe seed the data seed derives from."
    ),
) -> None:
    """Train the world reward encoder (backend `world`) with the experiment's settings."""
    from pisces_cli.world.experiment import train_encoder as train

    metrics = train(out, _settings(quick), seed)
    console.print(f"[green]wrote[/] {out}: loss {metrics['loss_first']:.3f} → {metrics['loss_last']:.3f}")


@world_app.command("train-generator")
def train_generator(
    out: Path = typer.Option(..., "--out", "-o", help="Diffusers folder to write."),
    quick: bool = typer.Option(False, "--quick", help="A few steps only."),
    seed: int = typer.Option(
        0, "--seed", min=0, max=2**32 - 1, help="Recipe seed the data seed derives from."
    ),
) -> None:
    """Train the world generator (a tiny diffusers Wan pipeline) with the experiment's settings."""
    from pisces_cli.world.experiment import train_generator as train

    metrics = train(out, _settings(quick), seed)
    console.print(f"[green]wrote[/] {out}: loss {metrics['loss_first']:.4f} → {metrics['loss_last']:.4f}")


def register(app: typer.Typer) -> None:
    """Attach the ``world`` command group to ``app``."""
    app.add_typer(world_app, name="world", rich_help_panel="Tools")
