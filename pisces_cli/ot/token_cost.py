"""Token-level OT cost between caption tokens and video tokens, and the OT prior (method.md §4.4-4.5).

Per problem (sample b, head h), with ``Y_i`` the query of lexical token ``i``, ``X_j`` the key of video
token ``j``, ``A`` the head's attention rows (renormalised), ``t_j`` / ``s_j`` the token geometry::

    tau_i = sum_j A_ij t_j,   pi_i = sum_j A_ij s_j
    C_ij  = clamp(1 - cos(Y_i, X_j), 0, 2) + gamma |tau_i - t_j| / max(t_max - t_min, 1)
            + eta ||pi_i - s_j||_2 / sqrt(2)

then min-max normalised per problem over the valid (lexical) rows; nan/inf become 1, so ``C`` is in
[0, 1]. The semantic term is shared by all heads and computed once per sample.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pisces_cli.errors import UsageError
from pisces_cli.ot.settings import TokenOTSettings
from pisces_cli.ot.sinkhorn import SinkhornInfo, sinkhorn

_ROW_SUM_FLOOR = 1e-6
_PLAN_ROW_FLOOR = 1e-8
_RANGE_FLOOR = 1e-6


def semantic_cost(query: Tensor, key: Tensor) -> Tensor:
    """``S [B, N, M] = clamp(1 - cos(query_i, key_j), 0, 2)`` for ``query [B, N, D]``, ``key [B, M, D]`` (fp32)."""
    q = torch.nn.functional.normalize(query.float(), dim=-1, eps=1e-8)
    k = torch.nn.functional.normalize(key.float(), dim=-1, eps=1e-8)
    return (1.0 - q @ k.transpose(-1, -2)).clamp(0.0, 2.0)


def token_ot_cost(
    query: Tensor,
    key: Tensor,
    attn: Tensor,
    frame_index: Tensor,
    coords: Tensor,
    *,
    gamma: float = 0.2,
    eta: float = 0.2,
    row_mask: Tensor | None = None,
    exclude_cls: bool = False,
) -> Tensor:
    """Normalised token cost ``C [B, H, N, M]`` in [0, 1] (formula in the module docstring).

    Args:
        query: ``[B, N, D]`` full-width text queries of the caption rows (shared by all heads).
        key: ``[B, M, D]`` full-width video keys (all heads concatenated, shared by all heads).
        attn: ``[B, H, N, M]`` attention probabilities of those rows; rows are renormalised here.
        frame_index: ``[M]`` frame of each video token (-1 for the CLS), from :func:`video_token_geometry`.
        coords: ``[M, 2]`` (row, col) of each video token ((-1, -1) for the CLS).
        gamma: temporal weight. eta: spatial weight.
        row_mask: ``[B, N]`` bool, valid (lexical) rows; min/max are taken over these rows only.
        exclude_cls: drop tokens with ``frame_index < 0`` from ``tau`` / ``pi`` (renormalising ``A`` over
            patches); off by default, as in the paper's code.
    """
    if attn.ndim != 4 or query.ndim != 3 or key.ndim != 3:
        raise UsageError("token_ot_cost: expected query [B,N,D], key [B,M,D], attn [B,H,N,M]")
    batch, heads, n, m = attn.shape
    if query.shape[:2] != (batch, n) or key.shape[:2] != (batch, m):
        raise UsageError(
            f"token_ot_cost: shapes do not agree: query {tuple(query.shape)}, key {tuple(key.shape)}, "
            f"attn {tuple(attn.shape)}"
        )
    if frame_index.shape != (m,) or coords.shape != (m, 2):
        raise UsageError(f"token_ot_cost: geometry must be frame_index [{m}] and coords [{m}, 2]")
    semantic = semantic_cost(query, key)  # [B, N, M], once for all heads
    weights = attn if attn.dtype == torch.float32 else attn.float()
    t = frame_index.to(device=attn.device, dtype=torch.float32)
    s = coords.to(device=attn.device, dtype=torch.float32)
    if exclude_cls:
        weights = weights * (t >= 0).to(weights.dtype)
    # Row renormalisation A / max(sum_j A, floor) folded into the expectations (no normalised copy of A).
    row_sum = weights.sum(-1).clamp_min(_ROW_SUM_FLOOR)  # [B, H, N]
    tau = (weights @ t) / row_sum  # [B, H, N]
    pos = (weights @ s) / row_sum[..., None]  # [B, H, N, 2]
    span = max(float(t.max() - t.min()), 1.0)
    grid = _regular_grid(t, s)
    if grid is None:
        temporal = (tau[..., None] - t).abs() / span
        spatial = torch.hypot(pos[..., 0, None] - s[:, 0], pos[..., 1, None] - s[:, 1]) / math.sqrt(2.0)
        cost = semantic[:, None] + gamma * temporal + eta * spatial
        return normalize_cost(cost, row_mask)
    # Every term finite (checked on the small factors) means the whole cost is finite.
    finite = bool(torch.isfinite(semantic).all() and torch.isfinite(tau).all() and torch.isfinite(pos).all())
    cost = _grid_cost(semantic, tau, pos, t, s, grid, span, gamma, eta)
    return normalize_cost(cost, row_mask, known_finite=finite)


def _regular_grid(frame_index: Tensor, coords: Tensor) -> tuple[int, int, int] | None:
    """``(cls, F, P)`` when tokens are ``[CLS]? + F frames × P patches`` with the same coordinates every frame.

    Then the temporal cost depends only on the frame and the spatial cost only on the patch, so the cost can
    be built by broadcasting ``[F, 1] + [1, P]`` instead of evaluating both terms for all ``M`` tokens.
    """
    m = frame_index.shape[0]
    cls = int(m > 0 and bool(frame_index[0] < 0))
    patches = frame_index[cls:]
    if patches.numel() == 0 or bool((patches < 0).any()):
        return None
    frames = int(patches.max()) + 1
    if patches.numel() % frames:
        return None
    per_frame = patches.numel() // frames
    expected = torch.arange(frames, device=frame_index.device, dtype=frame_index.dtype).repeat_interleave(
        per_frame
    )
    if not torch.equal(patches, expected):
        return None
    first = coords[cls : cls + per_frame]
    if not torch.equal(coords[cls:].view(frames, per_frame, 2), first.expand(frames, per_frame, 2)):
        return None
    return cls, frames, per_frame


def _grid_cost(
    semantic: Tensor,
    tau: Tensor,
    pos: Tensor,
    t: Tensor,
    s: Tensor,
    grid: tuple[int, int, int],
    span: float,
    gamma: float,
    eta: float,
) -> Tensor:
    """The un-normalised cost ``[B, H, N, M]`` of a regular token grid (same values as the direct formula)."""
    cls, frames, per_frame = grid
    batch, heads, n = tau.shape
    frame_values = t[cls::per_frame][:frames] if per_frame else t[cls:]
    temporal = (tau[..., None] - frame_values).abs().mul_(gamma / span)  # [B, H, N, F]
    patch_xy = s[cls : cls + per_frame]  # [P, 2]
    spatial = torch.hypot(pos[..., 0, None] - patch_xy[:, 0], pos[..., 1, None] - patch_xy[:, 1])
    spatial.mul_(eta / math.sqrt(2.0))  # [B, H, N, P]
    cost = torch.empty(batch, heads, n, semantic.shape[-1], dtype=torch.float32, device=semantic.device)
    body = cost[..., cls:].view(batch, heads, n, frames, per_frame)
    torch.add(semantic[:, None, :, cls:].view(batch, 1, n, frames, per_frame), temporal[..., None], out=body)
    body.add_(spatial[..., None, :])
    if cls:
        cls_t = (tau - t[0]).abs().mul_(gamma / span)
        cls_s = torch.hypot(pos[..., 0] - s[0, 0], pos[..., 1] - s[0, 1]).mul_(eta / math.sqrt(2.0))
        cost[..., 0] = semantic[:, None, :, 0] + cls_t + cls_s
    return cost


def normalize_cost(cost: Tensor, row_mask: Tensor | None = None, *, known_finite: bool = False) -> Tensor:
    """Min-max normalise ``cost [B, H, N, M]`` per ``(B, H)`` over finite entries of valid rows.

    ``C <- (C - min C) / max(max C - min C, 1e-6)``; nan/inf (and masked rows) become 1. ``cost`` may be
    modified in place (it is a fresh tensor in this module).
    """
    finite = None if known_finite else torch.isfinite(cost)
    all_finite = known_finite or bool(finite.all())
    if all_finite:
        row_low, row_high = cost.amin(-1), cost.amax(-1)  # [B, H, N]
    else:
        inf = torch.tensor(float("inf"), device=cost.device)
        row_low = torch.where(finite, cost, inf).amin(-1)
        row_high = torch.where(finite, cost, -inf).amax(-1)
    if row_mask is not None:
        valid_rows = row_mask[:, None, :].to(cost.device)
        row_low = torch.where(valid_rows, row_low, torch.full_like(row_low, float("inf")))
        row_high = torch.where(valid_rows, row_high, torch.full_like(row_high, float("-inf")))
    low = row_low.amin(-1, keepdim=True)[..., None]
    high = row_high.amax(-1, keepdim=True)[..., None]
    low = torch.where(torch.isfinite(low), low, torch.zeros_like(low))
    high = torch.where(torch.isfinite(high), high, low)
    normed = cost.sub_(low).div_((high - low).clamp_min(_RANGE_FLOOR)) if cost.is_floating_point() else cost
    if not all_finite:
        normed = torch.where(finite, normed, torch.ones_like(normed))
    if row_mask is not None and not bool(row_mask.all()):
        masked_b, masked_n = (~row_mask).to(cost.device).nonzero(as_tuple=True)
        normed.transpose(1, 2)[masked_b, masked_n] = 1.0  # only the masked rows are touched
    if all_finite and cost.is_floating_point():
        # Rounding is monotone: low <= c <= high gives 0 <= fl(c - low) <= fl(high - low) <= the divisor, so
        # the valid rows are already in [0, 1] and the masked ones are 1; no clamp pass is needed.
        return normed
    return normed.clamp_(0.0, 1.0)


def lexical_rows(lexical_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Compact the lexical positions of ``lexical_mask [B, Q]``.

    Returns ``index [B, N]`` (positions of the lexical tokens first, in order, padded with position 0)
    and ``row_mask [B, N]`` with ``N`` = the largest lexical count in the batch.
    """
    counts = lexical_mask.sum(-1)
    width = int(counts.max()) if lexical_mask.numel() else 0
    order = torch.argsort((~lexical_mask).to(torch.int8), dim=-1, stable=True)[:, :width]
    row_mask = torch.arange(width, device=lexical_mask.device) < counts[:, None]
    return torch.where(row_mask, order, torch.zeros_like(order)), row_mask


