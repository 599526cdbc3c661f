"""Recipe section ``reward``: the PISCES dual reward (quality via the OT map, semantic via token OT)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pisces_cli.config.schema import (
    Count,
    FiniteFloat,
    LocalPath,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    Range,
)


@dataclass
class TokenOTSection:
    """Token-level partial OT fused into the reward model's cross-attention (method.md §4).

    Defaults are the paper's: gamma = eta = 0.2, eps = 0.05, mass = 0.9, 200 iterations, tol 1e-3,
    the released unbalanced (KL-relaxed) solver. ``layers: null`` means every fusion layer but the
    last (whose prior cannot reach the [CLS] output).
    """

    enabled: bool = True
    gamma: NonNegativeFloat = 0.2
    eta: NonNegativeFloat = 0.2
    eps: PositiveFloat = 0.05
    mass: Annotated[float, Range(low=0, high=1, low_open=True)] = 0.9
    mode: Literal["unbalanced", "partial", "balanced"] = "unbalanced"
    max_iter: Count = 200
    tol: PositiveFloat = 1e-3
    check_every: Count = 4
    exclude_cls: bool = False
    layers: list[NonNegativeInt] | None = None


@dataclass
class RewardWeights:
    quality: FiniteFloat = 1.0
    semantic: FiniteFloat = 1.0


@dataclass
class RewardSection:
    """How rewards are computed from the frozen encoder.

    ``ot_map``: the ``ot_map.safetensors`` written by ``fit-ot`` (or imported); null means the
    quality reward uses no OT (the paper's "No OT" arm).
    """

    ot_map: LocalPath | None = None
    weights: RewardWeights = field(default_factory=RewardWeights)
    token_ot: TokenOTSection = field(default_factory=TokenOTSection)
    crop: Literal["center", "random"] = "center"
