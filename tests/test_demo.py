"""`pisces demo` end to end (slow: ~2–3 min on 2 cores). Run with `pytest -m slow tests/test_demo.py`."""

from __future__ import annotations

import json

import pytest

from pisces_cli.cli.main import main


@pytest.mark.slow
def test_demo_runs_every_stage_and_recipe_reruns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0
    root = tmp_path / "pisces-demo"
    for path in (
        "recipe.yaml",
        "run/ot/ot_map.safetensors",
        "clips/eval/pisces-scores/report.html",
        "run/finetune/checkpoint-4/pytorch_lora_weights.safetensors",
        "run/videos/finetuned/manifest.json",
        "run/compare/compare.html",
    ):
        assert (root / path).exists(), path
    compare = json.loads((root / "run/compare/compare.json").read_text())
    assert compare
    # a second `pisces demo` in the same folder rebuilds its clips and models and runs again (it used to stop at
    # `score`, whose folder held rows keyed on the first run's OT map)
    assert main(["demo"]) == 0
    # the written recipe re-runs a stage by hand
    assert (
        main(
            [
                "fit-ot",
                "--recipe",
                "pisces-demo/recipe.yaml",
                "fit_ot.method=gaussian",
                "fit_ot.output=pisces-demo/run/ot-gauss",
            ]
        )
        == 0
    )
