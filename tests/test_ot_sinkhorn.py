"""pisces_cli.ot.sinkhorn against POT (balanced, KL-unbalanced, partial) and its own invariants."""

from __future__ import annotations

import warnings

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pisces_cli.errors import UsageError
from pisces_cli.ot import SinkhornInfo, sinkhorn
from pisces_cli.ot.sinkhorn import relaxation_exponent

TIGHT = {"tol": 1e-12, "max_iter": 20000}


def _uniform(size: int) -> np.ndarray:
    return np.full(size, 1.0 / size)


def pot_plan(mode: str, cost: np.ndarray, eps: float, a=None, b=None, mass=None, rho=None) -> np.ndarray:
    """POT's plan for one problem (float64), with a tight stopping threshold."""
    n, m = cost.shape
    a = _uniform(n) if a is None else a
    b = _uniform(m) if b is None else b
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "balanced":
            return ot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", stopThr=1e-14, numItermax=200000)
        if mode == "unbalanced":
            if rho is None:
                rho = eps * mass / (1 - mass)
            return ot.unbalanced.sinkhorn_unbalanced(
                a, b, cost, eps, rho, reg_type="entropy", stopThr=1e-15, numItermax=200000
            )
        return ot.partial.entropic_partial_wasserstein(
            a, b, cost, eps, m=mass, stopThr=1e-15, numItermax=200000
        )


def rel_diff(plan: torch.Tensor, ref: np.ndarray) -> float:
    """``max |P - P_ref| / sum(P_ref)``."""
    ref_t = torch.as_tensor(ref, dtype=torch.float64)
    return float((plan.double() - ref_t).abs().max() / ref_t.sum())


MODES_KW = [("balanced", {}), ("unbalanced", {"mass": 0.9}), ("partial", {"mass": 0.7})]


@pytest.mark.parametrize("mode,kw", MODES_KW)
@pytest.mark.parametrize("domain", ["auto", "log"])
def test_ot_matches_pot_random(mode, kw, domain):
    gen = torch.Generator().manual_seed(1)
    cost = torch.rand(4, 9, 13, generator=gen, dtype=torch.float64)
    plan, info = sinkhorn(cost, eps=0.05, mode=mode, domain=domain, **kw, **TIGHT)
    assert bool(info.converged.all())
    for k in range(4):
        assert rel_diff(plan[k], pot_plan(mode, cost[k].numpy(), 0.05, **kw)) <= 1e-6


@pytest.mark.parametrize("mode,kw", MODES_KW)
@pytest.mark.parametrize(
    "shape,eps,scale",
    [((1, 7), 0.05, 1.0), ((6, 1), 0.05, 1.0), ((5, 8), 0.01, 1.0), ((5, 8), 10.0, 1e3), ((1, 1), 0.05, 1.0)],
)
def test_ot_matches_pot_adversarial(mode, kw, shape, eps, scale):
    """N or M = 1, eps = 0.01, costs spanning 1e3 (auto domain falls back to the log domain)."""
    gen = torch.Generator().manual_seed(2)
    cost = scale * torch.rand(*shape, generator=gen, dtype=torch.float64)
    kw = dict(kw)
    if mode == "partial":
        kw["mass"] = 0.5
    plan, info = sinkhorn(cost, eps=eps, mode=mode, **kw, **TIGHT)
    assert bool(info.converged)
    assert rel_diff(plan, pot_plan(mode, cost.numpy(), eps, **kw)) <= 1e-6


def test_ot_large_cost_range_uses_log_domain_in_float32():
    gen = torch.Generator().manual_seed(3)
    cost = torch.rand(2, 6, 10, generator=gen)
    cost[1] *= 1e3
    plan, info = sinkhorn(cost, eps=0.05, mode="balanced", **TIGHT)
    assert torch.isfinite(plan).all()
    assert bool(info.log_domain.all())
    ref = pot_plan("balanced", cost[0].double().numpy(), 0.05)
    assert rel_diff(plan[0], ref) <= 1e-5