def solver_kwargs(settings: TokenOTSettings) -> dict:
    """The :func:`sinkhorn` keyword arguments of ``settings`` (``mass`` is unused in balanced mode)."""
    return {
        "eps": settings.eps,
        "mode": settings.mode,
        "mass": None if settings.mode == "balanced" else settings.mass,
        "max_iter": settings.max_iter,
        "tol": settings.tol,
        "check_every": settings.check_every,
    }


def solve_token_ot(
    query: Tensor,
    key: Tensor,
    attn: Tensor,
    geometry: tuple[Tensor, Tensor],
    row_mask: Tensor,
    settings: TokenOTSettings,
) -> tuple[Tensor, SinkhornInfo]:
    """Cost (:func:`token_ot_cost`) then :func:`sinkhorn` for ``[B, H]`` problems of ``N`` rows.

    Args: ``query [B, N, D]``, ``key [B, M, D]``, ``attn [B, H, N, M]``, ``geometry`` = (frame_index, coords),
    ``row_mask [B, N]`` bool (the valid caption rows). Returns the raw plan ``[B, H, N, M]`` and its info.
    """
    cost = token_ot_cost(
        query,
        key,
        attn,
        *geometry,
        gamma=settings.gamma,
        eta=settings.eta,
        row_mask=row_mask,
        exclude_cls=settings.exclude_cls,
    )
    return sinkhorn(cost, **solver_kwargs(settings), row_mask=row_mask[:, None, :])


