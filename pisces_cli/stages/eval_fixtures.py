"""Synthetic clips with known temporal properties (static, hard cut, flicker, pan) for tests of ``pisces eval``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

SIZE = 64
FRAMES = 16
FPS = 8.0


def texture(seed: int, size: int = SIZE) -> np.ndarray:
    """A smooth random colour texture, uint8 ``[size, size, 3]`` (8-px blocks, Gaussian-blurred)."""
    rng = np.random.default_rng(seed)
    blocks = rng.uniform(0, 255, (size // 8, size // 8, 3))
    image = ndimage.gaussian_filter(np.kron(blocks, np.ones((8, 8, 1))), (1.5, 1.5, 0))
    return image.astype(np.uint8)


def static_clip(seed: int = 0) -> np.ndarray:
    """The same frame ``FRAMES`` times: consistency 1, no flow, no flicker."""
    return np.stack([texture(seed)] * FRAMES)


def cut_clip(seed: int = 0) -> np.ndarray:
    """A hard cut halfway between two unrelated textures."""
    half = FRAMES // 2
    return np.stack([texture(seed)] * half + [texture(seed + 100)] * (FRAMES - half))


def flicker_clip(seed: int = 0, amplitude: int = 40) -> np.ndarray:
    """The static texture with brightness alternating by ±``amplitude`` levels."""
    base = texture(seed).astype(np.int32)
    frames = [np.clip(base + (amplitude if t % 2 else -amplitude), 0, 255) for t in range(FRAMES)]
    return np.stack(frames).astype(np.uint8)


def moving_clip(seed: int = 0, step_px: int = 4) -> np.ndarray:
    """A texture panning ``step_px`` pixels per frame (well above the 1.5-px dynamic threshold at 64 px)."""
    wide = texture(seed + 7, size=2 * SIZE)
    return np.stack([np.roll(wide, step_px * t, axis=1)[:SIZE, :SIZE] for t in range(FRAMES)])


def write_folder(folder: Path, clips: dict[str, np.ndarray], prompts: dict[str, str] | None = None) -> Path:
    """Write ``{name}.mp4`` per clip (+ ``prompts.jsonl`` when ``prompts`` is given)."""
    from pisces_cli.io.writer import write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    for name, frames in clips.items():
        write_mp4(folder / f"{name}.mp4", frames, FPS)
    if prompts is not None:
        lines = [json.dumps({"file": f"{name}.mp4", "prompt": text}) for name, text in prompts.items()]
        (folder / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return folder
