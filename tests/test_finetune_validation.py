"""Validation during training: fixed prompts and seeds sampled with the current adapters at the set interval,
scored by the reward, logged as ``validation/*`` and written as mp4s."""

from __future__ import annotations

import json

import torch
from test_finetune_support import PROMPTS, resolve

from pisces_cli.training.trainer import Trainer


def rows(trainer) -> list[dict]:
    path = trainer.output / "logs" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


class RecordingBoard:
    """Stands in for a TensorBoard SummaryWriter."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.videos: list[tuple[str, tuple, int]] = []

    def add_scalar(self, name, value, step) -> None:
        self.scalars.append((name, value, step))

    def add_video(self, name, videos, step, fps) -> None:
        self.videos.append((name, tuple(videos.shape), step))

    def close(self) -> None:
        pass


def test_validation_runs_at_the_interval_logs_rewards_and_writes_videos(tmp_path):
    extra = ["finetune.validation.every=2", "finetune.validation.steps=2", "generate.fps=8"]
    trainer = Trainer(resolve(tmp_path, extra=extra, max_steps=4), resume=False)
    trainer.setup()
    assert trainer.validator.prompts == PROMPTS[:2]  # the first two training prompts by default
    board = RecordingBoard()
    trainer.logger._tensorboard = board
    trainer.train()
    validation = [row for row in rows(trainer) if "validation/total" in row]
    assert [row["step"] for row in validation] == [2, 4]
    for row in validation:
        assert row["validation/seconds"] > 0 and row["validation/num_videos"] == 2
        assert {"validation/quality", "validation/semantic"} <= set(row)
        folder = trainer.output / "validation" / f"step-{row['step']}"
        assert sorted(p.name for p in folder.glob("*.mp4")) == sorted(f"{p}-0.mp4" for p in PROMPTS[:2])
        written = json.loads((folder / "rewards.json").read_text())
        totals = [video["total"] for video in written["videos"]]
        assert row["validation/total"] == sum(totals) / 2
        assert [video["seed"] for video in written["videos"]] == [0, 1]
    assert {name for name, _, _ in board.scalars if name.startswith("validation/")} >= {"validation/total"}
    assert not any(name.startswith("train/validation") for name, _, _ in board.scalars)


def test_validation_samples_are_fixed_and_scored_by_the_reward(tmp_path):
    extra = [
        "finetune.validation.every=1",
        "finetune.validation.steps=2",
        f"finetune.validation.prompts=[{PROMPTS[3]!r}]",
    ]
    trainer = Trainer(resolve(tmp_path, extra=extra, max_steps=1), resume=False)
    trainer.setup()
    validator = trainer.validator
    assert validator.prompts == [PROMPTS[3]]
    first, again = validator.sample(), validator.sample()
    assert first.shape == (1, 5, 3, 16, 16) and torch.equal(first, again)  # same seeds, same adapters
    rewards = validator.score(first)
    with torch.no_grad():
        direct = trainer.reward(first, [PROMPTS[3]])
    torch.testing.assert_close(rewards["total"], direct.total.float())
    with torch.no_grad():  # the samples use the current adapters: changing the LoRA changes them
        for parameter in trainer.named_trainable.values():
            parameter.add_(0.1)
    assert (validator.sample() - first).abs().max() > 1e-4


def test_validation_is_off_by_default(tmp_path):
    trainer = Trainer(resolve(tmp_path, max_steps=1), resume=False)
    trainer.setup()
    trainer.train()
    assert not any(key.startswith("validation/") for row in rows(trainer) for key in row)
    assert not (trainer.output / "validation").exists()


def test_a_failed_validation_is_logged_after_the_checkpoint_and_training_goes_on(tmp_path):
    extra = ["finetune.validation.every=2", "finetune.validation.steps=2", "finetune.checkpointing_steps=2"]
    trainer = Trainer(resolve(tmp_path, extra=extra, max_steps=4), resume=False)
    trainer.setup()

    def out_of_memory(step, is_main):
        assert (trainer.output / f"checkpoint-{step}").is_dir()  # the step is saved before validating
        raise RuntimeError("CUDA out of memory (simulated)")

    trainer.validator.run = out_of_memory
    summary = trainer.train()
    assert summary.step == 4
    failures = [row for row in rows(trainer) if row.get("event") == "validation_failed"]
    assert [row["step"] for row in failures] == [2, 4] and "out of memory" in failures[0]["reason"]
