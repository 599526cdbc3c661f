"""SDE rollouts for GRPO: sample trajectories with their per-step log-probabilities (backbones.md §6.1–6.3).

A rollout of ``N`` samples runs ``S`` SDE steps over a σ grid ``[S + 1]`` (1 → 0, :func:`sigma_grid`). Step ``i``
maps ``x_i`` (at σ_i) to ``x_{i+1} = μ_i + std_i·z`` with :func:`pisces_cli.backbones.sde.sde_step`; its
log-probability is the mean over the ``C·F·h·w`` latent elements of the Gaussian log density (fp32).

Both the rollout and the training recompute go through :func:`policy_step`, so with unchanged parameters
they compute bit-identical means and log-probs (ratio exactly 1; backbones.md §6.7). ``velocity_fn`` is the
caller's ``(latents [n, C, F, h, w], sigma [n], embeds) → v`` fp32 (it owns autocast / guidance).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pisces_cli.backbones.base import PromptEmbeds
from pisces_cli.backbones.sde import sde_step

VelocityFn = Callable[[torch.Tensor, torch.Tensor, PromptEmbeds], torch.Tensor]


@dataclass
class Trajectory:
    """``N`` sampled trajectories of ``S`` steps (all fp32, on the rollout device, detached).

    Attributes:
        latents: ``[N, S + 1, C, F, h, w]``: ``latents[:, 0]`` the initial noise, ``latents[:, S]`` the final sample.
        means: ``[N, S, C, F, h, w]`` the Gaussian means μ_i of each step.
        log_probs: ``[N, S]`` mean-over-elements log π_old(x_{i+1} | x_i).
        sigmas: ``[S + 1]`` the σ grid.
    """

    latents: torch.Tensor
    means: torch.Tensor
    log_probs: torch.Tensor
    sigmas: torch.Tensor

    @property
    def num_steps(self) -> int:
        return self.log_probs.shape[1]

    @property
    def final(self) -> torch.Tensor:
        """``[N, C, F, h, w]`` the sampled clean latents."""
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

    ``embeds`` has ``N`` rows. All step noise ``[S, N, C, F, h, w]`` is drawn first on the CPU from ``generator``, so
    a run is reproducible on any device and independent of ``chunk_size`` (samples per model call; all if None).
    """
    total = initial_latents.shape[0]
    chunk = total if not chunk_size or chunk_size <= 0 else min(chunk_size, total)
    device = initial_latents.device
    sigmas = sigmas.to(device=device, dtype=torch.float32)
    num_steps = sigmas.numel() - 1
    step_noise = torch.randn((num_steps, *initial_latents.shape), generator=generator, dtype=torch.float32)
    latents_out, means_out, log_probs_out = [], [], []
    for start in range(0, total, chunk):
        rows = slice(start, min(start + chunk, total))
        x = initial_latents[rows].float()
        count = x.shape[0]
        chunk_embeds = embeds.select(rows)
        path, means, log_probs = [x], [], []
        for i in range(num_steps):
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
    """``[N, K]`` step indices to train per sample (DanceGRPO, backbones.md §6.4).

    The last transition (into σ = 0) is excluded; each sample draws its own random permutation of the other
    ``S − 1`` steps and keeps the first ``K = max(1, int((S − 1)·fraction))``.
    """
    candidates = max(num_steps - 1, 1)
    keep = max(1, int(candidates * fraction))
    rows = [torch.randperm(candidates, generator=generator)[:keep] for _ in range(num_samples)]
    return torch.stack(rows)
