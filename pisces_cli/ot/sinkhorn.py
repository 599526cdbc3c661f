"""Batched entropic optimal transport (balanced, KL-unbalanced, partial) in torch.

One entry point, :func:`sinkhorn`, solves a batch of problems ``cost [..., N, M]`` with
marginals ``a [..., N]`` and ``b [..., M]`` (uniform over the unmasked rows / columns by
default). Every problem is solved independently; rows and columns switched off by the masks
carry exactly zero mass. The three modes and the problems they solve (``K = exp(-C / eps)``,
``H(P) = sum_ij P_ij (log P_ij - 1)``):

``"balanced"``
    ``min_P <C, P> + eps H(P)`` s.t. ``P 1 = a``, ``P^T 1 = b`` (Cuturi 2013). Matches
    ``ot.sinkhorn(a, b, C, reg=eps)``.
``"unbalanced"``
    ``min_P <C, P> + eps H(P) + rho KL(P 1 | a) + rho KL(P^T 1 | b)`` (Chizat et al. 2016),
    solved with the PISCES released update (potentials in units of eps, ``lambda = rho / (rho + eps)``)::

        f <- lambda (log a - LSE_j(-C_ij / eps + g_j))
        g <- lambda (log b - LSE_i(-C_ij / eps + f_i)),   P = exp(f_i - C_ij / eps + g_j)

    Matches ``ot.unbalanced.sinkhorn_unbalanced(a, b, C, reg=eps, reg_m=rho, reg_type="entropy")``.
    ``rho`` may be given directly or through the paper's "mass" knob ``rho = eps m / (1 - m)``;
    ``m >= 0.999`` (or ``rho = inf``) means balanced.
``"partial"``
    ``min_P <C, P> + eps H(P)`` s.t. ``P 1 <= a``, ``P^T 1 <= b``, ``1^T P 1 = m`` (Benamou et al.
    2015, iterative Bregman projections). Matches ``ot.partial.entropic_partial_wasserstein(a, b, C,
    m=mass, reg=eps)``. Solved here by exact block-coordinate ascent on the dual, whose optimum has the
    form ``P = z diag(u) K diag(v)`` with ``u <= 1``, ``v <= 1``::

        u <- min(1, a / (z K v)),   v <- min(1, b / (z K^T u)),   z <- m / (u^T K v)

    (in the log domain: ``f = log u <= 0``, ``g = log v <= 0``, ``kappa = log z``).

Two numerically equivalent domains are used. The *scaling* domain precomputes ``K = exp(-(C - c) / eps)``
once per problem (``c`` = the problem's smallest valid cost, folded back into the updates exactly) and
iterates with batched mat-vecs; it is used when ``(max C - min C) / eps`` is small enough for the compute
dtype (30 in float32: min-max normalised costs with ``eps = 0.05`` give 20). Otherwise, when a scaling
solve produces non-finite scalings, or with ``differentiable=True``, the problem is solved in the *log*
domain with log-sum-exp updates. In the scaling domain the unbalanced updates are over-relaxed
(``f <- (1 - w) f + w * update``, ``w = 1.4``; same fixed point, about half the iterations, with a
per-problem fallback to ``w = 1`` if the change grows). On CPU the batch is processed in chunks whose
kernels fit in the cache; convergence is checked every ``check_every`` iterations with one host
synchronisation per check (none in between).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pisces_cli.errors import UsageError

MODES = ("balanced", "unbalanced", "partial")
DOMAINS = ("auto", "scaling", "log")

#: Largest ``(max C - min C) / eps`` solved in the scaling domain, per compute dtype.
SCALING_MAX_RANGE = {torch.float32: 30.0, torch.float64: 200.0}
#: Target size of one chunk's kernel on CPU (fits in the last-level cache of common CPUs).
CPU_CHUNK_BYTES = 8 << 20
#: Mass at or above which the "unbalanced" mass knob means balanced OT (as in the paper's code).
BALANCED_MASS = 0.999
_NEG = -1e30
_MASKED_LOG = -1e4
#: Default over-relaxation of the scaling iterations per mode (1.4 cuts the unbalanced iterations on
#: token costs about 2x; plain balanced Sinkhorn is already fast there and over-relaxation can slow it).
OVERRELAX = {"balanced": 1.0, "unbalanced": 1.4, "partial": 1.0}


@dataclass(frozen=True)
class SinkhornInfo:
    """Diagnostics of a :func:`sinkhorn` call; every field has the batch shape ``[...]``.

    Attributes:
        iterations: iterations run until the problem met ``tol`` (or ``max_iter``), int64.
        error: last measured potential change ``max(|f - f_prev|_inf, |g - g_prev|_inf)`` between
            consecutive iterations (log units; includes ``|kappa - kappa_prev|`` in partial mode).
        marginal_error: constraint violation of the returned plan. Balanced and unbalanced:
            ``|P 1 - a|_1 + |P^T 1 - b|_1`` (for unbalanced this is the deviation that the KL relaxation
            allows, for information); partial: ``|(P 1 - a)_+|_1 + |(P^T 1 - b)_+|_1 + |1^T P 1 - m|``.
        mass: transported mass ``1^T P 1``.
        converged: ``error < tol`` was reached within ``max_iter``.
        log_domain: the problem was solved in the log domain (else the scaling domain).
    """

    iterations: Tensor
    error: Tensor
    marginal_error: Tensor
    mass: Tensor
    converged: Tensor
    log_domain: Tensor


def relaxation_exponent(eps: float, *, mass: float | None = None, rho: float | None = None) -> float:
    """``lambda = rho / (rho + eps)`` of the unbalanced update; ``rho = eps m / (1 - m)`` from ``mass``.

    Returns 1.0 (balanced) when ``rho = inf`` or ``mass >= 0.999``.
    """
    if (mass is None) == (rho is None):
        raise UsageError("sinkhorn(mode='unbalanced'): give exactly one of `mass` (in (0, 1]) or `rho` (> 0)")
    if mass is not None:
        if not 0.0 < mass <= 1.0:
            raise UsageError(f"sinkhorn: `mass` must be in (0, 1] for mode='unbalanced', got {mass}")
        if mass >= BALANCED_MASS:
            return 1.0
        rho = eps * mass / (1.0 - mass)
    assert rho is not None
    if not rho > 0.0:
        raise UsageError(f"sinkhorn: `rho` must be > 0, got {rho}")
    if math.isinf(rho):
        return 1.0
    return rho / (rho + eps)


def sinkhorn(
    cost: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    eps: float,
    mode: str,
    mass: float | None = None,
    rho: float | None = None,
    row_mask: Tensor | None = None,
    col_mask: Tensor | None = None,
    max_iter: int = 200,
    tol: float = 1e-3,
    check_every: int = 4,
    differentiable: bool = False,
    domain: str = "auto",
    chunk_size: int | None = None,
    overrelax: float | None = None,
) -> tuple[Tensor, SinkhornInfo]:
    """Solve a batch of entropic OT problems (see the module docstring for the objectives).

    Args:
        cost: ``[..., N, M]`` cost matrices (fp16/bf16/fp32 are computed in float32, float64 in float64).
        a: ``[..., N]`` (or ``[N]``) row weights; default uniform ``1 / N_valid`` over unmasked rows.
        b: ``[..., M]`` (or ``[M]``) column weights; default uniform over unmasked columns.
        eps: entropic regularisation ``eps > 0`` (POT's ``reg``).
        mode: ``"balanced"``, ``"unbalanced"`` or ``"partial"``.
        mass: unbalanced: the paper's mass knob ``m`` (``rho = eps m / (1 - m)``); partial: the exact
            transported mass ``m <= min(sum a, sum b)``.
        rho: unbalanced only: KL marginal penalty (POT's ``reg_m``); alternative to ``mass``.
        row_mask: ``[..., N]`` bool, False rows get zero mass (and zero default weight).
        col_mask: ``[..., M]`` bool, likewise for columns.
        max_iter: iteration cap per problem.
        tol: stop when the potential change between two iterations is below ``tol`` (log units).
        check_every: test convergence every this many iterations (one host sync per check).
        differentiable: keep autograd through the iterations (then always in the log domain); default:
            solved under ``no_grad``.
        domain: ``"auto"`` (scaling when safe, else log), ``"scaling"`` or ``"log"`` (forced).
        chunk_size: problems per chunk (default: cache-sized chunks on CPU, the whole batch on GPU).
        overrelax: over-relaxation ``omega`` in [1, 2) of the balanced / unbalanced scaling-domain
            iterations (default :data:`OVERRELAX`: 1.4 unbalanced, 1 balanced; same fixed point;
            ignored in partial mode and in the log domain).

    Returns:
        ``(plan [..., N, M], info)``: the plan in the compute dtype (float32 or float64) and
        :class:`SinkhornInfo`.
    """
    if mode not in MODES:
        raise UsageError(f"sinkhorn: `mode` must be one of {MODES}, got {mode!r}")
    if domain not in DOMAINS:
        raise UsageError(f"sinkhorn: `domain` must be one of {DOMAINS}, got {domain!r}")
    if not eps > 0:
        raise UsageError(f"sinkhorn: `eps` must be > 0, got {eps}")
    if cost.ndim < 2:
        raise UsageError(f"sinkhorn: `cost` must have shape [..., N, M], got {tuple(cost.shape)}")
    if differentiable and domain == "scaling":
        raise UsageError("sinkhorn: differentiable=True runs in the log domain; use domain='auto' or 'log'")
    if overrelax is not None and not 1.0 <= overrelax < 2.0:
        raise UsageError(f"sinkhorn: `overrelax` must be in [1, 2), got {overrelax}")
    if max_iter < 1 or check_every < 1:
        raise UsageError("sinkhorn: `max_iter` and `check_every` must be >= 1")
    lam = 1.0
    if mode == "unbalanced":
        lam = relaxation_exponent(eps, mass=mass, rho=rho)
    elif mode == "partial":
        if mass is None or not mass > 0:
            raise UsageError(f"sinkhorn(mode='partial'): `mass` must be > 0, got {mass}")
        if rho is not None:
            raise UsageError("sinkhorn(mode='partial'): `rho` is not used; give `mass`")
    elif mass is not None or rho is not None:
        raise UsageError("sinkhorn(mode='balanced'): `mass` and `rho` are not used")
    solve_mode = "balanced" if (mode == "unbalanced" and lam == 1.0) else mode

    dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    *batch, n, m = cost.shape
    device = cost.device
    num = math.prod(batch)
    costs = cost.to(dtype).reshape(num, n, m)
    rmask = _flat_mask(row_mask, batch, n, num, device, "row_mask")
    cmask = _flat_mask(col_mask, batch, m, num, device, "col_mask")
    a_flat = _flat_weights(a, rmask, batch, n, num, dtype, "a")
    b_flat = _flat_weights(b, cmask, batch, m, num, dtype, "b")
    rmask = rmask & (a_flat > 0)
    cmask = cmask & (b_flat > 0)
    a_flat = torch.where(rmask, a_flat, torch.zeros((), dtype=dtype, device=device))
    b_flat = torch.where(cmask, b_flat, torch.zeros((), dtype=dtype, device=device))

    iterations = torch.zeros(num, dtype=torch.int64, device=device)
    error = torch.zeros(num, dtype=dtype, device=device)
    converged = torch.ones(num, dtype=torch.bool, device=device)
    log_domain = torch.zeros(num, dtype=torch.bool, device=device)
    row_sums = torch.zeros(num, n, dtype=dtype, device=device)
    col_sums = torch.zeros(num, m, dtype=dtype, device=device)
    nonempty = (rmask.any(-1) & cmask.any(-1)).nonzero().flatten()
    all_nonempty = nonempty.numel() == num
    # Without autograd and without empty problems, chunks write their plans straight into the output.
    write_in_place = all_nonempty and not differentiable
    plan = torch.empty if write_in_place else torch.zeros
    plan = plan(num, n, m, dtype=dtype, device=device)

    if num and n and m and nonempty.numel():
        _check_marginals(solve_mode, a_flat[nonempty], b_flat[nonempty], mass)
        if chunk_size is None:
            chunk_size = (
                max(1, CPU_CHUNK_BYTES // (2 * n * m * costs.element_size())) if device.type == "cpu" else num
            )
        grad_ctx = torch.enable_grad() if differentiable else torch.no_grad()
        relax = OVERRELAX[solve_mode] if overrelax is None else float(overrelax)
        settings = _Settings(solve_mode, eps, lam, mass, max_iter, tol, check_every, relax)
        any_mask = not (bool(rmask.all()) and bool(cmask.all()))
        with grad_ctx:
            solved = []
            for start in range(0, nonempty.numel(), chunk_size):
                idx = (
                    slice(start, start + chunk_size) if all_nonempty else nonempty[start : start + chunk_size]
                )
                chunk_plan, stats = _solve_chunk(
                    costs[idx],
                    a_flat[idx],
                    b_flat[idx],
                    rmask[idx],
                    cmask[idx],
                    settings,
                    domain,
                    differentiable,
                    any_mask,
                    plan[idx] if write_in_place else None,
                )
                solved.append(chunk_plan)
                with torch.no_grad():
                    detached = chunk_plan.detach()
                    row_sums[idx] = detached.sum(-1)  # while the chunk is still in cache
                    col_sums[idx] = detached.sum(-2)
                iterations[idx], error[idx], converged[idx], log_domain[idx] = (t.detach() for t in stats)
            if not write_in_place:
                solved_all = torch.cat(solved)
                if differentiable:
                    plan = plan.index_put((nonempty,), solved_all)
                else:
                    plan.index_copy_(0, nonempty, solved_all)

    with torch.no_grad():
        total = row_sums.sum(-1)
        if solve_mode == "partial":
            marg = (
                (row_sums - a_flat).clamp_min(0).sum(-1)
                + (col_sums - b_flat).clamp_min(0).sum(-1)
                + (total - float(mass)).abs()  # type: ignore[arg-type]
            )
            marg = torch.where(rmask.any(-1) & cmask.any(-1), marg, torch.zeros_like(marg))
        else:
            marg = (row_sums - a_flat).abs().sum(-1) + (col_sums - b_flat).abs().sum(-1)
    info = SinkhornInfo(
        iterations=iterations.reshape(batch),
        error=error.reshape(batch),
        marginal_error=marg.reshape(batch),
        mass=total.reshape(batch),
        converged=converged.reshape(batch),
        log_domain=log_domain.reshape(batch),
    )
    return plan.reshape(*batch, n, m), info


@dataclass(frozen=True)
class _Settings:
    mode: str
    eps: float
    lam: float
    mass: float | None
    max_iter: int
    tol: float
    check_every: int
    relax: float = 1.0


def _flat_mask(mask: Tensor | None, batch: list[int], size: int, num: int, device, name: str) -> Tensor:
    if mask is None:
        return torch.ones(num, size, dtype=torch.bool, device=device)
    if mask.dtype != torch.bool:
        raise UsageError(f"sinkhorn: `{name}` must be a bool tensor, got {mask.dtype}")
    try:
        return mask.to(device).expand(*batch, size).reshape(num, size)
    except RuntimeError as exc:
        raise UsageError(
            f"sinkhorn: `{name}` of shape {tuple(mask.shape)} does not fit [..., {size}]"
        ) from exc


def _flat_weights(
    weights: Tensor | None, mask: Tensor, batch: list[int], size: int, num: int, dtype, name: str
) -> Tensor:
    if weights is None:
        count = mask.sum(-1, keepdim=True).clamp_min(1).to(dtype)
        return mask.to(dtype) / count
    try:
        flat = weights.to(device=mask.device, dtype=dtype).expand(*batch, size).reshape(num, size)
    except RuntimeError as exc:
        raise UsageError(
            f"sinkhorn: `{name}` of shape {tuple(weights.shape)} does not fit [..., {size}]"
        ) from exc
    if bool((flat < 0).any()) or not bool(torch.isfinite(flat).all()):
        raise UsageError(f"sinkhorn: `{name}` must be finite and non-negative")
    return flat


def _check_marginals(mode: str, a: Tensor, b: Tensor, mass: float | None) -> None:
    sa, sb = a.sum(-1), b.sum(-1)
    if mode == "balanced" and bool(((sa - sb).abs() > 1e-5 * torch.maximum(sa, sb)).any()):
        raise UsageError("sinkhorn(mode='balanced'): `a` and `b` must have equal total mass per problem")
    if mode == "partial" and bool((float(mass) > torch.minimum(sa, sb) * (1 + 1e-6)).any()):  # type: ignore[arg-type]
        raise UsageError(f"sinkhorn(mode='partial'): `mass`={mass} exceeds min(sum a, sum b) of some problem")


def _solve_chunk(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    rmask: Tensor,
    cmask: Tensor,
    cfg: _Settings,
    domain: str,
    differentiable: bool,
    any_mask: bool,
    out: Tensor | None,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Solve problems ``[p, N, M]`` (into ``out`` when given); return the plan and
    (iterations, error, converged, log_domain)."""
    valid, cmin, cmax = _valid_and_range(cost.detach(), rmask, cmask, any_mask)
    use_log = domain == "log" or differentiable
    if domain == "auto" and not use_log:
        limit = SCALING_MAX_RANGE[cost.dtype]
        spread = (cmax - cmin) / cfg.eps
        shift = cmin.abs() * (1.0 - cfg.lam) / (cfg.lam * cfg.eps)
        use_log = not bool(((spread <= limit) & (shift <= limit)).all())
    if not use_log:
        solver = _solve_scaling_partial if cfg.mode == "partial" else _solve_scaling_relaxed
        plan, stats, finite = solver(cost, a, b, rmask, cmask, valid, cmin, cfg, out)
        if domain == "scaling" or finite:
            return plan, (*stats, torch.zeros_like(stats[2]))
        # Rare: the scalings over- or underflowed; solve the whole chunk again in the log domain.
    plan, stats = _solve_log(cost, a, b, rmask, cmask, valid, cfg)
    if out is not None:
        plan = out.copy_(plan)
    return plan, (*stats, torch.ones_like(stats[2]))


def _valid_and_range(
    cost: Tensor, rmask: Tensor, cmask: Tensor, any_mask: bool
) -> tuple[Tensor | None, Tensor, Tensor]:
    """The validity mask (broadcastable: ``[p, N, 1]`` when only rows are masked, ``[p, 1, M]`` when only
    columns are, ``[p, N, M]`` otherwise; ``None`` without masks) and the min / max valid cost ``[p]``.

    Row- or column-only masks are reduced on the unmasked axis first, so no ``[p, N, M]`` temporary is made.
    """
    if not any_mask:
        flat = cost.flatten(1)
        return None, flat.amin(-1), flat.amax(-1)  # (faster than aminmax on CPU)
    inf = torch.tensor(float("inf"), dtype=cost.dtype, device=cost.device)
    if bool(cmask.all()):
        cmin = torch.where(rmask, cost.amin(-1), inf).amin(-1)
        cmax = torch.where(rmask, cost.amax(-1), -inf).amax(-1)
        return rmask[:, :, None], cmin, cmax
    if bool(rmask.all()):
        cmin = torch.where(cmask, cost.amin(-2), inf).amin(-1)
        cmax = torch.where(cmask, cost.amax(-2), -inf).amax(-1)
        return cmask[:, None, :], cmin, cmax
    valid = rmask[:, :, None] & cmask[:, None, :]
    cmin = torch.where(valid, cost, inf).flatten(1).amin(-1)
    cmax = torch.where(valid, cost, -inf).flatten(1).amax(-1)
    return valid, cmin, cmax


def _fill_masked(values: Tensor, valid: Tensor | None, fill: float) -> Tensor:
    """``values`` with entries outside ``valid`` replaced by ``fill`` (``valid=None``: all valid)."""
    if valid is None:
        return values
    return torch.where(valid, values, torch.tensor(fill, dtype=values.dtype, device=values.device))


def _scaling_kernel(
    cost: Tensor, valid: Tensor | None, cmin: Tensor, eps: float, out: Tensor | None
) -> Tensor:
    """``K = exp(-(C - cmin) / eps)`` with 1 on masked entries, written into ``out`` when given."""
    kernel = out if out is not None else torch.empty_like(cost)
    torch.add((cmin / eps)[:, None, None], cost, alpha=-1.0 / eps, out=kernel)
    kernel.exp_()
    if valid is not None:
        kernel.masked_fill_(~valid, 1.0)
    return kernel


class _Tracker:
    """Per-problem convergence bookkeeping at check iterations (one host sync per check)."""

    def __init__(self, num: int, dtype, device, tol: float) -> None:
        self.iterations = torch.zeros(num, dtype=torch.int64, device=device)
        self.error = torch.full((num,), float("inf"), dtype=dtype, device=device)
        self.converged = torch.zeros(num, dtype=torch.bool, device=device)
        self.tol = tol
        self.frozen: list[Tensor] | None = None

    def update(self, it: int, err: Tensor, state: list[Tensor], floor: Tensor | None = None) -> bool:
        """Record iteration ``it`` (1-based) with error ``err [p]``; freeze the state of new converges.

        ``floor [p]`` is the rounding level of the potentials: a change at or below it means that no
        further progress is possible in this dtype, which also counts as converged.
        """
        err = err.detach()
        active = ~self.converged
        done = err < self.tol
        if floor is not None:
            done = done | (err <= floor.detach())
        newly = active & done
        self.iterations = torch.where(active, torch.full_like(self.iterations, it), self.iterations)
        self.error = torch.where(active, err, self.error)
        if self.frozen is None:
            self.frozen = [t.clone() for t in state]
        else:
            self.frozen = [
                torch.where(_bcast(active, s), s, f) for s, f in zip(state, self.frozen, strict=True)
            ]
        self.converged = self.converged | newly
        return bool(self.converged.all())


def _rounding_floor(f: Tensor, g: Tensor, rmask: Tensor, cmask: Tensor) -> Tensor:
    """``8 * machine_eps * (1 + max |potential|)`` per problem: the smallest change the dtype can resolve."""
    with torch.no_grad():
        zero = torch.zeros((), dtype=f.dtype, device=f.device)
        top = torch.maximum(
            torch.where(rmask, f.abs(), zero).amax(-1), torch.where(cmask, g.abs(), zero).amax(-1)
        )
        return 8 * torch.finfo(f.dtype).eps * (1.0 + top)


def _bcast(flag: Tensor, like: Tensor) -> Tensor:
    return flag.reshape(flag.shape + (1,) * (like.ndim - 1))


def _max_change(new: Tensor, old: Tensor, mask: Tensor, log_ratio: bool) -> Tensor:
    diff = torch.log(new / old) if log_ratio else new - old
    diff = torch.where(mask, diff.abs(), torch.zeros((), dtype=diff.dtype, device=diff.device))
    return diff.amax(-1) if diff.shape[-1] else diff.sum(-1)


def _partial_update_(out: Tensor, weight: Tensor, kernel_prod: Tensor, z: Tensor) -> None:
    """In place: ``out = min(1, a / (z K v))`` (one Bregman projection onto ``P 1 <= a``)."""
    torch.mul(kernel_prod, z, out=out)
    torch.div(weight, out, out=out)
    out.clamp_(max=1.0)


def _solve_scaling_partial(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    rmask: Tensor,
    cmask: Tensor,
    valid: Tensor | None,
    cmin: Tensor,
    cfg: _Settings,
    out: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor], bool]:
    """Partial-OT scaling iterations (no autograd) on ``K = exp(-(C - cmin) / eps)``.

    ``P = z diag(u) K diag(v)``; each iteration projects onto the row caps, the column caps and the
    mass constraint in turn (module docstring). ``cmin`` only rescales ``z``. Masked entries of the
    iteration kernel hold 1 rather than 0 so that no product ``K v`` vanishes; their weights are 0, hence
    ``u = 0`` on masked rows, ``v = 0`` on masked columns and the plan is exactly 0 there. Both ``K``
    and ``K^T`` are stored contiguously so that each mat-vec is a batched row-vector product (the fast
    path of CPU ``bmm``). Convergence: largest ``|log(u / u_prev)|``, ``|log(v / v_prev)|``,
    ``|log(z / z_prev)|``.
    """
    dtype = cost.dtype
    kernel = _scaling_kernel(cost, valid, cmin, cfg.eps, out)
    kernel_t = kernel.transpose(1, 2).contiguous()
    u = torch.zeros_like(a)
    v = cmask.to(dtype)
    kv = torch.empty_like(a)
    ktu = torch.empty_like(b)
    z = cfg.mass / _fill_masked(kernel, valid, 0.0).sum((-2, -1))[:, None]
    floor = torch.full((cost.shape[0],), 8 * torch.finfo(dtype).eps, dtype=dtype, device=cost.device)
    tracker = _Tracker(cost.shape[0], dtype, cost.device, cfg.tol)
    for it in range(1, cfg.max_iter + 1):
        check = it % cfg.check_every == 0 or it == cfg.max_iter
        if check:
            u_old, v_old, z_old = u.clone(), v.clone(), z
        torch.bmm(v.unsqueeze(1), kernel_t, out=kv.unsqueeze(1))
        _partial_update_(u, a, kv, z)
        torch.bmm(u.unsqueeze(1), kernel, out=ktu.unsqueeze(1))
        _partial_update_(v, b, ktu, z)
        z = cfg.mass / (v * ktu).sum(-1, keepdim=True)
        if check:
            err = torch.maximum(_max_change(u, u_old, rmask, True), _max_change(v, v_old, cmask, True))
            err = torch.maximum(err, torch.log(z / z_old).abs().squeeze(-1))
            err = torch.where(torch.isfinite(err), err, torch.full_like(err, float("inf")))
            if tracker.update(it, err, [u, v, z], floor):
                break
    u, v, z = tracker.frozen  # type: ignore[misc]
    finite = bool(torch.isfinite(u).all() and torch.isfinite(v).all() and torch.isfinite(z).all())
    plan = kernel.mul_(u[:, :, None]).mul_(v[:, None, :]).mul_(z[:, :, None])
    return plan, (tracker.iterations, tracker.error, tracker.converged), finite


def _solve_scaling_relaxed(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    rmask: Tensor,
    cmask: Tensor,
    valid: Tensor | None,
    cmin: Tensor,
    cfg: _Settings,
    out: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor], bool]:
    """Balanced / unbalanced scaling iterations with over-relaxation ``omega`` (no autograd).

    Keeps log-scalings ``f = log u``, ``g = log v`` and the kernel ``K = exp(-(C - cmin) / eps)``::

        f <- (1 - omega) f + omega lam (log a - log K e^g),   u = e^f   (columns alike)

    ``omega = 1`` is the plain update; ``1 < omega < 2`` has the same fixed point and needs far fewer
    iterations (Thibault et al. 2017, "Overrelaxed Sinkhorn-Knopp"). If the potential change grows
    between two checks the chunk falls back to ``omega = 1``. Masked rows / columns get a log-weight of
    -1e4, hence exactly zero scalings.
    """
    dtype = cost.dtype
    kernel = _scaling_kernel(cost, valid, cmin, cfg.eps, out)
    kernel_t = kernel.transpose(1, 2).contiguous()
    lam = cfg.lam
    masked_log = torch.tensor(_MASKED_LOG, dtype=dtype, device=cost.device)
    log_a = torch.where(rmask, torch.log(torch.where(rmask, a, torch.ones_like(a))), masked_log)
    log_b = torch.where(cmask, torch.log(torch.where(cmask, b, torch.ones_like(b))), masked_log)
    if cfg.mode == "unbalanced":
        # K = s K' with s = exp(-cmin / eps): u' = s u solves u' = (a s^((1-lam)/lam) / K'v)^lam.
        log_a = log_a - (cmin * (1.0 - lam) / (lam * cfg.eps))[:, None]
    f = torch.zeros_like(a)
    g = torch.where(cmask, torch.zeros_like(b), masked_log)
    u = torch.zeros_like(a)
    v = torch.exp(g)
    kv = torch.empty_like(a)
    ktu = torch.empty_like(b)
    omega = torch.full((cost.shape[0], 1), cfg.relax, dtype=dtype, device=cost.device)
    keep, step = 1.0 - omega, omega * lam
    previous = torch.full((cost.shape[0],), math.inf, dtype=dtype, device=cost.device)
    tracker = _Tracker(cost.shape[0], dtype, cost.device, cfg.tol)
    for it in range(1, cfg.max_iter + 1):
        check = it % cfg.check_every == 0 or it == cfg.max_iter
        if check:
            f_old, g_old = f.clone(), g.clone()
        torch.bmm(v.unsqueeze(1), kernel_t, out=kv.unsqueeze(1))
        _relaxed_step_(f, log_a, kv, keep, step)
        torch.exp(f, out=u)
        torch.bmm(u.unsqueeze(1), kernel, out=ktu.unsqueeze(1))
        _relaxed_step_(g, log_b, ktu, keep, step)
        torch.exp(g, out=v)
        if check:
            err = torch.maximum(_max_change(f, f_old, rmask, False), _max_change(g, g_old, cmask, False))
            err = torch.where(torch.isfinite(err), err, torch.full_like(err, float("inf")))
            if cfg.relax != 1.0:  # per-problem safeguard: back to the plain update if the change grows
                grew = (err > previous)[:, None]
                keep = torch.where(grew, torch.zeros_like(keep), keep)
                step = torch.where(grew, torch.full_like(step, lam), step)
                previous = err
            if tracker.update(it, err, [f, g], _rounding_floor(f, g, rmask, cmask)):
                break
    f, g = tracker.frozen  # type: ignore[misc]
    finite = bool(torch.isfinite(f).all() and torch.isfinite(g).all())
    plan = kernel.mul_(torch.exp(f)[:, :, None]).mul_(torch.exp(g)[:, None, :])
    return plan, (tracker.iterations, tracker.error, tracker.converged), finite


