"""Analysis and report of the world experiment: Spearman tables (claim 1), oracle accuracy tables (claim 2).

Inputs are plain rows (dicts) read from the stages' ``scores.jsonl`` and the experiment's ``labels.jsonl``;
outputs are JSON-ready dicts, a markdown report and PNG plots (matplotlib, Agg backend).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pisces_cli.world.experiment_data import ORACLE_ATTRIBUTES
from pisces_cli.world.experiment_stats import (
    mean_ci,
    paired_mean_difference_ci,
    spearman_ci,
    spearman_difference_ci,
)

#: Reward columns compared in claim 1: name in the report → (score run, column of its scores.jsonl).
REWARDS: dict[str, tuple[str, str]] = {
    "quality (OT map)": ("token_ot", "quality"),
    "quality (no OT)": ("token_ot", "quality_no_ot"),
    "semantic (partial OT)": ("token_ot", "semantic"),
    "semantic (no OT)": ("no_token_ot", "semantic"),
}
#: Paired comparisons of claim 1: (with OT, without OT).
OT_PAIRS: tuple[tuple[str, str], ...] = (
    ("quality (OT map)", "quality (no OT)"),
    ("semantic (partial OT)", "semantic (no OT)"),
)
#: Oracle targets of claim 1.
TARGETS: tuple[str, ...] = ("quality", "prompt_fidelity", "combined")
#: Metrics of claim 2 (oracle per-attribute accuracy, then scores).
GENERATION_METRICS: tuple[str, ...] = (*ORACLE_ATTRIBUTES, "all_four", "prompt_fidelity", "quality")


def oracle_target(label: dict[str, Any], target: str) -> float:
    """The oracle value a reward is compared with; ``combined`` = mean of prompt fidelity and quality."""
    if target == "combined":
        return 0.5 * (float(label["prompt_fidelity"]) + float(label["quality"]))
    return float(label[target])


def _column(rows_by_file: dict[str, dict[str, Any]], files: Sequence[str], column: str) -> np.ndarray:
    values = []
    for name in files:
        value = rows_by_file.get(name, {}).get(column)
        values.append(float(value) if isinstance(value, (int, float)) else math.nan)
    return np.asarray(values, dtype=np.float64)


def reward_agreement(
    labels: list[dict[str, Any]],
    scores: dict[str, list[dict[str, Any]]],
    *,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Spearman ρ of every reward with every oracle target over the held-out clips (claim 1).

    ``labels``: rows of ``labels.jsonl`` (``file`` + oracle fields); ``scores``: score-run name → rows of its
    ``scores.jsonl`` (``video`` = file). Returns ``{"rho": {reward: {target: Interval dict}},
    "ot_gain": {"<with> − <without>": {target: Interval dict}}, "n": items, "by_kind": ...}``.
    """
    files = [row["file"] for row in labels]
    by_run = {run: {r["video"]: r for r in rows if r.get("error") is None} for run, rows in scores.items()}
    columns = {
        name: _column(by_run[run], files, col) for name, (run, col) in REWARDS.items() if run in by_run
    }
    targets = {t: np.asarray([oracle_target(row, t) for row in labels]) for t in TARGETS}
    rho = {
        name: {t: spearman_ci(values, targets[t], n_boot=n_boot, seed=seed).to_dict() for t in TARGETS}
        for name, values in columns.items()
    }
    gain = {}
    for with_ot, without in OT_PAIRS:
        if with_ot in columns and without in columns:
            gain[f"{with_ot} − {without}"] = {
                t: spearman_difference_ci(
                    columns[without], columns[with_ot], targets[t], n_boot=n_boot, seed=seed
                ).to_dict()
                for t in TARGETS
            }
    by_kind: dict[str, dict[str, dict[str, float]]] = {}
    kinds = sorted({row.get("kind", "clean") for row in labels} - {"clean"})
    for kind in kinds:
        keep = np.asarray([row.get("kind") in ("clean", kind) for row in labels])
        if keep.sum() < 4:
            continue
        by_kind[kind] = {
            name: {
                t: spearman_ci(values[keep], targets[t][keep], n_boot=n_boot, seed=seed).estimate
                for t in TARGETS
            }
            for name, values in columns.items()
        }
    return {
        "rho": rho,
        "ot_gain": gain,
        "n": len(files),
        "by_kind": by_kind,
        "token_prior": token_prior_effect(columns),
    }


