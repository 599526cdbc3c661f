"""GRPOAlgorithm on tiny random HunyuanVideo / Wan models with small hand-written rewards.

The TrainContext is built by hand (apply_lora + AdamW), independent of the trainer.
"""

from __future__ import annotations

import functools
import math
import tempfile
from pathlib import Path

import pytest
import torch

from pisces_cli.errors import PiscesRuntimeError
from pisces_cli.training.algorithm import PromptBatch, TrainContext

PROMPTS = ["a cat runs on grass", "a dog jumps over the road"]


@functools.lru_cache(maxsize=1)
def model_root() -> Path:
    from pisces_cli.backbones.tiny import save_tiny_hunyuan, save_tiny_wan

    root = Path(tempfile.mkdtemp(prefix="pisces-grpo-models-"))
    save_tiny_hunyuan(root / "hunyuan", seed=0)
    save_tiny_wan(root / "wan", seed=0)
    return root


class _Output:
    """Minimal RewardOutput: one component plus the total."""

    def __init__(self, values: torch.Tensor, name: str) -> None:
        self.values, self.name, self.total = values, name, values

    def components(self) -> dict[str, torch.Tensor]:
        return {self.name: self.values}


class BrightnessReward:
    """PiscesReward's call signature; reward = mean pixel value of each video ``[B, T, 3, H, W]`` in [0, 1]."""

    weights = {"brightness": 1.0}

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, pixels: torch.Tensor, captions: list[str]) -> _Output:
        assert len(captions) == pixels.shape[0]
        self.calls += 1
        return _Output(pixels.float().mean(dim=(1, 2, 3, 4)), "brightness")


class FlatForSomePrompts(BrightnessReward):
    """Constant reward for captions containing 'flat' (their groups carry no signal)."""

    def __call__(self, pixels: torch.Tensor, captions: list[str]) -> _Output:
        values = pixels.float().mean(dim=(1, 2, 3, 4))
        flat = torch.tensor(["flat" in caption for caption in captions])
        return _Output(torch.where(flat, torch.full_like(values, 0.25), values), "brightness")


def make_algorithm(
    backbone="hunyuan", reward=None, lora_init="gaussian", lr=2e-2, autocast_dtype=None, **grpo
):
    from pisces_cli.backbones.lora import apply_lora
    from pisces_cli.backbones.registry import load_backbone
    from pisces_cli.config.sections.finetune import FinetuneSection
    from pisces_cli.training.grpo import GRPOAlgorithm

    family = "hunyuan_video" if backbone == "hunyuan" else "wan"
    adapter = load_backbone(str(model_root() / backbone), family=family)
    targets = adapter.lora_target_modules("attn_mlp") + "|proj_out"
    apply_lora(adapter.transformer, rank=4, alpha=4, target_modules=targets, init_lora_weights=lora_init)
    section = FinetuneSection()
    section.num_frames, section.height, section.width = 9, 16, 16
    section.guidance = 6.0 if backbone == "hunyuan" else 1.0
    settings = {"num_generations": 4, "sampling_steps": 4, "shift": 3.0, "eta": 1.0, "timestep_fraction": 1.0}
    settings.update(grpo)
    for key, value in settings.items():
        setattr(section.grpo, key, value)
    trainable = [p for p in adapter.transformer.parameters() if p.requires_grad]
    ctx = TrainContext(
        recipe=None,
        section=section,
        adapter=adapter,
        reward=reward or BrightnessReward(),
        trainable=trainable,
        device=torch.device("cpu"),
        autocast_dtype=autocast_dtype,
        encode_prompts=adapter.encode_prompts,
    )
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    return GRPOAlgorithm(ctx), optimizer


def randomize_lora(algorithm, seed=0, scale=0.05):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in algorithm.ctx.trainable:
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


def grads(algorithm):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in algorithm.ctx.trainable]


def run_step(algorithm, optimizer, step, prompts=PROMPTS, seed=100):
    optimizer.zero_grad(set_to_none=True)
    metrics = algorithm.train_step(
        [PromptBatch(prompts=list(prompts))], step, torch.Generator().manual_seed(seed + step)
    )
    torch.nn.utils.clip_grad_norm_(algorithm.ctx.trainable, 1.0)
    optimizer.step()
    return metrics


