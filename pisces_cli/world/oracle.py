"""Rule-based judge of world clips: reads only pixels and a caption.

Pipeline (all on ``uint8 [T, H, W, 3]`` RGB frames); steps 1-3 live in
:mod:`pisces_cli.world.vision`, step 5 in :mod:`pisces_cli.world.quality`:

1. **Background** -- per frame, the per-channel median of the 1-pixel border ring (the
   world keeps objects off it), or a given color.
2. **Segmentation** -- for every palette color ``c`` and pixel ``p`` the coverage
   ``a = <p - b, c - b> / |c - b|^2`` (``b`` the background) and the residual distance of
   ``p`` from the segment ``b -> c``; a pixel belongs to the color with the smallest residual
   below :data:`RESIDUAL_TOL`. Anti-aliased edges are blends on that segment, so the
   coverage maps are sub-pixel accurate.
3. **Objects** -- connected components of each color's coverage at frame 0 (count), shape from
   coverage moments (fill of the extent box, y-skewness, marginal kurtosis), size from the
   extent, direction and speed from the coverage-weighted centroid track over the frames
   where the color is fully visible.
4. **Claims** -- :func:`pisces_cli.world.captions.parse_caption` claims are matched to observed
   color groups (by color; a claim whose color is absent falls back to the best-agreeing
   unclaimed group, so a recolored object yields color False but shape/count True).
5. **Quality** -- flicker (global brightness jumps), temporal consistency (component area
   stability x motion smoothness x non-frozen frames), sharpness (anti-aliased edge width) and
   cleanliness (``1 - noise_level / NOISE_FULL_LEVELS``, clipped); ``quality`` is their product.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from pisces_cli.errors import UsageError
from pisces_cli.world import quality
from pisces_cli.world.captions import CaptionClaims, ObjectClaim, parse_caption
from pisces_cli.world.spec import BACKGROUND_COLORS
from pisces_cli.world.vision import (
    RESIDUAL_TOL,
    ObservedGroup,
    classify_shape,
    estimate_background,
    observe,
    segment,
)

#: Estimated pixel-noise std (levels) that counts as fully noisy (cleanliness 0).
NOISE_FULL_LEVELS = 20.0

__all__ = ["ObjectVerdict", "OracleVerdict", "classify_shape", "judge"]


@dataclass
class ObjectVerdict:
    """Per-clause verdicts: True/False per claimed attribute, None where the clause claims nothing."""

    claim: ObjectClaim
    matched_color: str | None
    color: bool | None = None
    shape: bool | None = None
    count: bool | None = None
    size: bool | None = None
    direction: bool | None = None
    speed: bool | None = None


@dataclass
class OracleVerdict:
    """Prompt fidelity and quality of one clip.

    Attribute fields are True when every clause claiming that attribute is right, False when
    one is wrong, None when no clause claims it. ``prompt_fidelity`` = correct / total claims
    (1.0 with no claims). Quality fields are in [0, 1]; ``flicker`` and ``frozen_fraction`` are
    amounts (0 = none), the others scores (1 = perfect); ``quality`` =
    ``temporal_consistency * (1 - flicker) * sharpness * cleanliness``.
    """

    color: bool | None
    shape: bool | None
    count: bool | None
    direction: bool | None
    size: bool | None
    speed: bool | None
    background: bool | None
    prompt_fidelity: float
    n_claims: int
    n_correct: int
    temporal_consistency: float
    flicker: float
    sharpness: float
    cleanliness: float
    stability: float
    motion_smoothness: float
    frozen_fraction: float
    unexplained_fraction: float
    quality: float
    objects: list[ObjectVerdict] = field(default_factory=list)
    observed: list[ObservedGroup] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


# ----------------------------------------------------------------------------- claims


def _agreement(claim: ObjectClaim, group: ObservedGroup) -> int:
    pairs = (
        (claim.shape, group.shape),
        (claim.count, group.count),
        (claim.direction, group.direction),
        (claim.size, group.size),
    )
    return sum(1 for said, seen in pairs if said is not None and said == seen)


def _match(claims: CaptionClaims, groups: list[ObservedGroup]) -> list[ObservedGroup | None]:
    """Observed group for each clause: same color if present, else the unclaimed groups are
    assigned to the remaining clauses maximising attribute agreement (Hungarian assignment)."""
    by_color = {g.color: g for g in groups}
    claimed_colors = {c.color for c in claims.objects if c.color is not None}
    matches: list[ObservedGroup | None] = [None] * len(claims.objects)
    used: set[str] = set()
    pending: list[int] = []
    for index, claim in enumerate(claims.objects):
        if claim.color in by_color and claim.color not in used:
            matches[index] = by_color[claim.color]
            used.add(claim.color)
        else:
            pending.append(index)
    free = [g for g in groups if g.color not in claimed_colors and g.color not in used]
    if pending and free:
        agreement = np.array([[_agreement(claims.objects[i], g) for g in free] for i in pending], dtype=float)
        rows, cols = linear_sum_assignment(-agreement)
        for row, col in zip(rows, cols, strict=True):
            matches[pending[row]] = free[col]
    return matches


def _verdict_for(claim: ObjectClaim, group: ObservedGroup | None) -> ObjectVerdict:
    verdict = ObjectVerdict(claim=claim, matched_color=None if group is None else group.color)
    observed = {
        "color": None if group is None else group.color,
        "shape": None if group is None else group.shape,
        "count": None if group is None else group.count,
        "size": None if group is None else group.size,
        "direction": None if group is None else group.direction,
        "speed": None if group is None else group.speed,
    }
    for name, seen in observed.items():
        said = getattr(claim, name)
        if said is not None:
            setattr(verdict, name, seen is not None and said == seen)
    return verdict


def _background_name(background: np.ndarray) -> str | None:
    color = np.median(background, axis=0)
    best, best_distance = None, RESIDUAL_TOL
    for name, rgb in BACKGROUND_COLORS.items():
        distance = float(np.linalg.norm(color - np.asarray(rgb, dtype=np.float32)))
        if distance < best_distance:
            best, best_distance = name, distance
    return best


def _all_true(values: list[bool | None]) -> bool | None:
    stated = [v for v in values if v is not None]
    return None if not stated else all(stated)


def judge(
    frames: np.ndarray, caption: str, background: str | tuple[int, int, int] | None = None
) -> OracleVerdict:
    """Judge a clip against a caption.

    ``frames``: uint8 ``[T, H, W, 3]`` RGB, square frames with T >= 1. ``caption``: text in the
    world's template language (see :mod:`pisces_cli.world.captions`). ``background``: a
    background name or RGB triple to use instead of the border estimate.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UsageError(f"judge: frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[1] != frames.shape[2] or frames.shape[1] < 4:
        raise UsageError(f"judge: frames must be square and >= 4 pixels, got {frames.shape[1:3]}")
    frame_size = frames.shape[1]
    if background is None:
        background_rgb = estimate_background(frames)
    else:
        if isinstance(background, str) and background not in BACKGROUND_COLORS:
            raise UsageError(f"judge: background={background!r} is not one of {sorted(BACKGROUND_COLORS)}")
        rgb = BACKGROUND_COLORS[background] if isinstance(background, str) else background
        background_rgb = np.tile(np.asarray(rgb, dtype=np.float32), (frames.shape[0], 1))
    coverage, explained = segment(frames, background_rgb)
    groups, tracks = observe(coverage, frame_size)

    claims = parse_caption(caption)
    object_verdicts = [
        _verdict_for(c, g) for c, g in zip(claims.objects, _match(claims, groups), strict=True)
    ]
    background_ok = None
    if claims.background is not None:
        background_ok = _background_name(estimate_background(frames)) == claims.background
    outcomes = [
        getattr(v, name)
        for v in object_verdicts
        for name in ("color", "shape", "count", "size", "direction", "speed")
        if getattr(v, name) is not None
    ]
    if background_ok is not None:
        outcomes.append(background_ok)

    flicker = quality.flicker_amount(frames)
    frozen = quality.frozen_fraction(frames)
    stability = quality.stability(coverage, groups)
    smoothness = quality.motion_smoothness(tracks, groups, frame_size)
    consistency = stability * smoothness * (1.0 - frozen)
    sharpness = quality.sharpness(coverage, frame_size)
    cleanliness = float(1.0 - np.clip(quality.noise_level(frames) / NOISE_FULL_LEVELS, 0.0, 1.0))
    return OracleVerdict(
        color=_all_true([v.color for v in object_verdicts]),
        shape=_all_true([v.shape for v in object_verdicts]),
        count=_all_true([v.count for v in object_verdicts]),
        direction=_all_true([v.direction for v in object_verdicts]),
        size=_all_true([v.size for v in object_verdicts]),
        speed=_all_true([v.speed for v in object_verdicts]),
        background=background_ok,
        prompt_fidelity=float(np.mean(outcomes)) if outcomes else 1.0,
        n_claims=len(outcomes),
        n_correct=int(sum(outcomes)),
        temporal_consistency=float(consistency),
        flicker=flicker,
        sharpness=sharpness,
        cleanliness=cleanliness,
        stability=stability,
        motion_smoothness=smoothness,
        frozen_fraction=frozen,
        unexplained_fraction=1.0 - float(explained.mean()),
        quality=float(consistency * (1.0 - flicker) * sharpness * cleanliness),
        objects=object_verdicts,
        observed=groups,
    )
