"""Deterministic text-to-video sampling (used by ``generate`` and by validation during training).

Two samplers:

- ``"scheduler"`` (the default): the checkpoint's own scheduler, built fresh from its saved config (Wan's released
  checkpoints ship UniPC multistep with a flow shift, HunyuanVideo flow-match Euler), with its timesteps set the way
  the backbone's diffusers pipeline sets them. With the same noise, prompts and guidance this is the diffusers
  pipeline run unchanged.
- ``"euler"``: the Euler ODE over :func:`~pisces_cli.backbones.schedule.sigma_grid` (``σ = shift(linspace(1, 0,
  steps + 1))``), the grid GRPO rollouts use. For HunyuanVideo it is the same grid as its scheduler.
"""

from __future__ import annotations

import torch

from pisces_cli.backbones.base import BackboneAdapter, PromptEmbeds
from pisces_cli.backbones.schedule import sigma_grid
from pisces_cli.backbones.sde import euler_step
from pisces_cli.errors import UsageError

SAMPLERS = ("scheduler", "euler")


def initial_noise(
    adapter: BackboneAdapter, seeds: list[int], num_frames: int, height: int, width: int
) -> torch.Tensor:
    """``[B, C, F_lat, h, w]`` fp32 noise; sample ``b`` is drawn on CPU from ``torch.Generator().manual_seed(seeds[b])``."""
    shape = adapter.latent_shape(num_frames, height, width)
    noises = [torch.randn(shape, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
    return torch.stack(noises).to(adapter.device)


def checkpoint_scheduler(adapter: BackboneAdapter, shift: float | None = None):
    """A fresh scheduler built from the checkpoint's scheduler config; ``shift`` (if given) replaces its flow
    shift (``flow_shift`` for UniPC, ``shift`` for flow-match Euler)."""
    source = adapter.pipeline.scheduler
    overrides = {}
    if shift is not None:
        key = next((k for k in ("flow_shift", "shift") if k in source.config), None)
        if key is None:
            raise UsageError(
                f"the checkpoint's {type(source).__name__} has no flow shift to set; "
                "leave generate.shift unset or use generate.sampler=euler"
            )
        overrides[key] = float(shift)
    return type(source).from_config(source.config, **overrides)


def describe_sampler(adapter: BackboneAdapter, sampler: str, shift: float | None) -> str:
    """One line naming the sampler and its shift (for manifests and logs)."""
    check_sampler(sampler)
    effective = adapter.scheduler_shift() if shift is None else float(shift)
    if sampler == "euler":
        return f"euler-ode over sigma_grid(steps, shift {effective:g})"
    name = type(adapter.pipeline.scheduler).__name__
    return f"{name} from the checkpoint's scheduler config (shift {effective:g})"


def check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise UsageError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")


@torch.no_grad()
def sample_latents(
    adapter: BackboneAdapter,
    embeds: PromptEmbeds,
    noise: torch.Tensor,
    *,
    steps: int,
    shift: float | None = None,
    guidance: float | None = None,
    sampler: str = "scheduler",
) -> torch.Tensor:
    """Denoise ``noise`` ``[B, C, F, h, w]`` (fp32) into clean latents of the same shape (fp32), ``embeds`` with B rows."""
    check_sampler(sampler)
    latents = noise.float()
    if sampler == "euler":
        grid = sigma_grid(steps, adapter.scheduler_shift() if shift is None else shift).tolist()
        for sigma, sigma_next in zip(grid[:-1], grid[1:]):
            velocity = adapter.predict_velocity(latents, sigma, embeds, guidance=guidance)
            latents = euler_step(velocity, latents, sigma, sigma_next)
        return latents
    scheduler = checkpoint_scheduler(adapter, shift)
    adapter.set_scheduler_timesteps(scheduler, steps, latents.device)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    train_timesteps = float(scheduler.config.get("num_train_timesteps", 1000))
    for timestep in scheduler.timesteps:
        sigma = float(timestep) / train_timesteps
        velocity = adapter.predict_velocity(latents, sigma, embeds, guidance=guidance)
        latents = scheduler.step(velocity, timestep, latents, return_dict=False)[0]
    return latents.float()


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
    sampler: str = "scheduler",
) -> torch.Tensor:
    """Sample one video per prompt → pixels ``[B, T, 3, H, W]`` in [0, 1] (fp32).

    ``seeds``: one per prompt, or an int ``s`` meaning ``s, s+1, …``; each sample's noise depends only on its seed,
    so a video is reproducible regardless of the batch it was generated in (up to kernel batching effects).
    ``shift`` defaults to the checkpoint's scheduler config, ``guidance`` to the adapter's. ``sampler``: see the
    module docstring.
    """
    check_sampler(sampler)
    if not prompts:
        raise UsageError("generate needs at least one prompt")
    if isinstance(seeds, int):
        seeds = [seeds + index for index in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise UsageError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    embeds = prompt_embeds if prompt_embeds is not None else adapter.encode_prompts(prompts)
    noise = initial_noise(adapter, seeds, num_frames, height, width)
    latents = sample_latents(
        adapter, embeds, noise, steps=steps, shift=shift, guidance=guidance, sampler=sampler
    )
    return adapter.decode(latents, grad=False, checkpoint=False, tiling=decode_tiling)