def _relaxed_step_(
    potential: Tensor, log_weight: Tensor, kernel_prod: Tensor, keep: Tensor, step: Tensor
) -> None:
    """In place: ``potential = keep potential + step (log_weight - log kernel_prod)``.

    ``keep = 1 - omega`` and ``step = omega lam`` are per-problem ``[p, 1]``; ``kernel_prod`` is overwritten.
    """
    kernel_prod.log_()
    torch.sub(log_weight, kernel_prod, out=kernel_prod)
    kernel_prod.mul_(step)
    potential.mul_(keep).add_(kernel_prod)


def _solve_log(
    cost: Tensor, a: Tensor, b: Tensor, rmask: Tensor, cmask: Tensor, valid: Tensor | None, cfg: _Settings
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Log-domain iterations on potentials ``f [p, N]``, ``g [p, M]`` (and ``kappa [p, 1]``)."""
    neg = torch.tensor(_NEG, dtype=cost.dtype, device=cost.device)
    zero = torch.zeros((), dtype=cost.dtype, device=cost.device)
    log_k = _fill_masked(-cost / cfg.eps, valid, _NEG)
    log_a = torch.where(rmask, torch.log(torch.where(rmask, a, torch.ones_like(a))), neg)
    log_b = torch.where(cmask, torch.log(torch.where(cmask, b, torch.ones_like(b))), neg)
    lam = cfg.lam
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    kappa = torch.zeros(cost.shape[0], 1, dtype=cost.dtype, device=cost.device)
    if cfg.mode == "partial":
        kappa = math.log(cfg.mass) - torch.logsumexp(log_k.flatten(1), -1, keepdim=True)  # type: ignore[arg-type]
    tracker = _Tracker(cost.shape[0], cost.dtype, cost.device, cfg.tol)
    for it in range(1, cfg.max_iter + 1):
        check = it % cfg.check_every == 0 or it == cfg.max_iter
        if check:
            f_old, g_old, kappa_old = f, g, kappa
        row_lse = torch.logsumexp(log_k + g[:, None, :], -1)
        if cfg.mode == "partial":
            f = (log_a - kappa - row_lse).clamp_max(0.0)
        else:
            f = lam * (log_a - row_lse)
        f = torch.where(rmask, f, zero)
        col_lse = torch.logsumexp(log_k + f[:, :, None], -2)
        if cfg.mode == "partial":
            g = torch.where(cmask, (log_b - kappa - col_lse).clamp_max(0.0), zero)
            kappa = math.log(cfg.mass) - torch.logsumexp(
                torch.where(cmask, g + col_lse, neg), -1, keepdim=True
            )  # type: ignore[arg-type]
        else:
            g = torch.where(cmask, lam * (log_b - col_lse), zero)
        if check:
            with torch.no_grad():
                err = torch.maximum(_max_change(f, f_old, rmask, False), _max_change(g, g_old, cmask, False))
                if cfg.mode == "partial":
                    err = torch.maximum(err, (kappa - kappa_old).abs().squeeze(-1))
                err = torch.where(torch.isfinite(err), err, torch.full_like(err, float("inf")))
            if tracker.update(it, err, [f, g, kappa], _rounding_floor(f + kappa, g, rmask, cmask)):
                break
    f, g, kappa = tracker.frozen  # type: ignore[misc]
    log_plan = f[:, :, None] + log_k + g[:, None, :]
    if cfg.mode == "partial":
        log_plan = log_plan + kappa[:, :, None]
    plan = _fill_masked(torch.exp(log_plan), valid, 0.0)
    return plan, (tracker.iterations, tracker.error, tracker.converged)
