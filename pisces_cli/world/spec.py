"""Scene specification of the synthetic video world.

A scene is a few *groups* of identical objects on a uniform background. Every
member of a group shares shape, color, size and motion; different groups always
have different colors (so a color names a group unambiguously). A scene holds 1-3
object instances in total.

Geometry (all in pixels, origin at the top-left corner, x to the right, y down):

* ``half_extent_px(size, frame_size)`` -- half the width/height of an object;
  ``SIZE_FRACTION[size] * frame_size``.
* ``velocity_px(direction, speed, frame_size)`` -- ``(vx, vy)`` in pixels per frame;
  slow is 0.5 px/frame and fast 1.0 px/frame at 32x32, scaled by ``frame_size / 32``.
* An instance's center at frame ``t`` is ``start + t * velocity``.

Everything here is plain data and JSON-serialisable through ``to_dict`` / ``from_dict``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from pisces_cli.errors import UsageError

#: Object colors, RGB 0-255. Chosen far apart from each other and from every background.
OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 80, 250),
    "yellow": (240, 220, 40),
    "purple": (150, 50, 210),
    "orange": (250, 130, 20),
    "white": (240, 240, 240),
}

#: Background colors, RGB 0-255 (uniform fill).
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (110, 110, 110),
    "dark blue": (15, 20, 70),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")
SPEEDS: tuple[str, ...] = ("slow", "fast")
FRAME_SIZES: tuple[int, ...] = (32, 64)
MIN_FRAMES, MAX_FRAMES = 8, 16
MAX_INSTANCES = 3

#: Half extent of an object as a fraction of the frame side.
SIZE_FRACTION: dict[str, float] = {"small": 0.15, "large": 0.22}
#: Speed in pixels per frame at a 32-pixel frame (scaled linearly with the frame side).
SPEED_PX_AT_32: dict[str, float] = {"slow": 0.5, "fast": 1.0}
#: Unit vectors (x, y) of each direction; y grows downwards.
DIRECTION_VECTORS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "still": (0.0, 0.0),
}
OPPOSITE_DIRECTION: dict[str, str] = {"left": "right", "right": "left", "up": "down", "down": "up"}
#: Pixels kept free between an object's edge and the frame border (the oracle reads the border ring).
BORDER_MARGIN_PX = 1.0
#: Minimum gap in pixels between the bounding boxes of two instances at frame 0.
MIN_GAP_PX = 3.0


def half_extent_px(size: str, frame_size: int) -> float:
    """Half width (= half height) of an object of ``size`` in a ``frame_size`` frame, in pixels."""
    return SIZE_FRACTION[size] * frame_size


def velocity_px(direction: str, speed: str, frame_size: int) -> tuple[float, float]:
    """Velocity ``(vx, vy)`` in pixels per frame; ``(0, 0)`` for ``still``."""
    unit_x, unit_y = DIRECTION_VECTORS[direction]
    magnitude = SPEED_PX_AT_32[speed] * frame_size / 32.0
    return unit_x * magnitude, unit_y * magnitude


@dataclass
class ObjectGroup:
    """``count`` identical objects that move together.

    ``starts`` holds one ``(x, y)`` center per instance at frame 0, in pixels.
    ``speed`` is ignored when ``direction == "still"``.
    """

    shape: str
    color: str
    size: str
    direction: str
    speed: str
    starts: list[tuple[float, float]] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Number of instances in the group."""
        return len(self.starts)


@dataclass
class SceneSpec:
    """A whole clip: geometry, background and object groups (drawn in list order)."""

    groups: list[ObjectGroup]
    background: str = "black"
    frames: int = 8
    size: int = 32
    fps: float = 8.0

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return asdict(self)

    def to_json(self) -> str:
        """Compact JSON string of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> SceneSpec:
        """Inverse of :meth:`to_dict`; validates the result."""
        try:
            groups = [
                ObjectGroup(
                    shape=g["shape"],
                    color=g["color"],
                    size=g["size"],
                    direction=g["direction"],
                    speed=g["speed"],
                    starts=[(float(x), float(y)) for x, y in g["starts"]],
                )
                for g in data["groups"]
            ]
            spec = cls(
                groups=groups,
                background=data["background"],
                frames=int(data["frames"]),
                size=int(data["size"]),
                fps=float(data["fps"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(
                f"scene spec: malformed dict ({exc!r}); expected SceneSpec.to_dict() output"
            ) from exc
        validate_spec(spec)
        return spec

    @classmethod
    def from_json(cls, text: str) -> SceneSpec:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def center_at(self, group: ObjectGroup, instance: int, frame: int) -> tuple[float, float]:
        """Center ``(x, y)`` in pixels of ``group.starts[instance]`` at ``frame``."""
        vx, vy = velocity_px(group.direction, group.speed, self.size)
        x0, y0 = group.starts[instance]
        return x0 + frame * vx, y0 + frame * vy


def _check_choice(value: str, allowed: tuple[str, ...] | dict, what: str) -> None:
    if value not in allowed:
        raise UsageError(f"scene spec: {what}={value!r} is not one of {sorted(allowed)}")


def validate_spec(spec: SceneSpec) -> None:
    """Raise :class:`UsageError` if ``spec`` names unknown attributes or impossible geometry."""
    _check_choice(spec.background, BACKGROUND_COLORS, "background")
    if not MIN_FRAMES <= spec.frames <= MAX_FRAMES:
        raise UsageError(f"scene spec: frames={spec.frames}, expected {MIN_FRAMES}..{MAX_FRAMES}")
    if spec.size not in FRAME_SIZES:
        raise UsageError(f"scene spec: size={spec.size}, expected one of {FRAME_SIZES}")
    if spec.fps <= 0:
        raise UsageError(f"scene spec: fps={spec.fps}, expected > 0")
    colors = [g.color for g in spec.groups]
    if len(set(colors)) != len(colors):
        raise UsageError(f"scene spec: group colors {colors} must be distinct")
    for group in spec.groups:
        _check_choice(group.shape, SHAPES, "shape")
        _check_choice(group.color, OBJECT_COLORS, "color")
        _check_choice(group.size, SIZES, "size")
        _check_choice(group.direction, DIRECTIONS, "direction")
        _check_choice(group.speed, SPEEDS, "speed")