# ---------------------------------------------------------------------------------------- log-probs
def test_rollout_log_probs_match_a_direct_gaussian_computation():
    algorithm, _ = make_algorithm(noise_schedule="flow_grpo", eta=0.7)
    randomize_lora(algorithm)
    _, embeds, trajectory = algorithm.rollout(PROMPTS[:1], torch.Generator().manual_seed(3))
    adapter = algorithm.ctx.adapter
    sigmas = trajectory.sigmas.tolist()
    for i in range(trajectory.num_stochastic_steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, x_next = trajectory.latents[:, i], trajectory.latents[:, i + 1]
        with torch.no_grad():
            v = adapter.predict_velocity(x, torch.full((x.shape[0],), sigma), embeds, guidance=6.0).double()
        x = x.double()
        h = sigma - sigma_next
        sigma_tilde = sigma_next if sigma >= 1.0 else sigma
        g = 0.7 * math.sqrt(sigma / (1.0 - sigma_tilde))
        eps_hat = x + (1.0 - sigma) * v
        mean = x - h * (v + g * g / (2.0 * sigma) * eps_hat)
        normal = torch.distributions.Normal(mean, g * math.sqrt(h))
        expected = normal.log_prob(x_next.double()).flatten(1).mean(dim=1)
        assert torch.allclose(trajectory.log_probs[:, i].double(), expected, atol=1e-4, rtol=0)
        assert torch.allclose(trajectory.means[:, i].double(), mean, atol=1e-5)
    # the group shares its prompt and (shared_noise) its initial noise, but the SDE noise makes samples differ
    assert torch.equal(trajectory.latents[0, 0], trajectory.latents[3, 0])
    assert not torch.allclose(trajectory.final[0], trajectory.final[1])


def test_trained_steps_are_a_random_subset_without_the_last_step():
    from pisces_cli.training.rollout import train_timestep_indices

    indices = train_timestep_indices(64, 16, 0.6, torch.Generator().manual_seed(0))
    assert indices.shape == (64, 9)  # int(15 · 0.6), DanceGRPO's 9 of 15
    assert int(indices.max()) <= 14
    assert all(len(set(row.tolist())) == 9 for row in indices)
    assert len({tuple(row.tolist()) for row in indices}) > 1  # per-sample permutations


# ------------------------------------------------------------------------------------------- ratio
@pytest.mark.parametrize("backbone", ["hunyuan", "wan"])
def test_ratio_is_exactly_one_before_the_first_update(backbone):
    algorithm, optimizer = make_algorithm(backbone)
    randomize_lora(algorithm)
    report = algorithm.before_training()
    assert report["sanity_max_abs_ratio_dev"] < 1e-6
    assert report["sanity_max_abs_mean_dev"] == 0.0
    assert report["sanity_samples"] == 4 and report["sanity_steps"] == 3  # 4 steps, the last deterministic
    metrics = run_step(algorithm, optimizer, 0)
    assert metrics["ratio_abs_dev_max"] < 1e-6
    assert metrics["clip_fraction"] == 0.0
    assert metrics["approx_kl"] < 1e-12
    assert math.isfinite(metrics["loss"])
    assert any(g.abs().sum() > 0 for g in grads(algorithm))


def test_sanity_check_fails_when_the_recompute_differs():
    algorithm, _ = make_algorithm()
    original = algorithm.velocity

    def drifting(latents, sigma, embeds):  # the training path (grad on) sees a perturbed model
        velocity = original(latents, sigma, embeds)
        return velocity + 1e-2 if torch.is_grad_enabled() else velocity

    algorithm.velocity = drifting
    with pytest.raises(PiscesRuntimeError, match="ratio"):
        algorithm.sanity_check()


def test_off_policy_reuse_moves_the_ratio_and_counts_clipping():
    algorithm, optimizer = make_algorithm(num_iterations=2, clip_range=1e-6, lr=5e-2)
    reward = algorithm.ctx.reward
    first = run_step(algorithm, optimizer, 0)
    calls = reward.calls
    second = run_step(algorithm, optimizer, 1)
    assert first["rollout_reused"] == 0.0 and second["rollout_reused"] == 1.0
    assert reward.calls == calls  # no new rollout was scored
    assert first["ratio_abs_dev_max"] < 1e-6
    assert second["ratio_abs_dev_mean"] > 1e-6
    assert 0.0 < second["clip_fraction"] <= 1.0
    assert second["reward_brightness_mean"] == first["reward_brightness_mean"]
    third = run_step(algorithm, optimizer, 2)
    assert third["rollout_reused"] == 0.0


# -------------------------------------------------------------------------------------------- loss
def test_chunked_accumulation_equals_the_full_batch_gradient():
    full, _ = make_algorithm(timestep_fraction=0.7)
    randomize_lora(full)
    metrics_full = full.train_step([PromptBatch(prompts=PROMPTS)], 0, torch.Generator().manual_seed(11))
    grads_full = grads(full)
    chunked, _ = make_algorithm(timestep_fraction=0.7, chunk_size=3)
    randomize_lora(chunked)
    metrics_chunked = chunked.train_step([PromptBatch(prompts=PROMPTS)], 0, torch.Generator().manual_seed(11))
    assert metrics_chunked["loss"] == pytest.approx(metrics_full["loss"], abs=1e-7)
    for a, b in zip(grads_full, grads(chunked)):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-4)


