"""``finetune.algorithm: backprop`` — direct reward backprop + consistency distillation (the paper's recipe).

Per micro-batch of B clean latents ``x0`` ``[B, C, F, h, w]`` (transformer latent space) and captions:

1. ``k ~ U{0..E−1}`` per sample on the shifted Euler grid (:func:`training_sigma_grid`), ``ε ~ N(0, I)``,
   ``x_t = σ_k·ε + (1 − σ_k)·x0``.
2. Student velocity ``v = DiT_θ(x_t, 1000σ_k)`` (autocast), one Euler jump to the end of the grid
   ``x̂ = x_t + (σ_end − σ_k)·v`` with ``σ_end = σprev_0`` (≈ 0.0167 at shift 17).
3. ``x̂`` is decoded differentiably (VAE decoder checkpointing per ``finetune.vae``) into pixels
   ``[B, T, 3, H, W]`` in [0, 1]; ``T`` is whatever the VAE returns, and the reward reads every frame.
4. Teacher (the same network with its LoRA disabled; a frozen copy for full fine-tuning), no grad:
   ``x_prev = x_t + (σprev_k − σ_k)·v_T``; target from the *current* student, no grad:
   ``target = x_prev + (σ_end − σprev_k)·DiT_θ(x_prev, 1000σprev_k)``, except ``target = x_prev`` at k = 0.
5. ``L_cd = mean(sqrt((x̂ − target)² + c²) − c)`` (pseudo-Huber, c = ``consistency.huber_c``).
6. ``loss = w_cd·L_cd − mean(w_q·r_q + w_s·r_s)`` (reward weights from ``reward.weights``), divided by the
   number of micro-batches, then ``backward()``.

Order of passes (docs/backbones.md §5.2): student forward with grad → teacher/target under ``no_grad`` with the
adapters disabled/re-enabled → decode + reward → backward, so no backward ever runs through a disabled adapter.

Prompt-only data (no latents): ``finetune.prompt_x0`` picks x0. ``teacher`` (default) samples x0 with
``prompt_x0_steps`` Euler steps of the frozen base model from noise drawn with the step's generator (no grad),
then trains exactly as above. ``noise`` uses k = E−1 (σ = 1), i.e. ``x_t = ε`` and x0 is never needed: a
one-step reward objective from pure noise (the consistency target still comes from the teacher).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from pisces_cli.backbones.base import PromptEmbeds
from pisces_cli.backbones.schedule import sigma_grid, training_sigma_grid
from pisces_cli.backbones.sde import euler_step
from pisces_cli.training.algorithm import PromptBatch, TrainContext, TrainingAlgorithm, base_model
from pisces_cli.training.losses import per_sample, pseudo_huber


def _summary(name: str, values: list[torch.Tensor]) -> dict[str, float]:
    """``{name_mean, name_std}`` of the concatenated per-sample values (population std, 0 for one sample)."""
    flat = torch.cat([v.detach().float().reshape(-1).cpu() for v in values])
    std = float(flat.std(unbiased=False)) if flat.numel() > 1 else 0.0
    return {f"{name}_mean": float(flat.mean()), f"{name}_std": std}


class BackpropAlgorithm(TrainingAlgorithm):
    """The paper's recipe: reward gradients through a one-step jump and the VAE decoder, plus CD to the teacher."""

    name = "backprop"

    def __init__(self, ctx: TrainContext) -> None:
        super().__init__(ctx)
        section = ctx.section
        grid = training_sigma_grid(section.schedule.shift, section.schedule.euler_steps)
        self.sigmas = grid.sigmas
        self.sigmas_prev = grid.sigmas_prev
        self.sigma_end = float(grid.sigmas_prev[0])
        self.cd_weight = float(section.consistency.weight)
        self.huber_c = float(section.consistency.huber_c)

    # ------------------------------------------------------------------------------------------ pieces
    @contextlib.contextmanager
    def teacher(self) -> Iterator[None]:
        """Inside: ``adapter.predict_velocity`` runs the frozen teacher. Must be entered under ``no_grad``.

        LoRA: the adapters are disabled (and re-enabled on exit). Full fine-tuning: the trainer's frozen copies
        (``ctx.extra["teacher_transformers"]``, by component name) are swapped in.
        """
        with base_model(self.ctx):
            yield

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, embeds: PromptEmbeds) -> torch.Tensor:
        """fp32 ``v`` ``[B, C, F, h, w]`` at per-sample σ ``[B]`` under autocast."""
        with self.autocast():
            velocity = self.ctx.adapter.predict_velocity(
                latents, sigma, embeds, guidance=self.ctx.section.guidance
            )
        return velocity.float()

    @torch.no_grad()
    def sample_prompt_x0(
        self, embeds: PromptEmbeds, shape: tuple[int, ...], generator: torch.Generator
    ) -> torch.Tensor:
        """Prompt-only data: x0 ``shape`` sampled by the frozen base model (``prompt_x0_steps`` Euler steps)."""
        section = self.ctx.section
        latents = torch.randn(shape, generator=generator).to(self.ctx.device)
        grid = sigma_grid(section.prompt_x0_steps, section.schedule.shift).tolist()
        with self.teacher():
            for sigma, sigma_next in zip(grid[:-1], grid[1:]):
                sigma_batch = torch.full((shape[0],), sigma, device=self.ctx.device)
                latents = euler_step(self.velocity(latents, sigma_batch, embeds), latents, sigma, sigma_next)
        return latents

    def latent_shape(self, batch_size: int) -> tuple[int, ...]:
        section = self.ctx.section
        return (batch_size, *self.ctx.adapter.latent_shape(section.num_frames, section.height, section.width))

    @torch.no_grad()
    def consistency_target(
        self,
        x_t: torch.Tensor,
        sigma: torch.Tensor,
        sigma_prev: torch.Tensor,
        index: torch.Tensor,
        embeds: PromptEmbeds,
    ) -> torch.Tensor:
        """Steps 4 (teacher Euler step to σprev_k) and 5 (current student's jump to σ_end), no grad."""
        with self.teacher():
            teacher_velocity = self.velocity(x_t, sigma, embeds)
        x_prev = x_t + per_sample(sigma_prev - sigma, x_t) * teacher_velocity
        student_velocity = self.velocity(x_prev, sigma_prev, embeds)
        target = x_prev + per_sample(self.sigma_end - sigma_prev, x_prev) * student_velocity
        at_first = per_sample((index == 0).float(), x_prev)
        return at_first * x_prev + (1.0 - at_first) * target

    # ------------------------------------------------------------------------------------------ step
    def micro_step(
        self, batch: PromptBatch, generator: torch.Generator, scale: float
    ) -> dict[str, torch.Tensor]:
        """One micro-batch: forward, losses, ``(loss·scale).backward()``; returns detached per-sample terms."""
        ctx = self.ctx
        device = ctx.device
        embeds = ctx.encode_prompts(batch.prompts)
        batch_size = len(batch.prompts)
        euler_steps = len(self.sigmas)
        if batch.latents is None and ctx.section.prompt_x0 == "noise":
            index = torch.full((batch_size,), euler_steps - 1, dtype=torch.long)
        else:
            index = torch.randint(0, euler_steps, (batch_size,), generator=generator)
        if batch.latents is not None:
            x0 = batch.latents.to(device=device, dtype=torch.float32)
        elif ctx.section.prompt_x0 == "teacher":
            x0 = self.sample_prompt_x0(embeds, self.latent_shape(batch_size), generator)
        else:
            x0 = torch.zeros(self.latent_shape(batch_size), device=device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        sigma = self.sigmas[index].to(device)
        sigma_prev = self.sigmas_prev[index].to(device)
        x_t = per_sample(sigma, x0) * noise + (1.0 - per_sample(sigma, x0)) * x0

        velocity = self.velocity(x_t, sigma, embeds)
        x_hat = x_t + per_sample(self.sigma_end - sigma, x_t) * velocity

        terms: dict[str, torch.Tensor] = {"sigma": sigma.detach()}
        loss = x_hat.new_zeros(())
        if self.cd_weight != 0.0:
            target = self.consistency_target(x_t, sigma, sigma_prev, index.to(device), embeds)
            loss_cd = pseudo_huber(x_hat, target, self.huber_c)
            loss = loss + self.cd_weight * loss_cd
            terms["loss_cd"] = loss_cd.detach().reshape(1)

        vae = ctx.section.vae
        pixels = ctx.adapter.decode(x_hat, grad=True, checkpoint=vae.decode_checkpointing, tiling=vae.tiling)
        rewards = ctx.reward(pixels, list(batch.prompts))
        loss_reward = -rewards.total.float().mean()
        loss = loss + loss_reward
        terms["loss_reward"] = loss_reward.detach().reshape(1)
        for name, value in rewards.components().items():
            terms[f"reward_{name}"] = value.detach().float()
        terms["reward_total"] = rewards.total.detach().float()
        terms["num_frames"] = torch.tensor([float(pixels.shape[1])])
        terms["loss"] = loss.detach().reshape(1)
        self.backward_unless_nonfinite(loss * scale)
        return terms

    def train_step(
        self, batches: list[PromptBatch], step: int, generator: torch.Generator
    ) -> dict[str, float]:
        """Accumulate gradients over ``batches``; each micro-loss is divided by ``len(batches)``."""
        del step
        collected: dict[str, list[torch.Tensor]] = {}
        scale = 1.0 / len(batches)
        for batch in batches:
            for name, value in self.micro_step(batch, generator, scale).items():
                collected.setdefault(name, []).append(value)
        metrics: dict[str, float] = {}
        for name in ("loss", "loss_cd", "loss_reward"):
            if name in collected:
                metrics[name] = float(torch.cat([v.cpu() for v in collected[name]]).mean())
        for name, values in collected.items():
            if name.startswith("reward_") or name == "sigma":
                metrics.update(_summary(name, values))
        metrics["num_frames"] = float(collected["num_frames"][0])
        return metrics
