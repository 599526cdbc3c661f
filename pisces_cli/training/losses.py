"""Loss terms of the direct-backprop recipe."""

from __future__ import annotations

import torch


def pseudo_huber(prediction: torch.Tensor, target: torch.Tensor, c: float = 0.001) -> torch.Tensor:
    """Mean pseudo-Huber distance ``mean(sqrt((p − t)² + c²) − c)`` over every element (fp32 scalar).

    ``c`` sets where the loss turns from quadratic (|p − t| ≪ c) to linear (|p − t| ≫ c); the paper uses 0.001.
    """
    if c <= 0:
        raise ValueError(f"pseudo-Huber c must be > 0, got {c}")
    difference = prediction.float() - target.float()
    return (torch.sqrt(difference * difference + c * c) - c).mean()


def per_sample(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B]`` → ``[B, 1, 1, ...]`` (fp32) so it broadcasts against ``like`` ``[B, ...]``."""
    return value.float().reshape(-1, *([1] * (like.ndim - 1)))