def test_two_micro_batches_average_their_gradients():
    algorithm, _ = make_algorithm()
    randomize_lora(algorithm)
    singles = []
    for prompt in PROMPTS:
        for p in algorithm.ctx.trainable:
            p.grad = None
        rollout = algorithm.collect(PromptBatch(prompts=[prompt]), torch.Generator().manual_seed(5))
        algorithm.update(rollout, torch.Generator().manual_seed(6), scale=1.0)
        singles.append(grads(algorithm))
    for p in algorithm.ctx.trainable:
        p.grad = None
    for prompt in PROMPTS:
        rollout = algorithm.collect(PromptBatch(prompts=[prompt]), torch.Generator().manual_seed(5))
        algorithm.update(rollout, torch.Generator().manual_seed(6), scale=0.5)
    for a, b, total in zip(*singles, grads(algorithm)):
        assert torch.allclose(total, 0.5 * (a + b), atol=1e-8, rtol=1e-5)


def test_kl_is_zero_for_identical_policies_and_positive_otherwise():
    # peft's default init has B = 0: the student equals the reference policy
    algorithm, optimizer = make_algorithm(lora_init=True, beta=0.1)
    metrics = run_step(algorithm, optimizer, 0)
    assert metrics["kl"] == 0.0
    randomize_lora(algorithm)
    metrics = run_step(algorithm, optimizer, 1)
    assert metrics["kl"] > 0.0
    assert metrics["loss"] == pytest.approx(metrics["loss_policy"] + 0.1 * metrics["kl"], rel=1e-4, abs=1e-6)
    assert all(p.requires_grad for p in algorithm.ctx.trainable)  # adapters re-enabled


def test_consistency_term_adds_a_finite_loss_and_gradients():
    algorithm, optimizer = make_algorithm(consistency_weight=1.0)
    randomize_lora(algorithm)
    metrics = run_step(algorithm, optimizer, 0)
    assert metrics["loss_cd"] > 0.0 and math.isfinite(metrics["loss_cd"])
    assert metrics["loss"] == pytest.approx(metrics["loss_policy"] + metrics["loss_cd"], rel=1e-4, abs=1e-6)


def test_zero_std_groups_are_counted_and_give_no_signal():
    algorithm, optimizer = make_algorithm(reward=FlatForSomePrompts())
    metrics = run_step(algorithm, optimizer, 0, prompts=["a flat grey wall", "a dog jumps"])
    assert metrics["zero_std_group_fraction"] == 0.5
    rollout = algorithm.collect(
        PromptBatch(prompts=["a flat grey wall", "a dog jumps"]), torch.Generator().manual_seed(1)
    )
    assert torch.equal(rollout.advantages[:4], torch.zeros(4))
    assert rollout.advantages[4:].abs().min() > 0


