"""``pisces eval --vbench``: refuses with what is missing; mode choice; runs an installed (here: fake) vbench."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pisces_cli.cli.main import main
from pisces_cli.stages import eval_fixtures as clips
from pisces_cli.stages.eval_vbench import CUSTOM_DIMENSIONS, WEIGHTS

PIXELS_ONLY = "eval: {rewards: false, consistency: false, flicker: false}\nruntime: {num_workers: 0}\n"

# A stand-in for the `vbench` package: records how it was called and writes a results file in
# VBench's format {dimension: [aggregate, [per-video records]]}.
FAKE_VBENCH = """
import json, os

class VBench:
    def __init__(self, device, full_info_dir, output_path):
        self.output_path = output_path

    def evaluate(self, videos_path, name, prompt_list=[], dimension_list=None, local=False, mode="vbench_standard", **kwargs):
        call = {"videos_path": videos_path, "prompt_list": prompt_list, "dimension_list": dimension_list,
                "local": local, "mode": mode, "cache": os.environ.get("VBENCH_CACHE_DIR"),
                "listing": sorted(os.listdir(videos_path))}
        with open(os.path.join(self.output_path, "call.json"), "w") as handle:
            json.dump(call, handle)
        results = {d: [SCORES[d], [{"video_path": "x", "video_results": SCORES[d]}]] for d in dimension_list}
        with open(os.path.join(self.output_path, name + "_eval_results.json"), "w") as handle:
            json.dump(results, handle)

