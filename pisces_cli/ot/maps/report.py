"""``report.md`` and PNG plots for a fitted transport map (matplotlib, Agg, imported lazily).

Plots written next to the report:

* ``curves.png`` — per evaluation step: mutual kNN before/after, distance Spearman, and the window-mean
  losses (L_T, L_f, transport cost). Only drawn when ``history`` is non-empty.
* ``distances.png`` — densities of pairwise Euclidean distances: within X, within T(X), within Y
  (left); cross distances X–Y vs T(X)–Y (right).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pisces_cli.atomic import atomic_write_bytes

MAX_POINTS_FOR_DENSITIES = 2000


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure: Any, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    steps = [entry["step"] for entry in history]

    def series(name: str, in_metrics: bool = True) -> list[float]:
        return [
            float((entry.get("metrics", {}) if in_metrics else entry).get(name, float("nan")))
            for entry in history
        ]

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, series("mknn_before"), "--", marker="o", label="before (X vs Y)")
    axes[0].plot(steps, series("mknn_after"), marker="o", label="after (T(X) vs Y)")
    axes[0].set_title("mutual kNN (higher is better)")
    axes[1].plot(steps, series("spearman"), marker="o", color="tab:green")
    axes[1].set_title("Spearman ρ of pairwise distances X vs T(X)")
    for name in ("loss_map", "loss_potential", "transport_cost"):
        axes[2].plot(steps, series(name, in_metrics=False), marker=".", label=name)
    axes[2].set_title("losses (window means)")
    for axis in axes:
        axis.set_xlabel("outer step")
        axis.grid(alpha=0.3)
    axes[0].legend()
    axes[2].legend()
    _save_figure(figure, path)
    plt.close(figure)


def _subsample(points: torch.Tensor) -> torch.Tensor:
    if points.shape[0] <= MAX_POINTS_FOR_DENSITIES:
        return points
    generator = torch.Generator().manual_seed(0)
    return points[torch.randperm(points.shape[0], generator=generator)[:MAX_POINTS_FOR_DENSITIES]]


def _plot_distances(x: torch.Tensor, y: torch.Tensor, tx: torch.Tensor, path: Path) -> dict[str, float]:
    plt = _pyplot()
    count = min(x.shape[0], MAX_POINTS_FOR_DENSITIES)
    index = _subsample(torch.arange(x.shape[0]))[:count]
    x, y, tx = (cloud[index].double() for cloud in (x, y, tx))
    within = {"X–X": torch.pdist(x), "T(X)–T(X)": torch.pdist(tx), "Y–Y": torch.pdist(y)}
    cross = {"X–Y": torch.cdist(x, y).flatten(), "T(X)–Y": torch.cdist(tx, y).flatten()}
    figure, axes = plt.subplots(1, 2, figsize=(12, 4))
    for axis, groups, title in (
        (axes[0], within, "within-cloud pairwise distances"),
        (axes[1], cross, "cross distances to video embeddings Y"),
    ):
        for label, values in groups.items():
            axis.hist(values.numpy(), bins=80, density=True, histtype="step", linewidth=1.6, label=label)
        axis.set_title(title)
        axis.set_xlabel("Euclidean distance")
        axis.set_ylabel("density")
        axis.grid(alpha=0.3)
        axis.legend()
    _save_figure(figure, path)
    plt.close(figure)
    return {f"mean {label}": float(values.mean()) for label, values in {**within, **cross}.items()}


def write_fit_report(
    out_dir: str | Path,
    history: list[dict[str, Any]],
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    tx_val: torch.Tensor,
    metrics: dict[str, float],
    title: str = "OT map fit report",
    *,
    splits: dict[str, Any] | None = None,
    selection_metrics: dict[str, float] | None = None,
    selected: tuple[str, int] | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write ``out_dir/report.md`` with ``curves.png`` and ``distances.png``; returns the report path.

    Args:
        history: :attr:`FitResult.history` (may be empty, e.g. for ``gaussian``/``identity`` maps).
        x_val, y_val, tx_val: held-out text ``[V, D]``, video ``[V, D]`` and mapped text ``T(x_val)``,
            all in the map's normalisation convention.
        metrics: final metrics (e.g. :func:`~pisces_cli.ot.maps.metrics.map_metrics`) on ``x_val``.
        splits: sizes and rule of the train / selection / report splits (``x_val`` is the report split).
        selection_metrics: the same metrics on the selection split (the one that chose the checkpoint).
        selected: the rule that chose the shipped neural checkpoint and that checkpoint's step.
        notes: what the reader of the metrics must know, listed under them.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x_cpu, y_cpu, tx_cpu = (cloud.detach().float().cpu() for cloud in (x_val, y_val, tx_val))
    lines = [f"# {title}", "", f"Held-out pairs: {x_cpu.shape[0]}, embedding dim: {x_cpu.shape[1]}", ""]
    if splits:
        lines += [
            f"Splits: {splits['train']} pairs train, {splits['selection']} select the checkpoint, "
            f"{splits['report']} report the metrics below (seed {splits['seed']}; {splits['rule']}).",
            "",
        ]
    if selection_metrics:
        lines += ["## Metrics", "", "| metric | report split | selection split |", "|---|---|---|"]
        lines += [
            f"| {name} | {value:.4f} | {selection_metrics.get(name, float('nan')):.4f} |"
            for name, value in metrics.items()
        ]
        lines += ["", "The report split never took part in training or in choosing the checkpoint."]
    else:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in metrics.items()]
    if selected:
        lines += ["", f"The shipped map is the checkpoint of step {selected[1]} (chosen by: {selected[0]})."]
    if notes:
        lines += ["", *(f"**Note:** {note}." for note in notes)]
    lines += [
        "",
        "mknn: mean fraction of the k cosine nearest neighbours shared within text and within video "
        "(before: X vs Y, after: T(X) vs Y). spearman: rank correlation of the N(N−1)/2 pairwise "
        "distances of X and T(X).",
        "",
    ]
    if history:
        _plot_curves(history, out_dir / "curves.png")
        lines += ["## Training curves (metrics on the selection split)", "", "![curves](curves.png)", ""]
        last = history[-1]
        lines += [f"Last evaluation at step {last['step']}.", ""]
    means = _plot_distances(x_cpu, y_cpu, tx_cpu, out_dir / "distances.png")
    lines += [
        "## Pairwise distances",
        "",
        "![distances](distances.png)",
        "",
        "| pair | mean distance |",
        "|---|---|",
    ]
    lines += [f"| {label.removeprefix('mean ')} | {value:.4f} |" for label, value in means.items()]
    report_path = out_dir / "report.md"
    atomic_write_bytes(report_path, ("\n".join(lines) + "\n").encode())
    return report_path
