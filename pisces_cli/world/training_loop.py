"""Pieces shared by the world models' trainers: the lr schedule, one optimiser step, the logged loss means."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch


def warmup_cosine(step: int, steps: int, warmup: int, floor: float = 0.0) -> float:
    """Factor of the base lr at ``step``: ``(step + 1) / warmup`` during warm-up, then
    ``floor + (1 − floor) · ½(1 + cos(π · progress))`` with progress from 0 to 1 over the remaining steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer_step(
    loss: torch.Tensor,
    parameters: Iterable[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_norm: float = 1.0,
) -> float:
    """Backward ``loss``, clip the gradient norm of ``parameters`` to ``max_norm``, step the optimiser and the
    lr schedule; returns the loss as a float."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


class LossLog:
    """Means of the loss over windows of ``every`` steps; the last step of a run closes its window early."""

    def __init__(self, every: int, steps: int) -> None:
        self.every, self.steps = every, steps
        self.means: list[float] = []
        self._window: list[float] = []

    def add(self, step: int, loss: float) -> None:
        """Record the loss of ``step`` (0-based)."""
        self._window.append(loss)
        if len(self._window) == self.every or step == self.steps - 1:
            self.means.append(float(np.mean(self._window)))
            self._window = []
