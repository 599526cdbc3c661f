"""Flow-matching noise grids (σ = 1 is pure noise, σ = 0 is data).

Shift rule (diffusers' static shifting, both HunyuanVideo and Wan): ``σ_shifted = s·σ / (1 + (s − 1)·σ)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pisces_cli.errors import UsageError


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Apply the static time shift ``s·σ / (1 + (s − 1)·σ)`` elementwise (fp64 in, same dtype out)."""
    if shift <= 0:
        raise UsageError(f"shift must be > 0, got {shift}")
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def sigma_grid(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """Sampling grid ``[num_steps + 1]`` (fp32), descending from exactly 1 to exactly 0.

    Rule: ``σ_i = shift_sigma(u_i, shift)`` with ``u = linspace(1, 0, num_steps + 1)``; this is the grid
    DanceGRPO uses and the one ``FlowMatchEulerDiscreteScheduler(shift=s).set_timesteps(sigmas=u[:-1])``
    produces (plus its terminal 0). Step ``i`` goes from ``σ_i`` to ``σ_{i+1}``.
    """
    if num_steps < 1:
        raise UsageError(f"num_steps must be >= 1, got {num_steps}")
    uniform = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return shift_sigma(uniform, shift).to(torch.float32)


@dataclass(frozen=True)
class TrainingSigmaGrid:
    """The paper's Euler-solver grid: ``sigmas[k]`` and ``sigmas_prev[k]``, both ``[euler_steps]``."""

    sigmas: torch.Tensor
    sigmas_prev: torch.Tensor


def training_sigma_grid(
    shift: float = 17.0, euler_steps: int = 50, num_train_timesteps: int = 1000
) -> TrainingSigmaGrid:
    """Shifted Euler grid of the PISCES distillation (the reference's ``EulerSolver`` over a shifted flow-match table), ascending in ``k``.

    The scheduler table is ``s(u)`` for ``u = 1, 1 − 1/T, …, 1/T`` (T = ``num_train_timesteps``), reversed to
    ascending order; the solver keeps every ``T // euler_steps``-th entry. With T = 1000 and 50 steps this gives
    ``σ_k = s(0.02·(k + 1))`` (σ_0 ≈ 0.2576, σ_49 = 1) and ``σprev_0 = s(0.001) ≈ 0.016732``,
    ``σprev_k = s(0.02·k)`` for k ≥ 1.
    """
    if euler_steps < 1 or num_train_timesteps % euler_steps:
        raise UsageError(
            f"euler_steps must divide num_train_timesteps ({num_train_timesteps}), got euler_steps={euler_steps}"
        )
    ascending_u = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    table = shift_sigma(ascending_u, shift)
    step_ratio = num_train_timesteps // euler_steps
    indices = torch.arange(1, euler_steps + 1) * step_ratio - 1
    prev_indices = torch.cat([torch.zeros(1, dtype=torch.long), indices[:-1]])
    return TrainingSigmaGrid(sigmas=table[indices].float(), sigmas_prev=table[prev_indices].float())
