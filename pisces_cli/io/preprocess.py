"""Clip preprocessing for video encoders: short-side resize, one shared crop, normalisation.

Rule (InternVideo2 ``ResizeCropMinSize`` + ``Normalize``, method.md §3):

1. s = size / min(H, W). If s ≠ 1, resize every frame to (round(H·s), round(W·s)) with
   ``torch.nn.functional.interpolate`` (``bicubic`` by default, ``align_corners=False``,
   ``antialias=True`` by default), so the short side becomes exactly ``size`` and the aspect is kept.
2. One ``size × size`` crop window for all frames (and, in :func:`preprocess_pixels`, for the
   whole batch, as the reference applies RandomCrop once to the stacked tensor): centred
   (offset floor((H' − size)/2), floor((W' − size)/2)) or random (offsets uniform in
   [0, H' − size] × [0, W' − size], drawn from ``generator``).
3. (x − mean) / std per channel.

:func:`preprocess_clip` is for decoded 8-bit frames: it clamps the resized pixels to [0, 1]
as an 8-bit resize would. :func:`preprocess_pixels` is the differentiable variant for
generator outputs already in [0, 1]: no clamp, no dtype/device change, autograd kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from pisces_cli.errors import UsageError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CropWindow",
    "Preprocessing",
    "crop_offsets",
    "crop_window",
    "preprocess_clip",
    "preprocess_pixels",
    "resized_shape",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

CropMode = Literal["center", "random"]


@dataclass(frozen=True)
class Preprocessing:
    """Settings of :func:`preprocess_clip` / :func:`preprocess_pixels` (InternVideo2 defaults)."""

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    antialias: bool = True


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(round(H·s), round(W·s)) with s = size / min(H, W); the short side becomes exactly ``size``."""
    if height <= 0 or width <= 0:
        raise UsageError(f"frame size must be positive, got {height}x{width}")
    if size <= 0:
        raise UsageError(f"preprocessing size must be positive, got {size}")
    scale = size / min(height, width)
    new_h = size if height <= width else int(round(height * scale))
    new_w = size if width <= height else int(round(width * scale))
    return new_h, new_w


def crop_offsets(
    height: int, width: int, size: int, crop: CropMode = "center", generator: torch.Generator | None = None
) -> tuple[int, int]:
    """Top-left corner (top, left) of a ``size × size`` crop in an ``height × width`` frame."""
    if height < size or width < size:
        raise UsageError(f"cannot crop {size}x{size} from {height}x{width}")
    if crop == "center":
        return (height - size) // 2, (width - size) // 2
    if crop == "random":
        top = int(torch.randint(0, height - size + 1, (1,), generator=generator).item())
        left = int(torch.randint(0, width - size + 1, (1,), generator=generator).item())
        return top, left
    raise UsageError(f"unknown crop {crop!r}; expected 'center' or 'random'")


@dataclass(frozen=True)
class CropWindow:
    """Where the encoder's ``size × size`` input comes from in a ``height × width`` source frame.

    The frame is resized to ``resized_h × resized_w`` (:func:`resized_shape`), then the window with
    top-left corner ``(top, left)`` (resized pixels) is cut out.
    """

    height: int
    width: int
    resized_h: int
    resized_w: int
    top: int
    left: int
    size: int

    def source_box(self) -> tuple[float, float, float, float]:
        """The window in source-frame pixels: ``(x0, y0, x1, y1)`` (floats; x = column, y = row)."""
        scale_y = self.resized_h / self.height
        scale_x = self.resized_w / self.width
        return (
            self.left / scale_x,
            self.top / scale_y,
            (self.left + self.size) / scale_x,
            (self.top + self.size) / scale_y,
        )


def crop_window(
    height: int, width: int, size: int, crop: CropMode = "center", generator: torch.Generator | None = None
) -> CropWindow:
    """The resize + crop applied to a ``height × width`` frame (the one rule :func:`preprocess_clip` uses)."""
    new_h, new_w = resized_shape(height, width, size)
    top, left = crop_offsets(new_h, new_w, size, crop, generator)
    return CropWindow(height, width, new_h, new_w, top, left, size)


