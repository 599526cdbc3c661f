"""A torch ``Dataset`` that decodes, samples and preprocesses videos in DataLoader workers.

Each item is decoded in the worker process (so decoding overlaps model compute in the
main process), ``num_frames`` frames are chosen, and the clip is preprocessed to
``[T, 3, size, size]``. A bad item never raises: it comes back as an error row, and
:func:`collate_video_items` batches the good clips while passing error rows through.

Frame choice (``sampling``):
- ``frame_rate=None``: ``"uniform"`` (:func:`~pisces_cli.io.video.uniform_indices`, default) or
  ``"middle"`` (VBench, :func:`~pisces_cli.io.video.vbench_middle_indices`).
- ``frame_rate=R``: resample the video to R fps from frame 0 (:func:`~pisces_cli.io.video.fps_indices`),
  keep the first ``num_frames``; a shorter video is padded by repeating its last sampled frame.

Random crops are seeded per item from ``(seed, index)``, so results do not depend on the
number of workers or their scheduling; order is the order of ``items`` (no shuffling).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from pisces_cli.errors import PiscesError, UsageError
from pisces_cli.io.preprocess import Preprocessing, preprocess_clip
from pisces_cli.io.prompts import VideoItem, read_item_bytes
from pisces_cli.io.video import fps_indices, read_clip, uniform_indices, vbench_middle_indices

__all__ = [
    "ClipDataset",
    "FrameSelector",
    "VideoBatch",
    "collate_video_items",
    "frame_selector",
    "make_loader",
]

Sampling = Literal["uniform", "middle"]


@dataclass(frozen=True)
class FrameSelector:
    """Picklable ``select(total, fps) -> indices`` giving exactly ``num_frames`` indices.

    Rules: see the module docstring. Build it with :func:`frame_selector` (validates arguments).
    """

    num_frames: int
    frame_rate: float | None = None
    sampling: Sampling = "uniform"

    def __call__(self, total: int, fps: float) -> list[int]:
        if self.frame_rate is not None:
            chosen = fps_indices(total, fps, self.frame_rate, max_frames=self.num_frames)
            return chosen + [chosen[-1]] * (self.num_frames - len(chosen))
        if self.sampling == "middle":
            return vbench_middle_indices(total, self.num_frames)
        return uniform_indices(total, self.num_frames)


def frame_selector(
    num_frames: int, frame_rate: float | None = None, sampling: Sampling = "uniform"
) -> FrameSelector:
    """A validated :class:`FrameSelector`."""
    if num_frames <= 0:
        raise UsageError(f"num_frames must be positive, got {num_frames}")
    if sampling not in ("uniform", "middle"):
        raise UsageError(f"unknown sampling {sampling!r}; expected 'uniform' or 'middle'")
    if frame_rate is not None and not frame_rate > 0:
        raise UsageError(f"frame_rate must be positive, got {frame_rate}")
    return FrameSelector(num_frames, frame_rate, sampling)


class ClipDataset(Dataset):
    """Decoded, sampled, preprocessed clips of :class:`VideoItem` records.

    ``dataset[i]`` returns a dict with ``index``, ``key``, ``source``, ``prompt``, ``error``
    and ``clip``: float32 ``[num_frames, 3, size, size]`` (normalised), or ``None`` with
    ``error`` set when the item could not be used. Never raises for a bad video.
    """

    def __init__(
        self,
        items: Sequence[VideoItem],
        *,
        num_frames: int,
        preprocessing: Preprocessing,
        frame_rate: float | None = None,
        sampling: Sampling = "uniform",
        crop: Literal["center", "random"] = "center",
        seed: int = 0,
        decoder: str = "auto",
    ) -> None:
        self.items = list(items)
        self.num_frames = num_frames
        self.preprocessing = preprocessing
        self.crop = crop
        self.seed = seed
        self.decoder = decoder
        self._select = frame_selector(num_frames, frame_rate, sampling)
        if crop not in ("center", "random"):
            raise UsageError(f"unknown crop {crop!r}; expected 'center' or 'random'")

    def __len__(self) -> int:
        return len(self.items)

    def _row(
        self, index: int, item: VideoItem, clip: torch.Tensor | None, error: str | None
    ) -> dict[str, Any]:
        return {
            "index": index,
            "key": item.key,
            "source": item.source,
            "prompt": item.prompt,
            "clip": clip,
            "error": error,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        if item.error is not None:
            return self._row(index, item, None, item.error)
        try:
            source = read_item_bytes(item) if item.member is not None else item.source
            frames, _info, _indices = read_clip(source, self._select, decoder=self.decoder, name=item.source)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            prep = self.preprocessing
            clip = preprocess_clip(
                frames,
                size=prep.size,
                mean=prep.mean,
                std=prep.std,
                interpolation=prep.interpolation,
                antialias=prep.antialias,
                crop=self.crop,
                generator=generator,
            )
        except PiscesError as exc:
            return self._row(index, item, None, str(exc))
        except Exception as exc:  # an unexpected failure must not kill the worker
            return self._row(index, item, None, f"{item.source}: {type(exc).__name__}: {exc}")
        return self._row(index, item, clip, None)


@dataclass
class VideoBatch:
    """A collated batch.

    Attributes:
        clips: float32 ``[B, T, 3, size, size]`` of the good items, or ``None`` if none was good.
        indices, keys, prompts, sources: per good item, aligned with ``clips``.
        errors: error rows ``{"index", "key", "source", "prompt", "error"}`` of the bad items.
    """

    clips: torch.Tensor | None
    indices: list[int]
    keys: list[str]
    prompts: list[str | None]
    sources: list[str]
    errors: list[dict[str, Any]] = field(default_factory=list)


def collate_video_items(rows: Sequence[dict[str, Any]]) -> VideoBatch:
    """Stack the clips of good rows; pass error rows through unchanged (minus ``clip``)."""
    good = [row for row in rows if row["error"] is None]
    errors = [{k: v for k, v in row.items() if k != "clip"} for row in rows if row["error"] is not None]
    clips = torch.stack([row["clip"] for row in good]) if good else None
    return VideoBatch(
        clips=clips,
        indices=[row["index"] for row in good],
        keys=[row["key"] for row in good],
        prompts=[row["prompt"] for row in good],
        sources=[row["source"] for row in good],
        errors=errors,
    )


def make_loader(
    items: Sequence[VideoItem],
    *,
    num_frames: int,
    frame_rate: float | None = None,
    preprocessing: Preprocessing,
    batch_size: int,
    num_workers: int,
    crop: Literal["center", "random"] = "center",
    seed: int = 0,
    sampling: Sampling = "uniform",
    decoder: str = "auto",
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A deterministic-order ``DataLoader`` of :class:`VideoBatch` over ``items``.

    Decoding and preprocessing run in ``num_workers`` worker processes (0 = in the main process).
    """
    if batch_size <= 0:
        raise UsageError(f"batch_size must be positive, got {batch_size}")
    if num_workers < 0:
        raise UsageError(f"num_workers must be >= 0, got {num_workers}")
    dataset = ClipDataset(
        items,
        num_frames=num_frames,
        preprocessing=preprocessing,
        frame_rate=frame_rate,
        sampling=sampling,
        crop=crop,
        seed=seed,
        decoder=decoder,
    )
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra["persistent_workers"] = False
        if prefetch_factor is not None:
            extra["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_video_items,
        **extra,
    )