@pytest.mark.parametrize("mode,kw", MODES_KW)
def test_ot_padded_masks_match_pot_on_valid_block(mode, kw):
    gen = torch.Generator().manual_seed(4)
    cost = torch.rand(2, 8, 12, generator=gen, dtype=torch.float64)
    row_mask = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    col_mask = torch.tensor([True] * 10 + [False] * 2)
    cost[0, 5:] = float("nan")  # padding may hold garbage
    plan, info = sinkhorn(cost, eps=0.05, mode=mode, row_mask=row_mask, col_mask=col_mask, **kw, **TIGHT)
    assert torch.equal(plan[0, 5:], torch.zeros(3, 12, dtype=torch.float64))
    assert torch.equal(plan[:, :, 10:], torch.zeros(2, 8, 2, dtype=torch.float64))
    assert rel_diff(plan[0, :5, :10], pot_plan(mode, cost[0, :5, :10].numpy(), 0.05, **kw)) <= 1e-6
    assert rel_diff(plan[1, :, :10], pot_plan(mode, cost[1, :, :10].numpy(), 0.05, **kw)) <= 1e-6
    assert bool(info.converged.all())


def test_ot_custom_marginals_and_rho_match_pot():
    gen = torch.Generator().manual_seed(5)
    cost = torch.rand(6, 9, generator=gen, dtype=torch.float64)
    a = torch.rand(6, generator=gen, dtype=torch.float64) + 0.1
    b = torch.rand(9, generator=gen, dtype=torch.float64) + 0.1
    plan, _ = sinkhorn(cost, a, b, eps=0.1, mode="unbalanced", rho=0.3, **TIGHT)
    assert rel_diff(plan, pot_plan("unbalanced", cost.numpy(), 0.1, a.numpy(), b.numpy(), rho=0.3)) <= 1e-6
    a_n, b_n = a / a.sum(), b / b.sum()
    plan, _ = sinkhorn(cost, a_n, b_n, eps=0.1, mode="balanced", **TIGHT)
    assert rel_diff(plan, pot_plan("balanced", cost.numpy(), 0.1, a_n.numpy(), b_n.numpy())) <= 1e-6
    plan, _ = sinkhorn(cost, a_n, b_n, eps=0.1, mode="partial", mass=0.4, **TIGHT)
    assert rel_diff(plan, pot_plan("partial", cost.numpy(), 0.1, a_n.numpy(), b_n.numpy(), mass=0.4)) <= 1e-6


def test_ot_float32_workload_scaling_domain_accuracy():
    """Min-max normalised costs with eps = 0.05 run in the float32 scaling domain at the paper tol."""
    gen = torch.Generator().manual_seed(6)
    cost = torch.rand(3, 40, 300, generator=gen)
    cost = (cost - cost.amin((-2, -1), keepdim=True)) / (
        cost.amax((-2, -1), keepdim=True) - cost.amin((-2, -1), keepdim=True)
    )
    plan, info = sinkhorn(cost, eps=0.05, mode="unbalanced", mass=0.9)
    assert plan.dtype == torch.float32 and not bool(info.log_domain.any())
    for k in range(3):
        assert rel_diff(plan[k], pot_plan("unbalanced", cost[k].double().numpy(), 0.05, mass=0.9)) <= 1e-6


def test_ot_half_precision_inputs_accumulate_in_float32():
    gen = torch.Generator().manual_seed(7)
    cost = torch.rand(2, 5, 7, generator=gen)
    ref, _ = sinkhorn(cost.half().float(), eps=0.1, mode="balanced", **TIGHT)
    for dtype in (torch.float16, torch.bfloat16):
        plan, _ = sinkhorn(cost.to(dtype), eps=0.1, mode="balanced", **TIGHT)
        assert plan.dtype == torch.float32
    plan, _ = sinkhorn(cost.half(), eps=0.1, mode="balanced", **TIGHT)
    assert torch.allclose(plan, ref, atol=1e-7)