def token_prior_effect(columns: dict[str, np.ndarray]) -> dict[str, float] | None:
    """How much the token-OT prior moves the semantic reward, against how much that reward varies.

    ``{"n", "mean_abs_change", "max_abs_change", "semantic_std"}``: mean and largest ``|semantic (partial OT) −
    semantic (no OT)|`` over the clips with both, and the standard deviation (ddof 1) of the semantic reward
    with the prior across those clips. None when either column is missing.
    """
    with_prior, without = columns.get("semantic (partial OT)"), columns.get("semantic (no OT)")
    if with_prior is None or without is None:
        return None
    keep = np.isfinite(with_prior) & np.isfinite(without)
    if keep.sum() < 2:
        return None
    change = np.abs(with_prior[keep] - without[keep])
    return {
        "n": int(keep.sum()),
        "mean_abs_change": float(change.mean()),
        "max_abs_change": float(change.max()),
        "semantic_std": float(np.std(with_prior[keep], ddof=1)),
    }


#: Arms compared with each other in claim 2: (arm, reference arm) → ``arm − reference``, paired by file.
ARM_PAIRS: tuple[tuple[str, str], ...] = (("pisces", "no_ot"),)


def _paired_by_file(
    reference: list[dict[str, Any]], arm: list[dict[str, Any]], n_boot: int, seed: int
) -> dict[str, dict[str, float]]:
    """``arm − reference`` per metric over the files both judged (same prompt and seed)."""
    ref = {r["file"]: r for r in reference}
    mine = {r["file"]: r for r in arm}
    files = [f for f in mine if f in ref]
    out = {}
    for metric in GENERATION_METRICS:
        a = np.asarray([_as_float(ref[f].get(metric)) for f in files])
        b = np.asarray([_as_float(mine[f].get(metric)) for f in files])
        out[metric] = paired_mean_difference_ci(a, b, n_boot=n_boot, seed=seed).to_dict()
    return out


def generation_accuracy(
    labels: dict[str, list[dict[str, Any]]], *, base: str = "base", n_boot: int, seed: int
) -> dict[str, Any]:
    """Per-arm oracle accuracy per attribute and scores with CIs, each arm − ``base`` and the arm pairs of
    :data:`ARM_PAIRS` (all paired by file).

    ``labels``: arm name → rows of its ``labels.jsonl``. Returns ``{"metrics": {arm: {metric: Interval}},
    "vs_base": {arm: {metric: Interval}}, "between_arms": {"a − b": {metric: Interval}}}`` (Interval dicts).
    """
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    vs_base: dict[str, dict[str, dict[str, float]]] = {}
    base_rows = {r["file"]: r for r in labels.get(base, [])}
    for arm, rows in labels.items():
        metrics[arm] = {}
        for metric in GENERATION_METRICS:
            values = np.asarray([_as_float(r.get(metric)) for r in rows])
            metrics[arm][metric] = mean_ci(values, n_boot=n_boot, seed=seed).to_dict()
        if arm == base or not base_rows:
            continue
        vs_base[arm] = _paired_by_file(labels[base], rows, n_boot, seed)
    between = {
        f"{arm} − {reference}": _paired_by_file(labels[reference], labels[arm], n_boot, seed)
        for arm, reference in ARM_PAIRS
        if arm in labels and reference in labels
    }
    return {"metrics": metrics, "vs_base": vs_base, "between_arms": between}


def _as_float(value: Any) -> float:
    if value is None:
        return math.nan
    return float(value)


