"""Train the world generator: flow matching of pixel clips conditioned on world captions (CPU, minutes).

Data: ``make_clips(seed, clips, frames=frames, size=size)`` rendered once; pixels ``x`` in [-1, 1] are the
raw latents of the identity VAE, normalised per channel ``z = (x - mean_c) / std_c`` as the Wan adapter does.
Captions go through the frozen tiny UMT5 once (``WanPipeline.encode_prompt``); a caption is replaced by the
empty prompt with probability ``caption_dropout`` (classifier-free guidance).

Objective (docs/backbones.md conventions): ``sigma = shift(u, shift)`` with ``u ~ U(0, 1)``,
``z_sigma = sigma * eps + (1 - sigma) * z``; the network predicts the clean clip and the loss is
``|| x0_theta(z_sigma, 1000 sigma, text) - z ||^2`` (its velocity ``(z_sigma - x0_theta) / sigma`` is what
sampling uses, see :mod:`pisces_cli.world.generator.transformer`).
AdamW with linear warm-up and cosine decay; the whole run is a function of ``seed`` (and the thread count).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pisces_cli.backbones.schedule import shift_sigma
from pisces_cli.errors import UsageError
from pisces_cli.world import make_clips
from pisces_cli.world.generator.pipeline import GeneratorArchitecture, build_pipeline, save_pipeline
from pisces_cli.world.training_loop import LossLog, optimizer_step, warmup_cosine


@dataclass(frozen=True)
class GeneratorTraining:
    """Hyper-parameters of :func:`train_world_generator`."""

    seed: int = 0
    steps: int = 1500
    clips: int = 1024
    frames: int = 9
    size: int = 32
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 50
    shift: float = 3.0
    caption_dropout: float = 0.1
    guidance: float = 1.0
    threads: int | None = None


def clips_to_pixels(frames: list[np.ndarray]) -> torch.Tensor:
    """uint8 clips ``[T, H, W, 3]`` → VAE input ``[N, 3, T, H, W]`` float32 in [-1, 1]."""
    stacked = torch.from_numpy(np.stack(frames)).float() / 127.5 - 1.0  # [N, T, H, W, 3]
    return stacked.permute(0, 4, 1, 2, 3).contiguous()


@torch.no_grad()
def encode_captions(
    pipeline, captions: list[str], max_sequence_length: int, batch: int = 256
) -> torch.Tensor:
    """``[N, L, text_dim]`` zero-padded UMT5 embeddings, exactly as ``WanAdapter.encode_prompts`` computes them."""
    parts = []
    for start in range(0, len(captions), batch):
        embeds, _ = pipeline.encode_prompt(
            prompt=captions[start : start + batch],
            do_classifier_free_guidance=False,
            max_sequence_length=max_sequence_length,
            device=torch.device("cpu"),
            dtype=torch.float32,
        )
        parts.append(embeds)
    return torch.cat(parts)


def train_world_generator(
    out_dir: str | Path,
    *,
    seed: int = 0,
    steps: int = 1500,
    clips: int = 1024,
    frames: int = 9,
    size: int = 32,
    batch_size: int = 16,
    lr: float = 1e-3,
    caption_dropout: float = 0.1,
    guidance: float = 1.0,
    threads: int | None = None,
    architecture: GeneratorArchitecture | None = None,
    log_every: int = 100,
    progress: Any = None,
) -> dict[str, Any]:
    """Train the tiny pixel-space Wan generator on world clips and save it as a diffusers directory.

    Args:
        out_dir: directory to write (``model_index.json``, ``transformer/``, ``vae/``, ``text_encoder/``,
            ``tokenizer/``, ``scheduler/``, ``pisces_backbone.json``, ``world_generator.json``).
        seed: seeds the data (``make_clips(seed, ...)``), the initial weights and the noise stream.
        steps: optimiser steps. clips: training clips. frames / size: clip geometry (``frames = 4k + 1``, as the
            Wan VAE's chunked encoder needs; side a multiple of the patch).
        batch_size: clips per step. lr: peak AdamW learning rate.
        caption_dropout: probability of training on the empty prompt (enables CFG at sampling).
        guidance: default guidance written to the hints (1.0 = no CFG).
        threads: ``torch.set_num_threads`` for the run (``None`` keeps the current setting).
        architecture: model sizes (default :class:`GeneratorArchitecture`).
        log_every: steps between loss records. progress: optional ``callable(step, loss)``.

    Returns:
        metrics: ``loss_first`` / ``loss_last`` (mean of the first / last ``log_every`` steps), ``losses``
        (per-``log_every`` means), ``train_seconds``, ``steps``, the configuration.
    """
    if steps < 1 or clips < 1 or batch_size < 1:
        raise UsageError(
            f"train_world_generator: steps, clips and batch_size must be >= 1, got {steps}, {clips}, {batch_size}"
        )
    arch = architecture or GeneratorArchitecture()
    if (frames - 1) % 4:
        raise UsageError(
            f"train_world_generator: frames={frames}; the Wan VAE encodes 4k+1 frames (e.g. 9 or 13)"
        )
    if size % arch.patch:
        raise UsageError(f"train_world_generator: size {size} must be a multiple of the patch {arch.patch}")
    if threads is not None:
        torch.set_num_threads(int(threads))
    config = GeneratorTraining(
        seed=seed, steps=steps, clips=clips, frames=frames, size=size, batch_size=batch_size, lr=lr,
        caption_dropout=caption_dropout, guidance=guidance, threads=threads,
    )  # fmt: skip
    started = time.perf_counter()
    data = make_clips(seed, clips, frames=frames, size=size)
    pixels = clips_to_pixels([frames_ for frames_, _, _ in data])
    captions = [text for _, text, _ in data]
    mean = pixels.mean(dim=(0, 2, 3, 4))
    std = pixels.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    latents = (pixels - mean.view(1, 3, 1, 1, 1)) / std.view(1, 3, 1, 1, 1)

    pipeline = build_pipeline(arch, seed=seed, latents_mean=mean.tolist(), latents_std=std.tolist())
    text = encode_captions(pipeline, captions, arch.max_sequence_length)
    empty = encode_captions(pipeline, [""], arch.max_sequence_length)[0]
    data_seconds = time.perf_counter() - started

    transformer = pipeline.transformer.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, steps, config.warmup, floor=0.1)
    )
    generator = torch.Generator().manual_seed(seed + 12345)
    log = LossLog(log_every, steps)
    loop_started = time.perf_counter()
    cpu_started = time.process_time()
    for step in range(steps):
        index = torch.randint(0, clips, (batch_size,), generator=generator)
        x0 = latents[index]
        cond = text[index].clone()
        drop = torch.rand(batch_size, generator=generator) < caption_dropout
        cond[drop] = empty
        noise = torch.randn(x0.shape, generator=generator)
        sigma = shift_sigma(
            torch.rand(batch_size, generator=generator, dtype=torch.float64), config.shift
        ).float()
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = s * noise + (1.0 - s) * x0
        clean = transformer.predict_clean(noisy, 1000.0 * sigma, cond)
        loss = torch.nn.functional.mse_loss(clean, x0)
        loss_value = optimizer_step(loss, transformer.parameters(), optimizer, scheduler)
        log.add(step, loss_value)
        if progress is not None:
            progress(step, loss_value)
    train_seconds = time.perf_counter() - loop_started
    train_cpu_seconds = time.process_time() - cpu_started
    transformer.eval().requires_grad_(False)
    metrics = {
        "config": asdict(config),
        "architecture": asdict(arch),
        "steps": steps,
        "losses": log.means,
        "loss_first": log.means[0],
        "loss_last": log.means[-1],
        "data_seconds": data_seconds,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "seconds_per_step": train_seconds / steps,
        "parameters": sum(p.numel() for p in transformer.parameters()),
    }
    save_pipeline(pipeline, out_dir, arch, guidance=guidance, extra={"training": metrics})
    return metrics
