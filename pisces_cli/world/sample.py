"""Seeded sampling of scene specs, optionally under constraints.

``sample_scene(seed, config)`` is a pure function of ``(seed, config)``: the same pair
always yields the same :class:`SceneSpec`. Start positions keep every instance fully in
frame (plus a 1-pixel border margin) for the whole clip, and instances never overlap at
frame 0; the sampler first tries placements that stay apart for the whole clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pisces_cli.errors import UsageError
from pisces_cli.world.spec import (
    BACKGROUND_COLORS,
    BORDER_MARGIN_PX,
    DIRECTIONS,
    FRAME_SIZES,
    MAX_FRAMES,
    MAX_INSTANCES,
    MIN_FRAMES,
    MIN_GAP_PX,
    OBJECT_COLORS,
    SHAPES,
    SIZES,
    SPEEDS,
    ObjectGroup,
    SceneSpec,
    half_extent_px,
    validate_spec,
    velocity_px,
)

SeedLike = int | np.random.Generator


@dataclass(frozen=True)
class SamplingConfig:
    """What :func:`sample_scene` may draw.

    ``frames`` / ``size`` fix the clip geometry (None: uniform in 8..16 frames / {32, 64} px).
    The ``*_choices`` tuples restrict attributes for every group; ``require_*`` forces the
    first group's attribute (used to build held-out prompt sets, e.g. every clip has a red
    object). ``forbidden_color_shapes`` lists ``(color, shape)`` pairs never drawn (a training set
    that holds out "red triangle" compositions); a ``require_*`` pair overrides it.
    ``max_groups`` <= ``max_instances`` <= 3.
    """

    frames: int | None = None
    size: int | None = None
    fps: float = 8.0
    max_instances: int = MAX_INSTANCES
    max_groups: int = 3
    shape_choices: tuple[str, ...] = SHAPES
    color_choices: tuple[str, ...] = tuple(OBJECT_COLORS)
    size_choices: tuple[str, ...] = SIZES
    direction_choices: tuple[str, ...] = DIRECTIONS
    speed_choices: tuple[str, ...] = SPEEDS
    background_choices: tuple[str, ...] = tuple(BACKGROUND_COLORS)
    require_shape: str | None = None
    require_color: str | None = None
    require_direction: str | None = None
    forbidden_color_shapes: tuple[tuple[str, str], ...] = ()

    def validate(self) -> None:
        """Raise :class:`UsageError` on an impossible configuration."""
        if self.frames is not None and not MIN_FRAMES <= self.frames <= MAX_FRAMES:
            raise UsageError(f"sampling config: frames={self.frames}, expected {MIN_FRAMES}..{MAX_FRAMES}")
        if self.size is not None and self.size not in FRAME_SIZES:
            raise UsageError(f"sampling config: size={self.size}, expected one of {FRAME_SIZES}")
        if not 1 <= self.max_groups <= self.max_instances <= MAX_INSTANCES:
            raise UsageError(
                f"sampling config: need 1 <= max_groups ({self.max_groups}) <= max_instances "
                f"({self.max_instances}) <= {MAX_INSTANCES}"
            )
        for name, allowed, pool in (
            ("shape_choices", self.shape_choices, SHAPES),
            ("color_choices", self.color_choices, tuple(OBJECT_COLORS)),
            ("size_choices", self.size_choices, SIZES),
            ("direction_choices", self.direction_choices, DIRECTIONS),
            ("speed_choices", self.speed_choices, SPEEDS),
            ("background_choices", self.background_choices, tuple(BACKGROUND_COLORS)),
        ):
            if not allowed or any(v not in pool for v in allowed):
                raise UsageError(f"sampling config: {name}={allowed!r} must be a non-empty subset of {pool}")
        for name, value, pool in (
            ("require_shape", self.require_shape, SHAPES),
            ("require_color", self.require_color, tuple(OBJECT_COLORS)),
            ("require_direction", self.require_direction, DIRECTIONS),
        ):
            if value is not None and value not in pool:
                raise UsageError(f"sampling config: {name}={value!r} is not one of {pool}")
        for pair in self.forbidden_color_shapes:
            if len(pair) != 2 or pair[0] not in OBJECT_COLORS or pair[1] not in SHAPES:
                raise UsageError(
                    f"sampling config: forbidden_color_shapes entry {pair!r} must be (color, shape)"
                )
        for color in self.color_choices:
            if all((color, shape) in self.forbidden_color_shapes for shape in self.shape_choices):
                raise UsageError(f"sampling config: every allowed shape is forbidden for color {color!r}")


def _as_rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(int(seed))


def start_range(
    group: ObjectGroup, size: int, frames: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Allowed start centers ``((x_lo, x_hi), (y_lo, y_hi))`` in pixels keeping the instance in frame."""
    half = half_extent_px(group.size, size) + BORDER_MARGIN_PX
    vx, vy = velocity_px(group.direction, group.speed, size)
    travel_x, travel_y = vx * (frames - 1), vy * (frames - 1)
    x_range = (half - min(0.0, travel_x), size - half - max(0.0, travel_x))
    y_range = (half - min(0.0, travel_y), size - half - max(0.0, travel_y))
    return x_range, y_range


def boxes_apart(a: np.ndarray, b: np.ndarray, gap: float) -> np.ndarray:
    """``a``, ``b``: ``[..., 4]`` boxes (cx, cy, half, unused); True where separated by >= gap."""
    sep_x = np.abs(a[..., 0] - b[..., 0]) - a[..., 2] - b[..., 2]
    sep_y = np.abs(a[..., 1] - b[..., 1]) - a[..., 2] - b[..., 2]
    return np.maximum(sep_x, sep_y) >= gap


