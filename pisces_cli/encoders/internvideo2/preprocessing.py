"""Video preprocessing for InternVideo2 (as the paper's reward): short side to 224 (bicubic), one crop, ImageNet mean/std.

A thin front for :func:`pisces_cli.io.preprocess.preprocess_pixels` with InternVideo2's defaults, so this
function and the backend's reward path (which preprocesses through the same function) crop identically.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pisces_cli.errors import UsageError
from pisces_cli.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, CropMode, preprocess_pixels

__all__ = ["CROP_MODES", "IMAGENET_MEAN", "IMAGENET_STD", "INPUT_SIZE", "preprocess_video"]

INPUT_SIZE = 224
CROP_MODES = ("center", "random")


def preprocess_video(
    pixels: Tensor,
    size: int = INPUT_SIZE,
    crop: CropMode = "center",
    generator: torch.Generator | None = None,
    antialias: bool = True,
) -> Tensor:
    """``pixels`` [B, T, 3, H, W] in [0, 1] → normalised [B, T, 3, size, size]; differentiable.

    Short side scaled to ``size`` with bicubic interpolation (torchvision's tensor default ``antialias=True``),
    a ``size``×``size`` crop (``"center"``, or ``"random"``: one offset per call drawn from ``generator``, shared
    by all clips and frames as in the reference), then ``(x - mean) / std`` with the ImageNet constants.
    """
    if crop not in CROP_MODES:
        raise UsageError(f"crop must be one of {CROP_MODES}, got {crop!r}")
    return preprocess_pixels(pixels, size=size, crop=crop, generator=generator, antialias=antialias)