def test_metrics_report_rewards_per_component():
    algorithm, optimizer = make_algorithm()
    metrics = run_step(algorithm, optimizer, 0)
    for key in (
        "reward_brightness_mean",
        "reward_brightness_std",
        "reward_total_mean",
        "reward_total_std",
        "zero_std_group_fraction",
        "clip_fraction",
        "ratio_abs_dev_mean",
        "approx_kl",
        "loss_policy",
    ):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["reward_total_mean"] == pytest.approx(metrics["reward_brightness_mean"])
    assert metrics["num_samples"] == 8


def test_eta_zero_is_rejected():
    from pisces_cli.errors import UsageError

    with pytest.raises(UsageError, match="eta"):
        make_algorithm(eta=0.0)


# ---------------------------------------------------------------------------------------- learning
def evaluate(algorithm, seed=999, prompts=("a cat runs", "a dog jumps", "a bird flies", "a red car")):
    """Mean reward of 16 fixed-seed rollouts (same noise before and after training)."""
    rollout = algorithm.collect(PromptBatch(prompts=list(prompts)), torch.Generator().manual_seed(seed))
    return float(rollout.rewards["total"].mean())


def test_grpo_increases_a_brightness_reward():
    # 6 SDE steps at shift 1 keep the noise of the untrained last step small (std = η·√(1/6)): it adds reward
    # variance no trained step can explain. With 4 steps at shift 3 (last std = η·√0.5) learning was much noisier.
    algorithm, optimizer = make_algorithm(num_generations=8, lr=2e-2, eta=0.7, sampling_steps=6, shift=1.0)
    before = [evaluate(algorithm, seed) for seed in (900, 901)]
    noise = abs(before[0] - before[1])  # run-to-run spread of the 16-sample evaluation
    for step in range(40):
        run_step(algorithm, optimizer, step, prompts=["a cat runs", "a dog jumps"])
    after = [evaluate(algorithm, seed) for seed in (900, 901)]
    gain = sum(after) / 2 - sum(before) / 2
    # training seeds 100/200/300 gained 0.028/0.044/0.047 (0.522 before; the two evaluations differ by 0.001)
    assert gain > 0.012, (before, after)
    assert gain > 3 * noise, (before, after, noise)


def test_trainer_runs_grpo_end_to_end(tmp_path):
    """The shared trainer builds GRPOAlgorithm for finetune.algorithm=grpo, runs the sanity check, then steps."""
    pytest.importorskip("pisces_cli.training.trainer")
    from test_finetune_support import resolve, trainable_snapshot

    from pisces_cli.training.trainer import Trainer

    overrides = [
        "finetune.algorithm=grpo",
        "finetune.grpo.num_generations=2",
        "finetune.grpo.sampling_steps=3",
    ]
    trainer = Trainer(resolve(tmp_path, "hunyuan", overrides), resume=False)
    trainer.setup()
    assert trainer.algorithm.name == "grpo"
    before = trainable_snapshot(trainer)
    summary = trainer.train()
    assert summary.step == 2 and summary.skipped_steps == 0
    assert summary.metrics["ratio_abs_dev_max"] < 1e-6
    assert "reward_quality_mean" in summary.metrics and "reward_semantic_mean" in summary.metrics
    after = trainable_snapshot(trainer)
    assert any(not torch.equal(before[name], after[name]) for name in before)


def test_sanity_check_under_bf16_autocast_uses_the_mixed_precision_tolerance():
    algorithm, _ = make_algorithm(autocast_dtype=torch.bfloat16, clip_range=0.2)
    report = algorithm.sanity_check(prompts=["a cat runs"], seed=3)
    assert report["sanity_tolerance"] == pytest.approx(0.02)
    # rollout and recompute share the autocast, so on CPU they agree exactly
    assert report["sanity_max_abs_ratio_dev"] < 1e-6


