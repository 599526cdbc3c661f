"""``pisces finetune --sanity`` and a short GRPO run through the CLI (exit codes)."""

from __future__ import annotations

import json

from test_finetune_support import tiny_overrides

from pisces_cli.cli.main import main

GRPO = [
    "finetune.algorithm=grpo",
    "finetune.grpo.num_generations=2",
    "finetune.grpo.sampling_steps=3",
    "finetune.grpo.eta=0.5",
]


def test_sanity_passes_and_grpo_trains(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path, max_steps=1) + GRPO
    assert main(["finetune", "--recipe", "demo", *overrides, "--sanity"]) == 0
    assert "sanity check passed" in capsys.readouterr().out
    assert main(["finetune", "--recipe", "demo", *overrides]) == 0
    lines = (tmp_path / "run/finetune/logs/metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    assert any("clip_fraction" in json.dumps(row) for row in logged), logged


def test_sanity_is_grpo_only(tmp_path):
    assert main(["finetune", "--recipe", "demo", *tiny_overrides(tmp_path), "--sanity"]) == 2


def test_sanity_under_torchrun_prints_on_rank_0_only(tmp_path, capsys, monkeypatch):
    """Every rank runs the check (a failing one raises); only rank 0 prints the table and the verdict."""
    import pisces_cli.stages.finetune as finetune_stage

    monkeypatch.setattr(finetune_stage, "run_sanity", lambda resolved, console=None: {"ratio_max": 1.0})
    args = ["finetune", "--recipe", "demo", *tiny_overrides(tmp_path, max_steps=1), *GRPO, "--sanity"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(args) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert main(args) == 0
    assert "sanity check passed" in capsys.readouterr().out
