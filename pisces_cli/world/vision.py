"""Pixel reading of world clips: background, per-color coverage, objects and their motion.

For every palette color ``c`` and pixel ``p`` over background ``b`` the coverage is
``a = <p - b, c - b> / |c - b|^2`` and the residual is the distance of ``p`` from the line
``b -> c``; a pixel belongs to the color with the smallest residual below :data:`RESIDUAL_TOL`.
Anti-aliased edges are blends on that segment, so coverage maps are sub-pixel accurate.
Objects are the connected components of a color's coverage at frame 0; shape comes from
coverage moments, size from the extent, direction and speed from the coverage-weighted centroid
track over the frames where the color is fully visible.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pisces_cli.world.spec import OBJECT_COLORS, SIZE_FRACTION, SPEED_PX_AT_32

#: Max distance (RGB levels) of a pixel from a background->color blend segment.
RESIDUAL_TOL = 30.0
#: Coverage below this counts as empty.
MIN_COVERAGE = 0.02
#: Components smaller than this fraction of the frame area are ignored (noise specks).
MIN_AREA_FRACTION = 0.01
#: Frames where a color's total coverage is below this fraction of its maximum are occluded.
VISIBLE_FRACTION = 0.97
#: Speeds below this (pixels per frame at a 32-pixel frame) are "still".
STILL_SPEED_AT_32 = 0.2

#: Palette color names in coverage order (axis K of :func:`segment`).
COLOR_NAMES: tuple[str, ...] = tuple(OBJECT_COLORS)
_COLOR_RGB = np.asarray([OBJECT_COLORS[c] for c in COLOR_NAMES], dtype=np.float32)  # [K, 3]


@dataclass
class ObservedGroup:
    """What the oracle sees for one color: components at frame 0 and the color's motion."""

    color: str
    count: int
    shapes: list[str]
    sizes: list[str]
    direction: str | None
    speed: str | None
    velocity_px: tuple[float, float] | None
    area_px: float

    @property
    def shape(self) -> str | None:
        """Majority shape of the components."""
        return Counter(self.shapes).most_common(1)[0][0] if self.shapes else None

    @property
    def size(self) -> str | None:
        """Majority size of the components."""
        return Counter(self.sizes).most_common(1)[0][0] if self.sizes else None


# ----------------------------------------------------------------------------- segmentation


def estimate_background(frames: np.ndarray) -> np.ndarray:
    """Per-frame background color ``[T, 3]`` float32: median of the 1-pixel border ring."""
    ring = np.concatenate(
        [frames[:, 0, :, :], frames[:, -1, :, :], frames[:, 1:-1, 0, :], frames[:, 1:-1, -1, :]], axis=1
    )
    return np.median(ring.astype(np.float32), axis=1)


