"""Training data of the world encoder: clips, captions and hard-negative captions (wrong color / count / direction)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from pisces_cli.errors import UsageError
from pisces_cli.world import SceneSpec, caption, make_clips
from pisces_cli.world.spec import DIRECTIONS, OBJECT_COLORS, OPPOSITE_DIRECTION

#: Attribute corruptions whose re-captioned spec gives a hard negative caption.
HARD_NEGATIVE_KINDS: tuple[str, ...] = ("wrong_color", "wrong_count", "wrong_direction")


@dataclass
class EncoderData:
    """``pixels [N, T, 3, S, S]`` in [0, 1] (float32), ``captions [N]``, ``negatives [N][K]`` hard-negative captions."""

    pixels: torch.Tensor
    captions: list[str]
    negatives: list[list[str]]


def corrupted_spec(spec: SceneSpec, kind: str, rng: np.random.Generator) -> SceneSpec | None:
    """A copy of ``spec`` with one random group's color, count or direction changed (caption-level edit).

    Same semantics as the world's attribute corruptions (:mod:`pisces_cli.world.corrupt`): a new color no group
    uses; one instance more (or fewer when the group has several, at random); the opposite direction (a still
    group starts moving). Only attributes change (nothing is re-rendered), so this is cheap; ``None`` when the
    edit leaves the scene without objects.
    """
    edited = copy.deepcopy(spec)
    group = edited.groups[int(rng.integers(0, len(edited.groups)))]
    if kind == "wrong_color":
        used = {g.color for g in edited.groups}
        free = [c for c in OBJECT_COLORS if c not in used]
        group.color = free[int(rng.integers(0, len(free)))]
    elif kind == "wrong_count":
        if group.count > 1 and rng.random() < 0.5:
            group.starts = group.starts[:-1]
        elif group.count < 3:
            group.starts = [*group.starts, group.starts[-1]]
        else:
            group.starts = group.starts[:-1]
    elif kind == "wrong_direction":
        if group.direction in OPPOSITE_DIRECTION:
            group.direction = OPPOSITE_DIRECTION[group.direction]
        else:
            moving = [d for d in DIRECTIONS if d != "still"]
            group.direction = moving[int(rng.integers(0, len(moving)))]
    else:
        raise UsageError(f"world encoder data: unknown hard-negative kind {kind!r}")
    return edited if any(g.count > 0 for g in edited.groups) else None


def hard_negative_captions(spec: SceneSpec, seed: int, index: int) -> list[str]:
    """One caption per kind in :data:`HARD_NEGATIVE_KINDS`: the caption of :func:`corrupted_spec`.

    The edited spec is captioned with a fresh paraphrase draw, so wording alone does not reveal it.
    """
    out = []
    for k, kind in enumerate(HARD_NEGATIVE_KINDS):
        rng = np.random.default_rng([int(seed), int(index), 7, k])
        edited = corrupted_spec(spec, kind, rng)
        if edited is not None:
            out.append(caption(edited, rng))
    return out


def build_encoder_data(seed: int, n: int, frames: int, size: int, negatives: bool = True) -> EncoderData:
    """``n`` world clips of ``seed`` (``make_clips``) with their captions and (optionally) hard negatives."""
    clips = make_clips(seed, n, frames=frames, size=size)
    pixels = torch.from_numpy(np.stack([f for f, _, _ in clips])).permute(0, 1, 4, 2, 3).float() / 255.0
    hard = [
        hard_negative_captions(spec, seed, i) if negatives else [] for i, (_, _, spec) in enumerate(clips)
    ]
    return EncoderData(pixels=pixels.contiguous(), captions=[t for _, t, _ in clips], negatives=hard)