def _resize_crop_normalise(
    images: torch.Tensor,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str,
    antialias: bool,
    crop: CropMode,
    generator: torch.Generator | None,
    clamp: bool,
) -> torch.Tensor:
    """images ``[N, 3, H, W]`` float → ``[N, 3, size, size]`` (one crop for all N)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise UsageError(f"expected images [N, 3, H, W], got shape {tuple(images.shape)}")
    if len(mean) != 3 or len(std) != 3:
        raise UsageError("mean and std must have 3 values (R, G, B)")
    height, width = int(images.shape[-2]), int(images.shape[-1])
    window = crop_window(height, width, size, crop, generator)
    new_h, new_w = window.resized_h, window.resized_w
    if (new_h, new_w) != (height, width):
        kwargs = {"align_corners": False} if interpolation in ("bilinear", "bicubic") else {}
        use_antialias = antialias and interpolation in ("bilinear", "bicubic")
        dtype = images.dtype  # CPU kernels have no half/bfloat16 antialiased resize: resize in float32
        upcast = images.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16)
        images = F.interpolate(
            images.float() if upcast else images,
            size=(new_h, new_w),
            mode=interpolation,
            antialias=use_antialias,
            **kwargs,
        ).to(dtype)
        if clamp:
            images = images.clamp(0.0, 1.0)
    images = images[..., window.top : window.top + size, window.left : window.left + size]
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


def preprocess_clip(
    frames,
    *,
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bicubic",
    antialias: bool = True,
    crop: CropMode = "center",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Decoded frames → normalised float32 ``[T, 3, size, size]``.

    Args:
        frames: uint8 ``[T, H, W, 3]`` RGB (numpy or torch), or float ``[T, 3, H, W]`` in [0, 1].
        size: output side in pixels (short side resized to it, then a square crop).
        mean, std: per-channel normalisation (RGB).
        interpolation: ``F.interpolate`` mode (``bicubic``, ``bilinear``, ``nearest``, ``area``).
        antialias: antialiased down-scaling (bilinear/bicubic only).
        crop: ``"center"`` or ``"random"`` (one window shared by all frames).
        generator: torch RNG for the random crop (seed it for reproducibility).
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise UsageError(f"frames must be a numpy array or torch tensor, got {type(frames).__name__}")
    if frames.dtype == torch.uint8:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise UsageError(f"uint8 frames must be [T, H, W, 3], got shape {tuple(frames.shape)}")
        images = frames.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    elif frames.is_floating_point():
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise UsageError(f"float frames must be [T, 3, H, W] in [0, 1], got shape {tuple(frames.shape)}")
        images = frames.to(torch.float32)
    else:
        raise UsageError(f"frames must be uint8 or float, got {frames.dtype}")
    return _resize_crop_normalise(
        images.contiguous(),
        size=size,
        mean=mean,
        std=std,
        interpolation=interpolation,
        antialias=antialias,
        crop=crop,
        generator=generator,
        clamp=True,
    )


def preprocess_pixels(
    pixels: torch.Tensor,
    *,
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bicubic",
    antialias: bool = True,
    crop: CropMode = "center",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Differentiable preprocessing of a video batch already in [0, 1].

    Args:
        pixels: float ``[B, T, 3, H, W]`` in [0, 1] on any device (e.g. a decoded generator output).
        size, mean, std, interpolation, antialias: as in :func:`preprocess_clip`.
        crop: ``"center"`` or ``"random"``; one window for every frame of every video.
        generator: RNG for the random crop (a CPU generator is fine for a GPU tensor).

    Returns:
        ``[B, T, 3, size, size]`` in the dtype and on the device of ``pixels``; gradients flow.
    """
    if not isinstance(pixels, torch.Tensor) or not pixels.is_floating_point():
        got = f"a {pixels.dtype} tensor" if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        hint = " (uint8 frames: pixels.float() / 255)" if got == "a torch.uint8 tensor" else ""
        raise UsageError(f"pixels must be a floating torch tensor [B, T, 3, H, W] in [0, 1], got {got}{hint}")
    if pixels.ndim != 5 or pixels.shape[2] != 3:
        raise UsageError(f"pixels must be [B, T, 3, H, W], got shape {tuple(pixels.shape)}")
    batch, frames = int(pixels.shape[0]), int(pixels.shape[1])
    flat = pixels.reshape(batch * frames, *pixels.shape[2:])
    out = _resize_crop_normalise(
        flat,
        size=size,
        mean=mean,
        std=std,
        interpolation=interpolation,
        antialias=antialias,
        crop=crop,
        generator=generator,
        clamp=False,
    )
    return out.reshape(batch, frames, 3, size, size)
