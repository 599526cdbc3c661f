"""Flow-matching Euler (ODE) and SDE steps with Gaussian log-probabilities, for GRPO (the step Flow-GRPO and DanceGRPO share).

Step from σ to σ' < σ with Δ = σ' − σ < 0, h = −Δ and velocity ``v``. Predicted noise ``ε̂ = x + (1 − σ)·v``.
SDE (Euler–Maruyama of the reverse SDE with diffusion g)::

    μ = x + Δ·[v + g²/(2σ)·ε̂],   std = g·√h,   x' = μ + std·z,  z ~ N(0, I)

``noise_schedule="constant"`` (DanceGRPO): g = η.  ``"flow_grpo"``: g = η·√(σ / (1 − σ̃)), with σ̃ = σ except
σ̃ = σ' at σ = 1. The log-prob is the **mean** over all non-batch elements of the full Gaussian log density.
"""

from __future__ import annotations

import math

import torch

from pisces_cli.errors import UsageError

NOISE_SCHEDULES = ("constant", "flow_grpo")


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or ``[B]`` tensor to ``[B, 1, 1, ...]`` matching ``like`` (fp32)."""
    tensor = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if tensor.ndim == 0:
        tensor = tensor.expand(like.shape[0])
    return tensor.reshape(-1, *([1] * (like.ndim - 1)))


def euler_step(v: torch.Tensor, x: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """ODE step ``x + (σ' − σ)·v`` in fp32. ``v``, ``x``: ``[B, ...]``; σ's: float or ``[B]``."""
    x32 = x.float()
    return x32 + (_per_sample(sigma_next, x32) - _per_sample(sigma, x32)) * v.float()


def sde_noise_scale(sigma, sigma_next, eta: float, noise_schedule: str = "constant") -> torch.Tensor:
    """The diffusion coefficient g (fp32, same shape as ``sigma``) for the two schedules."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    sigma_next = torch.as_tensor(sigma_next, dtype=torch.float32, device=sigma.device)
    if noise_schedule == "constant":
        return torch.full_like(sigma, float(eta))
    if noise_schedule == "flow_grpo":
        sigma_tilde = torch.where(sigma >= 1.0, sigma_next.expand_as(sigma), sigma)
        return eta * torch.sqrt(sigma / (1.0 - sigma_tilde))
    raise UsageError(f"noise_schedule must be one of {', '.join(NOISE_SCHEDULES)}, got {noise_schedule!r}")


def gaussian_log_prob_mean(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean over non-batch elements of ``log N(sample; mean, std²)`` (constants included) → ``[B]`` fp32."""
    sample, mean, std = sample.float(), mean.float(), std.float()
    log_density = -((sample - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_density.flatten(1).mean(dim=1)


def sde_step(
    v: torch.Tensor,
    x: torch.Tensor,
    sigma,
    sigma_next,
    eta: float,
    *,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise_schedule: str = "constant",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stochastic step σ → σ' with its log-probability (all fp32).

    Args:
        v: predicted velocity ``[B, C, F, h, w]``; x: current latent, same shape.
        sigma, sigma_next: float or ``[B]``, with ``sigma_next < sigma``.
        eta: noise level η. With η = 0 the step is the Euler ODE step; its density is degenerate, so
            ``log_prob`` is returned as zeros.
        noise: the ``z ~ N(0, I)`` to use; drawn with ``generator`` when omitted.
        prev_sample: an existing ``x'`` to score instead of sampling (detached), e.g. when recomputing ratios.
    Returns:
        ``(x_next, mean, std, log_prob)`` with ``std`` shaped ``[B, 1, 1, 1, 1]`` and ``log_prob`` ``[B]``.
    """
    x32, v32 = x.float(), v.float()
    sig = _per_sample(sigma, x32)
    sig_next = _per_sample(sigma_next, x32)
    delta = sig_next - sig
    if bool((delta >= 0).any()):
        raise UsageError("sde_step needs sigma_next < sigma for every sample")
    g = sde_noise_scale(sig, sig_next, eta, noise_schedule)
    std = g * torch.sqrt(-delta)
    eps_hat = x32 + (1.0 - sig) * v32
    mean = x32 + delta * (v32 + g**2 / (2.0 * sig) * eps_hat)
    if prev_sample is not None:
        x_next = prev_sample.detach().float()
    else:
        if noise is None:
            noise = torch.randn(x32.shape, generator=generator, dtype=torch.float32, device=x32.device)
        x_next = mean + std * noise.float()
    if eta == 0:
        log_prob = torch.zeros(x32.shape[0], device=x32.device)
    else:
        log_prob = gaussian_log_prob_mean(x_next.detach(), mean, std)
    return x_next, mean, std, log_prob
