"""Score world generators (or any clips) with the world oracle: per-attribute accuracy and quality.

``evaluate_generator`` samples one clip per held-out prompt with :func:`pisces_cli.backbones.sampling.generate`
and judges it against its prompt. ``chance_levels`` judges real world clips against the captions of *other*
clips (a generator that ignores its prompt but draws perfect world clips), which is the base rate each
attribute accuracy must beat; ``reference_levels`` judges real clips against their own captions (the ceiling).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pisces_cli.world import judge, make_clips

#: Attributes every caption states (the generator's targets).
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "count", "direction")


def summarize_verdicts(verdicts: list[Any]) -> dict[str, float]:
    """Mean accuracy per attribute (over verdicts stating it), prompt fidelity and quality, and ``n``."""
    summary: dict[str, float] = {"n": float(len(verdicts))}
    for name in (*ATTRIBUTES, "size", "speed", "background"):
        stated = [getattr(v, name) for v in verdicts if getattr(v, name) is not None]
        summary[name] = float(np.mean(stated)) if stated else float("nan")
    summary["prompt_fidelity"] = float(np.mean([v.prompt_fidelity for v in verdicts]))
    summary["quality"] = float(np.mean([v.quality for v in verdicts]))
    summary["all_four"] = float(np.mean([all(getattr(v, a) for a in ATTRIBUTES) for v in verdicts]))
    return summary


def pixels_to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """``[B, T, 3, H, W]`` in [0, 1] → uint8 ``[B, T, H, W, 3]``."""
    return (
        (pixels.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    )


def held_out_prompts(seed: int, n: int, frames: int, size: int) -> list[str]:
    """Captions of ``n`` world clips drawn with ``seed`` (use a seed the generator was not trained on)."""
    return [text for _, text, _ in make_clips(seed, n, frames=frames, size=size)]


def chance_levels(seed: int, n: int, frames: int, size: int) -> dict[str, float]:
    """Oracle accuracy of real clips judged against the caption of the next clip (prompt-blind base rate)."""
    clips = make_clips(seed, n, frames=frames, size=size)
    verdicts = [judge(clips[i][0], clips[(i + 1) % n][1]) for i in range(n)]
    return summarize_verdicts(verdicts)


def reference_levels(seed: int, n: int, frames: int, size: int) -> dict[str, float]:
    """Oracle accuracy of real clips judged against their own captions (the ceiling)."""
    return summarize_verdicts(
        [judge(f, text) for f, text, _ in make_clips(seed, n, frames=frames, size=size)]
    )


@torch.no_grad()
def evaluate_generator(
    adapter: Any,
    prompts: list[str],
    *,
    frames: int,
    size: int,
    steps: int = 20,
    guidance: float | None = None,
    seed: int = 0,
    batch: int = 16,
) -> dict[str, float]:
    """Generate one clip per prompt (seeds ``seed + i``) and summarise the oracle's verdicts."""
    from pisces_cli.backbones.sampling import generate

    verdicts = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        pixels = generate(
            adapter, chunk, num_frames=frames, height=size, width=size, steps=steps,
            guidance=guidance, seeds=seed + start, sampler="euler",
        )  # fmt: skip
        for clip, text in zip(pixels_to_uint8(pixels), chunk, strict=True):
            verdicts.append(judge(clip, text))
    return summarize_verdicts(verdicts)