@pytest.mark.parametrize("mode,kw", MODES_KW)
def test_ot_batched_equals_per_problem(mode, kw):
    gen = torch.Generator().manual_seed(8)
    cost = torch.rand(2, 3, 6, 11, generator=gen)
    row_mask = torch.rand(2, 3, 6, generator=gen) > 0.3
    row_mask[..., 0] = True
    batched, info = sinkhorn(cost, eps=0.05, mode=mode, row_mask=row_mask, tol=1e-6, **kw)
    for i in range(2):
        for j in range(3):
            single, single_info = sinkhorn(
                cost[i, j], eps=0.05, mode=mode, row_mask=row_mask[i, j], tol=1e-6, **kw
            )
            assert torch.allclose(batched[i, j], single, atol=1e-9, rtol=1e-5)
            # float32 rounding may move a borderline error across tol by one check
            assert abs(int(info.iterations[i, j]) - int(single_info.iterations)) <= 10
    # chunking must not change anything either
    chunked, _ = sinkhorn(cost, eps=0.05, mode=mode, row_mask=row_mask, tol=1e-6, chunk_size=2, **kw)
    assert torch.allclose(chunked, batched, atol=1e-9, rtol=1e-5)


def test_ot_info_reports_per_problem_diagnostics():
    gen = torch.Generator().manual_seed(9)
    cost = torch.rand(3, 5, 8, generator=gen, dtype=torch.float64)
    cost[2] *= 0.0  # trivial problem converges at the first check
    plan, info = sinkhorn(
        cost, eps=0.05, mode="balanced", tol=1e-9, max_iter=1000, check_every=5, overrelax=1.0
    )
    assert isinstance(info, SinkhornInfo)
    assert info.iterations.shape == (3,) and info.iterations.dtype == torch.int64
    assert int(info.iterations[2]) == 5 and int(info.iterations[0]) > 5
    assert torch.all(info.iterations % 5 == 0)
    assert bool(info.converged.all()) and bool((info.error < 1e-9).all())
    assert torch.allclose(info.mass, plan.sum((-2, -1)))
    assert bool((info.marginal_error < 1e-7).all())
    _, capped = sinkhorn(cost, eps=0.01, mode="balanced", tol=1e-12, max_iter=3)
    assert not bool(capped.converged[0]) and int(capped.iterations[0]) == 3


def test_ot_partial_reports_mass_and_marginal_error():
    gen = torch.Generator().manual_seed(10)
    cost = torch.rand(4, 10, 20, generator=gen)
    plan, info = sinkhorn(cost, eps=0.05, mode="partial", mass=0.8, tol=1e-6)
    assert torch.allclose(info.mass, torch.full((4,), 0.8), atol=1e-5)
    assert bool((plan.sum(-1) <= 0.1 + 1e-5).all()) and bool((plan.sum(-2) <= 0.05 + 1e-5).all())
    assert bool((info.marginal_error < 1e-4).all())


def test_ot_empty_and_fully_masked_problems_give_zero_plans():
    plan, info = sinkhorn(torch.rand(2, 0, 5), eps=0.05, mode="unbalanced", mass=0.9)
    assert plan.shape == (2, 0, 5) and bool(info.converged.all())
    cost = torch.rand(2, 3, 4)
    row_mask = torch.tensor([[False, False, False], [True, True, True]])
    plan, info = sinkhorn(cost, eps=0.05, mode="partial", mass=0.5, row_mask=row_mask)
    assert torch.equal(plan[0], torch.zeros(3, 4))
    assert abs(float(plan[1].sum()) - 0.5) < 1e-5


def test_ot_mass_knob_maps_to_rho_and_balanced():
    assert relaxation_exponent(0.05, mass=0.9) == pytest.approx(0.9)
    assert relaxation_exponent(0.05, mass=0.999) == 1.0
    assert relaxation_exponent(0.05, rho=float("inf")) == 1.0
    gen = torch.Generator().manual_seed(11)
    cost = torch.rand(5, 6, generator=gen, dtype=torch.float64)
    nearly, _ = sinkhorn(cost, eps=0.1, mode="unbalanced", mass=0.9995, **TIGHT)
    balanced, _ = sinkhorn(cost, eps=0.1, mode="balanced", **TIGHT)
    assert torch.allclose(nearly, balanced, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "sideways", "eps": 0.1},
        {"mode": "balanced", "eps": 0.0},
        {"mode": "unbalanced", "eps": 0.1},
        {"mode": "unbalanced", "eps": 0.1, "mass": 0.9, "rho": 1.0},
        {"mode": "partial", "eps": 0.1},
        {"mode": "partial", "eps": 0.1, "mass": 1.5},
        {"mode": "balanced", "eps": 0.1, "mass": 0.5},
        {"mode": "balanced", "eps": 0.1, "differentiable": True, "domain": "scaling"},
    ],
)
def test_ot_rejects_bad_arguments(kwargs):
    with pytest.raises(UsageError):
        sinkhorn(torch.rand(3, 4), **kwargs)


