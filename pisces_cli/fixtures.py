"""Offline fixtures: folders of synthetic captioned clips and tiny models, for tests and the demo.

Clips come from the synthetic world (:mod:`pisces_cli.world`): coloured shapes moving on simple
backgrounds with matching captions ("a red circle moves left"), deterministic from a seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class ClipRecord:
    file: str
    prompt: str
    seed: int


def render_world_clips(seed: int, n: int, *, frames: int = 8, size: int = 32, fps: float = 8.0):
    """``n`` (frames uint8 [T, H, W, 3], caption, spec) triples of the synthetic world."""
    from pisces_cli.world.captions import caption
    from pisces_cli.world.render import render
    from pisces_cli.world.sample import SamplingConfig, sample_scenes

    config = SamplingConfig(frames=frames, size=size, fps=fps)
    rng = np.random.default_rng(seed + 7919)
    out = []
    for spec in sample_scenes(seed, n, config):
        out.append((render(spec), caption(spec, rng), spec))
    return out


def write_clip_folder(
    folder: str | Path,
    n: int,
    *,
    seed: int = 0,
    frames: int = 8,
    size: int = 32,
    fps: float = 8.0,
    prompt_style: str = "jsonl",
) -> list[ClipRecord]:
    """Write ``n`` world clips as ``clip_000.mp4``… with their prompts; returns the records.

    ``prompt_style``: ``jsonl`` (a ``prompts.jsonl`` mapping), ``sidecar`` (``NAME.txt`` per video) or
    ``none`` (no prompts written).
    """
    from pisces_cli.io.writer import write_mp4

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (clip, text, _spec) in enumerate(render_world_clips(seed, n, frames=frames, size=size, fps=fps)):
        name = f"clip_{i:03d}.mp4"
        write_mp4(folder / name, clip, fps)
        if prompt_style == "sidecar":
            (folder / f"clip_{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
        records.append(ClipRecord(name, text, seed))
    if prompt_style == "jsonl":
        lines = [json.dumps({"file": r.file, "prompt": r.prompt}) for r in records]
        (folder / "prompts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return records
