"""Recipe section ``reward``: the PISCES dual reward (quality via the OT map, semantic via token OT)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TokenOTSection:
    """Token-level partial OT fused into the reward model's cross-attention (method.md §4).

    Defaults are the paper's: gamma = eta = 0.2, eps = 0.05, mass = 0.9, 200 iterations, tol 1e-3,
    the released unbalanced (KL-relaxed) solver. ``layers: null`` means every fusion layer but the
    last (whose prior cannot reach the [CLS] output).
    """

    enabled: bool = True
    gamma: float = 0.2
    eta: float = 0.2
    eps: float = 0.05
    mass: float = 0.9
    mode: Literal["unbalanced", "partial", "balanced"] = "unbalanced"
    max_iter: int = 200
    tol: float = 1e-3
    check_every: int = 4
    exclude_cls: bool = False
    layers: list[int] | None = None

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.eps <= 0:
            problems.append(("eps", f"must be > 0, got {self.eps}"))
        if not 0 < self.mass <= 1:
            problems.append(("mass", f"must be in (0, 1], got {self.mass}"))
        if self.max_iter < 1:
            problems.append(("max_iter", f"must be >= 1, got {self.max_iter}"))
        if self.check_every < 1:
            problems.append(("check_every", f"must be >= 1, got {self.check_every}"))
        if self.gamma < 0 or self.eta < 0:
            problems.append(("gamma" if self.gamma < 0 else "eta", "must be >= 0"))
        return problems


@dataclass
class RewardWeights:
    quality: float = 1.0
    semantic: float = 1.0


@dataclass
class RewardSection:
    """How rewards are computed from the frozen encoder.

    ``ot_map``: the ``ot_map.safetensors`` written by ``fit-ot`` (or imported); null means the
    quality reward uses no OT (the paper's "No OT" arm).
    """

    ot_map: str | None = None
    weights: RewardWeights = field(default_factory=RewardWeights)
    token_ot: TokenOTSection = field(default_factory=TokenOTSection)
    crop: Literal["center", "random"] = "center"
