"""Model-free temporal metrics on synthetic clips with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from pisces_cli.errors import UsageError
from pisces_cli.evaluation.temporal import (
    consistency_dataset_score,
    consistency_pair_scores,
    consistency_score,
    dynamic_degree_dataset_score,
    dynamic_degree_proxy,
    temporal_flickering_dataset_score,
    temporal_flickering_score,
)


def textured_background(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    return rng.integers(40, 200, size=(size, size, 3), dtype=np.uint8)


def static_clip(frames: int = 12, seed: int = 0) -> np.ndarray:
    background = textured_background(np.random.default_rng(seed))
    return np.repeat(background[None], frames, axis=0)


def moving_square_clip(speed_px: int, frames: int = 12, size: int = 16) -> np.ndarray:
    """A white square on black, moving right by ``speed_px`` per frame, uint8 [T, 64, 64, 3]."""
    clip = np.zeros((frames, 64, 64, 3), dtype=np.uint8)
    for t in range(frames):
        x = 2 + speed_px * t
        clip[t, 24 : 24 + size, x : x + size] = 255
    return clip


# ------------------------------------------------------------------------------------ consistency


def test_eval_consistency_identical_features_is_one():
    features = np.tile(np.random.default_rng(0).normal(size=(1, 32)), (8, 1))
    assert consistency_score(features) == pytest.approx(1.0)
    np.testing.assert_allclose(consistency_pair_scores(features), np.ones(7))


def test_eval_consistency_hand_computed():
    # f1 = e1, f2 = e2 (orthogonal to f1), f3 = (e1 + e2)/sqrt2, f4 = -e1
    features = np.array([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0], [-2.0, 0.0]])
    s2 = 0.5 * (0.0 + 0.0)
    s3 = 0.5 * (np.sqrt(0.5) + np.sqrt(0.5))
    s4 = 0.5 * (max(0.0, -np.sqrt(0.5)) + max(0.0, -1.0))  # negative cosines clamp to 0
    np.testing.assert_allclose(consistency_pair_scores(features), [s2, s3, s4])
    assert consistency_score(features) == pytest.approx((s2 + s3 + s4) / 3)


def test_eval_consistency_hard_cut_scores_lower():
    rng = np.random.default_rng(1)
    shot_a, shot_b = rng.normal(size=(2, 64))
    smooth = np.stack([shot_a + 0.05 * rng.normal(size=64) for _ in range(10)])
    cut = np.concatenate([smooth[:5], np.stack([shot_b + 0.05 * rng.normal(size=64) for _ in range(5)])])
    assert consistency_score(cut) < consistency_score(smooth) - 0.2


def test_eval_consistency_dataset_is_pair_weighted():
    rng = np.random.default_rng(2)
    short = rng.normal(size=(3, 16))  # 2 pairs
    long = np.tile(rng.normal(size=(1, 16)), (9, 1))  # 8 pairs, all s_t = 1
    expected = (consistency_pair_scores(short).sum() + 8.0) / 10.0
    assert consistency_dataset_score([short, long]) == pytest.approx(expected)
    video_mean = (consistency_score(short) + 1.0) / 2
    assert expected != pytest.approx(video_mean)


def test_eval_consistency_accepts_torch_and_rejects_bad_shapes():
    torch = pytest.importorskip("torch")
    features = torch.ones(4, 8)
    assert consistency_score(features) == pytest.approx(1.0)
    with pytest.raises(UsageError, match=r"\[T, D\]"):
        consistency_score(np.ones(8))
    with pytest.raises(UsageError, match="at least 2"):
        consistency_score(np.ones((1, 8)))


# ------------------------------------------------------------------------------------ flickering


def test_eval_flicker_static_clip_is_one():
    assert temporal_flickering_score(static_clip()) == pytest.approx(1.0)


def test_eval_flicker_hand_computed_and_flicker_scores_lower():
    base = static_clip(frames=6)
    flicker = base.astype(np.int16)
    flicker[1::2] += 30  # every other frame 30 levels brighter: MAE = 30 on each pair
    flicker = np.clip(flicker, 0, 255).astype(np.uint8)
    assert temporal_flickering_score(flicker) == pytest.approx(1.0 - 30.0 / 255.0)
    assert temporal_flickering_score(flicker) < temporal_flickering_score(base)
    # MAE mean over pixels and channels: change one channel of half the pixels by 255 -> MAE 255/6
    half = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    half[1, :2, :, 0] = 255
    assert temporal_flickering_score(half) == pytest.approx(1.0 - 1.0 / 6.0)


def test_eval_flicker_dataset_is_video_mean_and_checks_dtype():
    a = static_clip(frames=4)
    b = a.copy()
    b[1:] = 255 - b[1:]
    expected = (1.0 + temporal_flickering_score(b)) / 2
    assert temporal_flickering_dataset_score([a, b]) == pytest.approx(expected)
    with pytest.raises(UsageError, match="uint8"):
        temporal_flickering_score(a.astype(np.float32))


# ------------------------------------------------------------------------------------ dynamic degree


def test_eval_dynamic_proxy_static_clip_has_zero_flow():
    result = dynamic_degree_proxy(static_clip(frames=12), fps=8)
    assert result.is_dynamic == 0
    assert result.pair_magnitudes.shape == (11,)
    # Farnebäck leaves ~0.01 px of numerical flow on identical noisy frames: zero up to 0.05 px
    np.testing.assert_allclose(result.pair_magnitudes, 0.0, atol=0.05)


def test_eval_dynamic_proxy_moving_square_is_dynamic():
    result = dynamic_degree_proxy(moving_square_clip(speed_px=4), fps=8)
    assert result.threshold == pytest.approx(6 * 64 / 256)
    assert result.need == round(12 / 4) and result.step == 1 and result.count == 12
    assert result.is_dynamic == 1
    # Farnebäck recovers about the true 4 px displacement among the top 5 % of pixels
    np.testing.assert_allclose(np.median(result.pair_magnitudes), 4.0, atol=0.5)


def test_eval_dynamic_proxy_slow_square_is_static():
    result = dynamic_degree_proxy(moving_square_clip(speed_px=1), fps=8)
    assert np.all(result.pair_magnitudes < result.threshold)
    assert result.is_dynamic == 0


def test_eval_dynamic_proxy_fps_subsampling():
    clip = moving_square_clip(speed_px=2, frames=16)
    result = dynamic_degree_proxy(clip, fps=24)  # step = round(24/8) = 3 -> frames 0,3,...,15
    assert result.step == 3 and result.count == 6 and result.pair_magnitudes.shape == (5,)
    np.testing.assert_allclose(np.median(result.pair_magnitudes), 6.0, atol=0.75)
    assert dynamic_degree_proxy(clip, fps=12).step == 2  # Python round(1.5) = 2
    assert dynamic_degree_proxy(clip, fps=10).step == 1


def test_eval_dynamic_proxy_need_zero_edge_case():
    # 2 kept frames -> need = round(0.5) = 0 -> dynamic whenever one pair exists, even with no motion
    result = dynamic_degree_proxy(static_clip(frames=2), fps=8)
    assert result.need == 0 and result.pair_magnitudes.size == 1
    assert result.is_dynamic == 1


def test_eval_dynamic_dataset_is_fraction_dynamic():
    results = [
        dynamic_degree_proxy(moving_square_clip(speed_px=4), fps=8),
        dynamic_degree_proxy(static_clip(frames=12), fps=8),
    ]
    assert dynamic_degree_dataset_score(results) == pytest.approx(0.5)
