"""Corruptions of world clips with a known severity in [0, 1].

Pixel corruptions act on ``uint8 [T, H, W, 3]`` frames:

* ``flicker`` -- frame ``t`` gets a global brightness offset of alternating sign and magnitude
  ``U(0.5, 1) * 80 * severity`` levels.
* ``blur`` -- Gaussian blur over H and W with sigma ``2 * severity * size / 32`` pixels.
* ``noise`` -- i.i.d. Gaussian noise with std ``60 * severity`` levels.
* ``frozen`` -- ``max(1, round(severity * (T - 1) / 2))`` randomly chosen frames repeat their
  predecessor.

Attribute corruptions act on a :class:`SceneSpec` and re-render it, so they are exact;
``max(1, ceil(severity * n_groups))`` groups are changed:

* ``wrong_color`` -- recolor to a palette color no group uses or used before (so a recolored
  group never takes another group's old color).
* ``wrong_count`` -- add one instance (or drop one when none fits / at random when count > 1).
* ``wrong_direction`` -- reverse the motion (the trajectory is mirrored so it stays in frame);
  a still group starts moving.

Severity 0 returns the clip unchanged.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from pisces_cli.errors import UsageError
from pisces_cli.world.render import render
from pisces_cli.world.sample import boxes_apart, instance_track, start_range
from pisces_cli.world.spec import (
    DIRECTIONS,
    MIN_GAP_PX,
    OBJECT_COLORS,
    OPPOSITE_DIRECTION,
    SceneSpec,
    velocity_px,
)

PIXEL_CORRUPTIONS: tuple[str, ...] = ("flicker", "blur", "noise", "frozen")
ATTRIBUTE_CORRUPTIONS: tuple[str, ...] = ("wrong_color", "wrong_count", "wrong_direction")
CORRUPTION_KINDS: tuple[str, ...] = PIXEL_CORRUPTIONS + ATTRIBUTE_CORRUPTIONS


@dataclass
class CorruptionRecord:
    """What was done: ``kind``, ``severity``, parameters, the changed groups / frames and,
    for attribute corruptions, the corrupted spec (``SceneSpec.to_dict()``)."""

    kind: str
    severity: float
    params: dict = field(default_factory=dict)
    changed_groups: list[int] = field(default_factory=list)
    changed_frames: list[int] = field(default_factory=list)
    spec: dict | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else int(rng))


# ----------------------------------------------------------------------------- pixel corruptions


def _flicker(
    frames: np.ndarray, severity: float, rng: np.random.Generator, record: CorruptionRecord
) -> np.ndarray:
    n = frames.shape[0]
    sign = 1.0 if rng.random() < 0.5 else -1.0
    offsets = np.array([sign * (-1.0) ** t * rng.uniform(0.5, 1.0) * 80.0 * severity for t in range(n)])
    record.params["offsets"] = [round(float(o), 3) for o in offsets]
    record.changed_frames = list(range(n))
    return np.clip(frames.astype(np.float32) + offsets[:, None, None, None], 0, 255)


def _blur(frames: np.ndarray, severity: float, record: CorruptionRecord) -> np.ndarray:
    sigma = 2.0 * severity * frames.shape[1] / 32.0
    record.params["sigma_px"] = sigma
    record.changed_frames = list(range(frames.shape[0]))
    return ndimage.gaussian_filter(frames.astype(np.float32), sigma=(0.0, sigma, sigma, 0.0))


def _noise(
    frames: np.ndarray, severity: float, rng: np.random.Generator, record: CorruptionRecord
) -> np.ndarray:
    std = 60.0 * severity
    record.params["std_levels"] = std
    record.changed_frames = list(range(frames.shape[0]))
    return frames.astype(np.float32) + rng.normal(0.0, std, size=frames.shape).astype(np.float32)


def _frozen(
    frames: np.ndarray, severity: float, rng: np.random.Generator, record: CorruptionRecord
) -> np.ndarray:
    n = frames.shape[0]
    if n < 2:
        return frames.copy()
    k = min(n - 1, max(1, round(severity * (n - 1) / 2)))
    held = sorted(int(t) for t in rng.choice(np.arange(1, n), size=k, replace=False))
    out = frames.copy()
    for t in held:
        out[t] = out[t - 1]
    record.params["held_frames"] = held
    record.changed_frames = held
    return out


# ----------------------------------------------------------------------------- attribute corruptions


def _other_tracks(spec: SceneSpec, skip_group: int | None = None) -> list[np.ndarray]:
    return [
        instance_track(group, start, spec.size, spec.frames)
        for gi, group in enumerate(spec.groups)
        if gi != skip_group
        for start in group.starts
    ]


def _find_start(
    spec: SceneSpec, group_index: int, others: list[np.ndarray], rng: np.random.Generator, tries: int = 300
) -> tuple[float, float] | None:
    """A start for a new instance of group ``group_index`` apart from ``others`` (whole clip first)."""
    group = spec.groups[group_index]
    (x_lo, x_hi), (y_lo, y_hi) = start_range(group, spec.size, spec.frames)
    if x_lo > x_hi or y_lo > y_hi:
        return None
    for whole_clip in (True, False):
        for _ in range(tries):
            start = (float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi)))
            track = instance_track(group, start, spec.size, spec.frames)
            if whole_clip:
                ok = all(boxes_apart(track, other, MIN_GAP_PX).all() for other in others)
            else:
                ok = all(boxes_apart(track[0], other[0], MIN_GAP_PX) for other in others)
            if ok:
                return start
    return None


def _wrong_color(
    spec: SceneSpec, chosen: list[int], rng: np.random.Generator, record: CorruptionRecord
) -> None:
    original = {g.color for g in spec.groups}
    for gi in chosen:
        used = original | {g.color for g in spec.groups}
        free = [c for c in OBJECT_COLORS if c not in used]
        new = free[int(rng.integers(0, len(free)))]
        record.params.setdefault("recolor", []).append([gi, spec.groups[gi].color, new])
        spec.groups[gi].color = new


def _wrong_count(
    spec: SceneSpec, chosen: list[int], rng: np.random.Generator, record: CorruptionRecord
) -> None:
    for gi in chosen:
        group = spec.groups[gi]
        before = group.count
        start = None
        if not (group.count > 1 and rng.random() < 0.5):
            start = _find_start(spec, gi, _other_tracks(spec), rng)
        if start is not None:
            group.starts.append(start)
        else:
            group.starts.pop(int(rng.integers(0, group.count)))
        record.params.setdefault("recount", []).append([gi, before, group.count])


def _wrong_direction(
    spec: SceneSpec, chosen: list[int], rng: np.random.Generator, record: CorruptionRecord
) -> None:
    for gi in chosen:
        group = spec.groups[gi]
        before = group.direction
        if before in OPPOSITE_DIRECTION:
            vx, vy = velocity_px(group.direction, group.speed, spec.size)
            group.starts = [(x + vx * (spec.frames - 1), y + vy * (spec.frames - 1)) for x, y in group.starts]
            group.direction = OPPOSITE_DIRECTION[before]
        else:
            moving = [d for d in DIRECTIONS if d != "still"]
            group.direction = moving[int(rng.integers(0, len(moving)))]
            count = group.count
            group.starts = []
            others = _other_tracks(spec, skip_group=gi)
            for _ in range(count):
                start = _find_start(spec, gi, others, rng)
                if start is None:
                    break
                group.starts.append(start)
                others.append(instance_track(group, start, spec.size, spec.frames))
        record.params.setdefault("redirect", []).append([gi, before, group.direction])


# ----------------------------------------------------------------------------- entry point


def corrupt(
    clip: np.ndarray | SceneSpec,
    kind: str,
    severity: float,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, CorruptionRecord]:
    """Apply corruption ``kind`` at ``severity`` in [0, 1].

    ``clip``: uint8 ``[T, H, W, 3]`` frames or a :class:`SceneSpec` (rendered first for pixel
    kinds; required for attribute kinds). Returns ``(uint8 [T, H, W, 3] frames, record)``.
    """
    if kind not in CORRUPTION_KINDS:
        raise UsageError(f"corrupt: kind={kind!r} is not one of {CORRUPTION_KINDS}")
    if not 0.0 <= float(severity) <= 1.0:
        raise UsageError(f"corrupt: severity={severity}, expected a number in [0, 1]")
    gen = _rng(rng)
    record = CorruptionRecord(kind=kind, severity=float(severity))
    if kind in ATTRIBUTE_CORRUPTIONS:
        if not isinstance(clip, SceneSpec):
            raise UsageError(f"corrupt: {kind} needs a SceneSpec (it edits attributes and re-renders)")
        spec = copy.deepcopy(clip)
        if severity > 0 and spec.groups:
            n_changed = max(1, math.ceil(severity * len(spec.groups)))
            chosen = sorted(int(i) for i in gen.choice(len(spec.groups), size=n_changed, replace=False))
            record.changed_groups = chosen
            {"wrong_color": _wrong_color, "wrong_count": _wrong_count, "wrong_direction": _wrong_direction}[
                kind
            ](spec, chosen, gen, record)
        record.spec = spec.to_dict()
        return render(spec), record

    frames = render(clip) if isinstance(clip, SceneSpec) else np.asarray(clip)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UsageError(f"corrupt: frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if severity == 0:
        return frames.copy(), record
    if kind == "flicker":
        out = _flicker(frames, severity, gen, record)
    elif kind == "blur":
        out = _blur(frames, severity, record)
    elif kind == "noise":
        out = _noise(frames, severity, gen, record)
    else:
        out = _frozen(frames, severity, gen, record)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), record
