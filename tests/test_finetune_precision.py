"""Training precision: fp16 trains with a gradient scaler (overflow steps skipped and logged), bf16 is refused
on hardware without it, and the reward model's dtype in the gradient path is a recipe key."""

from __future__ import annotations

import json

import pytest
import torch
from test_finetune_support import resolve, trainable_snapshot

from pisces_cli.errors import UsageError
from pisces_cli.training.precision import precision_plan


def read_log(trainer) -> list[dict]:
    path = trainer.output / "logs" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_fp16_autocast_trains_with_a_scaler_and_a_forced_overflow_step_is_skipped_and_logged(tmp_path):
    from pisces_cli.training.trainer import Trainer

    trainer = Trainer(resolve(tmp_path, max_steps=3, mixed_precision="fp16"), resume=False)
    trainer.setup()
    assert trainer.precision.fp16_in_gradient_path == ["finetune.mixed_precision=fp16"]
    assert isinstance(trainer.scaler, torch.amp.GradScaler) and trainer.ctx.grad_scaler is trainer.scaler
    scale = trainer.scaler.get_scale()
    first = trainer.train_one_step()
    assert first["skipped"] == 0.0 and first["loss_scale"] == scale
    before = trainable_snapshot(trainer)
    # force an overflow: one gradient becomes inf during the next backward (what an fp16 overflow looks like)
    parameter = next(iter(trainer.named_trainable.values()))
    handle = parameter.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    overflow = trainer.train_one_step()
    handle.remove()
    assert overflow["skipped"] == 1.0 and overflow["loss_scale"] == scale
    assert overflow["overflow_steps"] == 1.0 and overflow["skipped_steps"] == 1.0
    assert trainer.scaler.get_scale() == scale / 2  # the scaler backed off
    for name, value in trainable_snapshot(trainer).items():
        assert torch.equal(value, before[name]), name  # the step was skipped
    assert trainer.nan_streak == 0  # an overflow at a scale >= 1 is the scaler's business, not a NaN streak
    after = trainer.train_one_step()
    assert after["skipped"] == 0.0 and after["loss_scale"] == scale / 2
    assert any(not torch.equal(v, before[n]) for n, v in trainable_snapshot(trainer).items())
    trainer.logger.log(trainer.step, after)
    events = [row for row in read_log(trainer) if row.get("event") == "overflow_step_skipped"]
    assert len(events) == 1 and events[0]["loss_scale"] == scale and events[0]["next_loss_scale"] == scale / 2
    assert read_log(trainer)[-1]["loss_scale"] == scale / 2


def test_the_scaler_state_is_checkpointed_and_resumed(tmp_path):
    from pisces_cli.training.trainer import Trainer

    trainer = Trainer(resolve(tmp_path, max_steps=1, mixed_precision="fp16"), resume=False)
    trainer.setup()
    trainer.train_one_step()
    trainer.scaler.update(new_scale=1024.0)
    trainer.save_checkpoint(trainer.step)
    resumed = Trainer(resolve(tmp_path, max_steps=2, mixed_precision="fp16"))
    resumed.setup()
    assert resumed.step == 1 and resumed.scaler.get_scale() == trainer.scaler.get_scale() == 1024.0


def test_fp32_and_bf16_runs_have_no_scaler(tmp_path):
    recipe = resolve(tmp_path).recipe
    assert not precision_plan(recipe, torch.device("cpu")).scaled
    bf16 = resolve(tmp_path, mixed_precision="bf16").recipe
    plan = precision_plan(bf16, torch.device("cpu"))
    assert plan.autocast_dtype == torch.bfloat16 and plan.grad_scaler(torch.device("cpu")) is None


def test_fp16_generator_or_backprop_reward_needs_the_scaler_but_a_grpo_reward_does_not(tmp_path):
    cpu = torch.device("cpu")
    generator = resolve(tmp_path, extra=["models.generator.dtype=float16"]).recipe
    assert precision_plan(generator, cpu).fp16_in_gradient_path == ["models.generator.dtype=float16"]
    reward = resolve(tmp_path, reward_dtype="float16").recipe
    assert precision_plan(reward, cpu).fp16_in_gradient_path == ["finetune.reward_dtype=float16"]
    grpo = resolve(tmp_path, reward_dtype="float16", algorithm="grpo").recipe
    assert not precision_plan(grpo, cpu).scaled  # GRPO scores rewards without gradients
    # null = the scoring dtype models.encoder.dtype
    inherited = resolve(tmp_path, extra=["models.encoder.dtype=float16"]).recipe
    assert precision_plan(inherited, cpu).reward_dtype == "float16"


