"""Token geometry, token cost and the OT prior against hand computations and the released algorithm."""

from __future__ import annotations

import math

import pytest
import torch

from pisces_cli.errors import UsageError
from pisces_cli.ot import TokenOTSettings, token_ot_cost, token_ot_prior, video_token_geometry
from pisces_cli.ot.token_cost import gather_rows, lexical_rows, normalize_cost, scatter_rows


def test_ot_geometry_reference_facts():
    frames, coords = video_token_geometry(2, 2, 2)
    assert frames.tolist() == [-1, 0, 0, 0, 0, 1, 1, 1, 1]
    assert coords[0].tolist() == [-1.0, -1.0]
    assert coords[1:5].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert torch.equal(coords[5:], coords[1:5])
    assert bool(((coords[1:] >= 0) & (coords[1:] <= 1)).all())


def test_ot_geometry_full_size_and_without_cls():
    frames, coords = video_token_geometry(8, 16, 16)
    assert frames.shape == (2049,) and coords.shape == (2049, 2)
    assert frames.dtype == torch.float32 and float(frames.max()) == 7.0
    assert torch.allclose(coords[1:17, 1], torch.linspace(0, 1, 16))  # columns vary fastest
    frames, coords = video_token_geometry(3, 2, 5, has_cls=False)
    assert frames.shape == (30,) and float(frames.min()) == 0.0
    with pytest.raises(UsageError):
        video_token_geometry(0, 16, 16)


def reference_cost(query, key, attn, frames, coords, gamma=0.2, eta=0.2, exclude_cls=False):
    """Per-head loop in float64 straight from method.md §4.4 (one sample, all rows valid)."""
    heads = attn.shape[0]
    out = []
    y = query.double()
    x = key.double()
    sem = 1 - (y @ x.T) / (y.norm(dim=-1)[:, None] * x.norm(dim=-1)[None, :])
    sem = sem.clamp(0, 2)
    t = frames.double()
    s = coords.double()
    for h in range(heads):
        a = attn[h].double()
        if exclude_cls:
            a = a * (t >= 0)
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-6)
        tau = a @ t
        pi = a @ s
        temporal = (tau[:, None] - t[None, :]).abs() / max(float(t.max() - t.min()), 1.0)
        spatial = torch.cdist(pi, s) / math.sqrt(2)
        c = sem + gamma * temporal + eta * spatial
        c = (c - c.min()) / max(float(c.max() - c.min()), 1e-6)
        out.append(c)
    return torch.stack(out)


@pytest.mark.parametrize("exclude_cls", [False, True])
def test_ot_cost_matches_per_head_reference(exclude_cls):
    gen = torch.Generator().manual_seed(0)
    frames, coords = video_token_geometry(3, 2, 3)
    m = frames.numel()
    query = torch.randn(2, 5, 16, generator=gen)
    key = torch.randn(2, m, 16, generator=gen)
    attn = torch.softmax(torch.randn(2, 4, 5, m, generator=gen), -1)
    cost = token_ot_cost(query, key, attn, frames, coords, exclude_cls=exclude_cls)
    assert cost.shape == (2, 4, 5, m)
    for b in range(2):
        ref = reference_cost(query[b], key[b], attn[b], frames, coords, exclude_cls=exclude_cls)
        assert torch.allclose(cost[b].double(), ref, atol=1e-5)
    assert bool(torch.isfinite(cost).all()) and float(cost.min()) >= 0 and float(cost.max()) <= 1


