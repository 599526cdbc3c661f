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
    fused = fuse_rows(attn, prior)
    return torch.where(lexical_mask[:, None, :, None].to(attn.device), fused, attn)


def fuse_rows(attn_rows: Tensor, prior_rows: Tensor, *, overwrite: bool = False) -> Tensor:
    """Paper Eq. 3 on every row: ``softmax_j(log max(A, 1e-6) + log max(P_bar, 1e-6))``.

    Args:
        attn_rows: ``[..., M]`` attention probabilities (gradients flow through them).
        prior_rows: ``[..., M]`` row-normalised OT plan of the same shape (detached here).
        overwrite: the caller no longer needs either input, so the result may reuse their storage (only
            for float32 inputs outside autograd; otherwise ignored). Saves two ``[..., M]`` temporaries.

    Returns:
        The fused rows, computed in float32 and returned in ``attn_rows.dtype``; each sums to 1.
    """
    prior = prior_rows.detach()
    reuse = (
        overwrite
        and attn_rows.dtype == torch.float32
        and prior.dtype == torch.float32
        and not (torch.is_grad_enabled() and attn_rows.requires_grad)
    )
    # softmax_j(log a_j + log p_j) = a_j p_j / sum_k a_k p_k exactly; the product form needs no log/exp.
    # With both factors floored at 1e-6 the products stay >= 1e-12, far from float32 underflow.
    if reuse:
        weighted = attn_rows.clamp_min_(_LOG_FLOOR).mul_(prior.clamp_min_(_LOG_FLOOR))
    else:
        weighted = attn_rows.float().clamp_min(_LOG_FLOOR).mul_(prior.float().clamp_min(_LOG_FLOOR))
    return weighted.div_(weighted.sum(-1, keepdim=True)).to(attn_rows.dtype)
