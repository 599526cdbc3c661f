"""Corruptions of the synthetic world: exact parameters, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest

from pisces_cli.errors import UsageError
from pisces_cli.world import CORRUPTION_KINDS, SceneSpec, corrupt, render, sample_scenes
from pisces_cli.world.corrupt import ATTRIBUTE_CORRUPTIONS, PIXEL_CORRUPTIONS
from pisces_cli.world.sample import SamplingConfig
from pisces_cli.world.spec import OPPOSITE_DIRECTION, ObjectGroup, velocity_px

SPECS = sample_scenes(31, 12, SamplingConfig(frames=12))
GRAY_SPEC = SceneSpec(
    groups=[ObjectGroup("circle", "red", "small", "right", "slow", [(12.0, 16.0)])],
    background="gray",
    frames=10,
    size=32,
)


@pytest.mark.parametrize("kind", CORRUPTION_KINDS)
def test_severity_zero_is_identity(kind):
    spec = SPECS[0]
    source = spec if kind in ATTRIBUTE_CORRUPTIONS else render(spec)
    frames, record = corrupt(source, kind, 0.0, 1)
    assert np.array_equal(frames, render(spec))
    assert record.kind == kind and record.severity == 0.0 and record.changed_groups == []


@pytest.mark.parametrize("kind", CORRUPTION_KINDS)
def test_deterministic_given_seed(kind):
    spec = SPECS[1]
    source = spec if kind in ATTRIBUTE_CORRUPTIONS else render(spec)
    first, record_a = corrupt(source, kind, 0.7, 5)
    second, record_b = corrupt(source, kind, 0.7, 5)
    assert np.array_equal(first, second) and record_a.to_dict() == record_b.to_dict()
    assert first.dtype == np.uint8 and first.shape == render(spec).shape


def test_flicker_offsets_are_the_recorded_ones():
    clean = render(GRAY_SPEC)
    frames, record = corrupt(clean, "flicker", 1.0, 3)
    offsets = np.asarray(record.params["offsets"])
    assert np.all(np.abs(offsets) >= 40 - 1e-6) and np.all(np.abs(offsets) <= 80 + 1e-6)
    assert np.all(np.sign(offsets[1:]) == -np.sign(offsets[:-1]))
    border_shift = frames[:, 0, 0, 0].astype(float) - clean[:, 0, 0, 0]
    assert np.allclose(border_shift, np.rint(110 + offsets) - 110)


def test_noise_std_matches_severity():
    clean = render(GRAY_SPEC)
    frames, record = corrupt(clean, "noise", 0.5, 0)
    assert record.params["std_levels"] == 30.0
    background = ~(clean == clean[0, 0, 0]).all(-1, keepdims=True).repeat(3, -1)
    diff = frames.astype(float) - clean
    assert diff[~background].std() == pytest.approx(30.0, rel=0.05)


def test_blur_sigma_and_smoothing():
    clean = render(SPECS[2])
    frames, record = corrupt(clean, "blur", 1.0)
    assert record.params["sigma_px"] == pytest.approx(2.0 * clean.shape[1] / 32)
    gradient = lambda x: np.abs(np.diff(x.astype(float), axis=2)).max()  # noqa: E731
    assert gradient(frames) < 0.5 * gradient(clean)
    assert frames.astype(float).mean() == pytest.approx(clean.astype(float).mean(), abs=1.0)


def test_frozen_frames_repeat_their_predecessor():
    clean = render(GRAY_SPEC)
    frames, record = corrupt(clean, "frozen", 1.0, 2)
    held = record.params["held_frames"]
    assert len(held) == round((GRAY_SPEC.frames - 1) / 2)
    for t in range(1, GRAY_SPEC.frames):
        if t in held:
            assert np.array_equal(frames[t], frames[t - 1])
        else:
            assert np.array_equal(frames[t], clean[t])


def test_attribute_corruptions_change_only_their_attribute():
    for index, spec in enumerate(SPECS):
        for kind in ATTRIBUTE_CORRUPTIONS:
            frames, record = corrupt(spec, kind, 1.0, index)
            changed = SceneSpec.from_dict(record.spec)
            assert np.array_equal(frames, render(changed))
            assert record.changed_groups == list(range(len(spec.groups)))  # severity 1: every group
            for before, after in zip(spec.groups, changed.groups, strict=True):
                same = ("shape", "size", "speed")
                assert all(getattr(before, a) == getattr(after, a) for a in same)
                if kind == "wrong_color":
                    assert after.color != before.color and after.color not in {g.color for g in spec.groups}
                    assert after.starts == before.starts and after.direction == before.direction
                elif kind == "wrong_count":
                    assert abs(after.count - before.count) == 1 and after.color == before.color
                else:
                    assert after.direction != before.direction and after.color == before.color
                    if before.direction in OPPOSITE_DIRECTION:
                        assert after.direction == OPPOSITE_DIRECTION[before.direction]
                        vx, vy = velocity_px(before.direction, before.speed, spec.size)
                        travel = np.array([vx, vy]) * (spec.frames - 1)
                        assert np.allclose(np.array(after.starts), np.array(before.starts) + travel)
            assert spec.to_dict() != changed.to_dict()


def test_partial_severity_changes_fewer_groups():
    spec = next(s for s in SPECS if len(s.groups) == 3)
    _, record = corrupt(spec, "wrong_color", 0.3, 0)
    assert len(record.changed_groups) == 1
    _, record = corrupt(spec, "wrong_color", 0.5, 0)
    assert len(record.changed_groups) == 2


def test_errors():
    clean = render(SPECS[0])
    with pytest.raises(UsageError, match="kind"):
        corrupt(clean, "rotate", 0.5)
    with pytest.raises(UsageError, match="severity"):
        corrupt(clean, "noise", 1.5)
    with pytest.raises(UsageError, match="SceneSpec"):
        corrupt(clean, "wrong_color", 0.5)
    with pytest.raises(UsageError, match="uint8"):
        corrupt(clean.astype(np.float32), "noise", 0.5)
    assert set(PIXEL_CORRUPTIONS) | set(ATTRIBUTE_CORRUPTIONS) == set(CORRUPTION_KINDS)