def test_bf16_is_refused_on_a_gpu_without_it(tmp_path):
    recipe = resolve(tmp_path, mixed_precision="bf16", reward_dtype="bfloat16").recipe
    with pytest.raises(
        UsageError, match=r"does not support bfloat16.*finetune\.mixed_precision, finetune\.reward_dtype"
    ):
        precision_plan(recipe, torch.device("cuda"), bf16_ok=False)
    assert precision_plan(recipe, torch.device("cuda"), bf16_ok=True).autocast_dtype == torch.bfloat16


def test_a_gpu_that_only_emulates_bf16_is_not_taken_for_one_that_has_it(monkeypatch):
    """torch.cuda.is_bf16_supported() says yes on a V100/T4 (it can hold bf16 tensors), so the refusal above
    never fired; the capability of the run's own device decides."""
    from pisces_cli.training import precision

    capabilities = {0: (7, 0), 1: (8, 0)}  # cuda:0 a V100, cuda:1 an A100
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capabilities[index])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert not precision.bf16_supported(torch.device("cuda", 0))
    assert precision.bf16_supported(torch.device("cuda", 1))
    assert precision.bf16_supported(torch.device("cuda"))  # the current device
    assert precision.bf16_supported(torch.device("cpu"))


@pytest.mark.parametrize("name", ["hunyuan", "wan", "hunyuan_grpo", "wan_grpo"])
def test_bundled_recipes_train_in_bf16_with_a_bf16_reward(name):
    from pisces_cli.config import load_recipe

    recipe = load_recipe(name).recipe
    plan = precision_plan(recipe, torch.device("cpu"))
    assert plan.autocast_dtype == torch.bfloat16 and plan.reward_dtype == "bfloat16" and not plan.scaled


def test_the_reward_encoder_loads_in_reward_dtype(tmp_path):
    from pisces_cli.training.trainer import Trainer

    trainer = Trainer(resolve(tmp_path, max_steps=1, reward_dtype="bfloat16"), resume=False)
    trainer.setup()
    assert trainer.reward.encoder.dtype == torch.bfloat16
    assert trainer.scaler is None


def test_nonfinite_loss_still_runs_backward_under_torchrun():
    """In one process a NaN loss skips its backward; with several ranks every rank must run it (DDP/FSDP
    collectives), and the trainer's cross-rank finiteness check skips the step everywhere."""
    from types import SimpleNamespace

    from pisces_cli.training.algorithm import TrainingAlgorithm

    class Probe(TrainingAlgorithm):
        def train_step(self, batches, step, generator):  # pragma: no cover - not used
            return {}

    weight = torch.ones(2, requires_grad=True)
    for world_size, expect_grad in ((1, False), (2, True)):
        weight.grad = None
        probe = Probe(SimpleNamespace(grad_scaler=None, world_size=world_size))  # type: ignore[arg-type]
        finite = probe.backward_unless_nonfinite((weight * float("nan")).sum())
        assert finite is False and (weight.grad is not None) == expect_grad
    weight.grad = None
    assert Probe(SimpleNamespace(grad_scaler=None, world_size=1)).backward_unless_nonfinite(weight.sum())
    assert weight.grad is not None


def test_a_half_reward_this_torch_cannot_run_is_refused_before_the_generator_loads(tmp_path, monkeypatch):
    """The reward encoder loads after the generator: its dtype was first tried minutes into the set-up."""
    from test_runtime_devices import _no_half_layer_norm

    from pisces_cli.backbones import registry
    from pisces_cli.training.trainer import Trainer

    def no_load(*args, **kwargs):
        raise AssertionError("the generator was loaded")

    monkeypatch.setattr(registry, "load_backbone", no_load)
    _no_half_layer_norm(monkeypatch)
    trainer = Trainer(resolve(tmp_path, max_steps=1, reward_dtype="float16"), resume=False)
    with pytest.raises(
        UsageError, match=r"^finetune.reward_dtype: this torch .* cannot compute in float16 on cpu"
    ):
        trainer.setup()
