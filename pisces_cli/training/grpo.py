"""``finetune.algorithm: grpo`` — group-relative policy optimisation over SDE rollouts (Flow-GRPO / DanceGRPO).

Per micro-batch of ``P`` prompts (``N = P·G`` samples, ``G = grpo.num_generations``):

1. **Rollout** (no grad, eval mode, the same autocast as the update): each prompt is repeated ``G`` times
   (consecutive rows form its group); the initial noise ``[N, C, F, h, w]`` is shared inside a group when
   ``grpo.shared_noise``. ``S = grpo.sampling_steps`` steps over ``sigma_grid(S, grpo.shift)``: ``S − 1`` SDE steps
   (ODE velocity plus noise of scale η) store every latent, mean and log-prob, and the last step is the
   deterministic jump to the predicted clean sample ``x̂0`` (:mod:`pisces_cli.training.rollout` says why).
2. **Reward** (no grad): each clean sample ``x̂0`` is decoded to pixels ``[N, T, 3, H, W]`` in [0, 1] and scored
   by the reward module. It carries no injected noise, and it depends on every sampled action before it (unlike
   the reference implementation's GRPO, whose reward is computed from the state before the sampled step and so
   does not depend on the action, which makes its policy gradient zero in expectation).
3. **Advantages**: per reward component, group-normalised (``grpo.scale_rewards``), combined with the reward
   weights, clipped to ``±grpo.adv_clip`` (:mod:`pisces_cli.training.advantages`).
4. **Update**: each sample trains ``K = int((S − 1)·timestep_fraction)`` steps drawn by a random permutation of
   all but the last step (DanceGRPO). For each, the current policy's log-prob of the stored ``x_{i+1}`` gives
   ``ratio = exp(log π_θ − log π_old)`` and the PPO loss ``max(−A·ratio, −A·clip(ratio, 1 − ε, 1 + ε))``, plus
   ``β·KL(π_θ ‖ π_ref)`` (the reference = the adapter-disabled model) and an optional consistency term. Every
   backward is scaled by ``1 / (micro_batches · N · K)`` so the accumulated gradient is the mean over micro-batches,
   samples and trained steps.

**Why ε = 0.2 by default** (``grpo.clip_range``). Log-probs are *means* over the latent elements
(as in Flow-GRPO and DanceGRPO), so one update moves ``log π`` very little: off-policy ratios are ``1 ± 1e-4…1e-3``,
which is why both use ε = 1e-4. An ε that small sits at the level of numerical noise between the rollout and the
recompute (a bf16 recompute of an fp32 rollout deviates by about 2.5e-4 on a tiny HunyuanVideo) and silently
zeroes the gradient of every sample it touches. With one update per rollout
(``grpo.num_iterations = 1``, the default) the ratio is exactly 1 in every update, the clip never binds, and the
loss is the group-baselined policy gradient; with rollout reuse (``num_iterations > 1``) the PPO/TRL value 0.2
acts as a guard against runaway updates rather than as a regulariser. Set 1e-4 to reproduce DanceGRPO, after the
sanity check shows rollout/recompute deviations far below it.

**KL** (``grpo.beta`` > 0): for the two Gaussian step policies with equal std, the exact per-element KL is
``(μ_θ − μ_ref)² / (2·std²)`` with ``std² = g²·h``; we average it over elements (like the log-probs). Flow-GRPO's
code divides by ``2·g²`` instead (a per-step factor ``h``).

**Consistency term** (``grpo.consistency_weight`` > 0): on each trained rollout state ``x_i`` the student's jump to
σ = 0, ``x̂ = x_i − σ_i·v_θ``, is pulled (pseudo-Huber, ``finetune.consistency.huber_c``) towards the teacher's
Euler step to σ_{i+1} followed by the current student's (no-grad) jump to 0 — the backprop recipe's consistency
target (:mod:`pisces_cli.training.backprop`) on the rollout's own states.

**Rollout reuse** (``grpo.num_iterations``, optional field, default 1; TRL's μ): the rollouts of a step are reused
for that many optimizer steps (later ones are off-policy, the clip matters there). The buffer is not
checkpointed; a resumed run starts with fresh rollouts.

**Sanity check** (:meth:`GRPOAlgorithm.sanity_check`, run by :meth:`before_training`): a fresh rollout is
re-scored with the training code path before any update (every stochastic step); every ratio must be 1 (``|ratio − 1| < 1e-6`` in fp32,
< ``0.1·clip_range`` under bf16/fp16 autocast) or :class:`PiscesRuntimeError` is raised.

Rollouts and updates run the transformers in ``eval()`` mode (LoRA dropout off) so both compute the same policy.
``GrpoSection`` fields besides the objective's: ``num_iterations`` (updates per rollout batch), ``chunk_size``
(samples per DiT call in rollout and update, and per decode + reward call; null = all ``N`` per DiT call and one
sample per decode + reward call),
``sanity_check`` and ``sanity_prompts`` (``ctx.extra["sanity_prompts"]`` wins; else the first prompt in the
trainer's prompt cache).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from pisces_cli.backbones.base import PromptEmbeds
from pisces_cli.backbones.schedule import sigma_grid
from pisces_cli.backbones.sde import sde_step
from pisces_cli.errors import PiscesRuntimeError, UsageError
from pisces_cli.training.advantages import combine_advantages, zero_std_group_fraction
from pisces_cli.training.algorithm import PromptBatch, TrainContext, TrainingAlgorithm, base_model, eval_mode
from pisces_cli.training.rollout import Trajectory, policy_step, sample_trajectories, train_timestep_indices

SANITY_PROMPTS = ("a red ball rolling across a wooden table",)
FP32_RATIO_TOLERANCE = 1e-6


@dataclass
class RolloutBatch:
    """One micro-batch of rollouts ready for updates.

    Attributes:
        prompts: ``N`` captions (each prompt repeated G times, consecutively).
        embeds: ``N`` rows of prompt embeddings.
        trajectory: the sampled trajectories (``N`` samples).
        rewards: ``{component: [N]}`` fp32 CPU rewards, plus ``"total"`` (the weighted sum).
        advantages: ``[N]`` fp32 on the training device.
    """

    prompts: list[str]
    embeds: PromptEmbeds
    trajectory: Trajectory
    rewards: dict[str, torch.Tensor]
    advantages: torch.Tensor


def _summary(values: torch.Tensor) -> tuple[float, float]:
    flat = values.detach().double().reshape(-1).cpu()
    std = float(flat.std(unbiased=False)) if flat.numel() > 1 else 0.0
    return float(flat.mean()), std


def clipped_policy_loss(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per sample: ``max(−A·r, −A·clip(r, 1 − ε, 1 + ε))`` → ``([n] loss, [n] clipped)``.

    ``clipped`` marks the samples whose gradient the clip removed: ``r > 1 + ε`` with ``A > 0`` or
    ``r < 1 − ε`` with ``A < 0`` (TRL's clip ratio).
    """
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    is_clipped = ((ratio > 1.0 + clip_range) & (advantages > 0)) | (
        (ratio < 1.0 - clip_range) & (advantages < 0)
    )
    return torch.maximum(unclipped, clipped), is_clipped


