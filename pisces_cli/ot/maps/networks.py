"""The two networks of distributional Neural OT (method.md §2.1).

Both are the reference's 3-layer MLP with the activation *before* the LayerNorm::

    net = Sequential(Linear(d_in→h), ReLU, LayerNorm(h), Linear(h→h), ReLU, LayerNorm(h), Linear(h→d_out))

so their state-dict keys are exactly ``net.{0,2,3,5,6}.{weight,bias}`` (indices 1 and 4 are the
parameter-free ReLUs) and a reference checkpoint loads with ``strict=True``. Initialisation is the
PyTorch default; LayerNorm eps is the default 1e-5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_HIDDEN_DIM = 1024
"""Hidden width of both networks in the paper setting (the reference trainer's ``ot-hidden`` / ``f-hidden`` options)."""

REFERENCE_KEYS = tuple(f"net.{index}.{kind}" for index in (0, 2, 3, 5, 6) for kind in ("weight", "bias"))
"""State-dict keys shared by :class:`OTMapNet` and :class:`PotentialNet` (and the reference)."""


@dataclass(frozen=True)
class MapDims:
    """Sizes of an MLP in the reference layout.

    Attributes:
        input_dim: width of the inputs x (text embedding dim, 512 in the paper).
        hidden_dim: width of both hidden layers (1024 in the paper).
        output_dim: width of the outputs (512 for T, 1 for the potential f).
    """

    input_dim: int
    hidden_dim: int
    output_dim: int


def _reference_mlp(input_dim: int, hidden_dim: int, output_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(input_dim, hidden_dim),
        nn.ReLU(),
        nn.LayerNorm(hidden_dim),
        nn.Linear(hidden_dim, hidden_dim),
        nn.ReLU(),
        nn.LayerNorm(hidden_dim),
        nn.Linear(hidden_dim, output_dim),
    )


class OTMapNet(nn.Module):
    """Transport map T: ``[B, input_dim] → [B, output_dim]`` (no output activation).

    Paper size (512, 1024, 512): 2,103,808 parameters.
    """

    def __init__(self, input_dim: int, output_dim: int | None = None, hidden_dim: int = DEFAULT_HIDDEN_DIM):
        super().__init__()
        output_dim = input_dim if output_dim is None else output_dim
        self.dims = MapDims(input_dim, hidden_dim, output_dim)
        self.net = _reference_mlp(input_dim, hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x [B, input_dim]`` to ``T(x) [B, output_dim]``."""
        return self.net(x)


class PotentialNet(nn.Module):
    """Kantorovich potential f: ``[B, input_dim] → [B]`` (a plain MLP, not input-convex).

    Paper size (512, 1024): 1,580,033 parameters.
    """

    def __init__(self, input_dim: int, hidden_dim: int = DEFAULT_HIDDEN_DIM):
        super().__init__()
        self.dims = MapDims(input_dim, hidden_dim, 1)
        self.net = _reference_mlp(input_dim, hidden_dim, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Score ``y [B, input_dim]``; returns ``f(y) [B]``."""
        return self.net(y).squeeze(-1)


def dims_from_state_dict(state_dict: dict[str, torch.Tensor]) -> MapDims:
    """Read :class:`MapDims` off a reference-layout state dict (``net.0.weight`` is ``[h, d_in]``)."""
    first = state_dict["net.0.weight"]
    last = state_dict["net.6.weight"]
    return MapDims(
        input_dim=int(first.shape[1]), hidden_dim=int(first.shape[0]), output_dim=int(last.shape[0])
    )