@torch.no_grad()
def token_ot_prior_rows(
    query: Tensor,
    key_full: Tensor,
    attn_rows: Tensor,
    row_mask: Tensor,
    geometry: tuple[Tensor, Tensor],
    settings: TokenOTSettings,
) -> tuple[Tensor, SinkhornInfo]:
    """The OT prior of compacted caption rows (what :func:`token_ot_prior` scatters back to positions).

    Args:
        query: ``[B, N, D]`` full-width queries of the compacted lexical rows (:func:`lexical_rows`).
        key_full: ``[B, M, D]`` full-width keys of the video tokens.
        attn_rows: ``[B, H, N, M]`` attention probabilities of those rows.
        row_mask: ``[B, N]`` bool, the valid rows (padding rows get a zero prior).
        geometry: ``(frame_index [M], coords [M, 2])``. settings: :class:`TokenOTSettings`.

    Returns:
        ``(prior [B, H, N, M] float32, info)``: ``P / max(sum_j P, 1e-8)`` on valid rows, zeros elsewhere,
        and the :class:`SinkhornInfo` of the ``[B, H]`` problems.
    """
    settings.validate()
    if attn_rows.shape[2] == 0:  # no lexical token anywhere in the batch
        batch, heads, _, m = attn_rows.shape
        return sinkhorn(
            torch.zeros(batch, heads, 0, m, device=attn_rows.device),
            **solver_kwargs(settings),
            row_mask=row_mask[:, None, :],
        )
    plan, info = solve_token_ot(query, key_full, attn_rows, geometry, row_mask, settings)
    plan = plan.float()
    return plan.div_(plan.sum(-1, keepdim=True).clamp_min(_PLAN_ROW_FLOOR)), info


