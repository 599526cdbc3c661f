"""Quality measures of world clips, each in [0, 1].

* flicker -- global brightness jumps between consecutive frames (amount, 0 = none);
* frozen fraction -- share of consecutive frame pairs that are identical (amount);
* stability -- constancy of each color's visible area over time, occlusions excluded (score);
* motion smoothness -- constancy of each moving color's centroid steps (score);
* sharpness -- anti-aliased edge width of the objects (score);
* noise level -- robust pixel-noise estimate in levels (turned into a cleanliness score by the oracle).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pisces_cli.world.vision import (
    COLOR_NAMES,
    MIN_AREA_FRACTION,
    MIN_COVERAGE,
    STILL_SPEED_AT_32,
    ObservedGroup,
)

#: Brightness step (levels) that counts as full flicker.
FLICKER_FULL_LEVELS = 80.0
#: Anti-aliased edge width (pixels) of clean renders and the extra width that zeroes sharpness.
CLEAN_EDGE_WIDTH, BLURRY_EXTRA_WIDTH = 1.3, 5.0

_LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


def flicker_amount(frames: np.ndarray) -> float:
    """Global brightness jumps: ``|median_pixels(luma_t - luma_{t-1})|`` averaged over frame pairs,
    divided by :data:`FLICKER_FULL_LEVELS` and clipped to [0, 1]. The median ignores moving objects
    (few pixels) and zero-mean noise."""
    if frames.shape[0] < 2:
        return 0.0
    luma = frames.astype(np.float32) @ _LUMA  # [T, H, W]
    steps = np.abs(np.median(np.diff(luma, axis=0).reshape(frames.shape[0] - 1, -1), axis=1))
    return float(np.clip(steps.mean() / FLICKER_FULL_LEVELS, 0.0, 1.0))


def frozen_fraction(frames: np.ndarray) -> float:
    """Fraction of consecutive frame pairs that are (nearly) identical, 0 if every pair is (a static clip)."""
    if frames.shape[0] < 2:
        return 0.0
    diffs = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
    frozen = diffs < 0.05
    return 0.0 if frozen.all() else float(frozen.mean())


def stability(coverage: np.ndarray, groups: list[ObservedGroup]) -> float:
    """Mean over observed colors of ``1 - mean_t |A_t - median A| / median A`` (A = coverage area).

    Frames where the color touches another color (an occlusion, not an instability) are left out.
    """
    present = coverage > MIN_COVERAGE  # [K, T, H, W]
    any_present = present.sum(axis=0)  # [T, H, W]
    scores = []
    for group in groups:
        k = COLOR_NAMES.index(group.color)
        grown = ndimage.binary_dilation(present[k], structure=np.ones((1, 3, 3), dtype=bool))
        others = (any_present - present[k]) > 0
        unoccluded = ~(grown & others).any(axis=(1, 2))
        areas = coverage[k].sum(axis=(1, 2))[unoccluded]
        if areas.size == 0:
            continue
        reference = max(float(np.median(areas)), 1e-6)
        scores.append(1.0 - min(1.0, float(np.abs(areas - reference).mean()) / reference))
    return float(np.mean(scores)) if scores else 1.0


def motion_smoothness(tracks: dict[str, np.ndarray], groups: list[ObservedGroup], frame_size: int) -> float:
    """Mean over moving colors of ``1 - mean |step - mean step| / |mean step|`` of centroid steps."""
    scores = []
    still = STILL_SPEED_AT_32 * frame_size / 32.0
    for group in groups:
        track = tracks[group.color]
        steps = np.diff(track, axis=0)
        steps = steps[np.isfinite(steps).all(axis=1)]
        if len(steps) < 2:
            continue
        mean_step = steps.mean(axis=0)
        if np.hypot(*mean_step) < still:
            continue
        deviation = np.linalg.norm(steps - mean_step, axis=1).mean() / np.hypot(*mean_step)
        scores.append(1.0 - min(1.0, float(deviation)))
    return float(np.mean(scores)) if scores else 1.0


def sharpness(coverage: np.ndarray, frame_size: int) -> float:
    """Score from the mean edge width: partial-coverage pixels per unit of edge length.

    Only pixels within 4 px of a solid object (coverage >= 0.5, area above the speck limit) count,
    so isolated noise specks do not read as blur.
    """
    total = coverage.sum(axis=0)  # [T, H, W]
    solid = total >= 0.5
    in_frame = np.zeros((3, 3, 3), dtype=bool)
    in_frame[1] = True  # 8-connectivity within a frame, none across frames
    labels, _ = ndimage.label(solid, structure=in_frame)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    big = sizes[labels] >= MIN_AREA_FRACTION * frame_size * frame_size
    near = ndimage.binary_dilation(big, structure=np.ones((1, 3, 3), dtype=bool), iterations=4)
    total = np.where(near, total, 0.0)
    partial = float(((total > 0.05) & (total < 0.95)).sum())
    grad_y, grad_x = np.gradient(total, axis=(1, 2))
    length = float(np.hypot(grad_x, grad_y).sum())
    if length < 1.0:
        return 1.0
    width = partial / length
    return float(1.0 - np.clip((width - CLEAN_EDGE_WIDTH) / BLURRY_EXTRA_WIDTH, 0.0, 1.0))


def noise_level(frames: np.ndarray) -> float:
    """Robust pixel-noise std estimate in levels: 1.4826 x median |luma - 3x3 median(luma)|.

    Clean renders differ from their median filter only on edges (a small minority of pixels),
    so the estimate is ~0; i.i.d. noise of std s gives roughly s.
    """
    luma = frames.astype(np.float32) @ _LUMA  # [T, H, W]
    smoothed = ndimage.median_filter(luma, size=(1, 3, 3), mode="nearest")
    return float(1.4826 * np.median(np.abs(luma - smoothed)))
