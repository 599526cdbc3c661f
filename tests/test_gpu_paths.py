"""GPU-only checks of the main code paths (skipped without CUDA). Run on a GPU machine with `pytest -m gpu`.

Each compares the CUDA result with the CPU result of the same computation, or checks a property that
only a device run shows (no host sync in the Sinkhorn loop, bf16 ratio noise in GRPO).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_sinkhorn_cuda_matches_cpu():
    from pisces_cli.ot import sinkhorn

    generator = torch.Generator().manual_seed(0)
    cost = torch.rand(4, 16, 40, 2049, generator=generator)
    plan_cpu, info_cpu = sinkhorn(cost, eps=0.05, mode="unbalanced", mass=0.9, tol=1e-6, max_iter=500)
    plan_gpu, info_gpu = sinkhorn(cost.cuda(), eps=0.05, mode="unbalanced", mass=0.9, tol=1e-6, max_iter=500)
    scale = plan_cpu.sum((-2, -1), keepdim=True)
    assert ((plan_gpu.cpu() - plan_cpu).abs() / scale).max() < 1e-5
    assert bool(info_gpu.converged.all())


def test_partial_sinkhorn_cuda_mass():
    from pisces_cli.ot import sinkhorn

    cost = torch.rand(8, 40, 2049, device="cuda")
    plan, _ = sinkhorn(cost, eps=0.05, mode="partial", mass=0.9, tol=1e-6, max_iter=2000)
    assert torch.allclose(plan.sum((-2, -1)), torch.full((8,), 0.9, device="cuda"), atol=1e-4)


def test_clip_reward_cuda_matches_cpu(tmp_path):
    from pisces_cli.encoders.registry import load_encoder
    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.ot import TokenOTSettings
    from pisces_cli.rewards.module import PiscesReward

    path = save_tiny_clip(tmp_path / "clip", "clip", seed=0)
    pixels = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    captions = ["a red car drives", "a dog jumps over the road"]
    out = {}
    for device in ("cpu", "cuda"):
        reward = PiscesReward(load_encoder("clip", str(path), device=device), token_ot=TokenOTSettings())
        with torch.no_grad():
            result = reward(pixels.to(device), captions)
        out[device] = torch.stack([result.quality, result.semantic]).cpu()
    assert torch.allclose(out["cpu"], out["cuda"], atol=1e-4)


def test_backprop_step_on_cuda(tmp_path):
    from test_finetune_support import resolve

    from pisces_cli.training.trainer import Trainer

    resolved = resolve(tmp_path, extra=["runtime.device=cuda", "finetune.mixed_precision=bf16"])
    trainer = Trainer(resolved, console=None, resume=False, max_steps=1)
    trainer.setup()
    try:
        metrics = trainer.train_one_step()
    finally:
        trainer.cleanup()
    assert torch.isfinite(torch.tensor(metrics["loss"]))
