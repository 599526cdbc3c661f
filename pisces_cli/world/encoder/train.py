"""Train the world encoder on world clips (CPU, minutes): contrastive + matching with hard negatives.

Per step, ``B`` clips and their captions:

* contrastive (symmetric InfoNCE): ``logits = exp(s) · cos(v_i, t_j)`` over the batch, cross-entropy both ways;
* matching (2-way cross-entropy on ``itm_head``): each clip against its caption (label 1), against one of its
  hard-negative captions (wrong color / count / direction, label 0) and against the in-batch caption most
  similar to it under the current global embeddings (label 0).

Held-out evaluation (``eval_clips`` clips drawn with ``seed + 1``): text→video and video→text top-1 retrieval
among all ``eval_clips`` candidates by global cosine, and the matching head's pairwise accuracy
``P(match | caption) > P(match | hard negative)`` per corruption kind. Deterministic given ``seed`` and the
thread count.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pisces_cli.errors import UsageError
from pisces_cli.world import caption, make_clips
from pisces_cli.world.encoder.checkpoint import save_world_encoder
from pisces_cli.world.encoder.data import HARD_NEGATIVE_KINDS, EncoderData, build_encoder_data, corrupted_spec
from pisces_cli.world.encoder.model import WorldEncoder, WorldEncoderConfig
from pisces_cli.world.encoder.tokenizer import WordTokenizer
from pisces_cli.world.training_loop import LossLog, optimizer_step, warmup_cosine


def _normalise(pixels: torch.Tensor, config: WorldEncoderConfig) -> torch.Tensor:
    mean = torch.tensor(config.mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 1, 3, 1, 1)
    return (pixels - mean) / std


@torch.no_grad()
def evaluate_encoder(
    model: WorldEncoder, tokenizer: WordTokenizer, data: EncoderData, seed: int, batch: int = 32
) -> dict[str, float]:
    """Retrieval top-1 (t2v, v2t) over all clips of ``data`` and hard-negative matching accuracy per kind.

    ``data`` must be ``build_encoder_data(seed, n, frames, size)`` (the scene specs are re-drawn from ``seed`` to
    build the hard negatives).
    """
    model.eval()
    config = model.config
    n = len(data.captions)
    videos, tokens_all = [], []
    for start in range(0, n, batch):
        tokens, global_video, _ = model.encode_video(_normalise(data.pixels[start : start + batch], config))
        videos.append(global_video)
        tokens_all.append(tokens)
    video = F.normalize(torch.cat(videos), dim=-1)
    encoded = tokenizer.encode(data.captions, config.max_text_length)
    states, global_text = model.encode_text(encoded.input_ids, encoded.attention_mask)
    text = F.normalize(global_text, dim=-1)
    similarity = text @ video.T  # [N captions, N clips]
    target = torch.arange(n)
    metrics = {
        "retrieval_candidates": float(n),
        "t2v_top1": float((similarity.argmax(dim=1) == target).float().mean()),
        "v2t_top1": float((similarity.argmax(dim=0) == target).float().mean()),
        "retrieval_chance": 1.0 / n,
    }
    tokens = torch.cat(tokens_all)
    positive = model.match_probability(states, encoded.attention_mask, tokens)
    metrics["itm_positive_mean"] = float(positive.mean())
    specs = [spec for _, _, spec in make_clips(seed, n, frames=data.pixels.shape[1], size=config.size)]
    wins_all = []
    for k, kind in enumerate(HARD_NEGATIVE_KINDS):
        rows, captions = [], []
        for i, spec in enumerate(specs):
            edited = corrupted_spec(spec, kind, np.random.default_rng([seed, i, 99, k]))
            if edited is not None:
                rows.append(i)
                captions.append(caption(edited, np.random.default_rng([seed, i, 98, k])))
        neg = tokenizer.encode(captions, config.max_text_length)
        neg_states, _ = model.encode_text(neg.input_ids, neg.attention_mask)
        negative = model.match_probability(neg_states, neg.attention_mask, tokens[rows])
        wins = (positive[rows] > negative).float()
        wins_all.append(wins)
        metrics[f"itm_vs_{kind}"] = float(wins.mean())
    metrics["itm_hard_negative_accuracy"] = float(torch.cat(wins_all).mean())
    return metrics


def train_world_encoder(
    out_dir: str | Path,
    *,
    seed: int = 0,
    steps: int = 600,
    clips: int = 1024,
    frames: int = 9,
    size: int = 32,
    batch_size: int = 32,
    lr: float = 2e-3,
    eval_clips: int = 32,
    threads: int | None = None,
    config: WorldEncoderConfig | None = None,
    log_every: int = 50,
    progress: Any = None,
) -> dict[str, Any]:
    """Train the world encoder and save it to ``out_dir`` (``config.json``, ``model.safetensors``, ``vocab.json``).

    Args:
        out_dir: checkpoint directory to write.
        seed: seeds the training clips (``make_clips(seed, clips)``), weights and batches; held-out clips use
            ``seed + 1``.
        steps: optimiser steps. clips: training clips. frames / size: clip geometry in frames / pixels.
        batch_size: clips per step. lr: peak AdamW learning rate (warm-up then cosine decay).
        eval_clips: held-out clips for retrieval (the candidate count) and matching accuracy (0 skips it).
        threads: ``torch.set_num_threads`` for the run (``None`` keeps the current setting).
        config: model sizes (default :class:`WorldEncoderConfig` with the world vocabulary and ``size``).
        log_every: steps per recorded loss mean. progress: optional ``callable(step, loss)``.

    Returns:
        metrics: ``losses`` (means per ``log_every`` steps), ``loss_first`` / ``loss_last``,
        ``train_seconds``, ``data_seconds`` and the held-out metrics of :func:`evaluate_encoder`.
    """
    if steps < 1 or clips < 2 or batch_size < 2:
        raise UsageError(
            f"train_world_encoder: need steps >= 1, clips >= 2, batch_size >= 2; got {steps}, {clips}, {batch_size}"
        )
    if threads is not None:
        torch.set_num_threads(int(threads))
    tokenizer = WordTokenizer.for_world()
    config = config or WorldEncoderConfig(vocab_size=len(tokenizer), size=size)
    if config.vocab_size != len(tokenizer) or config.size != size:
        raise UsageError(
            "train_world_encoder: config.vocab_size / config.size do not match the world tokenizer / size"
        )
    started = time.perf_counter()
    data = build_encoder_data(seed, clips, frames, size)
    data_seconds = time.perf_counter() - started
    torch.manual_seed(seed)
    model = WorldEncoder(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, min(50, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, warmup))
    generator = torch.Generator().manual_seed(seed + 4242)
    batch_size = min(batch_size, clips)
    log = LossLog(log_every, steps)
    loop_started = time.perf_counter()
    cpu_started = time.process_time()
    for step in range(steps):
        index = torch.randperm(clips, generator=generator)[:batch_size]
        pixels = _normalise(data.pixels[index], config)
        positives = [data.captions[i] for i in index.tolist()]
        negatives = []
        for i in index.tolist():
            options = data.negatives[i] or [data.captions[(i + 1) % clips]]
            negatives.append(options[int(torch.randint(0, len(options), (1,), generator=generator))])
        encoded = tokenizer.encode(positives + negatives, config.max_text_length)
        states, global_text = model.encode_text(encoded.input_ids, encoded.attention_mask)
        tokens, global_video, _ = model.encode_video(pixels)
        video = F.normalize(global_video, dim=-1)
        text = F.normalize(global_text[:batch_size], dim=-1)
        scale = model.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * video @ text.T
        target = torch.arange(batch_size)
        contrastive = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        with torch.no_grad():
            similarity = (video @ text.T).masked_fill(torch.eye(batch_size, dtype=torch.bool), -2.0)
            in_batch = similarity.argmax(dim=1)
        text_rows = torch.cat([torch.arange(2 * batch_size), in_batch])
        video_rows = torch.arange(batch_size).repeat(3)
        match_logits = model.match_logits(
            states[text_rows], encoded.attention_mask[text_rows], tokens[video_rows]
        )
        labels = torch.cat([torch.ones(batch_size), torch.zeros(2 * batch_size)]).long()
        matching = F.cross_entropy(match_logits, labels, weight=torch.tensor([1.0, 2.0]))
        loss_value = optimizer_step(contrastive + matching, model.parameters(), optimizer, schedule)
        log.add(step, loss_value)
        if progress is not None:
            progress(step, loss_value)
    train_seconds = time.perf_counter() - loop_started
    train_cpu_seconds = time.process_time() - cpu_started
    model.eval().requires_grad_(False)
    save_world_encoder(model, tokenizer, out_dir)
    metrics: dict[str, Any] = {
        "config": config.to_dict(),
        "seed": seed,
        "steps": steps,
        "clips": clips,
        "frames": frames,
        "batch_size": batch_size,
        "lr": lr,
        "losses": log.means,
        "loss_first": log.means[0],
        "loss_last": log.means[-1],
        "data_seconds": data_seconds,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "seconds_per_step": train_seconds / steps,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if eval_clips > 1:
        held_out = build_encoder_data(seed + 1, eval_clips, frames, size, negatives=False)
        metrics["held_out"] = evaluate_encoder(model, tokenizer, held_out, seed + 1)
    return metrics


__all__ = ["evaluate_encoder", "train_world_encoder"]
