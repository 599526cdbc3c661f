"""generate → eval → eval compare on the tiny Hunyuan model: the manifest travels into eval.json."""

from __future__ import annotations

import json

from test_finetune_support import PROMPTS, resolve

from pisces_cli.cli.main import main


def test_generate_eval_compare(tmp_path):
    from pisces_cli.stages.generate import run_generate

    runs = {}
    for name, seeds in (("base", "[11,12]"), ("other", "[21,22]")):
        resolved = resolve(tmp_path / name, extra=["generate.videos_per_prompt=2", f"generate.seeds={seeds}"])
        output = tmp_path / name / "videos"
        run_generate(resolved, prompts=str(tmp_path / name / "prompts.txt"), output=str(output), limit=2)
        recipe = tmp_path / name / "recipe.yaml"
        recipe.write_text(resolved.to_yaml())
        suite = f"eval.prompts={tmp_path / name / 'prompts.txt'}"
        assert main(["eval", str(output), "-r", str(recipe), "runtime.num_workers=0", suite]) == 0
        runs[name] = json.loads((output / "pisces-eval/eval.json").read_text())

    base = runs["base"]
    settings = base["videos_manifest"]["settings"]
    assert (
        settings["seeds"] == [11, 12]
        and settings["backbone"] == "hunyuan_video"
        and settings["adapter"] is None
    )
    assert base["counts"] == {"videos": 4, "evaluated": 4, "failed": 0}
    assert sorted((r["prompt"], r["seed"]) for r in base["videos"]) == sorted(
        (p, s) for p in PROMPTS[:2] for s in (11, 12)
    )
    assert {"quality", "quality_no_ot", "subject_consistency", "temporal_flickering"} <= set(
        base["aggregate"]
    )
    suite = base["prompt_suite"]  # --limit 2 generated two of the suite's four prompts
    assert (suite["prompts"], suite["covered"], suite["missing"]) == (4, 2, PROMPTS[2:])
    assert any("2 of 4 prompts" in note for note in base["notes"])

    out = tmp_path / "cmp"
    assert main(["eval", "compare", str(tmp_path / "base/videos"), str(tmp_path / "other/videos"),
                 "-o", str(out), "--bootstrap", "100"]) == 0  # fmt: skip
    document = json.loads((out / "compare.json").read_text())
    assert {m["metric"] for m in document["metrics"]} >= {"total", "quality_no_ot"}
    # items are the two prompts (temporal_flickering: those with a static video in both runs)
    assert all(m["n"] == 2 for m in document["metrics"] if m["metric"] != "temporal_flickering")
    assert any("'seeds' differs" in note for note in document["notes"])
