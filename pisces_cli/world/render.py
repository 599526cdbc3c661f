"""Rasterise a :class:`SceneSpec` into RGB frames.

Objects are drawn in group order with anti-aliased edges: each pixel's coverage
``a`` in [0, 1] is the fraction of a 4x4 grid of sub-pixel samples inside the shape,
and the pixel becomes ``(1 - a) * below + a * color``. Interior pixels therefore hold
the exact palette color and edge pixels lie on the segment between the background and
the object color, which is what :mod:`pisces_cli.world.oracle` relies on.
"""

from __future__ import annotations

import math

import numpy as np

from pisces_cli.world.spec import (
    BACKGROUND_COLORS,
    OBJECT_COLORS,
    SceneSpec,
    half_extent_px,
    validate_spec,
)

SUPERSAMPLE = 4
_SUB_OFFSETS = (np.arange(SUPERSAMPLE, dtype=np.float64) + 0.5) / SUPERSAMPLE


def shape_inside(shape: str, dx: np.ndarray, dy: np.ndarray, half_extent: float) -> np.ndarray:
    """Boolean mask of the points ``(dx, dy)`` (pixels, relative to the center) inside ``shape``.

    Every shape fits the square ``[-half_extent, half_extent]^2``; the triangle points up
    (apex at ``dy = -half_extent``, base at ``dy = +half_extent``).
    """
    r = half_extent
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "triangle":
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2.0)
    raise ValueError(f"unknown shape {shape!r}")


def coverage_patch(
    shape: str, center: tuple[float, float], half_extent: float, frame_size: int
) -> tuple[slice, slice, np.ndarray]:
    """Anti-aliased coverage of one object.

    Returns ``(rows, cols, coverage)`` where ``coverage`` is ``[h, w]`` float64 in [0, 1]
    for the pixel window ``frame[rows, cols]`` (clipped to the frame).
    """
    cx, cy = center
    x0 = max(0, math.floor(cx - half_extent) - 1)
    x1 = min(frame_size, math.ceil(cx + half_extent) + 1)
    y0 = max(0, math.floor(cy - half_extent) - 1)
    y1 = min(frame_size, math.ceil(cy + half_extent) + 1)
    if x1 <= x0 or y1 <= y0:
        return slice(0, 0), slice(0, 0), np.zeros((0, 0))
    xs = (np.arange(x0, x1, dtype=np.float64)[:, None] + _SUB_OFFSETS[None, :]).ravel() - cx
    ys = (np.arange(y0, y1, dtype=np.float64)[:, None] + _SUB_OFFSETS[None, :]).ravel() - cy
    inside = shape_inside(shape, xs[None, :], ys[:, None], half_extent)
    h, w = y1 - y0, x1 - x0
    coverage = inside.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).mean(axis=(1, 3))
    return slice(y0, y1), slice(x0, x1), coverage


def render(spec: SceneSpec) -> np.ndarray:
    """Render ``spec`` to ``uint8 [T, H, W, 3]`` RGB frames (T = ``spec.frames``, H = W = ``spec.size``)."""
    validate_spec(spec)
    size = spec.size
    background = np.asarray(BACKGROUND_COLORS[spec.background], dtype=np.float64)
    frames = np.empty((spec.frames, size, size, 3), dtype=np.float64)
    frames[...] = background
    for group in spec.groups:
        color = np.asarray(OBJECT_COLORS[group.color], dtype=np.float64)
        half = half_extent_px(group.size, size)
        for instance in range(group.count):
            for t in range(spec.frames):
                rows, cols, cov = coverage_patch(group.shape, spec.center_at(group, instance, t), half, size)
                if cov.size == 0:
                    continue
                window = frames[t, rows, cols]
                frames[t, rows, cols] = window + cov[..., None] * (color - window)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)