def _fmt(interval: dict[str, float], signed: bool = False) -> str:
    estimate, low, high = interval["estimate"], interval["low"], interval["high"]
    if not math.isfinite(estimate):
        return "n/a"
    sign = "+" if signed else ""
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{estimate:{sign}.3f}"
    return f"{estimate:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def agreement_markdown(agreement: dict[str, Any]) -> str:
    """Markdown tables of claim 1: ρ per (reward, target) and the paired OT − no-OT differences."""
    lines = [
        f"Spearman ρ between each reward and the oracle over {agreement['n']} held-out clips "
        "(95 % bootstrap CI, clips resampled).",
        "",
        "| reward | " + " | ".join(f"ρ vs oracle {t}" for t in TARGETS) + " |",
        "|---|" + "---|" * len(TARGETS),
    ]
    for name, row in agreement["rho"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row[t]) for t in TARGETS) + " |")
    if agreement["ot_gain"]:
        lines += ["", "Paired difference of ρ, with OT − without OT (same clips, same resamples):", ""]
        lines += ["| comparison | " + " | ".join(TARGETS) + " |", "|---|" + "---|" * len(TARGETS)]
        for name, row in agreement["ot_gain"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(row[t], signed=True) for t in TARGETS) + " |")
    if agreement["by_kind"]:
        lines += [
            "",
            "ρ with the matching oracle target on clean + one corruption kind (point estimates):",
            "",
        ]
        names = list(agreement["rho"])
        lines += ["| kind | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for kind, row in agreement["by_kind"].items():
            cells = []
            for name in names:
                target = "quality" if name.startswith("quality") else "prompt_fidelity"
                value = row[name][target]
                cells.append(f"{value:.3f}" if math.isfinite(value) else "n/a")
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def generation_markdown(accuracy: dict[str, Any]) -> str:
    """Markdown tables of claim 2: oracle accuracy per arm, and each arm − base."""
    metrics = accuracy["metrics"]
    lines = [
        "Oracle accuracy per attribute (share of generated clips whose stated attribute is right), prompt "
        "fidelity and quality, mean [95 % bootstrap CI]:",
        "",
        "| arm | n | " + " | ".join(GENERATION_METRICS) + " |",
        "|---|---|" + "---|" * len(GENERATION_METRICS),
    ]
    for arm, row in metrics.items():
        n = max(int(v["n"]) for v in row.values())
        lines.append(f"| {arm} | {n} | " + " | ".join(_fmt(row[m]) for m in GENERATION_METRICS) + " |")
    for key, caption, first in (
        ("vs_base", "Paired difference arm − base (same prompts and seeds):", "arm"),
        ("between_arms", "Paired difference between arms (same prompts and seeds):", "arms"),
    ):
        if not accuracy.get(key):
            continue
        lines += ["", caption, "", f"| {first} | " + " | ".join(GENERATION_METRICS) + " |"]
        lines.append("|---|" + "---|" * len(GENERATION_METRICS))
        for name, row in accuracy[key].items():
            lines.append(
                f"| {name} | " + " | ".join(_fmt(row[m], signed=True) for m in GENERATION_METRICS) + " |"
            )
    return "\n".join(lines)


def verdict_word(interval: dict[str, float]) -> str:
    """``better`` / ``worse`` when the 95 % CI of a difference excludes 0, else ``no significant difference``."""
    low, high = interval["low"], interval["high"]
    if not (math.isfinite(low) and math.isfinite(high)):
        return "undetermined"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no significant difference"


def _moves(interval: dict[str, float], up: str = "raises", down: str = "lowers") -> str:
    word = verdict_word(interval)
    return {"better": up, "worse": down}.get(word, "does not significantly change")


def findings_markdown(agreement: dict[str, Any] | None, accuracy: dict[str, Any] | None) -> str:
    """``## What this shows``: the claims' figures in sentences, every number taken from the results.

    The wording that depends on a result (raises / lowers / does not change) follows the 95 % CI of the
    paired difference, so the text cannot say more than the numbers do.
    """
    lines = ["## What this shows", ""]
    if agreement is not None:
        rho, gain = agreement["rho"], agreement["ot_gain"]
        quality_gain = gain.get("quality (OT map) − quality (no OT)")
        if quality_gain is not None:
            mapped, plain = rho["quality (OT map)"], rho["quality (no OT)"]
            lines.append(
                f"- The OT map {_moves(quality_gain['quality'])} the quality reward's agreement with the oracle's "
                f"quality: ρ {_fmt(plain['quality'])} without the map, {_fmt(mapped['quality'])} with it (paired "
                f"difference {_fmt(quality_gain['quality'], signed=True)}). Its agreement with prompt fidelity: ρ "
                f"{_fmt(plain['prompt_fidelity'])} → {_fmt(mapped['prompt_fidelity'])} (difference "
                f"{_fmt(quality_gain['prompt_fidelity'], signed=True)})."
            )
        semantic_gain = gain.get("semantic (partial OT) − semantic (no OT)")
        if semantic_gain is not None:
            text = (
                f"- Partial token OT {_moves(semantic_gain['prompt_fidelity'])} the semantic reward's agreement "
                f"with prompt fidelity (paired difference {_fmt(semantic_gain['prompt_fidelity'], signed=True)})."
            )
            prior = agreement.get("token_prior")
            if prior:
                text += (
                    f" Over these {prior['n']} clips the token prior changes the semantic reward by "
                    f"{prior['mean_abs_change']:.3f} on average (at most {prior['max_abs_change']:.3f}), while "
                    f"the reward's standard deviation across clips is {prior['semantic_std']:.3f}."
                )
            lines.append(text)
    if accuracy is not None:
        for arm, row in accuracy["vs_base"].items():
            clear = [
                f"{metric} {_fmt(row[metric], signed=True)}"
                for metric in (*ORACLE_ATTRIBUTES, "all_four")
                if verdict_word(row[metric]) in ("better", "worse")
            ]
            lines.append(
                f"- {arm} − base: prompt fidelity {_fmt(row['prompt_fidelity'], signed=True)} "
                f"({verdict_word(row['prompt_fidelity'])}), quality {_fmt(row['quality'], signed=True)} "
                f"({verdict_word(row['quality'])}); attributes whose CI excludes 0: "
                + (", ".join(clear) if clear else "none")
                + "."
            )
        for pair, row in accuracy.get("between_arms", {}).items():
            lines.append(
                f"- {pair} (same prompts and seeds): prompt fidelity {_fmt(row['prompt_fidelity'], signed=True)} "
                f"({verdict_word(row['prompt_fidelity'])}), quality {_fmt(row['quality'], signed=True)} "
                f"({verdict_word(row['quality'])})."
            )
        direction = [row["direction"]["estimate"] for row in accuracy["metrics"].values()]
        finite = [value for value in direction if math.isfinite(value)]
        if finite:
            lines.append(f"- Direction accuracy is at most {max(finite):.3f} in every arm.")
    if len(lines) == 2:
        return ""
    return "\n".join(lines)


def _bars(ax: Any, groups: Sequence[str], series: dict[str, list[dict[str, float]]]) -> None:
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for k, (name, intervals) in enumerate(series.items()):
        est = np.asarray([i["estimate"] for i in intervals], dtype=float)
        low = np.asarray([i["low"] for i in intervals], dtype=float)
        high = np.asarray([i["high"] for i in intervals], dtype=float)
        err = np.vstack([np.nan_to_num(est - low), np.nan_to_num(high - est)])
        ax.bar(
            x + (k - (len(series) - 1) / 2) * width,
            np.nan_to_num(est),
            width,
            yerr=err,
            capsize=2,
            label=name,
        )
    ax.set_xticks(x, groups, rotation=20)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.legend(fontsize=7)


def write_plots(
    out_dir: Path, agreement: dict[str, Any] | None, accuracy: dict[str, Any] | None
) -> list[Path]:
    """``agreement.png`` (ρ per reward and target) and ``generation.png`` (accuracy per arm); returns paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pisces_cli.atomic import atomic_write_bytes

    written = []
    jobs = []
    if agreement is not None:
        series = {name: [row[t] for t in TARGETS] for name, row in agreement["rho"].items()}
        jobs.append(("agreement.png", list(TARGETS), series, "Spearman ρ with the oracle"))
    if accuracy is not None:
        series = {arm: [row[m] for m in GENERATION_METRICS] for arm, row in accuracy["metrics"].items()}
        jobs.append(("generation.png", list(GENERATION_METRICS), series, "oracle accuracy / score"))
    for name, groups, series, ylabel in jobs:
        fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
        _bars(ax, groups, series)
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        import io

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        atomic_write_bytes(out_dir / name, buffer.getvalue())
        written.append(out_dir / name)
    return written