SCORES = {"subject_consistency": 0.95, "dynamic_degree": 0.5, "imaging_quality": 0.6}
"""


@pytest.fixture()
def no_vbench_module(monkeypatch):
    """Make sure no real or fake `vbench` is importable/cached during the test."""
    for name in ("vbench", "vbench2_beta_long"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield
    for name in ("vbench", "vbench2_beta_long"):
        sys.modules.pop(name, None)


@pytest.fixture()
def fake_vbench(tmp_path: Path, monkeypatch, no_vbench_module) -> Path:
    package = tmp_path / "site" / "vbench"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_VBENCH)
    (package / "VBench_full_info.json").write_text("[]")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return package


def weights_cache(root: Path, dimensions: list[str]) -> Path:
    cache = root / "cache"
    for dimension in dimensions:
        for relative in WEIGHTS[dimension]:
            (cache / relative).parent.mkdir(parents=True, exist_ok=True)
            (cache / relative).write_bytes(b"")
    return cache


def custom_folder(root: Path, frames: int = clips.FRAMES) -> Path:
    static = clips.static_clip()[:1].repeat(frames, axis=0)
    return clips.write_folder(
        root / "videos", {"one": static, "two": static}, {"one": "a cat", "two": "a dog"}
    )


def test_missing_package_and_weights_exit_2_without_results(tmp_path: Path, capsys, no_vbench_module):
    folder = custom_folder(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(PIXELS_ONLY)
    capsys.readouterr()
    code = main(
        [
            "eval",
            str(folder),
            "-r",
            str(recipe),
            "--vbench",
            f"eval.vbench_cache={tmp_path / 'empty'}",
            "eval.vbench_dimensions=[subject_consistency,imaging_quality]",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps long paths
    assert "'vbench'" in err and "pip install vbench" in err
    assert "dino_vitbase16_pretrain.pth" in err and "musiq_spaq_ckpt-358bb6af.pth" in err
    assert not (folder / "pisces-eval" / "eval.json").exists()  # nothing partial was written


def test_custom_input_run_is_aggregated(tmp_path: Path, fake_vbench: Path):
    folder = custom_folder(tmp_path)
    dims = ["subject_consistency", "dynamic_degree", "imaging_quality"]
    cache = weights_cache(tmp_path, dims)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(PIXELS_ONLY)
    assert (
        main(
            [
                "eval",
                str(folder),
                "-r",
                str(recipe),
                "--vbench",
                f"eval.vbench_cache={cache}",
                f"eval.vbench_dimensions=[{','.join(dims)}]",
            ]
        )
        == 0
    )
    document = json.loads((folder / "pisces-eval/eval.json").read_text())
    call = json.loads((folder / "pisces-eval/vbench/call.json").read_text())
    assert call["mode"] == "custom_input" and call["dimension_list"] == dims and call["local"] is True
    assert call["prompt_list"] == {"one.mp4": "a cat", "two.mp4": "a dog"} and call["cache"] == str(cache)
    # VBench sees a folder of the videos only (no prompts.jsonl whose suffix it could take for the videos')
    assert call["listing"] == ["one.mp4", "two.mp4"] and (folder / "prompts.jsonl").is_file()
    vbench = document["vbench"]
    # by hand: Quality = (n_sc + 0.5 n_dd + n_iq) / 6.5 with the 4 other quality dimensions at raw 0
    low = {
        "subject_consistency": 0.1462,
        "background_consistency": 0.2615,
        "temporal_flickering": 0.6293,
        "motion_smoothness": 0.706,
    }
    high = {
        "subject_consistency": 1.0,
        "background_consistency": 1.0,
        "temporal_flickering": 1.0,
        "motion_smoothness": 0.9975,
    }
    normalised = [(0.95 - 0.1462) / (1 - 0.1462), 0.5 * 0.5, 0.6]
    normalised += [(0 - low[d]) / (high[d] - low[d]) for d in low if d != "subject_consistency"]
    quality = sum(normalised) / 6.5
    semantic = (0 - 0.0009) / (0.2855 - 0.0009) / 9  # all semantic missing: only appearance style is nonzero
    assert vbench["quality"] == pytest.approx(100 * quality, abs=1e-9)
    assert vbench["semantic"] == pytest.approx(100 * semantic, abs=1e-9)
    assert vbench["total"] == pytest.approx(100 * (4 * quality + semantic) / 5, abs=1e-9)
    assert vbench["mode"] == "custom_input" and "color" in vbench["missing"]


def test_custom_prompts_reject_label_dimensions(tmp_path: Path, fake_vbench: Path):
    folder = custom_folder(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(PIXELS_ONLY)
    assert main(["eval", str(folder), "-r", str(recipe), "--vbench", "eval.vbench_dimensions=[color]"]) == 2
    assert (
        main(["eval", str(folder), "-r", str(recipe), "--vbench", "eval.vbench_dimensions=[colour_x]"]) == 2
    )


def test_long_videos_need_vbench_long(tmp_path: Path, capsys, fake_vbench: Path):
    folder = custom_folder(tmp_path, frames=40)  # 40 frames at 8 fps = 5.0 s: VBench-Long
    cache = weights_cache(tmp_path, ["dynamic_degree"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(PIXELS_ONLY)
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                str(folder),
                "-r",
                str(recipe),
                "--vbench",
                f"eval.vbench_cache={cache}",
                "eval.vbench_dimensions=[dynamic_degree]",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.replace("\n", "")
    assert "vbench2_beta_long" in err and "'vbench'" not in err


def test_standard_mode_for_vbench_named_videos(tmp_path: Path):
    from pisces_cli.config import load_recipe
    from pisces_cli.evaluation.prompt_suites import load_suite
    from pisces_cli.io.prompts import collect_prompted_videos
    from pisces_cli.stages.eval_vbench import choose_mode

    suite: dict[str, tuple[str, ...]] = {}
    for prompt in load_suite("vbench"):
        suite[prompt.text] = suite.get(prompt.text, ()) + prompt.dimensions
    text = load_suite("vbench:subject_consistency")[0].text
    folder = clips.write_folder(
        tmp_path / "std", {f"{text}-0": clips.static_clip(), f"{text}-1": clips.static_clip()}
    )
    items = collect_prompted_videos(folder)
    mode, covered = choose_mode(items, suite)
    assert (
        mode == "vbench_standard"
        and {"subject_consistency", "dynamic_degree", "motion_smoothness"} <= covered
    )
    # an index outside 0..4 or a non-VBench prompt means custom input
    clips.write_folder(folder, {f"{text}-7": clips.static_clip()})
    assert choose_mode(collect_prompted_videos(folder), suite)[0] == "custom_input"
    # the plan of the standard folder defaults to the covered dimensions
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"eval: {{vbench_cache: {tmp_path / 'c'}}}\n")
    (folder / f"{text}-7.mp4").unlink()
    from pisces_cli.errors import UsageError
    from pisces_cli.stages.eval_vbench import plan_vbench_run

    with pytest.raises(UsageError, match="motion_smoothness"):
        plan_vbench_run(load_recipe(str(recipe)).recipe, folder, collect_prompted_videos(folder), "vbench")


def test_custom_dimensions_are_vbench_dimensions():
    assert set(CUSTOM_DIMENSIONS) <= set(WEIGHTS) and len(WEIGHTS) == 16
