"""The world experiment's smoke version end to end (`pisces world run --quick`): every part, a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pisces_cli.errors import UsageError
from pisces_cli.world.experiment import ARMS, ExperimentSettings, run_world_experiment
from pisces_cli.world.experiment_data import read_jsonl
from pisces_cli.world.experiment_report import GENERATION_METRICS, REWARDS, TARGETS

STEPS = [
    "clips", "encoder", "embed", "fit-ot", "score", "label-heldout", "generator", "generate-base",
    *(f"finetune-{arm}" for arm in ARMS),
]  # fmt: skip


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("world") / "exp"
    return root, run_world_experiment(root, quick=True)


def test_every_step_runs_once_and_writes_the_report(quick_run) -> None:
    root, result = quick_run
    assert [s.name for s in result.steps] == STEPS
    assert not any(s.skipped for s in result.steps)
    for name in ("report.md", "results.json", "agreement.png", "generation.png", "recipe.yaml"):
        assert (root / name).is_file(), name
    report = (root / "report.md").read_text()
    assert "## Claim 1" in report and "## Claim 2" in report and "Verdict" in report
    # the findings are written by the report code from results.json, with the machine and the timings
    assert "## What this shows" in report and "Machine: " in report and "`pisces world run` took" in report
    results = json.loads((root / "results.json").read_text())
    prior = results["agreement"]["token_prior"]
    assert f"changes the semantic reward by {prior['mean_abs_change']:.3f} on average" in report


def test_claim1_scores_every_heldout_clip_with_and_without_ot(quick_run) -> None:
    root, result = quick_run
    settings = ExperimentSettings.quick()
    n_heldout = settings.per_cell * (1 + len(settings.kinds) * len(settings.severities))
    agreement = result.agreement
    assert agreement["n"] == n_heldout
    assert set(agreement["rho"]) == set(REWARDS)
    for row in agreement["rho"].values():
        assert set(row) == set(TARGETS)
        assert all(-1.0 <= v["estimate"] <= 1.0 for v in row.values())
    with_ot = read_jsonl(root / "run/scores/token_ot/scores.jsonl")
    without = read_jsonl(root / "run/scores/no_token_ot/scores.jsonl")
    assert len(with_ot) == len(without) == n_heldout
    assert all(r["error"] is None for r in with_ot + without)
    # the two score runs differ exactly in the token prior: the semantic rewards are not all identical
    assert [r["semantic"] for r in with_ot] != [r["semantic"] for r in without]
    assert [r["quality"] for r in with_ot] == pytest.approx([r["quality"] for r in without])
    assert [r["quality"] for r in with_ot] != [r["quality_no_ot"] for r in with_ot]


def test_claim2_finetunes_every_arm_and_judges_every_video(quick_run) -> None:
    root, result = quick_run
    n_prompts = ExperimentSettings.quick().heldout_prompts
    metrics = result.accuracy["metrics"]
    assert list(metrics) == ["base", *ARMS]
    for arm, row in metrics.items():
        assert set(row) == set(GENERATION_METRICS)
        assert row["quality"]["n"] == n_prompts, arm
        assert len(read_jsonl(root / f"labels/videos_{arm}.jsonl")) == n_prompts
    for arm in ARMS:
        resolved = (root / "run/finetune" / arm / "recipe.yaml").read_text()
        assert any(p.name.startswith("checkpoint-") for p in (root / "run/finetune" / arm).iterdir())
        if arm == "no_ot":
            assert "ot_map: null" in resolved
        if arm == "consistency":
            assert "quality: 0.0" in resolved and "semantic: 0.0" in resolved
    assert set(result.accuracy["vs_base"]) == set(ARMS)


def test_rerun_through_the_cli_skips_every_step_and_reproduces_the_numbers(quick_run, capsys) -> None:
    from pisces_cli.cli.main import main

    root, result = quick_run
    before = json.loads((root / "results.json").read_text())
    capsys.readouterr()
    assert main(["world", "run", "--quick", "--out", str(root)]) == 0
    assert f"nothing to do: every step in {root} was done by an earlier call" in capsys.readouterr().out
    after = json.loads((root / "results.json").read_text())
    assert all(step["skipped"] for step in after["steps"])
    assert after["agreement"] == before["agreement"]
    assert after["generation"] == before["generation"]


def test_another_recipe_in_the_same_folder_is_refused(quick_run) -> None:
    root, _ = quick_run
    with pytest.raises(UsageError, match="another recipe"):
        run_world_experiment(root, quick=True, overrides=["seed=1"])


def test_unknown_part_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="parts"):
        run_world_experiment(tmp_path, quick=True, parts=("everything",))


def test_a_second_run_with_the_same_seed_gives_the_same_numbers(quick_run, tmp_path: Path) -> None:
    _, result = quick_run
    again = run_world_experiment(tmp_path / "again", quick=True)
    assert again.agreement == result.agreement
    assert again.accuracy == result.accuracy


def test_piece_commands_build_data_and_a_loadable_encoder(tmp_path: Path) -> None:
    from pisces_cli.cli.main import main
    from pisces_cli.encoders.registry import load_encoder

    assert main(["world", "build-data", "--quick", "--out", str(tmp_path)]) == 0
    settings = ExperimentSettings.quick()
    assert len(read_jsonl(tmp_path / "clips/train/prompts.jsonl")) == settings.train_clips
    assert len((tmp_path / "prompts/heldout.txt").read_text().splitlines()) == settings.heldout_prompts
    assert main(["world", "train-encoder", "--quick", "--out", str(tmp_path / "enc")]) == 0
    assert load_encoder("world", str(tmp_path / "enc")).name == "world"
