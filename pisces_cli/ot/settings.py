"""Paper defaults of the token-level OT prior, held in one place (method.md §4.4-4.5)."""

from __future__ import annotations

from dataclasses import dataclass

from pisces_cli.errors import UsageError
from pisces_cli.ot.sinkhorn import MODES


@dataclass(frozen=True)
class TokenOTSettings:
    """Settings of the token-level OT prior injected into the cross-attention of the reward model.

    Attributes:
        gamma: weight of the temporal cost ``|tau_i - t_j| / max(t_max - t_min, 1)`` (paper: 0.2).
        eta: weight of the spatial cost ``||pi_i - s_j||_2 / sqrt(2)`` (paper: 0.2).
        eps: entropic regularisation of the Sinkhorn solver on min-max normalised costs (paper: 0.05).
        mass: transported mass ``m``; in "unbalanced" mode it sets ``rho = eps m / (1 - m)`` (the
            released code), in "partial" mode it is the exact mass constraint (paper: 0.9).
        mode: "unbalanced" (paper-faithful), "partial" (exact mass) or "balanced".
        max_iter: Sinkhorn iteration cap (paper: 200).
        tol: stopping tolerance on the potential change, in log units (paper: 1e-3).
        check_every: iterations between convergence checks (the paper checks every iteration).
        exclude_cls: drop the visual CLS token from the expected frame/position (paper: False, it is
            included with frame -1 and coordinates (-1, -1)).
        layers: indices of the fusion layers that get the prior; None = all fusion layers but the
            last (the last one cannot change the reward, method.md §9.5); the backend interprets them.
    """

    gamma: float = 0.2
    eta: float = 0.2
    eps: float = 0.05
    mass: float = 0.9
    mode: str = "unbalanced"
    max_iter: int = 200
    tol: float = 1e-3
    check_every: int = 4
    exclude_cls: bool = False
    layers: tuple[int, ...] | None = None

    def validate(self) -> TokenOTSettings:
        """Raise :class:`UsageError` naming the first invalid field; return ``self`` when valid."""
        if self.mode not in MODES:
            raise UsageError(f"token OT settings: `mode` must be one of {MODES}, got {self.mode!r}")
        for name in ("gamma", "eta"):
            value = getattr(self, name)
            if not value >= 0:
                raise UsageError(f"token OT settings: `{name}` must be >= 0, got {value}")
        if not self.eps > 0:
            raise UsageError(f"token OT settings: `eps` must be > 0, got {self.eps}")
        if not 0 < self.mass <= 1:
            raise UsageError(f"token OT settings: `mass` must be in (0, 1], got {self.mass}")
        if not (isinstance(self.max_iter, int) and self.max_iter >= 1):
            raise UsageError(f"token OT settings: `max_iter` must be an integer >= 1, got {self.max_iter}")
        if not (isinstance(self.check_every, int) and self.check_every >= 1):
            raise UsageError(
                f"token OT settings: `check_every` must be an integer >= 1, got {self.check_every}"
            )
        if not self.tol > 0:
            raise UsageError(f"token OT settings: `tol` must be > 0, got {self.tol}")
        if self.layers is not None and not all(isinstance(i, int) for i in self.layers):
            raise UsageError(
                f"token OT settings: `layers` must be None or a list of ints, got {self.layers!r}"
            )
        return self