class GRPOAlgorithm(TrainingAlgorithm):
    """GRPO over SDE rollouts of the flow-matching generator, rewarded by the PISCES reward block."""

    name = "grpo"

    def __init__(self, ctx: TrainContext) -> None:
        super().__init__(ctx)
        grpo = ctx.section.grpo
        self.grpo = grpo
        if grpo.eta <= 0:
            raise UsageError(
                f"finetune.grpo.eta must be > 0 for GRPO (an η = 0 step is deterministic and has no log-prob), got {grpo.eta}"
            )
        self.group_size = int(grpo.num_generations)
        self.sigmas = sigma_grid(int(grpo.sampling_steps), float(grpo.shift))
        self.guidance = grpo.guidance if grpo.guidance is not None else ctx.section.guidance
        self.num_iterations = max(1, int(getattr(grpo, "num_iterations", 1) or 1))
        self.chunk_size = getattr(grpo, "chunk_size", None)
        self.run_sanity = bool(getattr(grpo, "sanity_check", True))
        self.huber_c = float(ctx.section.consistency.huber_c)
        self._buffer: list[RolloutBatch] = []
        self._buffer_uses = 0

    # ------------------------------------------------------------------------------------------ pieces
    def eval_mode(self) -> contextlib.AbstractContextManager:
        """Transformers in ``eval()`` (no LoRA dropout) inside; previous modes restored on exit."""
        return eval_mode(self.ctx.adapter)

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Inside (under ``no_grad``): the reference policy — LoRA disabled, or the trainer's frozen copies for
        full fine-tuning (``ctx.extra["teacher_transformers"]``)."""
        with base_model(self.ctx):
            yield

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, embeds: PromptEmbeds) -> torch.Tensor:
        """fp32 ``v`` ``[n, C, F, h, w]`` at per-sample σ ``[n]`` under the run's autocast."""
        with self.autocast():
            velocity = self.ctx.adapter.predict_velocity(latents, sigma, embeds, guidance=self.guidance)
        return velocity.float()

    def latent_shape(self) -> tuple[int, int, int, int]:
        section = self.ctx.section
        return self.ctx.adapter.latent_shape(section.num_frames, section.height, section.width)

    def initial_latents(self, num_prompts: int, generator: torch.Generator) -> torch.Tensor:
        """``[P·G, C, F, h, w]`` noise; with ``shared_noise`` one draw per prompt repeated over its group."""
        shape = self.latent_shape()
        draws = num_prompts if self.grpo.shared_noise else num_prompts * self.group_size
        noise = torch.randn((draws, *shape), generator=generator, dtype=torch.float32)
        if self.grpo.shared_noise:
            noise = noise.repeat_interleave(self.group_size, dim=0)
        return noise.to(self.ctx.device)

    def _chunks(self, total: int, default: int | None = None) -> list[slice]:
        """Row slices of ``chunk_size`` samples (``default``, else all ``total``, when unset)."""
        size = self.chunk_size if self.chunk_size and self.chunk_size > 0 else (default or total)
        size = min(int(size), total)
        return [slice(start, min(start + size, total)) for start in range(0, total, size)]

    # ------------------------------------------------------------------------------------------ rollout
    def rollout(
        self, prompts: list[str], generator: torch.Generator
    ) -> tuple[list[str], PromptEmbeds, Trajectory]:
        """Sample ``G`` trajectories per prompt (no grad, eval mode)."""
        grouped_prompts = [prompt for prompt in prompts for _ in range(self.group_size)]
        embeds = self.ctx.encode_prompts(list(prompts)).repeat_interleave(self.group_size)
        start = self.initial_latents(len(prompts), generator)
        with self.eval_mode():
            trajectory = sample_trajectories(
                self.velocity,
                embeds,
                start,
                self.sigmas,
                eta=float(self.grpo.eta),
                noise_schedule=self.grpo.noise_schedule,
                generator=generator,
                chunk_size=self.chunk_size,
            )
        return grouped_prompts, embeds, trajectory

    @torch.no_grad()
    def score(self, final_latents: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Decode the clean samples ``x̂0`` and score them → ``{component: [N], "total": [N]}`` fp32 on CPU.

        One sample at a time unless ``chunk_size`` is set: a full-resolution decode is the largest activation
        of the rollout, and batching it gains little.
        """
        vae = self.ctx.section.vae
        collected: dict[str, list[torch.Tensor]] = {}
        for rows in self._chunks(final_latents.shape[0], default=1):
            pixels = self.ctx.adapter.decode(
                final_latents[rows], grad=False, checkpoint=False, tiling=vae.tiling
            )
            output = self.ctx.reward(pixels, prompts[rows])
            for name, value in output.components().items():
                collected.setdefault(name, []).append(value.detach().float().reshape(-1).cpu())
            collected.setdefault("total", []).append(output.total.detach().float().reshape(-1).cpu())
        return {name: torch.cat(values) for name, values in collected.items()}

    def collect(self, batch: PromptBatch, generator: torch.Generator) -> RolloutBatch:
        """Rollout + reward + advantages for one micro-batch of prompts."""
        prompts, embeds, trajectory = self.rollout(list(batch.prompts), generator)
        rewards = self.score(trajectory.final, prompts)
        components = {name: value for name, value in rewards.items() if name != "total"}
        weights = dict(getattr(self.ctx.reward, "weights", {}) or {})
        advantages = combine_advantages(
            components, weights, self.group_size, self.grpo.scale_rewards, self.grpo.adv_clip
        )
        return RolloutBatch(prompts, embeds, trajectory, rewards, advantages.to(self.ctx.device))

    # ------------------------------------------------------------------------------------------ update
    def update(
        self, rollout: RolloutBatch, generator: torch.Generator, scale: float
    ) -> dict[str, list[torch.Tensor]]:
        """Recompute log-probs on the trained steps, ``backward()`` the GRPO loss; returns detached terms."""
        grpo = self.grpo
        trajectory = rollout.trajectory
        total = trajectory.latents.shape[0]
        device = self.ctx.device
        indices = train_timestep_indices(
            total, trajectory.num_steps, float(grpo.timestep_fraction), generator
        )
        trained = indices.shape[1]
        sigmas = trajectory.sigmas
        epsilon = float(grpo.clip_range)
        beta = float(grpo.beta)
        cd_weight = float(grpo.consistency_weight)
        terms: dict[str, list[torch.Tensor]] = {}

        def keep(name: str, value: torch.Tensor) -> None:
            terms.setdefault(name, []).append(value.detach().float().reshape(-1).cpu())

        for slot in range(trained):
            for rows in self._chunks(total):
                row_ids = torch.arange(total)[rows]
                step_ids = indices[rows, slot]
                x = trajectory.latents[row_ids, step_ids]
                x_next = trajectory.latents[row_ids, step_ids + 1]
                sigma = sigmas[step_ids.to(sigmas.device)]
                sigma_next = sigmas[(step_ids + 1).to(sigmas.device)]
                old_log_prob = trajectory.log_probs[row_ids, step_ids].to(device)
                advantage = rollout.advantages[rows]
                embeds = rollout.embeds.select(rows)
                reference_velocity = None
                if beta > 0 or cd_weight > 0:
                    with torch.no_grad(), self.eval_mode(), self.reference():
                        reference_velocity = self.velocity(x, sigma, embeds)
                with self.eval_mode():
                    _, mean, std, log_prob, velocity = policy_step(
                        self.velocity,
                        x,
                        x_next,
                        sigma,
                        sigma_next,
                        embeds,
                        eta=float(grpo.eta),
                        noise_schedule=grpo.noise_schedule,
                    )
                log_ratio = log_prob - old_log_prob
                ratio = torch.exp(log_ratio)
                per_sample, is_clipped = clipped_policy_loss(ratio, advantage, epsilon)
                keep("loss_policy", per_sample)
                if beta > 0:
                    _, reference_mean, _, _ = sde_step(
                        reference_velocity,
                        x,
                        sigma,
                        sigma_next,
                        float(grpo.eta),
                        prev_sample=x_next,
                        noise_schedule=grpo.noise_schedule,
                    )
                    kl = ((mean - reference_mean) ** 2 / (2.0 * std**2)).flatten(1).mean(dim=1)
                    per_sample = per_sample + beta * kl
                    keep("kl", kl)
                if cd_weight > 0:
                    loss_cd = self._consistency(x, sigma, sigma_next, velocity, reference_velocity, embeds)
                    per_sample = per_sample + cd_weight * loss_cd
                    keep("loss_cd", loss_cd)
                keep("loss", per_sample)
                keep("ratio_abs_dev", (ratio - 1.0).abs())
                keep("approx_kl", 0.5 * log_ratio**2)
                keep("clip_fraction", is_clipped.float())
                chunk_loss = per_sample.sum() * (scale / (total * trained))
                if not self.backward_unless_nonfinite(chunk_loss):
                    keep("nonfinite", torch.ones(1))
        return terms

    def _consistency(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        velocity: torch.Tensor,
        teacher_velocity: torch.Tensor,
        embeds: PromptEmbeds,
    ) -> torch.Tensor:
        """Per-sample pseudo-Huber ``[n]`` between the student's jump to σ = 0 and the teacher-step target."""
        shape = (-1, *([1] * (x.ndim - 1)))
        x_hat = x.float() - sigma.reshape(shape) * velocity
        with torch.no_grad():
            x_prev = x.float() + (sigma_next - sigma).reshape(shape) * teacher_velocity
            with self.eval_mode():
                student_next = self.velocity(x_prev, sigma_next, embeds)
            target = x_prev - sigma_next.reshape(shape) * student_next
        difference = x_hat - target
        return (torch.sqrt(difference**2 + self.huber_c**2) - self.huber_c).flatten(1).mean(dim=1)

    # ------------------------------------------------------------------------------------------ step
    def train_step(
        self, batches: list[PromptBatch], step: int, generator: torch.Generator
    ) -> dict[str, float]:
        """One optimizer step: rollouts (or the reused buffer), then the accumulated GRPO loss over ``batches``.

        With ``num_iterations = 1`` each micro-batch is rolled out, updated and dropped before the next one, so
        only one micro-batch of trajectories is held at a time. With reuse, every micro-batch is rolled out
        first and kept for ``num_iterations`` optimizer steps (``batches`` of the reuse steps are not read).
        """
        del step
        reuse = bool(self._buffer) and self._buffer_uses < self.num_iterations
        collected: dict[str, list[torch.Tensor]] = {}
        summaries: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []

        def train_on(rollout: RolloutBatch, scale: float) -> None:
            for name, values in self.update(rollout, generator, scale).items():
                collected.setdefault(name, []).extend(values)
            summaries.append((rollout.rewards, rollout.advantages.detach().cpu()))

        if self.num_iterations == 1:
            for batch in batches:
                train_on(self.collect(batch, generator), 1.0 / len(batches))
        else:
            if not reuse:
                self._buffer = [self.collect(batch, generator) for batch in batches]
                self._buffer_uses = 0
            self._buffer_uses += 1
            for rollout in self._buffer:
                train_on(rollout, 1.0 / len(self._buffer))
        metrics = self._metrics(collected, summaries)
        metrics["rollout_reused"] = 1.0 if reuse else 0.0
        return metrics

    def _metrics(
        self,
        collected: dict[str, list[torch.Tensor]],
        summaries: list[tuple[dict[str, torch.Tensor], torch.Tensor]],
    ) -> dict[str, float]:
        """Loss terms and diagnostics averaged over samples × trained steps; rewards over samples."""
        metrics: dict[str, float] = {}
        for name in ("loss", "loss_policy", "kl", "loss_cd", "approx_kl", "clip_fraction"):
            if name in collected:
                metrics[name] = float(torch.cat(collected[name]).double().mean())
        if "ratio_abs_dev" in collected:
            deviations = torch.cat(collected["ratio_abs_dev"]).double()
            metrics["ratio_abs_dev_mean"] = float(deviations.mean())
            metrics["ratio_abs_dev_max"] = float(deviations.max())
        if "nonfinite" in collected:
            metrics["loss"] = math.nan
        for name in sorted({name for rewards, _ in summaries for name in rewards}):
            mean, std = _summary(torch.cat([rewards[name] for rewards, _ in summaries]))
            metrics[f"reward_{name}_mean"] = mean
            metrics[f"reward_{name}_std"] = std
        totals = [rewards["total"] for rewards, _ in summaries]
        groups = [total.numel() // self.group_size for total in totals]
        zero = sum(zero_std_group_fraction(t, self.group_size) * n for t, n in zip(totals, groups))
        metrics["zero_std_group_fraction"] = float(zero / max(1, sum(groups)))
        advantages = torch.cat([advantages for _, advantages in summaries])
        metrics["advantage_abs_mean"] = float(advantages.abs().double().mean())
        metrics["num_samples"] = float(advantages.numel())
        return metrics

    # ------------------------------------------------------------------------------------------ sanity
    def sanity_tolerance(self) -> float:
        """``1e-6`` in fp32; under autocast ``0.1·clip_range`` (the recompute must stay far inside the clip)."""
        if self.ctx.autocast_dtype is None:
            return FP32_RATIO_TOLERANCE
        return 0.1 * float(self.grpo.clip_range)

    def default_sanity_prompts(self) -> list[str]:
        """``ctx.extra["sanity_prompts"]``, else ``grpo.sanity_prompts``, else the first prompt already in the
        trainer's prompt cache (its text encoders may be offloaded), else a fixed caption."""
        explicit = self.ctx.extra.get("sanity_prompts") or getattr(self.grpo, "sanity_prompts", None)
        if explicit:
            return list(explicit)
        cached = getattr(self.ctx.encode_prompts, "rows", None)
        if cached:
            return [next(iter(cached))]
        return list(SANITY_PROMPTS)

    def sanity_check(self, prompts: list[str] | None = None, seed: int | None = None) -> dict[str, float]:
        """Roll out one group per prompt, re-score **every** stochastic step with the training code path, check
        ratio = 1.

        Runs before any update (parameters unchanged), so each ``exp(log π_θ − log π_old)`` must be 1 and each
        recomputed mean must equal the stored one. Returns ``sanity_*`` metrics; raises
        :class:`PiscesRuntimeError` naming the worst sample/step when ``max |ratio − 1|`` ≥ :meth:`sanity_tolerance`.
        """
        if prompts is None:
            prompts = self.default_sanity_prompts()
        if seed is None:
            seed = int(getattr(self.ctx.recipe, "seed", 0) or 0)
        generator = torch.Generator().manual_seed(seed)
        _, embeds, trajectory = self.rollout(prompts, generator)
        total, steps = trajectory.log_probs.shape  # the S − 1 stochastic steps
        ratio_dev = torch.zeros(total, steps, dtype=torch.float64)
        mean_dev = torch.zeros(total, steps, dtype=torch.float64)
        for step_index in range(steps):
            for rows in self._chunks(total):
                count = rows.stop - rows.start
                with self.eval_mode():
                    _, mean, _, log_prob, _ = policy_step(
                        self.velocity,
                        trajectory.latents[rows, step_index],
                        trajectory.latents[rows, step_index + 1],
                        trajectory.sigmas[step_index].expand(count),
                        trajectory.sigmas[step_index + 1].expand(count),
                        embeds.select(rows),
                        eta=float(self.grpo.eta),
                        noise_schedule=self.grpo.noise_schedule,
                    )
                old = trajectory.log_probs[rows, step_index]
                ratio = torch.exp(log_prob.detach() - old)
                ratio_dev[rows, step_index] = (ratio - 1.0).abs().double().cpu()
                stored = trajectory.means[rows, step_index]
                mean_dev[rows, step_index] = (
                    (mean.detach() - stored).abs().flatten(1).amax(dim=1).double().cpu()
                )
        worst = float(ratio_dev.max())
        tolerance = self.sanity_tolerance()
        metrics = {
            "sanity_max_abs_ratio_dev": worst,
            "sanity_mean_abs_ratio_dev": float(ratio_dev.mean()),
            "sanity_max_abs_mean_dev": float(mean_dev.max()),
            "sanity_tolerance": tolerance,
            "sanity_samples": float(total),
            "sanity_steps": float(steps),
        }
        if not worst < tolerance:
            flat = int(ratio_dev.argmax())
            sample, step_index = divmod(flat, steps)
            raise PiscesRuntimeError(
                f"GRPO sanity check failed: max |ratio - 1| = {worst:.3e} (sample {sample}, step {step_index}) "
                f">= {tolerance:.1e} before any update; the training recompute differs from the rollout. Usual causes: "
                "a different dtype/autocast, dropout or train-mode layers, a σ/timestep or "
                "guidance mismatch, LoRA scale/adapter state, non-deterministic attention kernels. "
                "Check finetune.mixed_precision and finetune.lora.dropout."
            )
        return metrics

    def before_training(self) -> dict[str, float]:
        """The ratio = 1 sanity check (skipped when ``grpo.sanity_check`` is false)."""
        if not self.run_sanity:
            return {}
        return self.sanity_check()