def segment(frames: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage of every palette color.

    ``frames``: uint8 ``[T, H, W, 3]``; ``background``: ``[T, 3]``. Returns
    ``(coverage [K, T, H, W] float32 in [0, 1], explained [T, H, W] bool)`` with K the palette
    colors in :data:`OBJECT_COLORS` order; ``explained`` marks pixels that are background or a
    background/palette blend.
    """
    n_frames, height, width, _ = frames.shape
    pixels = (frames.astype(np.float32) - background[:, None, None, :]).reshape(n_frames, height * width, 3)
    directions = _COLOR_RGB[None, :, :] - background[:, None, :]  # [T, K, 3]
    norms = np.maximum((directions**2).sum(-1), 1.0)  # [T, K]
    coverage = np.matmul(pixels, directions.transpose(0, 2, 1)) / norms[:, None, :]  # [T, HW, K]
    # Squared distance of p from the line b + a (c - b): |p|^2 - a^2 |c - b|^2.
    pixel_norm2 = (pixels**2).sum(-1)  # [T, HW]
    residual2 = np.maximum(pixel_norm2[..., None] - coverage**2 * norms[:, None, :], 0.0)
    candidate = (coverage > MIN_COVERAGE) & (coverage < 1.25) & (residual2 < RESIDUAL_TOL**2)
    residual2 = np.where(candidate, residual2, np.inf)
    best = residual2.argmin(axis=-1)  # [T, HW]
    assigned = candidate.any(axis=-1)
    owner = np.zeros_like(candidate)
    np.put_along_axis(owner, best[..., None], assigned[..., None], axis=-1)
    coverage = np.where(owner, np.clip(coverage, 0.0, 1.0), 0.0).astype(np.float32)
    coverage = np.ascontiguousarray(coverage.transpose(2, 0, 1)).reshape(-1, n_frames, height, width)
    near_background = (pixel_norm2 < RESIDUAL_TOL**2).reshape(n_frames, height, width)
    assigned = assigned.reshape(n_frames, height, width)
    return coverage, assigned | near_background


# ----------------------------------------------------------------------------- shapes


def classify_shape(coverage: np.ndarray) -> str:
    """Shape of one component from its coverage patch ``[h, w]`` (values in [0, 1]).

    Uses the fill of the extent box (area / (sum of column maxima * sum of row maxima)),
    the skewness of the y marginal (an upward triangle is strongly negative) and the mean
    kurtosis of the x/y marginals (square 1.8, circle 2.0, diamond 2.4).
    """
    area = float(coverage.sum())
    ys, xs = np.mgrid[0 : coverage.shape[0], 0 : coverage.shape[1]].astype(np.float64)
    mean_x, mean_y = (coverage * xs).sum() / area, (coverage * ys).sum() / area
    var_x = max((coverage * (xs - mean_x) ** 2).sum() / area, 1e-9)
    var_y = max((coverage * (ys - mean_y) ** 2).sum() / area, 1e-9)
    skew_y = (coverage * (ys - mean_y) ** 3).sum() / area / var_y**1.5
    kurt = 0.5 * (
        (coverage * (xs - mean_x) ** 4).sum() / area / var_x**2
        + (coverage * (ys - mean_y) ** 4).sum() / area / var_y**2
    )
    fill = area / max(coverage.max(axis=0).sum() * coverage.max(axis=1).sum(), 1e-9)
    if skew_y < -0.28:
        return "triangle"
    if fill > 0.9:
        return "square"
    if kurt > 2.2:
        return "diamond"
    return "circle"


def classify_size(coverage: np.ndarray, frame_size: int) -> str:
    """``small``/``large`` from the component's extent (sum of column/row coverage maxima)."""
    extent = max(coverage.max(axis=0).sum(), coverage.max(axis=1).sum())
    threshold = (SIZE_FRACTION["small"] + SIZE_FRACTION["large"]) * frame_size
    return "large" if extent > threshold else "small"


def _motion(
    coverage: np.ndarray, frame_size: int
) -> tuple[str | None, str | None, tuple[float, float] | None, np.ndarray]:
    """Direction, speed, velocity (px/frame) and visible-frame centroids of one color ``[T, H, W]``.

    Returns the centroids as ``[T, 2]`` (x, y) with NaN rows for occluded frames.
    """
    areas = coverage.sum(axis=(1, 2))
    centroids = np.full((coverage.shape[0], 2), np.nan)
    if areas.max() <= 0:
        return None, None, None, centroids
    visible = areas >= VISIBLE_FRACTION * areas.max()
    ys = np.arange(coverage.shape[1], dtype=np.float64) + 0.5
    xs = np.arange(coverage.shape[2], dtype=np.float64) + 0.5
    for t in np.flatnonzero(visible):
        centroids[t, 0] = (coverage[t].sum(axis=0) * xs).sum() / areas[t]
        centroids[t, 1] = (coverage[t].sum(axis=1) * ys).sum() / areas[t]
    frames_seen = np.flatnonzero(visible)
    if len(frames_seen) < 2:
        return None, None, None, centroids
    first, last = frames_seen[0], frames_seen[-1]
    vx, vy = (centroids[last] - centroids[first]) / float(last - first)
    scale = frame_size / 32.0
    magnitude = float(np.hypot(vx, vy)) / scale
    if magnitude < STILL_SPEED_AT_32:
        return "still", None, (float(vx), float(vy)), centroids
    if abs(vx) >= abs(vy):
        direction = "right" if vx > 0 else "left"
    else:
        direction = "down" if vy > 0 else "up"
    speed = "fast" if magnitude > 0.5 * (SPEED_PX_AT_32["slow"] + SPEED_PX_AT_32["fast"]) else "slow"
    return direction, speed, (float(vx), float(vy)), centroids


def observe(coverage: np.ndarray, frame_size: int) -> tuple[list[ObservedGroup], dict[str, np.ndarray]]:
    """Observed color groups from ``coverage [K, T, H, W]``; also the per-color centroid tracks."""
    min_area = MIN_AREA_FRACTION * frame_size * frame_size
    groups: list[ObservedGroup] = []
    tracks: dict[str, np.ndarray] = {}
    for k, color in enumerate(COLOR_NAMES):
        first = coverage[k, 0]
        labels, _ = ndimage.label(first > MIN_COVERAGE)
        shapes: list[str] = []
        sizes: list[str] = []
        area_total = 0.0
        for index, window in enumerate(ndimage.find_objects(labels), start=1):
            patch = np.where(labels[window] == index, first[window], 0.0)
            area = float(patch.sum())
            if area < min_area:
                continue
            shapes.append(classify_shape(patch))
            sizes.append(classify_size(patch, frame_size))
            area_total += area
        if not shapes:
            continue
        direction, speed, velocity, centroids = _motion(coverage[k], frame_size)
        tracks[color] = centroids
        groups.append(
            ObservedGroup(
                color=color,
                count=len(shapes),
                shapes=shapes,
                sizes=sizes,
                direction=direction,
                speed=speed,
                velocity_px=velocity,
                area_px=area_total,
            )
        )
    return groups, tracks
