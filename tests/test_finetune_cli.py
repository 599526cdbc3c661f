"""``pisces finetune`` / ``pisces generate`` through the CLI entry point (exit codes, argument handling)."""

from __future__ import annotations

import json

import pytest
from test_finetune_support import PROMPTS, tiny_overrides

from pisces_cli.cli.main import main


def test_finetune_dry_run_and_usage_errors(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path)
    assert main(["finetune", "--recipe", "demo", *overrides, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "plan" in out and "videos per step" in out
    assert "gradient scaler" in out
    fp16 = ["finetune.mixed_precision=fp16", "finetune.algorithm=backprop"]
    assert main(["finetune", "--recipe", "demo", *overrides, *fp16, "--dry-run"]) == 0
    assert (
        "yes: fp16 in the gradient path (finetune.mixed_precision=fp16)"
        in capsys.readouterr().out.replace("\n", "")
    )
    assert main(["finetune", "--recipe", "demo", *overrides, "finetune.lora.rank=0"]) == 2
    assert main(["finetune", "--recipe", "demo", *overrides, "--bogus"]) == 2


def test_finetune_then_generate_with_the_adapter(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path, max_steps=1)
    assert main(["finetune", "--recipe", "demo", *overrides]) == 0
    checkpoint = tmp_path / "run" / "finetune" / "checkpoint-1"
    assert (checkpoint / "pytorch_lora_weights.safetensors").is_file()
    assert (tmp_path / "run" / "finetune" / "recipe.yaml").is_file()
    state = checkpoint / "training_state" / "state.json"
    written = state.stat().st_mtime_ns
    capsys.readouterr()

    def refuse_to_build(*args, **kwargs):
        raise AssertionError("a re-run with nothing to do built a trainer")

    with pytest.MonkeyPatch.context() as patch:  # a no-op re-run answers from state.json, loading nothing
        patch.setattr("pisces_cli.training.trainer.Trainer.__init__", refuse_to_build)
        assert main(["finetune", "--recipe", "demo", *overrides]) == 0
        assert f"nothing to do: {checkpoint} already reached step 1" in capsys.readouterr().out
        assert main(["finetune", "--recipe", "demo", *overrides, "finetune.learning_rate=0.5"]) == 2
        assert "finetune.learning_rate" in capsys.readouterr().err  # other settings: refused as a resume is
    assert state.stat().st_mtime_ns == written
    # only overrides, no PROMPTS argument: the prompts come from generate.prompts
    prompts = tmp_path / "prompts.txt"
    args = [
        "generate",
        "--recipe",
        "demo",
        *overrides,
        f"generate.prompts={prompts}",
        "--adapter",
        str(checkpoint),
        "--limit",
        "1",
    ]
    assert main(args) == 0
    videos = tmp_path / "run" / "videos"
    assert (videos / f"{PROMPTS[0]}-0.mp4").is_file()
    manifest = json.loads((videos / "manifest.json").read_text())
    assert manifest["settings"]["adapter"] == str(checkpoint.resolve())
    capsys.readouterr()
    assert main(args) == 0
    assert f"nothing to do: all 1 videos are already in {videos}" in capsys.readouterr().out
    assert main(["generate", str(tmp_path / "missing.txt"), "--recipe", "demo", *overrides]) == 2
