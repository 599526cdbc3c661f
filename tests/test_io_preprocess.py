"""Short-side resize, shared crop and normalisation of pisces_cli.io.preprocess, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pisces_cli.errors import UsageError
from pisces_cli.io.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    crop_offsets,
    preprocess_clip,
    preprocess_pixels,
    resized_shape,
)

MEAN = np.array(IMAGENET_MEAN, np.float64).reshape(1, 3, 1, 1)
STD = np.array(IMAGENET_STD, np.float64).reshape(1, 3, 1, 1)


def normalise_by_hand(images_tchw: np.ndarray) -> np.ndarray:
    """images float in [0, 1], [T, 3, H, W] -> (x - mean) / std."""
    return (images_tchw - MEAN) / STD


def random_uint8(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_resized_shape_rule():
    assert resized_shape(720, 1280, 224) == (224, 398)  # method.md §3 example
    assert resized_shape(48, 64, 32) == (32, 43)  # 64·32/48 = 42.67 -> 43
    assert resized_shape(64, 48, 32) == (43, 32)
    assert resized_shape(224, 224, 224) == (224, 224)
    assert resized_shape(100, 300, 50) == (50, 150)


def test_identity_size_is_plain_normalisation():
    frames = random_uint8((3, 8, 8, 3))
    out = preprocess_clip(frames, size=8)
    expected = normalise_by_hand(frames.transpose(0, 3, 1, 2).astype(np.float64) / 255.0)
    assert out.shape == (3, 3, 8, 8) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_center_crop_offsets_without_resize():
    # short side already equals size: only the crop acts; columns 3..10 of 14 survive
    frames = random_uint8((2, 8, 14, 3), seed=1)
    out = preprocess_clip(frames, size=8)
    cropped = frames[:, :, 3:11].transpose(0, 3, 1, 2).astype(np.float64) / 255.0
    np.testing.assert_allclose(out.numpy(), normalise_by_hand(cropped), atol=1e-5)
    assert crop_offsets(8, 14, 8) == (0, 3)
    assert crop_offsets(15, 8, 8) == (3, 0)


def test_area_downscale_matches_block_means():
    # 16x20 -> short side 8: s = 0.5, resized 8x10 (2x2 block means), centre crop columns 1..8
    frames = random_uint8((2, 16, 20, 3), seed=2)
    out = preprocess_clip(frames, size=8, interpolation="area")
    images = frames.transpose(0, 3, 1, 2).astype(np.float64) / 255.0
    blocks = images.reshape(2, 3, 8, 2, 10, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(out.numpy(), normalise_by_hand(blocks[..., 1:9]), atol=1e-5)


def test_bicubic_keeps_a_constant_frame_constant_and_has_the_right_shape():
    frames = np.full((4, 48, 64, 3), (51, 102, 204), np.uint8)
    out = preprocess_clip(frames, size=32)
    assert out.shape == (4, 3, 32, 32)
    expected = (np.array([51, 102, 204]) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out.mean(dim=(0, 2, 3)).numpy(), expected, atol=1e-5)
    assert float(out.std(dim=(0, 2, 3)).max()) < 1e-5


def test_bicubic_downscale_is_antialiased_by_default():
    # a 1-px checkerboard averages to grey when antialiased; without antialias it aliases
    board = (np.indices((48, 48)).sum(axis=0) % 2 * 255).astype(np.uint8)  # 3x downscale: samples hit pixels
    frames = np.repeat(board[None, :, :, None], 3, axis=3)
    smooth = preprocess_clip(frames, size=16, mean=(0, 0, 0), std=(1, 1, 1))
    aliased = preprocess_clip(frames, size=16, mean=(0, 0, 0), std=(1, 1, 1), antialias=False)
    assert float((smooth - 0.5).abs().max()) < 0.02
    assert float((aliased - 0.5).abs().max()) > 0.2


def test_float_input_equals_uint8_input():
    frames = random_uint8((3, 20, 30, 3), seed=3)
    as_float = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    torch.testing.assert_close(preprocess_clip(frames, size=12), preprocess_clip(as_float, size=12))
    torch.testing.assert_close(
        preprocess_clip(torch.from_numpy(frames), size=12), preprocess_clip(frames, size=12)
    )


def find_left_offset(out_frame: np.ndarray, image: np.ndarray, size: int) -> int:
    for left in range(image.shape[-1] - size + 1):
        if np.allclose(out_frame, image[..., left : left + size], atol=1e-5):
            return left
    raise AssertionError("output is no crop of the input")


def test_random_crop_is_one_window_for_all_frames_and_seeded():
    frames = random_uint8((4, 8, 20, 3), seed=4)
    hand = normalise_by_hand(frames.transpose(0, 3, 1, 2).astype(np.float64) / 255.0)
    lefts = set()
    for seed in range(8):
        out = preprocess_clip(frames, size=8, crop="random", generator=torch.Generator().manual_seed(seed))
        per_frame = {find_left_offset(out[t].numpy(), hand[t], 8) for t in range(4)}
        assert len(per_frame) == 1  # the same window in every frame
        lefts |= per_frame
        again = preprocess_clip(frames, size=8, crop="random", generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(out, again)
    assert len(lefts) > 1  # different seeds move the window


def test_custom_mean_std():
    frames = np.full((1, 4, 4, 3), 255, np.uint8)
    out = preprocess_clip(frames, size=4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.125))
    assert out[0, :, 0, 0].tolist() == pytest.approx([1.0, 2.0, 4.0])


def test_preprocess_pixels_matches_clip_path_per_video():
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 3, 24, 40)
    batched = preprocess_pixels(pixels, size=16, interpolation="bilinear")
    assert batched.shape == (2, 3, 3, 16, 16)
    for b in range(2):
        # bilinear with antialias is a convex combination: no overshoot, so the clamp cannot differ
        torch.testing.assert_close(batched[b], preprocess_clip(pixels[b], size=16, interpolation="bilinear"))


def test_preprocess_pixels_random_crop_is_shared_across_the_batch():
    torch.manual_seed(1)
    pixels = torch.rand(2, 2, 3, 8, 20)  # short side 8 = size: crop only
    out = preprocess_pixels(pixels, size=8, crop="random", generator=torch.Generator().manual_seed(3))
    hand = normalise_by_hand(pixels.double().numpy().reshape(4, 3, 8, 20)).reshape(2, 2, 3, 8, 20)
    lefts = {find_left_offset(out[b, t].numpy(), hand[b, t], 8) for b in range(2) for t in range(2)}
    assert len(lefts) == 1


def test_preprocess_pixels_keeps_gradients():
    pixels = torch.rand(1, 2, 3, 12, 18, requires_grad=True)
    out = preprocess_pixels(pixels, size=8)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    assert pixels.grad is not None
    assert torch.isfinite(pixels.grad).all()
    assert float(pixels.grad.abs().sum()) > 0
    # the crop drops columns: grad of the bicubic footprint outside the window is zero only far away
    assert pixels.grad.shape == pixels.shape


def test_preprocess_pixels_gradcheck_double():
    pixels = torch.rand(1, 2, 3, 6, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: preprocess_pixels(x, size=4), (pixels,))
    out = preprocess_pixels(pixels, size=4)
    assert out.dtype == torch.float64


def test_bad_inputs_are_usage_errors():
    with pytest.raises(UsageError, match=r"uint8 frames must be \[T, H, W, 3\]"):
        preprocess_clip(np.zeros((2, 3, 8, 8), np.uint8), size=4)
    with pytest.raises(UsageError, match=r"float frames must be \[T, 3, H, W\]"):
        preprocess_clip(np.zeros((2, 8, 8, 3), np.float32), size=4)
    with pytest.raises(UsageError, match="unknown crop"):
        preprocess_clip(np.zeros((1, 8, 8, 3), np.uint8), size=4, crop="left")
    with pytest.raises(UsageError, match=r"pixels must be \[B, T, 3, H, W\]"):
        preprocess_pixels(torch.zeros(2, 3, 8, 8), size=4)
    with pytest.raises(UsageError, match="size must be positive"):
        preprocess_clip(np.zeros((1, 8, 8, 3), np.uint8), size=0)
