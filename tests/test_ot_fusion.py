"""fuse_attention: paper Eq. 3 on lexical rows, bit-identical elsewhere, gradients through A only."""

from __future__ import annotations

import pytest
import torch

from pisces_cli.errors import UsageError
from pisces_cli.ot import fuse_attention, fuse_rows


def _inputs(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 7, generator=gen, dtype=dtype, requires_grad=True)
    prior = torch.softmax(torch.randn(2, 3, 5, 7, generator=gen), -1).requires_grad_()
    lexical = torch.tensor([[False, True, True, False, False], [False, True, False, True, True]])
    return logits, prior, lexical


def test_ot_fusion_formula_and_untouched_rows():
    logits, prior, lexical = _inputs()
    attn = torch.softmax(logits, -1)
    fused = fuse_attention(attn, prior, lexical)
    rows = lexical[:, None, :].expand(-1, 3, -1)
    assert torch.equal(fused[~rows], attn[~rows])
    expected = torch.softmax(torch.log(attn.clamp_min(1e-6)) + torch.log(prior.clamp_min(1e-6)), -1)
    assert torch.allclose(fused[rows], expected[rows], atol=1e-6)
    assert torch.allclose(fused[rows].sum(-1), torch.ones(int(rows.sum())), atol=1e-6)


def test_ot_fusion_gradients_reach_logits_not_prior():
    logits, prior, lexical = _inputs()
    attn = torch.softmax(logits, -1)
    fused = fuse_attention(attn, prior, lexical)
    weights = torch.randn(fused.shape, generator=torch.Generator().manual_seed(1))
    (fused * weights).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad[:, :, 1].abs().sum() > 0  # a fused row
    assert prior.grad is None


def test_ot_fusion_half_precision_keeps_dtype_and_untouched_rows():
    logits, prior, lexical = _inputs()
    attn = torch.softmax(logits.detach(), -1).half()
    fused = fuse_attention(attn, prior.detach(), lexical)
    assert fused.dtype == torch.float16
    rows = lexical[:, None, :].expand(-1, 3, -1)
    assert torch.equal(fused[~rows], attn[~rows])
    assert torch.allclose(fused[rows].float().sum(-1), torch.ones(int(rows.sum())), atol=1e-2)


def test_ot_fusion_zero_prior_rows_keep_attention():
    """A zero prior row (all clamped to 1e-6) is a constant shift: the row keeps the softmax of log A."""
    logits, _, lexical = _inputs()
    attn = torch.softmax(logits.detach(), -1)
    fused = fuse_attention(attn, torch.zeros_like(attn), lexical)
    rows = lexical[:, None, :].expand(-1, 3, -1)
    assert torch.allclose(fused[rows], attn[rows], atol=1e-6)


def test_ot_fusion_rejects_mismatched_shapes():
    logits, prior, lexical = _inputs()
    with pytest.raises(UsageError):
        fuse_attention(logits, prior[:, :2], lexical)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ot_cuda_matches_cpu():
    """Device-agnostic code: the solver, prior and fusion give the CPU results on CUDA."""
    from pisces_cli.ot import TokenOTSettings, sinkhorn, token_ot_prior, video_token_geometry

    gen = torch.Generator().manual_seed(3)
    cost = torch.rand(4, 10, 33, generator=gen)
    for mode, kw in [("balanced", {}), ("unbalanced", {"mass": 0.9}), ("partial", {"mass": 0.5})]:
        cpu, _ = sinkhorn(cost, eps=0.05, mode=mode, tol=1e-6, **kw)
        gpu, _ = sinkhorn(cost.cuda(), eps=0.05, mode=mode, tol=1e-6, **kw)
        assert torch.allclose(gpu.cpu(), cpu, atol=1e-6)
    frames, coords = video_token_geometry(2, 2, 2)
    q, k = torch.randn(1, 4, 8, generator=gen), torch.randn(1, 9, 8, generator=gen)
    attn = torch.softmax(torch.randn(1, 2, 4, 9, generator=gen), -1)
    lexical = torch.tensor([[False, True, True, False]])
    cpu, _ = token_ot_prior(q, k, attn, lexical, (frames, coords), TokenOTSettings())
    geo = (frames.cuda(), coords.cuda())
    gpu, _ = token_ot_prior(q.cuda(), k.cuda(), attn.cuda(), lexical.cuda(), geo, TokenOTSettings())
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)
    fused = fuse_attention(attn.cuda(), gpu, lexical.cuda())
    assert torch.allclose(fused.cpu(), fuse_attention(attn, cpu, lexical), atol=1e-5)


def test_ot_fuse_rows_overwrite_reuses_storage_and_gives_the_same_rows():
    logits, prior, _ = _inputs()
    attn = torch.softmax(logits.detach(), -1)
    expected = fuse_rows(attn, prior.detach())
    attn_copy, prior_copy = attn.clone(), prior.detach().clone()
    fused = fuse_rows(attn_copy, prior_copy, overwrite=True)
    assert torch.equal(fused, expected)
    assert fused.data_ptr() == attn_copy.data_ptr()  # no new [.., M] buffer
    # Under autograd the inputs are left alone whatever `overwrite` says.
    attn_grad = torch.softmax(logits, -1)
    before = attn_grad.detach().clone()
    fused_grad = fuse_rows(attn_grad, prior.detach(), overwrite=True)
    assert torch.equal(attn_grad.detach(), before) and torch.allclose(fused_grad, expected)


@pytest.mark.parametrize("needs_grad", [False, True])
def test_prior_fusion_hook_leaves_unselected_rows_and_layers_bit_identical(needs_grad: bool):
    from pisces_cli.encoders.base import TokenGeometry
    from pisces_cli.encoders.prior_fusion import PriorFusionHook
    from pisces_cli.ot import TokenOTSettings

    gen = torch.Generator().manual_seed(7)
    geometry = TokenGeometry(num_frames=2, grid_h=2, grid_w=2, has_cls=True)  # M = 9
    lexical = torch.tensor(
        [[False, True, True, True, False, False], [False, True, False, False, False, False]]
    )
    logits = torch.randn(2, 3, 6, 9, generator=gen).requires_grad_(needs_grad)
    probs = torch.softmax(logits, -1)
    before = probs.detach().clone()
    query, key = torch.randn(2, 6, 12, generator=gen), torch.randn(2, 9, 12, generator=gen)
    hook = PriorFusionHook((5,), lexical, geometry, TokenOTSettings())
    assert hook(4, probs, query, key) is probs  # a layer without the prior is passed through
    fused = hook(5, probs, query, key)
    rows = lexical[:, None, :].expand(-1, 3, -1)
    assert torch.equal(fused[~rows].detach(), before[~rows])
    assert not torch.allclose(fused[rows].detach(), before[rows])
    torch.testing.assert_close(fused[rows].detach().sum(-1), torch.ones(int(rows.sum())))
    if needs_grad:
        assert torch.equal(probs.detach(), before)  # under autograd the input is not written
        fused.sum().backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all()
    result = hook.result(torch.zeros(2))
    assert result.plan.shape == (2, 6, 9) and torch.equal(
        result.plan[~lexical], torch.zeros(int((~lexical).sum()), 9)
    )
