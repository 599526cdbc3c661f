"""Video preprocessing for InternVideo2: resize short side (bicubic), crop, ImageNet normalisation.

Differentiable (the reward path backpropagates through it). One crop offset for all frames of a clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pisces_cli.errors import UsageError

INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_MODES = ("center", "random")


def preprocess_video(
    pixels: Tensor,
    size: int = INPUT_SIZE,
    crop: str = "center",
    generator: torch.Generator | None = None,
    antialias: bool = True,
) -> Tensor:
    """``pixels`` [B, T, 3, H, W] in [0, 1] → normalised [B, T, 3, size, size].

    Short side scaled to ``size`` with bicubic interpolation (torchvision's tensor default ``antialias=True``),
    a ``size``×``size`` crop (``"center"``, or ``"random"``: one offset per call drawn from ``generator``, shared
    by all clips and frames as in the reference), then ``(x - mean) / std`` with the ImageNet constants.
    """
    if pixels.ndim != 5 or pixels.shape[2] != 3:
        raise UsageError(f"expected pixels [B, T, 3, H, W], got {tuple(pixels.shape)}")
    if crop not in CROP_MODES:
        raise UsageError(f"crop must be one of {CROP_MODES}, got {crop!r}")
    batch, frames, channels, height, width = pixels.shape
    flat = pixels.reshape(batch * frames, channels, height, width)
    scale = size / min(height, width)
    if scale != 1.0:
        new_size = (max(size, round(height * scale)), max(size, round(width * scale)))
        flat = F.interpolate(flat, size=new_size, mode="bicubic", align_corners=False, antialias=antialias)
    top_range, left_range = flat.shape[-2] - size, flat.shape[-1] - size
    if crop == "center":
        top, left = round(top_range / 2), round(left_range / 2)
    else:
        top = int(torch.randint(0, top_range + 1, (1,), generator=generator))
        left = int(torch.randint(0, left_range + 1, (1,), generator=generator))
    flat = flat[..., top : top + size, left : left + size]
    mean = torch.tensor(IMAGENET_MEAN, dtype=flat.dtype, device=flat.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=flat.dtype, device=flat.device).view(1, 3, 1, 1)
    return ((flat - mean) / std).reshape(batch, frames, channels, size, size)
