"""Benchmark: the semantic reward (token OT included) vs the quality reward alone, tiny CLIP, CPU.

Workload: a batch of 8 synthetic world clips (8 frames sampled from 16, 64×64 raw pixels in [0, 1],
preprocessed to the tiny CLIP's 32×32 input inside the call) with their world captions, and a Gaussian OT
map. :class:`pisces_cli.rewards.PiscesReward` is timed with weights ``semantic = 0`` (quality only; the
semantic component is skipped) and ``semantic = 1`` (quality + semantic with the paper's token-OT
settings: unbalanced, eps 0.05, mass 0.9, up to 200 iterations, tol 1e-3):

- ``no_grad``: the forward call under ``torch.no_grad`` (what ``score`` / ``eval`` pay);
- ``grad``: forward + ``total.sum().backward()`` to the pixels (what ``finetune`` pays).

Variants are timed interleaved (each repeat runs all four), median reported, with the ratio
semantic-on / quality-only per mode. Target: ≤ 2×.

Run: ``.venv/bin/python benchmarks/bench_reward.py [--quick] [--threads N]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

BATCH = 8
NUM_FRAMES = 8


def build(root: Path):
    """(quality-only reward, quality+semantic reward, pixels [8, 8, 3, 64, 64], captions)."""
    from pisces_cli.encoders.registry import load_encoder
    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import render_world_clips
    from pisces_cli.io.video import uniform_indices
    from pisces_cli.ot import TokenOTSettings
    from pisces_cli.ot.maps import fit_gaussian_map
    from pisces_cli.rewards import PiscesReward
    from pisces_cli.world.captions import world_vocabulary

    encoder = load_encoder(
        "clip", str(save_tiny_clip(root / "enc", "clip", seed=0, words=world_vocabulary()))
    )
    clips = render_world_clips(0, BATCH, frames=16, size=64)
    index = uniform_indices(16, NUM_FRAMES)
    frames = np.stack([clip[index] for clip, _caption, _spec in clips])  # [B, T, H, W, 3] uint8
    pixels = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 255.0
    captions = [caption for _clip, caption, _spec in clips]
    gen = torch.Generator().manual_seed(0)
    dim = encoder.embed_dim
    tmap = fit_gaussian_map(torch.randn(256, dim, generator=gen), torch.randn(256, dim, generator=gen) + 0.5)
    settings = TokenOTSettings()
    quality = PiscesReward(encoder, ot_map=tmap, weights={"quality": 1.0, "semantic": 0.0}, token_ot=settings)
    both = PiscesReward(encoder, ot_map=tmap, weights={"quality": 1.0, "semantic": 1.0}, token_ot=settings)
    return quality, both, pixels, captions


def forward_no_grad(reward, pixels: torch.Tensor, captions: list[str]) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            reward(pixels, captions)

    return run


def forward_backward(reward, pixels: torch.Tensor, captions: list[str]) -> Callable[[], None]:
    def run() -> None:
        leaf = pixels.clone().requires_grad_(True)
        reward(leaf, captions).total.sum().backward()
        assert leaf.grad is not None

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="9 repeats instead of 41")
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch default)")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 9
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        quality, both, pixels, captions = build(Path(tmp))
    variants = {
        ("no_grad", "quality only"): forward_no_grad(quality, pixels, captions),
        ("no_grad", "quality+semantic"): forward_no_grad(both, pixels, captions),
        ("grad", "quality only"): forward_backward(quality, pixels, captions),
        ("grad", "quality+semantic"): forward_backward(both, pixels, captions),
    }
    for run in variants.values():  # warm-up
        run()
        run()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    for _ in range(args.repeats):
        for key, run in variants.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    with torch.no_grad():
        out = both(pixels, captions)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"torch threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"batch {BATCH} x {NUM_FRAMES} frames 64x64 -> 32x32, caption tokens L={out.plan.shape[1]}, "
          f"video tokens M={out.plan.shape[2]}, OT iterations (median) "
          f"{float(out.diagnostics['ot_iterations'].float().median()):.0f}; {args.repeats} interleaved repeats")  # fmt: skip
    print(f"{'mode':<8} {'variant':<17} {'median ms':>10} {'min ms':>8} {'x quality':>10}")
    for mode in ("no_grad", "grad"):
        base = statistics.median(times[(mode, "quality only")])
        for name in ("quality only", "quality+semantic"):
            values = times[(mode, name)]
            median = statistics.median(values)
            print(f"{mode:<8} {name:<17} {median * 1e3:10.2f} {min(values) * 1e3:8.2f} {median / base:10.2f}")
        ratio = statistics.median(times[(mode, "quality+semantic")]) / base
        print(
            f"{mode}: semantic-on / quality-only = {ratio:.2f} ({'meets' if ratio <= 2.0 else 'MISSES'} <= 2.0)"
        )


if __name__ == "__main__":
    main()
