"""Data, analysis and report helpers of the world experiment (no models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pisces_cli.errors import UsageError
from pisces_cli.world.experiment import PATH_PREFIX, ExperimentSettings, build_data, data_seed, rebase
from pisces_cli.world.experiment_data import corruption_plan, judge_clip, label_folder, read_jsonl
from pisces_cli.world.experiment_report import (
    agreement_markdown,
    generation_accuracy,
    generation_markdown,
    reward_agreement,
    write_plots,
)
from pisces_cli.world.experiment_stats import spearman


def test_corruption_plan_counts_and_rejects_unknown_kinds() -> None:
    plan = corruption_plan(["blur", "wrong_color"], [0.5, 1.0], 2)
    assert plan[:2] == [("clean", 0.0)] * 2
    assert len(plan) == 2 + 2 * 2 * 2
    assert plan.count(("wrong_color", 1.0)) == 2
    with pytest.raises(UsageError):
        corruption_plan(["melt"], [1.0], 1)


def test_rebase_rewrites_only_prefixed_paths(tmp_path: Path) -> None:
    data = {"a": f"{PATH_PREFIX}/x/y", "b": ["keep", f"{PATH_PREFIX}"], "c": 3, "d": f"{PATH_PREFIX}-not"}
    out = rebase(data, tmp_path)
    assert out == {
        "a": str(tmp_path / "x/y"),
        "b": ["keep", str(tmp_path)],
        "c": 3,
        "d": f"{PATH_PREFIX}-not",
    }


def test_data_seeds_differ_per_part_and_follow_the_recipe_seed() -> None:
    parts = ["encoder", "generator", "train", "heldout", "finetune", "prompts"]
    seeds = {data_seed(0, p) for p in parts} | {data_seed(1, p) for p in parts}
    assert len(seeds) == 2 * len(parts)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExperimentSettings]:
    root = tmp_path_factory.mktemp("data")
    settings = ExperimentSettings(
        train_clips=2, kinds=("blur", "wrong_color", "wrong_direction"), severities=(1.0,), per_cell=3,
        finetune_clips=1, heldout_prompts=2,
    )  # fmt: skip
    build_data(root, settings, 0, root / "prompts/heldout.txt")
    return root, settings


def test_build_data_writes_the_folders_and_the_oracle_sees_the_corruptions(
    built: tuple[Path, ExperimentSettings],
) -> None:
    root, _ = built
    plan = read_jsonl(root / "labels/heldout_plan.jsonl")
    assert [r["kind"] for r in plan] == ["clean"] * 3 + ["blur"] * 3 + ["wrong_color"] * 3 + [
        "wrong_direction"
    ] * 3
    assert len(read_jsonl(root / "clips/train/prompts.jsonl")) == 2
    assert len((root / "prompts/heldout.txt").read_text().splitlines()) == 2
    rows = label_folder(root / "clips/heldout", root / "labels/heldout.jsonl", extra=plan)
    assert read_jsonl(root / "labels/heldout.jsonl") == json.loads(json.dumps(rows))
    by_kind: dict[str, list[dict]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row)
    clean_fidelity = np.mean([r["prompt_fidelity"] for r in by_kind["clean"]])
    assert clean_fidelity > 0.9
    # attribute corruptions break exactly the named attribute for the oracle; blur lowers quality
    assert not any(r["color"] for r in by_kind["wrong_color"])
    assert not any(r["direction"] for r in by_kind["wrong_direction"])
    assert np.mean([r["quality"] for r in by_kind["blur"]]) < np.mean(
        [r["quality"] for r in by_kind["clean"]]
    )


def test_build_data_is_deterministic(built: tuple[Path, ExperimentSettings], tmp_path: Path) -> None:
    root, settings = built
    build_data(tmp_path, settings, 0, tmp_path / "prompts/heldout.txt")
    for name in ("clips/heldout/prompts.jsonl", "labels/heldout_plan.jsonl", "prompts/heldout.txt"):
        assert (tmp_path / name).read_bytes() == (root / name).read_bytes()
    from pisces_cli.io.video import read_frames

    for folder in ("clips/heldout", "clips/train", "clips/finetune"):
        for clip in sorted((root / folder).glob("*.mp4")):
            assert np.array_equal(read_frames(str(tmp_path / folder / clip.name)), read_frames(str(clip))), (
                clip
            )


def test_judge_clip_summary_fields() -> None:
    from pisces_cli.world import make_clips

    frames, text, _ = make_clips(5, 1, frames=9, size=32)[0]
    row = judge_clip(frames, text)
    assert set(row) == {"color", "shape", "count", "direction", "prompt_fidelity", "quality", "all_four"}
    assert row["all_four"] is True and row["prompt_fidelity"] == 1.0


def _synthetic_rows(n: int = 40, seed: int = 0) -> tuple[list[dict], dict[str, list[dict]]]:
    rng = np.random.default_rng(seed)
    quality = rng.uniform(size=n)
    fidelity = rng.uniform(size=n)
    labels = [
        {
            "file": f"c{i}.mp4",
            "quality": quality[i],
            "prompt_fidelity": fidelity[i],
            "kind": ["clean", "blur"][i % 2],
        }
        for i in range(n)
    ]
    with_ot = [
        {
            "video": f"c{i}.mp4",
            "quality": quality[i] ** 2,
            "quality_no_ot": rng.uniform(),
            "semantic": fidelity[i],
            "error": None,
        }
        for i in range(n)
    ]
    without = [{"video": f"c{i}.mp4", "semantic": rng.uniform(), "error": None} for i in range(n)]
    return labels, {"token_ot": with_ot, "no_token_ot": without}


def test_reward_agreement_on_rewards_with_known_rank_agreement(tmp_path: Path) -> None:
    labels, scores = _synthetic_rows()
    result = reward_agreement(labels, scores, n_boot=200, seed=0)
    rho = result["rho"]
    assert rho["quality (OT map)"]["quality"]["estimate"] == pytest.approx(1.0)  # monotone map of the oracle
    assert rho["semantic (partial OT)"]["prompt_fidelity"]["estimate"] == pytest.approx(1.0)
    no_ot = np.array([r["semantic"] for r in scores["no_token_ot"]])
    target = np.array([r["prompt_fidelity"] for r in labels])
    assert rho["semantic (no OT)"]["prompt_fidelity"]["estimate"] == pytest.approx(spearman(no_ot, target))
    gain = result["ot_gain"]["semantic (partial OT) − semantic (no OT)"]["prompt_fidelity"]
    assert gain["low"] > 0
    combined = np.array([0.5 * (r["quality"] + r["prompt_fidelity"]) for r in labels])
    q = np.array([r["quality"] for r in labels])
    assert rho["quality (OT map)"]["combined"]["estimate"] == pytest.approx(spearman(q, combined))
    assert result["n"] == 40 and set(result["by_kind"]) == {"blur"}
    text = agreement_markdown(result)
    assert "| quality (OT map) | 1.000" in text and "semantic (partial OT) − semantic (no OT)" in text


def test_generation_accuracy_hand_computed_and_paired_by_file() -> None:
    def row(name: str, ok: bool, quality: float) -> dict:
        return {"file": name, "color": ok, "shape": True, "count": None, "direction": ok, "all_four": ok,
                "prompt_fidelity": 1.0 if ok else 0.5, "quality": quality}  # fmt: skip

    labels = {
        "base": [row("a", False, 0.5), row("b", True, 0.5), row("c", False, 0.5)],
        "pisces": [row("c", True, 0.7), row("a", True, 0.6), row("b", True, 0.5)],
    }
    out = generation_accuracy(labels, n_boot=100, seed=0)
    assert out["metrics"]["base"]["color"]["estimate"] == pytest.approx(1 / 3)
    assert out["metrics"]["pisces"]["color"]["estimate"] == pytest.approx(1.0)
    assert np.isnan(out["metrics"]["base"]["count"]["estimate"])
    assert out["vs_base"]["pisces"]["quality"]["estimate"] == pytest.approx(0.1)  # a +0.1, b 0, c +0.2
    assert out["vs_base"]["pisces"]["prompt_fidelity"]["estimate"] == pytest.approx(1 / 3)
    text = generation_markdown(out)
    assert "| pisces | 3 |" in text and "n/a" in text


def test_plots_are_written(tmp_path: Path) -> None:
    labels, scores = _synthetic_rows(12)
    agreement = reward_agreement(labels, scores, n_boot=20, seed=0)
    accuracy = generation_accuracy(
        {"base": [{"file": "x", "color": True, "quality": 0.5}]}, n_boot=10, seed=0
    )
    paths = write_plots(tmp_path, agreement, accuracy)
    assert [p.name for p in paths] == ["agreement.png", "generation.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def _interval(estimate: float, low: float, high: float) -> dict[str, float]:
    return {"estimate": estimate, "low": low, "high": high, "n": 50}


def test_findings_take_every_number_from_the_results_and_word_them_by_the_ci() -> None:
    from pisces_cli.world.experiment_report import findings_markdown, token_prior_effect

    labels, scores = _synthetic_rows()
    agreement = reward_agreement(labels, scores, n_boot=200, seed=0)
    with_prior = np.array([r["semantic"] for r in scores["token_ot"]])
    without = np.array([r["semantic"] for r in scores["no_token_ot"]])
    prior = agreement["token_prior"]
    assert prior == token_prior_effect({"semantic (partial OT)": with_prior, "semantic (no OT)": without})
    assert prior["mean_abs_change"] == pytest.approx(np.abs(with_prior - without).mean())
    assert prior["max_abs_change"] == pytest.approx(np.abs(with_prior - without).max())
    assert prior["semantic_std"] == pytest.approx(np.std(with_prior, ddof=1))
    gain = agreement["ot_gain"]["quality (OT map) − quality (no OT)"]["quality"]
    accuracy = {
        "metrics": {
            arm: {m: _interval(0.1 * k, 0.0, 0.2) for m in ("color", "shape", "count", "direction", "all_four",
                                                            "prompt_fidelity", "quality")}
            for k, arm in enumerate(("base", "pisces", "no_ot"))
        },  # fmt: skip
        "vs_base": {
            "pisces": {
                **{m: _interval(0.0, -0.05, 0.05) for m in ("shape", "direction", "all_four", "prompt_fidelity")},
                "color": _interval(0.117, 0.031, 0.211),
                "count": _interval(-0.141, -0.234, -0.047),
                "quality": _interval(0.047, 0.026, 0.068),
            },
        },
        "between_arms": {
            "pisces − no_ot": {"prompt_fidelity": _interval(-0.017, -0.05, 0.02), "quality": _interval(-0.063, -0.08, -0.04)}
        },
    }  # fmt: skip
    text = findings_markdown(agreement, accuracy)
    assert text.startswith("## What this shows")
    assert f"{gain['estimate']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}]" in text
    assert f"by {prior['mean_abs_change']:.3f} on average (at most {prior['max_abs_change']:.3f})" in text
    assert f"standard deviation across clips is {prior['semantic_std']:.3f}" in text
    # the semantic reward follows prompt fidelity exactly with the prior and randomly without: "raises"
    assert "Partial token OT raises the semantic reward's agreement" in text
    assert "pisces − base: prompt fidelity +0.000 [-0.050, +0.050] (no significant difference)" in text
    assert (
        "attributes whose CI excludes 0: color +0.117 [+0.031, +0.211], count -0.141 [-0.234, -0.047]."
        in text
    )
    assert (
        "pisces − no_ot (same prompts and seeds): prompt fidelity -0.017 [-0.050, +0.020] (no significant "
        in text
    )
    assert "quality -0.063 [-0.080, -0.040] (worse)" in text
    assert "Direction accuracy is at most 0.200 in every arm." in text
    assert findings_markdown(None, None) == ""


def test_generation_accuracy_compares_pisces_with_no_ot_on_the_same_files() -> None:
    def rows(values: dict[str, float]) -> list[dict]:
        return [{"file": f, "quality": q, "prompt_fidelity": 0.5} for f, q in values.items()]

    labels = {
        "base": rows({"a": 0.5, "b": 0.5, "c": 0.5}),
        "pisces": rows({"a": 0.6, "b": 0.7, "c": 0.9}),
        "no_ot": rows({"c": 0.2, "b": 0.7}),  # no video for "a", another order: pairing is by file
    }
    out = generation_accuracy(labels, n_boot=50, seed=0)
    assert out["between_arms"]["pisces − no_ot"]["quality"]["estimate"] == pytest.approx((0.0 + 0.7) / 2)
    assert "| pisces − no_ot |" in generation_markdown(out)
