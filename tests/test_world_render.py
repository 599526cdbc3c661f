"""Scene sampling and rendering of the synthetic world, checked against raw pixels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pisces_cli.errors import UsageError
from pisces_cli.world import SamplingConfig, SceneSpec, make_clips, render, sample_scene, sample_scenes
from pisces_cli.world.spec import (
    BACKGROUND_COLORS,
    OBJECT_COLORS,
    ObjectGroup,
    half_extent_px,
    velocity_px,
)

SPECS = sample_scenes(123, 60)


def exact_color_mask(frames: np.ndarray, color: str) -> np.ndarray:
    """Pixels holding exactly the palette color (object interiors): ``[T, H, W]`` bool."""
    return (frames == np.asarray(OBJECT_COLORS[color], dtype=np.uint8)).all(axis=-1)


def test_sample_is_deterministic_and_seed_dependent():
    assert sample_scene(5).to_dict() == sample_scene(5).to_dict()
    assert sample_scene(5).to_dict() != sample_scene(6).to_dict()
    assert np.array_equal(render(sample_scene(5)), render(sample_scene(5)))
    prefix = [s.to_dict() for s in sample_scenes(9, 3)]
    assert prefix == [s.to_dict() for s in sample_scenes(9, 8)[:3]]


def test_specs_are_valid_and_json_round_trip():
    for spec in SPECS:
        total = sum(g.count for g in spec.groups)
        assert 1 <= total <= 3
        assert len({g.color for g in spec.groups}) == len(spec.groups)
        assert 8 <= spec.frames <= 16 and spec.size in (32, 64)
        assert SceneSpec.from_json(spec.to_json()).to_dict() == spec.to_dict()


def test_geometry_units():
    assert half_extent_px("small", 32) == pytest.approx(4.8)
    assert half_extent_px("large", 64) == pytest.approx(14.08)
    assert velocity_px("left", "slow", 32) == (-0.5, 0.0)
    assert velocity_px("down", "fast", 64) == (0.0, 2.0)
    assert velocity_px("still", "fast", 64) == (0.0, 0.0)


def test_render_shape_dtype_and_background():
    for spec in SPECS[:10]:
        frames = render(spec)
        assert frames.shape == (spec.frames, spec.size, spec.size, 3) and frames.dtype == np.uint8
        ring = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1)
        assert (ring == np.asarray(BACKGROUND_COLORS[spec.background], dtype=np.uint8)).all()


def test_colors_counts_and_motion_match_spec():
    for spec in SPECS:
        frames = render(spec)
        present = {name for name in OBJECT_COLORS if exact_color_mask(frames[:1], name).any()}
        assert present == {g.color for g in spec.groups}
        for group in spec.groups:
            mask = exact_color_mask(frames, group.color)
            # Count: instances are >= 3 px apart at frame 0, so each is its own component.
            _, n_components = ndimage.label(mask[0])
            assert n_components == group.count
            # Motion: centroid of the exact-color pixels moves along the velocity.
            areas = mask.sum(axis=(1, 2))
            ys, xs = np.nonzero(mask[0])
            start = np.array([xs.mean(), ys.mean()])
            ys, xs = np.nonzero(mask[-1])
            end = np.array([xs.mean(), ys.mean()])
            if areas[-1] < 0.97 * areas.max():  # occluded at the end: skip the track check
                continue
            expected = np.array(velocity_px(group.direction, group.speed, spec.size)) * (spec.frames - 1)
            assert np.allclose(end - start, expected, atol=0.75)


def test_instances_do_not_overlap_at_frame_zero():
    for spec in SPECS:
        boxes = [(*start, half_extent_px(g.size, spec.size)) for g in spec.groups for start in g.starts]
        for i in range(len(boxes)):
            for j in range(i):
                (xa, ya, ra), (xb, yb, rb) = boxes[i], boxes[j]
                assert max(abs(xa - xb), abs(ya - yb)) - ra - rb >= 3.0 - 1e-9


def test_shapes_fill_their_box_as_expected():
    """Coverage area of each shape at frame 0 matches its analytic area (up to edge sampling)."""
    analytic = {"square": 4.0, "circle": np.pi, "diamond": 2.0, "triangle": 2.0}  # x r^2
    for shape, factor in analytic.items():
        spec = SceneSpec(
            groups=[ObjectGroup(shape, "white", "large", "still", "slow", [(32.3, 31.7)])],
            background="black",
            frames=8,
            size=64,
        )
        frames = render(spec).astype(np.float64)
        area = frames[0, :, :, 0].sum() / 240.0
        radius = half_extent_px("large", 64)
        assert area == pytest.approx(factor * radius**2, rel=0.03)


def test_constraints_force_attributes():
    config = SamplingConfig(
        frames=12, size=64, require_color="red", require_shape="triangle", require_direction="up"
    )
    for spec in sample_scenes(4, 20, config):
        assert spec.frames == 12 and spec.size == 64
        first = spec.groups[0]
        assert (first.color, first.shape, first.direction) == ("red", "triangle", "up")
    only_blue = SamplingConfig(color_choices=("blue",), max_groups=1)
    assert all(s.groups[0].color == "blue" and len(s.groups) == 1 for s in sample_scenes(1, 10, only_blue))
    held_out = SamplingConfig(color_choices=("red", "green", "blue"), background_choices=("gray",))
    for spec in sample_scenes(2, 20, held_out):
        assert spec.background == "gray" and {g.color for g in spec.groups} <= {"red", "green", "blue"}


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(frames=4),
        SamplingConfig(size=48),
        SamplingConfig(color_choices=("pink",)),
        SamplingConfig(max_groups=3, max_instances=2),
        SamplingConfig(require_shape="hexagon"),
    ],
)
def test_bad_config_raises_usage_error(config):
    with pytest.raises(UsageError):
        sample_scene(0, config)


def test_bad_spec_raises_usage_error():
    data = sample_scene(0).to_dict()
    data["groups"][0]["color"] = "pink"
    with pytest.raises(UsageError, match="color"):
        SceneSpec.from_dict(data)
    with pytest.raises(UsageError):
        SceneSpec.from_dict({"groups": []})


def test_make_clips_and_bulk_render():
    clips = make_clips(0, 100, frames=16, size=64)
    assert len(clips) == 100
    for frames, text, spec in clips:
        assert frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8
        assert spec.groups[0].color in text
    again = make_clips(0, 2, frames=16, size=64)
    assert again[1][1] == clips[1][1] and np.array_equal(again[1][0], clips[1][0])


def test_held_out_compositions():
    held_out = (("red", "triangle"), ("blue", "circle"))
    train = SamplingConfig(forbidden_color_shapes=held_out)
    pairs = {(g.color, g.shape) for s in sample_scenes(8, 200, train) for g in s.groups}
    assert not pairs & set(held_out)
    assert ("red", "circle") in pairs and ("blue", "triangle") in pairs
    test = SamplingConfig(require_color="red", require_shape="triangle", forbidden_color_shapes=held_out)
    assert all(
        (s.groups[0].color, s.groups[0].shape) == ("red", "triangle") for s in sample_scenes(8, 10, test)
    )
    with pytest.raises(UsageError, match="forbidden"):
        sample_scene(0, SamplingConfig(forbidden_color_shapes=(("pink", "circle"),)))
    with pytest.raises(UsageError, match="every allowed shape"):
        sample_scene(
            0, SamplingConfig(shape_choices=("circle",), forbidden_color_shapes=(("red", "circle"),))
        )