def test_ot_cost_hand_computed_single_token():
    """One query row, attention fully on frame-1 patch (0, 0): tau = 1, pi = (0, 0)."""
    frames, coords = video_token_geometry(2, 1, 2)  # tokens: CLS, f0 (0,0), f0 (0,1), f1 (0,0), f1 (0,1)
    query = torch.tensor([[[1.0, 0.0]]])
    key = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]])
    attn = torch.tensor([[[[0.0, 0.0, 0.0, 1.0, 0.0]]]])
    raw_semantic = torch.tensor([0.0, 0.0, 1.0, 0.0, 2.0])
    raw_temporal = torch.tensor([2.0, 1.0, 1.0, 0.0, 0.0]) / 2.0  # span = 1 - (-1) = 2
    raw_spatial = torch.tensor([math.sqrt(2), 0.0, 1.0, 0.0, 1.0]) / math.sqrt(2)
    raw = raw_semantic + 0.2 * raw_temporal + 0.2 * raw_spatial
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    cost = token_ot_cost(query, key, attn, frames, coords)
    assert torch.allclose(cost[0, 0, 0], expected, atol=1e-6)


def test_ot_cost_normalisation_ignores_masked_rows_and_nonfinite():
    cost = torch.tensor([[[[0.0, 2.0], [4.0, float("nan")], [100.0, -100.0]]]])
    row_mask = torch.tensor([[True, True, False]])
    out = normalize_cost(cost, row_mask)
    assert torch.allclose(out[0, 0, :2], torch.tensor([[0.0, 0.5], [1.0, 1.0]]))
    assert torch.equal(out[0, 0, 2], torch.ones(2))


def test_ot_semantic_cost_shared_across_heads():
    """Heads with identical attention get identical costs; the semantic part does not depend on the head."""
    gen = torch.Generator().manual_seed(1)
    frames, coords = video_token_geometry(2, 2, 2)
    query = torch.randn(1, 3, 8, generator=gen)
    key = torch.randn(1, 9, 8, generator=gen)
    attn = torch.softmax(torch.randn(1, 1, 3, 9, generator=gen), -1).expand(1, 3, 3, 9)
    cost = token_ot_cost(query, key, attn, frames, coords)
    assert torch.equal(cost[0, 0], cost[0, 2])


def test_ot_lexical_rows_compaction():
    mask = torch.tensor([[False, True, True, False, True], [False, False, True, False, False]])
    index, row_mask = lexical_rows(mask)
    assert index.tolist() == [[1, 2, 4], [2, 0, 0]]
    assert row_mask.tolist() == [[True, True, True], [True, False, False]]


@pytest.mark.parametrize("needs_grad", [False, True])
def test_ot_gather_and_scatter_rows_match_gather_and_keep_gradients(needs_grad: bool):
    gen = torch.Generator().manual_seed(3)
    attn = torch.rand(2, 3, 5, 7, generator=gen).requires_grad_(needs_grad)
    query = torch.rand(2, 5, 4, generator=gen)
    index, row_mask = lexical_rows(
        torch.tensor([[False, True, True, False, True], [False, False, True, False, False]])
    )
    rows = gather_rows(attn, index, 2)
    expected = torch.gather(attn, 2, index[:, None, :, None].expand(-1, 3, -1, 7))
    assert torch.equal(rows, expected) and rows.requires_grad == needs_grad
    assert torch.equal(
        gather_rows(query, index, 1), torch.gather(query, 1, index[..., None].expand(-1, -1, 4))
    )
    target = attn.clone()
    out = scatter_rows(target, rows * 2.0, index, row_mask)
    lexical = torch.zeros(2, 5, dtype=torch.bool)
    lexical[0, [1, 2, 4]] = lexical[1, 2] = True
    assert torch.equal(out[~lexical[:, None].expand(-1, 3, -1)], attn[~lexical[:, None].expand(-1, 3, -1)])
    assert torch.equal(
        out[lexical[:, None].expand(-1, 3, -1)], 2.0 * attn[lexical[:, None].expand(-1, 3, -1)]
    )
    if needs_grad:  # d out / d attn: 1 off the lexical rows, 2 on them (through the gathered rows)
        out.sum().backward()
        assert torch.equal(attn.grad, torch.where(lexical[:, None, :, None], 2.0, 1.0).expand_as(attn))


