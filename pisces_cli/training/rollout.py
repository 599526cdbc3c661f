"""SDE rollouts for GRPO: sample trajectories with their per-step log-probabilities.

A rollout of ``N`` samples runs ``S`` steps over a σ grid ``[S + 1]`` (1 → 0, :func:`sigma_grid`). Steps
``i < S − 1`` are the Gaussian policy steps: ``x_{i+1} = μ_i + std_i·z`` (:func:`pisces_cli.backbones.sde.sde_step`),
whose log-probability is the mean over the ``C·F·h·w`` latent elements of the Gaussian log density (fp32).

**The last step is deterministic**: the Euler ODE step into σ_S = 0, which is exactly the predicted clean sample
``x̂0 = x_{S−1} − σ_{S−1}·v``. This is what the reward scores. Were the last step an SDE step too, its sample
``μ + std·z`` would carry injected noise of std ``η·√σ_{S−1}`` per latent element into the decoded video (≈ 0.125 at
16 steps, shift 5, η 0.25): the reward would judge that noise, and since the last step is never trained its
action would never be credited. Rewarding the predicted clean sample of a stochastic last step and excluding that
step from the loss is the same thing (DanceGRPO decodes that prediction), so there is one behaviour, not two.

Both the rollout and the training recompute go through :func:`policy_step`, so with unchanged parameters
they compute bit-identical means and log-probs (ratio exactly 1). ``velocity_fn`` is the caller's
``(latents [n, C, F, h, w], sigma [n], embeds) → v`` fp32 (it owns autocast / guidance).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pisces_cli.backbones.base import PromptEmbeds
from pisces_cli.backbones.sde import euler_step, sde_step
from pisces_cli.errors import UsageError

VelocityFn = Callable[[torch.Tensor, torch.Tensor, PromptEmbeds], torch.Tensor]


@dataclass
class Trajectory:
    """``N`` sampled trajectories of ``S`` steps (all fp32, on the rollout device, detached).

    Attributes:
        latents: ``[N, S + 1, C, F, h, w]``: ``latents[:, 0]`` the initial noise, ``latents[:, S]`` the clean sample
            (the deterministic last step's ``x̂0``).
        means: ``[N, S − 1, C, F, h, w]`` the Gaussian means μ_i of the stochastic steps.
        log_probs: ``[N, S − 1]`` mean-over-elements log π_old(x_{i+1} | x_i) of the stochastic steps.
        sigmas: ``[S + 1]`` the σ grid.
    """

    latents: torch.Tensor
    means: torch.Tensor
    log_probs: torch.Tensor
    sigmas: torch.Tensor

    @property
    def num_steps(self) -> int:
        """``S``: every step of the rollout, the deterministic last one included."""
        return self.latents.shape[1] - 1

    @property
    def num_stochastic_steps(self) -> int:
        """``S − 1``: the policy steps that have a log-probability (the ones GRPO can train)."""
        return self.log_probs.shape[1]

    @property
    def final(self) -> torch.Tensor:
        """``[N, C, F, h, w]`` the clean latents the reward scores: the last step's predicted clean sample, with no
        injected noise."""
        return self.latents[:, -1]


def policy_step(
    velocity_fn: VelocityFn,
    latents: torch.Tensor,
    next_latents: torch.Tensor | None,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    embeds: PromptEmbeds,
    *,
    eta: float,
    noise_schedule: str,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One policy step for ``n`` samples at per-sample σ ``[n]`` → σ' ``[n]``.

    With ``next_latents`` given it is scored (training recompute); otherwise ``x'`` is sampled with ``noise``.
    Returns ``(x_next, mean, std, log_prob [n], velocity)``; ``mean``/``log_prob`` carry gradients when
    ``velocity_fn`` does.
    """
    velocity = velocity_fn(latents, sigma, embeds)
    x_next, mean, std, log_prob = sde_step(
        velocity,
        latents,
        sigma,
        sigma_next,
        eta,
        noise=noise,
        prev_sample=next_latents,
        noise_schedule=noise_schedule,
    )
    return x_next, mean, std, log_prob, velocity


@torch.no_grad()
def sample_trajectories(
    velocity_fn: VelocityFn,
    embeds: PromptEmbeds,
    initial_latents: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    eta: float,
    noise_schedule: str,
    generator: torch.Generator,
    chunk_size: int | None = None,
) -> Trajectory:
    """Roll out ``N`` = ``initial_latents.shape[0]`` samples over ``sigmas`` ``[S + 1]`` (no grad).

    ``embeds`` has ``N`` rows. The step noise ``[S − 1, N, C, F, h, w]`` of the stochastic steps is drawn first on the
    CPU from ``generator``, so a run is reproducible on any device and independent of ``chunk_size`` (samples per
    model call; all if None). The last step is the deterministic jump to ``x̂0`` (module docstring).
    """
    total = initial_latents.shape[0]
    chunk = total if not chunk_size or chunk_size <= 0 else min(chunk_size, total)
    device = initial_latents.device
    sigmas = sigmas.to(device=device, dtype=torch.float32)
    num_steps = sigmas.numel() - 1
    if num_steps < 2:
        raise UsageError(
            f"a GRPO rollout needs >= 2 steps (one stochastic, the last deterministic), got {num_steps}"
        )
    step_noise = torch.randn(
        (num_steps - 1, *initial_latents.shape), generator=generator, dtype=torch.float32
    )
    latents_out, means_out, log_probs_out = [], [], []
    for start in range(0, total, chunk):
        rows = slice(start, min(start + chunk, total))
        x = initial_latents[rows].float()
        count = x.shape[0]
        chunk_embeds = embeds.select(rows)
        path, means, log_probs = [x], [], []
        for i in range(num_steps - 1):
            noise = step_noise[i, rows].to(device)
            x, mean, _, log_prob, _ = policy_step(
                velocity_fn,
                x,
                None,
                sigmas[i].expand(count),
                sigmas[i + 1].expand(count),
                chunk_embeds,
                eta=eta,
                noise_schedule=noise_schedule,
                noise=noise,
            )
            path.append(x)
            means.append(mean)
            log_probs.append(log_prob)
        last_sigma, end_sigma = sigmas[-2].expand(count), sigmas[-1].expand(count)
        path.append(euler_step(velocity_fn(x, last_sigma, chunk_embeds), x, last_sigma, end_sigma))
        latents_out.append(torch.stack(path, dim=1))
        means_out.append(torch.stack(means, dim=1))
        log_probs_out.append(torch.stack(log_probs, dim=1))
    return Trajectory(
        latents=torch.cat(latents_out),
        means=torch.cat(means_out),
        log_probs=torch.cat(log_probs_out),
        sigmas=sigmas,
    )


def train_timestep_indices(
    num_samples: int, num_steps: int, fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """``[N, K]`` step indices to train per sample, as DanceGRPO draws them.

    The last transition (into σ = 0, deterministic in our rollouts) is excluded; each sample draws its own random
    permutation of the other ``S − 1`` steps and keeps the first ``K = max(1, int((S − 1)·fraction))``.
    """
    candidates = max(num_steps - 1, 1)
    keep = max(1, int(candidates * fraction))
    rows = [torch.randperm(candidates, generator=generator)[:keep] for _ in range(num_samples)]
    return torch.stack(rows)
