"""Synthetic video world: seeded scenes, renderer, captions, corruptions and a rule-based oracle.

Pure numpy/scipy. Typical use::

    from pisces_cli.world import make_clips, judge
    for frames, text, spec in make_clips(seed=0, n=4, frames=8, size=32):
        verdict = judge(frames, text)   # frames: uint8 [T, H, W, 3]
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pisces_cli.world.captions import (
    CaptionClaims,
    ObjectClaim,
    caption,
    caption_with_claims,
    parse_caption,
    world_vocabulary,
)
from pisces_cli.world.corrupt import CORRUPTION_KINDS, CorruptionRecord, corrupt
from pisces_cli.world.oracle import OracleVerdict, judge
from pisces_cli.world.render import render
from pisces_cli.world.sample import SamplingConfig, sample_scene, sample_scenes
from pisces_cli.world.spec import ObjectGroup, SceneSpec

__all__ = [
    "CORRUPTION_KINDS",
    "CaptionClaims",
    "CorruptionRecord",
    "ObjectClaim",
    "ObjectGroup",
    "OracleVerdict",
    "SamplingConfig",
    "SceneSpec",
    "caption",
    "caption_with_claims",
    "corrupt",
    "judge",
    "make_clips",
    "parse_caption",
    "render",
    "sample_scene",
    "sample_scenes",
    "world_vocabulary",
]


def make_clips(
    seed: int,
    n: int,
    *,
    frames: int | None = None,
    size: int | None = None,
    paraphrase: bool = True,
    config: SamplingConfig | None = None,
) -> list[tuple[np.ndarray, str, SceneSpec]]:
    """``n`` deterministic ``(frames uint8 [T, H, W, 3], caption, spec)`` triples.

    ``frames`` / ``size`` override the config's clip length (8..16) and side (32 or 64 px).
    Clip ``i`` depends only on ``(seed, i)`` and the arguments, not on ``n``.
    """
    config = config or SamplingConfig()
    if frames is not None or size is not None:
        config = dataclasses.replace(
            config,
            frames=frames if frames is not None else config.frames,
            size=size if size is not None else config.size,
        )
    clips = []
    for index, spec in enumerate(sample_scenes(seed, n, config)):
        text = caption(spec, np.random.default_rng([int(seed), index, 1]), paraphrase=paraphrase)
        clips.append((render(spec), text, spec))
    return clips
