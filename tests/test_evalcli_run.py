"""``pisces eval VIDEOS_DIR`` through the CLI on synthetic clips with known temporal properties."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pisces_cli.cli.main import main
from pisces_cli.stages import eval_fixtures as clips

PROMPTS = {
    "static": "a still texture",
    "cut": "a texture that cuts to another",
    "flicker": "a flickering texture",
    "moving": "a texture panning right",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from pisces_cli.encoders.tiny_clip import save_tiny_clip

    root = tmp_path_factory.mktemp("evalcli")
    frames = {
        "static": clips.static_clip(),
        "cut": clips.cut_clip(),
        "flicker": clips.flicker_clip(),
        "moving": clips.moving_clip(),
    }
    clips.write_folder(root / "videos", frames, PROMPTS)
    save_tiny_clip(root / "enc", "clip", seed=0)
    return root


def write_recipe(root: Path, name: str = "r.yaml", extra: str = "") -> Path:
    path = root / name
    path.write_text(
        f"""
output_dir: {root}/run
runtime: {{num_workers: 0, device: cpu}}
models: {{encoder: {{backend: clip, path: {root}/enc}}}}
data: {{num_frames: 8}}
reward: {{ot_map: null, token_ot: {{max_iter: 30}}}}
eval: {{bootstrap_samples: 200}}
{extra}
"""
    )
    return path


@pytest.fixture(scope="module")
def evaluated(world: Path) -> dict:
    assert main(["eval", str(world / "videos"), "-r", str(write_recipe(world))]) == 0
    return json.loads((world / "videos/pisces-eval/eval.json").read_text())


def rows_by_name(document: dict) -> dict[str, dict]:
    return {row["video"].removesuffix(".mp4"): row for row in document["videos"]}


def test_known_temporal_answers(evaluated: dict):
    rows = rows_by_name(evaluated)
    assert all(row["error"] is None for row in rows.values())
    static, cut, flicker, moving = rows["static"], rows["cut"], rows["flicker"], rows["moving"]
    # a static clip: consistency 1, no flow (below Farnebäck's numerical floor), no flicker
    assert static["subject_consistency"] == pytest.approx(1.0, abs=1e-5)
    assert static["background_consistency"] == pytest.approx(1.0, abs=1e-5)
    assert max(static["flow_top5_px"]) < 0.05 and static["dynamic_degree"] == 0
    assert static["temporal_flickering"] == pytest.approx(1.0, abs=1e-9) and static["static_proxy"] is True
    # a hard cut breaks consistency (features of the two halves differ)
    assert cut["subject_consistency"] < static["subject_consistency"] - 1e-3
    assert cut["background_consistency"] < static["background_consistency"] - 1e-2
    # flicker lowers the flicker formula by about amplitude/255 (40 levels, minus clipping at 0/255)
    assert flicker["frame_stability"] < 1.0 - 0.2
    # a pan is dynamic, the others are not
    assert moving["dynamic_degree"] == 1 and min(moving["flow_top5_px"]) > moving["flow_threshold_px"]
    assert cut["dynamic_degree"] == 0 and flicker["dynamic_degree"] == 0
    assert static["frames"] == clips.FRAMES and static["fps"] == clips.FPS and static["duration_s"] == 2.0


def test_flicker_matches_hand_formula(world: Path, evaluated: dict):
    """frame_stability = 1 − mean_t MAE(frame_t, frame_t+1)/255 on the decoded frames, for every video;
    temporal_flickering is the same number for the videos the static proxy calls static, else null."""
    from pisces_cli.io.video import read_frames

    for name, row in rows_by_name(evaluated).items():
        frames = read_frames(str(world / "videos" / f"{name}.mp4")).astype(np.float64)
        expected = (
            1.0 - np.mean([np.abs(frames[t + 1] - frames[t]).mean() for t in range(len(frames) - 1)]) / 255
        )
        assert row["frame_stability"] == pytest.approx(expected, abs=1e-6), name  # float32 sums
        if row["static_proxy"]:
            assert row["temporal_flickering"] == row["frame_stability"], name
        else:
            assert row["temporal_flickering"] is None, name


def test_aggregate_and_document(evaluated: dict):
    aggregate = evaluated["aggregate"]
    rows = evaluated["videos"]
    for metric in ("quality", "semantic", "quality_no_ot", "total", "subject_consistency", "dynamic_degree"):
        entry = aggregate[metric]
        assert entry["n"] == 4
        assert entry["mean"] == pytest.approx(np.mean([r[metric] for r in rows]))
        assert entry["ci_low"] <= entry["mean"] <= entry["ci_high"]
    assert aggregate["dynamic_degree"]["mean"] == pytest.approx(0.25)
    # VBench scores flicker on static videos only: here only the static clip passes the static proxy
    flicker = aggregate["temporal_flickering"]
    assert flicker["n"] == 1 and flicker["n_not_static"] == 3 and flicker["mean"] == pytest.approx(1.0)
    stability = aggregate["frame_stability"]  # the same formula over every video
    assert stability["n"] == 4 and stability["mean"] == pytest.approx(
        np.mean([r["frame_stability"] for r in rows])
    )
    # without an OT map the quality reward is the plain cosine; total = quality + semantic (weights 1, 1)
    for row in rows:
        assert row["quality"] == pytest.approx(row["quality_no_ot"], abs=1e-6)
        assert row["total"] == pytest.approx(row["quality"] + row["semantic"], abs=1e-5)
    assert evaluated["schema"] == "pisces.eval" and evaluated["counts"] == {
        "videos": 4,
        "evaluated": 4,
        "failed": 0,
    }
    assert evaluated["settings"]["consistency_features"] == "frame_embeddings"
    assert evaluated["settings"]["encoder"]["backend"] == "clip"
    assert set(evaluated["metrics"]) == set(aggregate)  # every reported metric documents its formula
    assert "PROXY" in evaluated["metrics"]["dynamic_degree"]
    assert evaluated["videos_manifest"] is None and any("manifest.json" in n for n in evaluated["notes"])


def test_rewards_equal_pisces_score(world: Path, evaluated: dict):
    """eval computes the rewards with the same module and sampling as `pisces score`."""
    recipe = write_recipe(world)
    assert main(["score", str(world / "videos"), "-r", str(recipe), "-o", str(world / "scores")]) == 0
    scored = {
        r["video"]: r for r in map(json.loads, (world / "scores/scores.jsonl").read_text().splitlines())
    }
    for row in evaluated["videos"]:
        for column in ("quality", "semantic", "quality_no_ot", "total"):
            assert row[column] == pytest.approx(scored[row["video"]][column], abs=1e-6)


def test_manifest_seeds_and_prompt_suite(world: Path, tmp_path: Path):
    folder = tmp_path / "gen"
    clips.write_folder(folder, {"a-0": clips.static_clip(1), "a-1": clips.static_clip(2)})
    lines = [json.dumps({"file": f"a-{i}.mp4", "prompt": "a", "index": i, "seed": 40 + i}) for i in range(2)]
    (folder / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    manifest = {
        "schema": "pisces.generated_videos",
        "settings": {"backbone": "wan", "adapter": "/x/lora", "seeds": [40, 41], "steps": 8},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    suite = tmp_path / "suite.txt"
    suite.write_text("a\nb\n")
    recipe = write_recipe(world, "suite.yaml", f"generate: {{prompts: {suite}}}")
    out = tmp_path / "out"
    assert main(["eval", str(folder), "-r", str(recipe), "-o", str(out), "eval.rewards=false"]) == 0
    document = json.loads((out / "eval.json").read_text())
    assert document["videos_manifest"] == manifest
    assert [r["seed"] for r in document["videos"]] == [40, 41]
    assert document["prompt_suite"]["covered"] == 1 and document["prompt_suite"]["missing"] == ["b"]
    assert "quality" not in document["aggregate"] and "subject_consistency" in document["aggregate"]
    # eval.prompts takes precedence over generate.prompts
    other = tmp_path / "other.txt"
    other.write_text("a\n")
    assert (
        main(
            [
                "eval",
                str(folder),
                "-r",
                str(recipe),
                "-o",
                str(out),
                "eval.rewards=false",
                f"eval.prompts={other}",
            ]
        )
        == 0
    )
    assert json.loads((out / "eval.json").read_text())["prompt_suite"]["missing_count"] == 0


def test_pixel_only_needs_no_encoder(world: Path, tmp_path: Path):
    recipe = tmp_path / "pixels.yaml"
    recipe.write_text("eval: {rewards: false, consistency: false}\nruntime: {num_workers: 0}\n")
    out = tmp_path / "out"
    assert main(["eval", str(world / "videos"), "-r", str(recipe), "-o", str(out)]) == 0
    document = json.loads((out / "eval.json").read_text())
    assert set(document["aggregate"]) == {"temporal_flickering", "frame_stability", "dynamic_degree"}


def test_usage_errors_exit_2(world: Path, tmp_path: Path):
    recipe = write_recipe(world)
    assert main(["eval", str(tmp_path / "missing"), "-r", str(recipe)]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", str(empty), "-r", str(recipe)]) == 2
    off = ["eval.rewards=false", "eval.consistency=false", "eval.flicker=false", "eval.dynamic_degree=false"]
    assert main(["eval", str(world / "videos"), "-r", str(recipe), "-o", str(tmp_path / "o"), *off]) == 2
    assert main(["eval", str(world / "videos"), "-r", str(recipe), "eval.batch_size=0"]) == 2


def test_all_videos_broken_exits_1(world: Path, tmp_path: Path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "v.mp4").write_bytes(b"not a video")
    (folder / "v.txt").write_text("a prompt")
    recipe = write_recipe(world)
    assert main(["eval", str(folder), "-r", str(recipe)]) == 1
    document = json.loads((folder / "pisces-eval/eval.json").read_text())
    assert document["counts"]["failed"] == 1 and document["videos"][0]["error"]


def test_feature_fallback_without_frame_embeddings():
    """Backends without per-frame embeddings use the mean of each frame's patch tokens."""
    import torch

    from pisces_cli.encoders.base import TokenGeometry, VideoFeatures
    from pisces_cli.stages.eval_metrics import frame_features

    tokens = torch.arange(2 * (1 + 3 * 4) * 5, dtype=torch.float32).reshape(2, 13, 5)
    features = VideoFeatures(torch.zeros(2, 5), tokens, TokenGeometry(3, 2, 2, has_cls=True))
    pooled = frame_features(features)
    assert pooled.subject_source == "mean_pooled_frame_tokens"
    expected = tokens[:, 1:].reshape(2, 3, 4, 5).mean(dim=2).numpy()
    np.testing.assert_allclose(pooled.subject, expected)
    np.testing.assert_allclose(pooled.background, expected)


def test_feature_fallback_unavailable_without_frame_grid():
    import torch

    from pisces_cli.encoders.base import TokenGeometry, VideoFeatures
    from pisces_cli.stages.eval_metrics import frame_features

    single = VideoFeatures(torch.zeros(1, 5), torch.ones(1, 5, 5), TokenGeometry(1, 2, 2, has_cls=True))
    pooled = frame_features(single)
    assert pooled.subject is None and pooled.background is None
    assert pooled.subject_source.startswith("unavailable")
