"""Deterministic Euler-ODE text-to-video sampling over :func:`sigma_grid` (used by the ``generate`` stage)."""

from __future__ import annotations

import torch

from pisces_cli.backbones.base import BackboneAdapter, PromptEmbeds
from pisces_cli.backbones.schedule import sigma_grid
from pisces_cli.backbones.sde import euler_step
from pisces_cli.errors import UsageError


def initial_noise(
    adapter: BackboneAdapter, seeds: list[int], num_frames: int, height: int, width: int
) -> torch.Tensor:
    """``[B, C, F_lat, h, w]`` fp32 noise; sample ``b`` is drawn on CPU from ``torch.Generator().manual_seed(seeds[b])``."""
    shape = adapter.latent_shape(num_frames, height, width)
    noises = [torch.randn(shape, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
    return torch.stack(noises).to(adapter.device)


@torch.no_grad()
def generate(
    adapter: BackboneAdapter,
    prompts: list[str],
    *,
    num_frames: int,
    height: int,
    width: int,
    steps: int,
    shift: float | None = None,
    guidance: float | None = None,
    seeds: list[int] | int = 0,
    prompt_embeds: PromptEmbeds | None = None,
    decode_tiling: bool = False,
) -> torch.Tensor:
    """Sample one video per prompt → pixels ``[B, T, 3, H, W]`` in [0, 1] (fp32).

    ``seeds``: one per prompt, or an int ``s`` meaning ``s, s+1, …``; each sample's noise depends only on its seed,
    so a video is reproducible regardless of the batch it was generated in (up to kernel batching effects).
    ``shift``/``guidance`` default to the adapter's. Steps follow ``sigma_grid(steps, shift)`` with the Euler ODE.
    """
    if not prompts:
        raise UsageError("generate needs at least one prompt")
    if isinstance(seeds, int):
        seeds = [seeds + index for index in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise UsageError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    embeds = prompt_embeds if prompt_embeds is not None else adapter.encode_prompts(prompts)
    latents = initial_noise(adapter, seeds, num_frames, height, width)
    grid = sigma_grid(steps, adapter.default_shift if shift is None else shift).tolist()
    for sigma, sigma_next in zip(grid[:-1], grid[1:]):
        velocity = adapter.predict_velocity(latents, sigma, embeds, guidance=guidance)
        latents = euler_step(velocity, latents, sigma, sigma_next)
    return adapter.decode(latents, grad=False, checkpoint=False, tiling=decode_tiling)