def gather_rows(values: Tensor, index: Tensor, dim: int) -> Tensor:
    """Rows ``index [B, N]`` of ``values`` along ``dim`` (1 for ``[B, Q, D]``, 2 for ``[B, H, Q, M]``).

    One ``index_select`` of whole rows per sample (B is small), about 10x faster on CPU than an elementwise
    ``gather`` of the same rows; differentiable (through ``torch.stack``) when ``values`` needs gradients.
    """
    if torch.is_grad_enabled() and values.requires_grad:
        return torch.stack([values[b].index_select(dim - 1, index[b]) for b in range(index.shape[0])])
    shape = list(values.shape)
    shape[dim] = index.shape[1]
    out = values.new_empty(shape)
    for b in range(index.shape[0]):
        torch.index_select(values[b], dim - 1, index[b], out=out[b])
    return out


@torch.no_grad()
def token_ot_prior(
    query_full: Tensor,
    key_full: Tensor,
    attn: Tensor,
    lexical_mask: Tensor,
    geometry: tuple[Tensor, Tensor],
    settings: TokenOTSettings,
) -> tuple[Tensor, SinkhornInfo]:
    """Row-normalised OT plan used as the attention prior, for all samples and heads in one solve.

    Args:
        query_full: ``[B, Q, D]`` full-width query projection of all text positions.
        key_full: ``[B, M, D]`` full-width key projection of the video tokens.
        attn: ``[B, H, Q, M]`` cross-attention probabilities.
        lexical_mask: ``[B, Q]`` bool, the caption's lexical tokens (no CLS/SEP/PAD); counts may differ
            per sample.
        geometry: ``(frame_index [M], coords [M, 2])`` from :func:`video_token_geometry`.
        settings: :class:`TokenOTSettings` (cost weights, solver mode, eps, mass, iterations).

    Returns:
        ``(prior [B, H, Q, M] float32, info)``: ``P_bar = P / max(sum_j P, 1e-8)`` on lexical rows, zeros
        elsewhere (detached); ``info`` is the :class:`SinkhornInfo` of the ``[B, H]`` problems whose rows
        are the compacted lexical tokens.
    """
    if not isinstance(settings, TokenOTSettings):
        raise UsageError(f"token_ot_prior: settings must be a TokenOTSettings, got {type(settings).__name__}")
    if attn.ndim != 4 or query_full.ndim != 3 or key_full.ndim != 3:
        raise UsageError(
            "token_ot_prior: expected query [B, Q, D], key [B, M, D] and attn [B, H, Q, M], got "
            f"{tuple(query_full.shape)}, {tuple(key_full.shape)} and {tuple(attn.shape)}"
        )
    batch, heads, q_len, m = attn.shape
    if (
        query_full.shape[:2] != (batch, q_len)
        or key_full.shape[:2] != (batch, m)
        or query_full.shape[2] != key_full.shape[2]
    ):
        raise UsageError(
            f"token_ot_prior: attn {tuple(attn.shape)} is [B, H, Q, M], so query must be [{batch}, {q_len}, D] "
            f"and key [{batch}, {m}, D] with the same D; got {tuple(query_full.shape)} and {tuple(key_full.shape)}"
        )
    if lexical_mask.shape != (batch, q_len) or lexical_mask.dtype != torch.bool:
        raise UsageError(f"token_ot_prior: lexical_mask must be bool [{batch}, {q_len}]")
    index, row_mask = lexical_rows(lexical_mask.to(attn.device))
    prior_rows, info = token_ot_prior_rows(
        gather_rows(query_full, index, 1), key_full, gather_rows(attn, index, 2), row_mask, geometry, settings
    )
    prior = torch.zeros(batch, heads, q_len, m, dtype=torch.float32, device=attn.device)
    return scatter_rows(prior, prior_rows, index, row_mask), info


def scatter_rows(target: Tensor, rows: Tensor, index: Tensor, row_mask: Tensor) -> Tensor:
    """Write the valid ``rows [B, H, N, M]`` into ``target [B, H, Q, M]`` (in place) at ``index [B, N]``.

    ``index`` / ``row_mask`` are in :func:`lexical_rows` layout (valid rows first). Autograd-safe on a
    fresh ``target`` (e.g. a clone): gradients reach ``rows`` and the untouched entries of ``target``.
    """
    for sample, count in enumerate(row_mask.sum(-1).tolist()):  # B is small; whole rows per sample
        if count:
            target[sample, :, index[sample, :count]] = rows[sample, :, :count].to(target.dtype)
    return target
