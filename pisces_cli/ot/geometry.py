"""Frame index and 2-D position of every video token (method.md §4.3)."""

from __future__ import annotations

import torch
from torch import Tensor

from pisces_cli.errors import UsageError


def video_token_geometry(
    num_frames: int,
    grid_h: int,
    grid_w: int,
    has_cls: bool = True,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Geometry of ``M = [1 +] num_frames * grid_h * grid_w`` video tokens, CLS first, frame-major.

    Returns:
        ``frame_index [M]``: -1 for the visual CLS, then ``0 .. F-1`` each repeated ``grid_h * grid_w``
        times; ``coords [M, 2]``: (row, col) from ``linspace(0, 1, grid)`` in 'ij' order (row-major within
        a frame, tiled over frames), ``(-1, -1)`` for the CLS. Matches ``build_video_token_geometry`` of
        the PISCES code (there with a fixed 16 x 16 grid).
    """
    if num_frames < 1 or grid_h < 1 or grid_w < 1:
        raise UsageError(
            f"video_token_geometry: num_frames, grid_h, grid_w must be >= 1, got {num_frames}, {grid_h}, {grid_w}"
        )
    per_frame = grid_h * grid_w
    frames = torch.arange(num_frames, dtype=dtype, device=device).repeat_interleave(per_frame)
    rows, cols = torch.meshgrid(
        torch.linspace(0, 1, grid_h, dtype=dtype, device=device),
        torch.linspace(0, 1, grid_w, dtype=dtype, device=device),
        indexing="ij",
    )
    coords = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1).repeat(num_frames, 1)
    if has_cls:
        frames = torch.cat([torch.full((1,), -1.0, dtype=dtype, device=device), frames])
        coords = torch.cat([torch.full((1, 2), -1.0, dtype=dtype, device=device), coords])
    return frames, coords
