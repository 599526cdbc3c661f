"""Quality measures of the world oracle against hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest

from pisces_cli.world import quality
from pisces_cli.world.quality import FLICKER_FULL_LEVELS
from pisces_cli.world.render import render
from pisces_cli.world.spec import ObjectGroup, SceneSpec
from pisces_cli.world.vision import estimate_background, observe, segment


def _gray_frames(levels: list[float]) -> np.ndarray:
    return np.stack([np.full((32, 32, 3), level, dtype=np.uint8) for level in levels])


def test_flicker_amount_is_mean_brightness_step():
    frames = _gray_frames([100, 120, 100, 130])  # steps 20, 20, 30
    assert quality.flicker_amount(frames) == pytest.approx((70 / 3) / FLICKER_FULL_LEVELS, rel=1e-4)
    assert quality.flicker_amount(_gray_frames([90] * 5)) == 0.0
    assert quality.flicker_amount(_gray_frames([0, 255, 0])) == 1.0


def test_frozen_fraction_counts_identical_pairs():
    frames = _gray_frames([10, 20, 20, 30, 30])  # pairs: diff, same, diff, same
    assert quality.frozen_fraction(frames) == 0.5
    assert quality.frozen_fraction(_gray_frames([7, 7, 7])) == 0.0  # a static clip is not "frozen"


def test_noise_level_estimates_gaussian_std():
    rng = np.random.default_rng(0)
    clean = np.full((8, 64, 64, 3), 128.0)
    for std in (5.0, 10.0, 20.0):
        noisy = np.clip(np.rint(clean + rng.normal(0, std, clean.shape)), 0, 255).astype(np.uint8)
        luma_std = std * float(np.linalg.norm([0.299, 0.587, 0.114]))
        # x - median3x3(x) has a std a little above that of x; the estimate stays within 35 %.
        assert quality.noise_level(noisy) == pytest.approx(luma_std, rel=0.35)
    assert quality.noise_level(clean.astype(np.uint8)) == 0.0


def _moving_scene(frames: int = 12) -> SceneSpec:
    return SceneSpec(
        groups=[ObjectGroup("square", "yellow", "large", "right", "fast", [(16.0, 30.0)])],
        background="black",
        frames=frames,
        size=64,
    )


def test_clean_render_is_sharp_stable_and_smooth():
    frames = render(_moving_scene())
    coverage, _ = segment(frames, estimate_background(frames))
    groups, tracks = observe(coverage, 64)
    assert quality.sharpness(coverage, 64) == 1.0
    assert quality.stability(coverage, groups) == pytest.approx(1.0, abs=0.01)
    assert quality.motion_smoothness(tracks, groups, 64) == pytest.approx(1.0, abs=0.02)
    # The centroid moves exactly 2 px per frame (fast at 64 px).
    steps = np.diff(tracks["yellow"], axis=0)
    assert np.allclose(steps, [2.0, 0.0], atol=0.02)


def test_stuttering_track_loses_smoothness():
    frames = render(_moving_scene())
    stutter = frames.copy()
    stutter[1::2] = frames[0::2][: len(stutter[1::2])]  # every other frame repeats its predecessor
    coverage, _ = segment(stutter, estimate_background(stutter))
    groups, tracks = observe(coverage, 64)
    # steps alternate 0 and 4 px around a mean of 2 px: mean deviation / mean step = 1.
    assert quality.motion_smoothness(tracks, groups, 64) == pytest.approx(0.0, abs=0.05)