def instance_track(group: ObjectGroup, start: tuple[float, float], size: int, frames: int) -> np.ndarray:
    """``[T, 4]`` boxes (cx, cy, half, 0) of one instance over the clip."""
    vx, vy = velocity_px(group.direction, group.speed, size)
    t = np.arange(frames, dtype=np.float64)
    half = half_extent_px(group.size, size)
    return np.stack([start[0] + t * vx, start[1] + t * vy, np.full(frames, half), np.zeros(frames)], axis=1)


def place_instances(
    groups: list[ObjectGroup], counts: list[int], size: int, frames: int, rng: np.random.Generator
) -> bool:
    """Fill ``group.starts`` for every group with ``counts`` instances; False if no placement was found.

    Instances are placed one by one by rejection sampling: first demanding separation over the
    whole clip, then only at frame 0.
    """
    for whole_clip in (True, False):
        for _attempt in range(20):
            placed: list[np.ndarray] = []
            starts: list[list[tuple[float, float]]] = [[] for _ in groups]
            ok = True
            for gi, (group, count) in enumerate(zip(groups, counts, strict=True)):
                (x_lo, x_hi), (y_lo, y_hi) = start_range(group, size, frames)
                if x_lo > x_hi or y_lo > y_hi:
                    return False
                for _ in range(count):
                    for _try in range(30):
                        start = (float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi)))
                        track = instance_track(group, start, size, frames)
                        if whole_clip:
                            fits = all(boxes_apart(track, other, MIN_GAP_PX).all() for other in placed)
                        else:
                            fits = all(boxes_apart(track[0], other[0], MIN_GAP_PX) for other in placed)
                        if fits:
                            placed.append(track)
                            starts[gi].append(start)
                            break
                    else:
                        ok = False
                        break
                if not ok:
                    break
            if ok:
                for group, group_starts in zip(groups, starts, strict=True):
                    group.starts = group_starts
                return True
    return False


def _draw_counts(rng: np.random.Generator, config: SamplingConfig) -> list[int]:
    n_groups = int(rng.integers(1, config.max_groups + 1))
    counts = [1] * n_groups
    extra = int(rng.integers(0, config.max_instances - n_groups + 1))
    for _ in range(extra):
        counts[int(rng.integers(0, n_groups))] += 1
    return counts


def _pick(rng: np.random.Generator, choices: tuple[str, ...]) -> str:
    return choices[int(rng.integers(0, len(choices)))]


def sample_scene(seed: SeedLike, config: SamplingConfig | None = None) -> SceneSpec:
    """Draw one scene; deterministic given an int ``seed`` (or advances a passed Generator).

    Raises :class:`UsageError` when the constraints leave nothing to draw (e.g. more groups
    than allowed colors).
    """
    config = config or SamplingConfig()
    config.validate()
    rng = _as_rng(seed)
    frames = config.frames if config.frames is not None else int(rng.integers(MIN_FRAMES, MAX_FRAMES + 1))
    size = (
        config.size if config.size is not None else int(FRAME_SIZES[int(rng.integers(0, len(FRAME_SIZES)))])
    )
    background = _pick(rng, config.background_choices)
    counts = _draw_counts(rng, config)
    colors = list(config.color_choices)
    if config.require_color is not None and config.require_color not in colors:
        colors.append(config.require_color)
    while True:
        n_groups = len(counts)
        if n_groups > len(colors):
            counts = counts[: len(colors)]
            continue
        first_color = config.require_color
        pool = [c for c in colors if c != first_color]
        order = rng.permutation(len(pool))
        group_colors = [pool[i] for i in order[: n_groups - (first_color is not None)]]
        if first_color is not None:
            group_colors.insert(0, first_color)
        groups = []
        for gi, color in enumerate(group_colors):
            allowed_shapes = (
                tuple(s for s in config.shape_choices if (color, s) not in config.forbidden_color_shapes)
                or config.shape_choices
            )
            shape = _pick(rng, allowed_shapes)
            direction = _pick(rng, config.direction_choices)
            if gi == 0 and config.require_shape is not None:
                shape = config.require_shape
            if gi == 0 and config.require_direction is not None:
                direction = config.require_direction
            groups.append(
                ObjectGroup(
                    shape=shape,
                    color=color,
                    size=_pick(rng, config.size_choices),
                    direction=direction,
                    speed=_pick(rng, config.speed_choices),
                )
            )
        if place_instances(groups, counts, size, frames, rng):
            break
        # Too crowded: drop one instance from the last group (or the last group) and retry.
        if counts[-1] > 1:
            counts[-1] -= 1
        elif len(counts) > 1:
            counts.pop()
        else:
            raise UsageError(f"sampling config: cannot place a single object in a {size}px frame")
    spec = SceneSpec(groups=groups, background=background, frames=frames, size=size, fps=float(config.fps))
    validate_spec(spec)
    return spec


def sample_scenes(seed: int, n: int, config: SamplingConfig | None = None) -> list[SceneSpec]:
    """``n`` scenes; scene ``i`` is ``sample_scene(seed_i, config)`` with ``seed_i`` derived from ``(seed, i)``.

    Scene ``i`` does not depend on ``n``, so prefixes of longer lists agree.
    """
    if n < 0:
        raise UsageError(f"sample_scenes: n={n}, expected >= 0")
    return [sample_scene(np.random.default_rng([int(seed), i]), config) for i in range(n)]