def test_clipped_policy_loss_matches_hand_computation():
    from pisces_cli.training.grpo import clipped_policy_loss

    ratio = torch.tensor([0.5, 1.5, 1.0, 0.5, 1.5])
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0, -2.0])
    loss, clipped = clipped_policy_loss(ratio, advantages, 0.2)
    # max(-A r, -A clip(r)): (-0.5, -0.8) → -0.5; (-1.5, -1.2) → -1.2; 1; (0.5, 0.8) → 0.8; (3.0, 2.4) → 3.0
    assert loss.tolist() == pytest.approx([-0.5, -1.2, 1.0, 0.8, 3.0])
    assert clipped.tolist() == [False, True, False, True, False]
    ratio.requires_grad_(True)
    loss, _ = clipped_policy_loss(ratio, advantages, 0.2)
    loss.sum().backward()
    # the clip removes the gradient exactly where it binds
    assert ratio.grad.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0, 2.0])


def test_reward_scores_the_decoded_final_sample():
    algorithm, _ = make_algorithm()
    rollout = algorithm.collect(PromptBatch(prompts=PROMPTS[:1]), torch.Generator().manual_seed(4))
    with torch.no_grad():
        pixels = algorithm.ctx.adapter.decode(rollout.trajectory.final, grad=False, checkpoint=False)
    expected = pixels.mean(dim=(1, 2, 3, 4))
    assert torch.allclose(rollout.rewards["total"], expected)
    assert rollout.rewards["total"].std() > 0  # the sampled action changes the reward
    assert torch.allclose(rollout.advantages.mean(), torch.zeros(()), atol=1e-6)


@pytest.mark.parametrize("backbone", ["hunyuan", "wan"])
def test_reward_input_is_the_last_steps_predicted_clean_sample_with_no_injected_noise(backbone):
    """The reward scores x̂0 = x_{S-1} - σ_{S-1}·v(x_{S-1}): a deterministic function of the state before the last
    step. With a large η an SDE last step would add noise of std η·√σ_{S-1} (here ≈ 1.4) to what is decoded."""
    algorithm, _ = make_algorithm(backbone, eta=2.0, noise_schedule="constant")
    randomize_lora(algorithm)
    rollout = algorithm.collect(PromptBatch(prompts=PROMPTS[:1]), torch.Generator().manual_seed(7))
    trajectory = rollout.trajectory
    steps = trajectory.num_steps
    assert steps == 4 and trajectory.num_stochastic_steps == 3
    assert trajectory.log_probs.shape == (4, 3) and trajectory.means.shape[1] == 3
    before_last = trajectory.latents[:, steps - 1]
    sigma_last = float(trajectory.sigmas[steps - 1])
    assert float(trajectory.sigmas[steps]) == 0.0 and sigma_last > 0.4
    with torch.no_grad():
        velocity = algorithm.ctx.adapter.predict_velocity(
            before_last, torch.full((4,), sigma_last), rollout.embeds, guidance=algorithm.guidance
        )
    predicted_clean = before_last.double() - sigma_last * velocity.double()
    assert torch.allclose(trajectory.final.double(), predicted_clean, atol=1e-5, rtol=0)
    # the decoded reward input is that prediction: nothing was added after it
    with torch.no_grad():
        pixels = algorithm.ctx.adapter.decode(predicted_clean.float(), grad=False, checkpoint=False)
    assert torch.allclose(rollout.rewards["total"], pixels.mean(dim=(1, 2, 3, 4)), atol=1e-6)
    # and the last (deterministic) step is never trained
    from pisces_cli.training.rollout import train_timestep_indices

    indices = train_timestep_indices(64, steps, 1.0, torch.Generator().manual_seed(0))
    assert int(indices.max()) == steps - 2


def test_independent_noise_per_sample_without_shared_noise():
    algorithm, _ = make_algorithm(shared_noise=False)
    start = algorithm.initial_latents(2, torch.Generator().manual_seed(0))
    assert start.shape[0] == 8
    assert not torch.equal(start[0], start[1])
    shared, _ = make_algorithm(shared_noise=True)
    start = shared.initial_latents(2, torch.Generator().manual_seed(0))
    assert torch.equal(start[0], start[3]) and not torch.equal(start[3], start[4])
