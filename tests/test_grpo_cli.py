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
