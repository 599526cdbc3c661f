"""The learning-rate factor of the world models' trainers: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math


def warmup_cosine(step: int, steps: int, warmup: int, floor: float = 0.0) -> float:
    """Factor of the base lr at ``step``: ``(step + 1) / warmup`` during warm-up, then
    ``floor + (1 − floor) · ½(1 + cos(π · progress))`` with progress from 0 to 1 over the remaining steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
