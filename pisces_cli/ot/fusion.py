"""Fusion of cross-attention with the OT prior (paper Eq. 3, method.md §4.6)."""

from __future__ import annotations

import torch
from torch import Tensor

from pisces_cli.errors import UsageError

_LOG_FLOOR = 1e-6


def fuse_attention(attn: Tensor, prior: Tensor, lexical_mask: Tensor) -> Tensor:
    """``A~ = softmax_j(log max(A, 1e-6) + log max(P_bar, 1e-6))`` on lexical rows, ``A`` elsewhere.

    Args:
        attn: ``[B, H, Q, M]`` attention probabilities (any float dtype; gradients flow through it).
        prior: ``[B, H, Q, M]`` row-normalised OT plan from :func:`token_ot_prior` (detached here).
        lexical_mask: ``[B, Q]`` bool, rows to fuse.

    Returns:
        ``[B, H, Q, M]`` in ``attn.dtype``; fused rows are computed in float32 and sum to 1, other rows are
        bit-identical to ``attn``. Matches ``apply_partial_ot_attention`` of the PISCES code.
    """
    if prior.shape != attn.shape or lexical_mask.shape != (attn.shape[0], attn.shape[2]):
        raise UsageError(
            f"fuse_attention: expected prior {tuple(attn.shape)} and lexical_mask "
            f"[{attn.shape[0]}, {attn.shape[2]}], got {tuple(prior.shape)} and {tuple(lexical_mask.shape)}"
        )
    # softmax_j(log a_j + log p_j) = a_j p_j / sum_k a_k p_k exactly; the product form needs no log/exp.
    # With both factors floored at 1e-6 the products stay >= 1e-12, far from float32 underflow.
    weighted = attn.float().clamp_min(_LOG_FLOOR) * prior.detach().float().clamp_min(_LOG_FLOOR)
    fused = (weighted / weighted.sum(-1, keepdim=True)).to(attn.dtype)
    return torch.where(lexical_mask[:, None, :, None].to(attn.device), fused, attn)