def released_prior(query, key, attn, valid, frames, coords, settings: TokenOTSettings):
    """The released per-head algorithm (one sample): cost loop, log-domain Sinkhorn, row normalisation."""
    cost = reference_cost(query[valid], key, attn[:, valid], frames, coords, settings.gamma, settings.eta)
    n, m = cost.shape[-2:]
    rho = settings.eps * settings.mass / (1 - settings.mass)
    lam = rho / (rho + settings.eps)
    plans = []
    for c in cost:
        log_k = -c / settings.eps
        f = torch.zeros(n, dtype=torch.float64)
        g = torch.zeros(m, dtype=torch.float64)
        for _ in range(5000):
            f_new = lam * (math.log(1 / n) - torch.logsumexp(log_k + g[None], 1))
            g_new = lam * (math.log(1 / m) - torch.logsumexp(log_k + f_new[:, None], 0))
            change = max(float((f_new - f).abs().max()), float((g_new - g).abs().max()))
            f, g = f_new, g_new
            if change < 1e-12:
                break
        p = torch.exp(f[:, None] + log_k + g[None])
        plans.append(p / p.sum(-1, keepdim=True).clamp_min(1e-8))
    return torch.stack(plans)


def test_ot_prior_matches_released_algorithm_with_mixed_caption_lengths():
    gen = torch.Generator().manual_seed(2)
    frames, coords = video_token_geometry(2, 3, 3)
    m = frames.numel()
    batch, heads, q_len, width = 2, 3, 7, 12
    query = torch.randn(batch, q_len, width, generator=gen)
    key = torch.randn(batch, m, width, generator=gen)
    attn = torch.softmax(2 * torch.randn(batch, heads, q_len, m, generator=gen), -1)
    lexical = torch.tensor(
        [[False, True, True, True, True, False, False], [False, True, True, False, False, False, False]]
    )
    settings = TokenOTSettings(tol=1e-9, max_iter=5000)
    prior, info = token_ot_prior(query, key, attn, lexical, (frames, coords), settings)
    assert prior.shape == (batch, heads, q_len, m) and prior.dtype == torch.float32
    assert info.iterations.shape == (batch, heads) and bool(info.converged.all())
    assert torch.equal(
        prior[:, :, :, :][~lexical[:, None, :].expand(-1, heads, -1)],
        torch.zeros(int((~lexical).sum()) * heads, m),
    )
    for b in range(batch):
        ref = released_prior(query[b], key[b], attn[b], lexical[b], frames, coords, settings)
        assert torch.allclose(prior[b][:, lexical[b]].double(), ref, atol=1e-5)
    rows = prior.sum(-1)[lexical[:, None, :].expand(-1, heads, -1)]
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)


def test_ot_prior_default_settings_detached_and_partial_mode():
    gen = torch.Generator().manual_seed(3)
    frames, coords = video_token_geometry(2, 2, 2)
    query = torch.randn(1, 4, 8, generator=gen, requires_grad=True)
    key = torch.randn(1, 9, 8, generator=gen, requires_grad=True)
    attn = torch.softmax(torch.randn(1, 2, 4, 9, generator=gen), -1).requires_grad_()
    lexical = torch.tensor([[False, True, True, False]])
    prior, _ = token_ot_prior(query, key, attn, lexical, (frames, coords), TokenOTSettings())
    assert not prior.requires_grad
    prior, info = token_ot_prior(
        query, key, attn, lexical, (frames, coords), TokenOTSettings(mode="partial", tol=1e-8)
    )
    assert torch.allclose(info.mass, torch.full((1, 2), 0.9), atol=1e-5)
    with pytest.raises(UsageError):
        token_ot_prior(query, key, attn, lexical.float(), (frames, coords), TokenOTSettings())


def test_ot_prior_without_lexical_tokens_is_zero():
    frames, coords = video_token_geometry(1, 2, 2)
    attn = torch.softmax(torch.randn(2, 2, 3, 5), -1)
    lexical = torch.zeros(2, 3, dtype=torch.bool)
    prior, info = token_ot_prior(
        torch.randn(2, 3, 4), torch.randn(2, 5, 4), attn, lexical, (frames, coords), TokenOTSettings()
    )
    assert torch.equal(prior, torch.zeros_like(attn))
