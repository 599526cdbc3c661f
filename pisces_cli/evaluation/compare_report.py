"""Compare two evaluation runs item by item, and write the comparison as one self-contained HTML page.

:func:`compare_runs` matches items (prompts, videos) by id and reports, per metric, the means of both
runs, the mean difference B − A with a paired bootstrap interval, and B's win rate.
:func:`write_compare_html` renders it: a bar chart of the differences with their intervals, one A-vs-B
scatter per metric, and optional frame strips of the items B improved and worsened most. Images are
inline base64 PNGs; the page references nothing outside itself.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pisces_cli.atomic import atomic_write_text
from pisces_cli.errors import UsageError
from pisces_cli.evaluation.display import fixed, interval
from pisces_cli.evaluation.stats import paired_bootstrap_ci, win_rate

PerItemScores = Mapping[str, Mapping[str, float]]  # item_id -> metric -> score


@dataclass(frozen=True)
class MetricComparison:
    """One metric over the items both runs scored (finite in both).

    ``diff = mean_b − mean_a``; ``ci_low``/``ci_high`` its paired bootstrap interval; ``win_rate`` the
    fraction of items where B > A (ties ½).
    """

    metric: str
    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    confidence: float
    win_rate: float


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare_runs`.

    Attributes:
        metrics: one :class:`MetricComparison` per metric, in input order.
        item_scores: metric -> (item ids ``[n]``, A scores ``[n]``, B scores ``[n]``) for the matched items.
        only_in_a, only_in_b: item ids present in one run only (left out of every statistic).
    """

    label_a: str
    label_b: str
    metrics: tuple[MetricComparison, ...]
    item_scores: dict[str, tuple[tuple[str, ...], np.ndarray, np.ndarray]]
    only_in_a: tuple[str, ...] = field(default=())
    only_in_b: tuple[str, ...] = field(default=())
    n_boot: int = 2000
    seed: int = 0

    def metric(self, name: str) -> MetricComparison:
        """The comparison of metric ``name``."""
        for metric in self.metrics:
            if metric.metric == name:
                return metric
        raise UsageError(
            f"metric {name!r} is not in this comparison (have: {[m.metric for m in self.metrics]})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view (summary statistics and matched per-item scores)."""
        return {
            "label_a": self.label_a,
            "label_b": self.label_b,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "metrics": [asdict(m) for m in self.metrics],
            "only_in_a": list(self.only_in_a),
            "only_in_b": list(self.only_in_b),
            "items": {
                metric: {
                    item: [float(a), float(b)] for item, a, b in zip(ids, a_scores, b_scores, strict=True)
                }
                for metric, (ids, a_scores, b_scores) in self.item_scores.items()
            },
        }

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of :meth:`to_dict` (NaN written as null)."""
        return json.dumps(_nan_to_none(self.to_dict()), indent=indent)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def compare_runs(
    per_item_a: PerItemScores,
    per_item_b: PerItemScores,
    *,
    metrics: Sequence[str] | None = None,
    label_a: str = "A",
    label_b: str = "B",
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Comparison:
    """Compare run B against run A on the items both scored.

    Args:
        per_item_a, per_item_b: item id -> metric name -> score (higher is better).
        metrics: metrics to compare; default: every metric present in both runs, in A's order.
        label_a, label_b: names of the runs for reports.
        n_boot, seed, confidence: paired bootstrap settings (:func:`~pisces_cli.evaluation.stats.paired_bootstrap_ci`).

    Raises:
        UsageError: the runs share no item id, a requested metric is absent from both, or no metric is shared.
    """
    common_ids = [item for item in per_item_a if item in per_item_b]
    if not common_ids:
        raise UsageError(f"runs {label_a!r} and {label_b!r} share no item id; nothing to compare")
    only_in_a = tuple(item for item in per_item_a if item not in per_item_b)
    only_in_b = tuple(item for item in per_item_b if item not in per_item_a)

    if metrics is None:
        metrics_a = list(dict.fromkeys(m for item in common_ids for m in per_item_a[item]))
        metrics_b = {m for item in common_ids for m in per_item_b[item]}
        metric_names = [m for m in metrics_a if m in metrics_b]
        if not metric_names:
            raise UsageError(f"runs {label_a!r} and {label_b!r} share no metric name")
    else:
        metric_names = list(metrics)
        for name in metric_names:
            if not any(name in per_item_a[i] and name in per_item_b[i] for i in common_ids):
                raise UsageError(f"metric {name!r} is not scored by both runs {label_a!r} and {label_b!r}")

    comparisons: list[MetricComparison] = []
    item_scores: dict[str, tuple[tuple[str, ...], np.ndarray, np.ndarray]] = {}
    for name in metric_names:
        ids, a_values, b_values = [], [], []
        for item in common_ids:
            a_value = float(per_item_a[item].get(name, math.nan))
            b_value = float(per_item_b[item].get(name, math.nan))
            if math.isfinite(a_value) and math.isfinite(b_value):
                ids.append(item)
                a_values.append(a_value)
                b_values.append(b_value)
        a_array = np.asarray(a_values, dtype=np.float64)
        b_array = np.asarray(b_values, dtype=np.float64)
        ci = paired_bootstrap_ci(a_array, b_array, n_boot=n_boot, seed=seed, confidence=confidence)
        comparisons.append(
            MetricComparison(
                metric=name,
                n=len(ids),
                mean_a=float(a_array.mean()) if ids else math.nan,
                mean_b=float(b_array.mean()) if ids else math.nan,
                diff=ci.estimate,
                ci_low=ci.low,
                ci_high=ci.high,
                confidence=confidence,
                win_rate=win_rate(a_array, b_array),
            )
        )
        item_scores[name] = (tuple(ids), a_array, b_array)
    return Comparison(
        label_a=label_a,
        label_b=label_b,
        metrics=tuple(comparisons),
        item_scores=item_scores,
        only_in_a=only_in_a,
        only_in_b=only_in_b,
        n_boot=n_boot,
        seed=seed,
    )


def largest_changes(comparison: Comparison, metric: str, count: int = 3) -> tuple[list[str], list[str]]:
    """Item ids of the ``count`` largest wins (B − A most positive) and losses (most negative) on ``metric``.

    Only strictly positive differences count as wins and strictly negative ones as losses.
    """
    ids, a_scores, b_scores = comparison.item_scores[comparison.metric(metric).metric]
    diffs = b_scores - a_scores
    order = np.argsort(-diffs, kind="stable")
    wins = [ids[i] for i in order[:count] if diffs[i] > 0]
    losses = [ids[i] for i in order[::-1][:count] if diffs[i] < 0]
    return wins, losses


# --------------------------------------------------------------------------------------------- HTML


def _figure_png(figure: Any) -> str:
    """Base64 PNG of a matplotlib figure, rendered with the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _array_png(image: np.ndarray) -> str:
    """Base64 PNG of a uint8 image ``[H, W, 3]``."""
    import matplotlib.image

    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, image, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _new_axes(width: float, height: float) -> tuple[Any, Any]:
    """A pyplot-free figure (no global backend state) and its single axes."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


def _difference_chart(comparison: Comparison) -> str:
    metrics = comparison.metrics
    figure, axes = _new_axes(7.5, 0.55 * len(metrics) + 1.4)
    positions = np.arange(len(metrics))
    diffs = np.array([m.diff for m in metrics])
    lower = np.array([m.diff - m.ci_low for m in metrics])
    upper = np.array([m.ci_high - m.diff for m in metrics])
    colours = ["#2a9d8f" if d >= 0 else "#e76f51" for d in diffs]
    axes.barh(positions, diffs, color=colours, xerr=np.vstack([lower, upper]), capsize=4, ecolor="#333333")
    axes.axvline(0.0, color="#333333", linewidth=0.8)
    axes.set_yticks(positions, [m.metric for m in metrics])
    axes.invert_yaxis()
    level = int(round(100 * metrics[0].confidence)) if metrics else 95
    axes.set_xlabel(
        f"{comparison.label_b} − {comparison.label_a} (mean difference, {level}% paired bootstrap CI)"
    )
    axes.grid(axis="x", alpha=0.3)
    return _figure_png(figure)


def _scatter(comparison: Comparison, metric: str) -> str:
    _, a_scores, b_scores = comparison.item_scores[metric]
    figure, axes = _new_axes(3.6, 3.6)
    axes.scatter(a_scores, b_scores, s=14, alpha=0.7, color="#264653")
    if a_scores.size:
        low = float(min(a_scores.min(), b_scores.min()))
        high = float(max(a_scores.max(), b_scores.max()))
        pad = 0.05 * (high - low) if high > low else 0.5
        axes.plot(
            [low - pad, high + pad], [low - pad, high + pad], color="#999999", linewidth=1, linestyle="--"
        )
        axes.set_xlim(low - pad, high + pad)
        axes.set_ylim(low - pad, high + pad)
    axes.set_xlabel(comparison.label_a)
    axes.set_ylabel(comparison.label_b)
    axes.set_title(metric, fontsize=10)
    axes.set_aspect("equal", adjustable="box")
    return _figure_png(figure)


def _frame_strip(frames: np.ndarray, max_frames: int) -> np.ndarray:
    """Up to ``max_frames`` evenly spaced frames of ``[T, H, W, 3]`` uint8, side by side ``[H, k·W, 3]``."""
    array = np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise UsageError(f"frame strips must be uint8 [T, H, W, 3], got {array.dtype} {array.shape}")
    indices = np.unique(
        np.linspace(0, array.shape[0] - 1, min(max_frames, array.shape[0])).round().astype(int)
    )
    return np.concatenate(list(array[indices]), axis=1)


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1180px;
       color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 4px 10px; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.pos { color: #1d7a6f; } .neg { color: #c0492b; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
.strip { margin: 10px 0 18px 0; overflow-x: auto; }
.strip img { height: 120px; width: auto; display: block; margin: 2px 0; image-rendering: pixelated; }
.label { font-size: 0.85em; color: #555; }
"""


def _summary_table(comparison: Comparison) -> str:
    rows = []
    for m in comparison.metrics:
        css = "pos" if m.diff > 0 else "neg" if m.diff < 0 else ""
        rows.append(
            f"<tr><td>{html.escape(m.metric)}</td><td>{m.n}</td><td>{fixed(m.mean_a)}</td>"
            f"<td>{fixed(m.mean_b)}</td><td class='{css}'>{fixed(m.diff, signed=True)}</td>"
            f"<td>{interval(m.ci_low, m.ci_high, signed=True)}</td><td>{fixed(m.win_rate, 3)}</td></tr>"
        )
    label_a, label_b = html.escape(comparison.label_a), html.escape(comparison.label_b)
    level = int(round(100 * comparison.metrics[0].confidence)) if comparison.metrics else 95
    return (
        "<table><thead><tr><th>metric</th><th>n</th>"
        f"<th>mean {label_a}</th><th>mean {label_b}</th><th>{label_b} − {label_a}</th>"
        f"<th>{level}% CI</th><th>win rate of {label_b}</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _img(png_base64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png_base64}">'


def _strips_section(
    comparison: Comparison,
    frame_strips: Mapping[str, tuple[np.ndarray, np.ndarray]],
    metric: str,
    count: int,
    max_frames: int,
) -> str:
    wins, losses = largest_changes(comparison, metric, count=len(comparison.item_scores[metric][0]))
    wins = [item for item in wins if item in frame_strips][:count]
    losses = [item for item in losses if item in frame_strips][:count]
    ids, a_scores, b_scores = comparison.item_scores[metric]
    position = {item: index for index, item in enumerate(ids)}
    parts = [
        f"<h2>Largest changes on {html.escape(metric)} (top: {html.escape(comparison.label_a)}, "
        f"bottom: {html.escape(comparison.label_b)})</h2>"
    ]
    for heading, items in ((f"{comparison.label_b} better", wins), (f"{comparison.label_b} worse", losses)):
        parts.append(f"<h3>{html.escape(heading)}</h3>")
        if not items:
            parts.append("<p class='label'>none among the items with frames</p>")
        for item in items:
            frames_a, frames_b = frame_strips[item]
            a_value, b_value = a_scores[position[item]], b_scores[position[item]]
            parts.append(
                f"<div class='strip'><div class='label'>{html.escape(item)} — {html.escape(comparison.label_a)} "
                f"{fixed(a_value)} → {html.escape(comparison.label_b)} {fixed(b_value)} "
                f"(Δ {fixed(b_value - a_value, signed=True)})</div>"
                + _img(_array_png(_frame_strip(frames_a, max_frames)), f"{item} {comparison.label_a}")
                + _img(_array_png(_frame_strip(frames_b, max_frames)), f"{item} {comparison.label_b}")
                + "</div>"
            )
    return "".join(parts)


def render_compare_html(
    comparison: Comparison,
    *,
    frame_strips: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    strip_metric: str | None = None,
    strip_count: int = 3,
    strip_max_frames: int = 8,
    title: str | None = None,
) -> str:
    """The HTML text of :func:`write_compare_html` (same arguments, no file written)."""
    if not comparison.metrics:
        raise UsageError("comparison has no metrics to report")
    heading = title or f"{comparison.label_b} vs {comparison.label_a}"
    body = [f"<h1>{html.escape(heading)}</h1>"]
    body.append(
        f"<p class='label'>Paired bootstrap: {comparison.n_boot} resamples, seed {comparison.seed}. "
        f"Items only in {html.escape(comparison.label_a)}: {len(comparison.only_in_a)}; only in "
        f"{html.escape(comparison.label_b)}: {len(comparison.only_in_b)} (left out).</p>"
    )
    body.append(_summary_table(comparison))
    body.append(
        "<h2>Mean differences</h2>" + _img(_difference_chart(comparison), "mean differences with CIs")
    )
    body.append("<h2>Per-item scores</h2><div class='grid'>")
    body.extend(_img(_scatter(comparison, m.metric), f"{m.metric} scatter") for m in comparison.metrics)
    body.append("</div>")
    if frame_strips:
        metric = strip_metric or comparison.metrics[0].metric
        comparison.metric(metric)  # validates the name
        body.append(_strips_section(comparison, frame_strips, metric, strip_count, strip_max_frames))
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(heading)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def write_compare_html(
    path: str | Path,
    comparison: Comparison,
    *,
    frame_strips: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    strip_metric: str | None = None,
    strip_count: int = 3,
    strip_max_frames: int = 8,
    title: str | None = None,
) -> Path:
    """Write a self-contained HTML report of ``comparison`` (atomically) and return its path.

    Args:
        path: output ``.html`` file.
        comparison: from :func:`compare_runs`.
        frame_strips: optional item id -> (frames of A, frames of B), each uint8 ``[T, H, W, 3]``; the
            ``strip_count`` largest wins and losses on ``strip_metric`` (default: the first metric) that
            have frames are shown, up to ``strip_max_frames`` evenly spaced frames each.
        title: page heading (default "B vs A").
    """
    output = Path(path)
    atomic_write_text(
        output,
        render_compare_html(
            comparison,
            frame_strips=frame_strips,
            strip_metric=strip_metric,
            strip_count=strip_count,
            strip_max_frames=strip_max_frames,
            title=title,
        ),
    )
    return output