def test_ot_rejects_bad_masks_and_marginals():
    with pytest.raises(UsageError):
        sinkhorn(torch.rand(3, 4), eps=0.1, mode="balanced", row_mask=torch.ones(3))
    with pytest.raises(UsageError):
        sinkhorn(torch.rand(3, 4), eps=0.1, mode="balanced", row_mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(UsageError):
        sinkhorn(torch.rand(3, 4), torch.ones(3), torch.ones(4), eps=0.1, mode="balanced")


@pytest.mark.parametrize("mode,kw", MODES_KW[:2])
def test_ot_overrelaxation_same_plan(mode, kw):
    gen = torch.Generator().manual_seed(13)
    cost = torch.rand(4, 40, 300, generator=gen, dtype=torch.float64)
    plain, plain_info = sinkhorn(
        cost, eps=0.05, mode=mode, overrelax=1.0, tol=1e-10, max_iter=2000, check_every=1, **kw
    )
    fast, fast_info = sinkhorn(
        cost, eps=0.05, mode=mode, overrelax=1.4, tol=1e-10, max_iter=2000, check_every=1, **kw
    )
    assert bool(plain_info.converged.all()) and bool(fast_info.converged.all())
    assert (fast - plain).abs().max() <= 1e-9 * plain.sum((-2, -1)).max()
    if mode == "unbalanced":  # the default over-relaxation pays off here
        assert bool((fast_info.iterations < plain_info.iterations).all())
    with pytest.raises(UsageError):
        sinkhorn(cost, eps=0.05, mode=mode, overrelax=2.0, **kw)


def test_ot_float32_tight_tol_stops_at_rounding_level():
    gen = torch.Generator().manual_seed(14)
    cost = torch.rand(2, 10, 30, generator=gen)
    plan, info = sinkhorn(cost, eps=0.05, mode="unbalanced", mass=0.9, tol=1e-12, max_iter=2000)
    assert bool(info.converged.all()) and int(info.iterations.max()) < 2000
    ref = pot_plan("unbalanced", cost[0].double().numpy(), 0.05, mass=0.9)
    assert rel_diff(plan[0], ref) <= 1e-6


def test_ot_detached_by_default_and_differentiable_on_request():
    cost = torch.rand(4, 5, requires_grad=True)
    plan, _ = sinkhorn(cost, eps=0.1, mode="unbalanced", mass=0.9)
    assert not plan.requires_grad
    plan, _ = sinkhorn(cost, eps=0.1, mode="unbalanced", mass=0.9, differentiable=True)
    (plan * torch.arange(20.0).reshape(4, 5)).sum().backward()
    assert cost.grad is not None and torch.isfinite(cost.grad).all() and cost.grad.abs().sum() > 0


@pytest.mark.parametrize("mode,kw", MODES_KW)
def test_ot_gradcheck_float64(mode, kw):
    gen = torch.Generator().manual_seed(12)
    cost = torch.rand(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    row_mask = torch.tensor([True, True])

    def solve(c):
        return sinkhorn(
            c, eps=0.5, mode=mode, row_mask=row_mask, tol=0.0, max_iter=30, differentiable=True, **kw
        )[0]

    assert torch.autograd.gradcheck(solve, (cost,), eps=1e-6, atol=1e-5)


@st.composite
def problems(draw):
    batch = draw(st.integers(1, 3))
    n = draw(st.integers(1, 6))
    m = draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(batch, n, m, generator=gen, dtype=torch.float64) * draw(st.sampled_from([1.0, 5.0]))
    row_mask = torch.rand(batch, n, generator=gen) > 0.3
    col_mask = torch.rand(batch, m, generator=gen) > 0.3
    row_mask[:, 0] = True
    col_mask[:, -1] = True
    eps = draw(st.sampled_from([0.05, 0.2, 1.0]))
    return cost, row_mask, col_mask, eps


def _check_common(plan, row_mask, col_mask):
    assert bool((plan >= 0).all())
    assert bool((plan[~row_mask] == 0).all())
    assert bool((plan.transpose(-1, -2)[~col_mask] == 0).all())


@settings(max_examples=25, deadline=None)
@given(problems())
def test_ot_property_balanced(problem):
    cost, row_mask, col_mask, eps = problem
    eps = max(eps, 0.2) * float(cost.max().clamp_min(1.0))  # balanced Sinkhorn stalls for cost / eps >> 1
    plan, info = sinkhorn(cost, eps=eps, mode="balanced", row_mask=row_mask, col_mask=col_mask, **TIGHT)
    _check_common(plan, row_mask, col_mask)
    a = row_mask.double() / row_mask.sum(-1, keepdim=True)
    b = col_mask.double() / col_mask.sum(-1, keepdim=True)
    assert torch.allclose(plan.sum(-1), a, atol=1e-8)
    assert torch.allclose(plan.sum(-2), b, atol=1e-8)


@settings(max_examples=25, deadline=None)
@given(problems(), st.sampled_from([0.3, 0.9]))
def test_ot_property_partial(problem, mass):
    cost, row_mask, col_mask, eps = problem
    plan, info = sinkhorn(
        cost, eps=eps, mode="partial", mass=mass, row_mask=row_mask, col_mask=col_mask, **TIGHT
    )
    _check_common(plan, row_mask, col_mask)
    a = row_mask.double() / row_mask.sum(-1, keepdim=True)
    b = col_mask.double() / col_mask.sum(-1, keepdim=True)
    assert torch.allclose(plan.sum((-2, -1)), torch.full_like(plan[:, 0, 0], mass), atol=1e-8)
    # Cost/eps up to 100 can leave a problem short of tol after max_iter: the solver says so
    # (converged False) and the marginal caps then hold to the marginal error it reports.
    slack = torch.where(info.converged, 0.0, info.marginal_error).unsqueeze(-1) + 1e-8
    assert bool((plan.sum(-1) <= a + slack).all()) and bool((plan.sum(-2) <= b + slack).all())


def test_partial_caps_hold_to_the_reported_error_when_not_converged():
    """cost/eps up to ~93 (found by hypothesis): the second problem stops at max_iter, says so, and its
    column sums exceed b by no more than the marginal error it reports."""
    cost = torch.tensor(
        [
            [
                [3.2768, 4.1696],
                [1.1568, 0.7368],
                [0.7270, 1.2808],
                [0.1945, 4.6650],
                [0.6662, 4.5922],
                [1.0121, 4.4816],
            ],
            [
                [3.3114, 3.0197],
                [2.4955, 3.3316],
                [3.4846, 3.4123],
                [1.4034, 2.5898],
                [0.6558, 0.5283],
                [3.8083, 4.6096],
            ],
        ],
        dtype=torch.float64,
    )
    row_mask = torch.tensor([[True, False, True, True, True, False], [True, True, False, True, True, True]])
    col_mask = torch.tensor([[False, True], [True, True]])
    plan, info = sinkhorn(
        cost, eps=0.05, mode="partial", mass=0.9, row_mask=row_mask, col_mask=col_mask, **TIGHT
    )
    assert info.converged.tolist() == [True, False]
    b = col_mask.double() / col_mask.sum(-1, keepdim=True)
    excess = (plan.sum(-2) - b).amax(-1)
    assert float(excess[1]) > 1e-8  # the unconverged problem really is off its caps...
    assert bool((excess <= info.marginal_error + 1e-8).all())  # ...by no more than it reports


@settings(max_examples=25, deadline=None)
@given(problems(), st.sampled_from([0.5, 0.9]))
def test_ot_property_unbalanced_matches_pot(problem, mass):
    cost, row_mask, col_mask, eps = problem
    plan, info = sinkhorn(
        cost, eps=eps, mode="unbalanced", mass=mass, row_mask=row_mask, col_mask=col_mask, **TIGHT
    )
    _check_common(plan, row_mask, col_mask)
    for k in range(cost.shape[0]):
        block = cost[k][row_mask[k]][:, col_mask[k]].numpy()
        ref = pot_plan("unbalanced", block, eps, mass=mass)
        assert rel_diff(plan[k][row_mask[k]][:, col_mask[k]], ref) <= 1e-6
