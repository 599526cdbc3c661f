"""VBench's temporal metrics that need no learned model of their own (docs/vbench.md §2.1).

* :func:`consistency_score` — subject / background consistency from per-frame features ``[T, D]`` of any
  image encoder (VBench uses DINO ViT-B/16 for subject, CLIP ViT-B/32 for background).
* :func:`temporal_flickering_score` — pixel flicker on uint8 frames ``[T, H, W, C]``.
* :func:`dynamic_degree_proxy` — a **proxy** of VBench's dynamic degree: VBench uses RAFT optical flow;
  this uses OpenCV's Farnebäck dense flow with VBench's sampling, top-5 % statistic and thresholds, so its
  0/1 decisions approximate, but do not reproduce, VBench's numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pisces_cli.errors import UsageError

_EPS = 1e-12


def _as_features(features: object, name: str = "features") -> np.ndarray:
    array = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
    if array.ndim != 2:
        raise UsageError(f"{name}: expected per-frame features [T, D], got shape {array.shape}")
    if array.shape[0] < 2:
        raise UsageError(f"{name}: consistency needs at least 2 frames, got T={array.shape[0]}")
    if not np.all(np.isfinite(array)):
        raise UsageError(f"{name}: features contain NaN or inf")
    return array


def consistency_pair_scores(features: object) -> np.ndarray:
    """Per-frame consistency terms s_t for t = 2..T (1-based), shape ``[T - 1]``.

    s_t = ½ [max(0, cos(f_{t-1}, f_t)) + max(0, cos(f_1, f_t))], with f_t the feature of frame t.

    Args:
        features: ``[T, D]`` per-frame features (numpy array or torch tensor), any scale (they are
            L2-normalised here), T >= 2.
    """
    array = _as_features(features)
    unit = array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), _EPS)
    cos_previous = np.sum(unit[1:] * unit[:-1], axis=1)
    cos_first = unit[1:] @ unit[0]
    return 0.5 * (np.maximum(cos_previous, 0.0) + np.maximum(cos_first, 0.0))


def consistency_score(features: object) -> float:
    """Video consistency score: mean over t >= 2 of s_t (see :func:`consistency_pair_scores`), in [0, 1]."""
    return float(np.mean(consistency_pair_scores(features)))


def consistency_dataset_score(per_video_features: Iterable[object]) -> float:
    """VBench's dimension aggregate, pair-weighted: Σ_videos Σ_t s_t / Σ_videos (T_v − 1).

    Longer videos weigh more than in a mean of :func:`consistency_score` over videos.
    """
    total, pairs = 0.0, 0
    for index, features in enumerate(per_video_features):
        scores = consistency_pair_scores(_as_features(features, f"video {index} features"))
        total += float(scores.sum())
        pairs += scores.size
    if pairs == 0:
        raise UsageError("consistency_dataset_score: no videos given")
    return total / pairs


def _as_frames(frames: object, name: str = "frames") -> np.ndarray:
    array = np.asarray(frames)
    if array.ndim != 4:
        raise UsageError(f"{name}: expected uint8 frames [T, H, W, C], got shape {array.shape}")
    if array.dtype != np.uint8:
        raise UsageError(f"{name}: expected dtype uint8 (pixels 0..255), got {array.dtype}")
    if array.shape[0] < 2:
        raise UsageError(f"{name}: needs at least 2 frames, got T={array.shape[0]}")
    return array


def temporal_flickering_score(frames: object) -> float:
    """1 − mean_t MAE(frame_t, frame_{t+1}) / 255, MAE over all pixels and channels.

    VBench computes this only on *static* videos (after its static filter); on moving videos the score
    mixes motion with flicker and is not meaningful.

    Args:
        frames: uint8 ``[T, H, W, C]``, T >= 2 (channel order does not matter).

    Returns:
        Score in [0, 1]; 1 for a clip whose frames are identical.
    """
    array = _as_frames(frames)
    pair_mae = [
        float(np.mean(np.abs(array[t + 1].astype(np.float32) - array[t].astype(np.float32))))
        for t in range(array.shape[0] - 1)
    ]
    return 1.0 - float(np.mean(pair_mae)) / 255.0


def temporal_flickering_dataset_score(per_video_frames: Iterable[object]) -> float:
    """VBench's aggregate: mean of :func:`temporal_flickering_score` over videos."""
    scores = [temporal_flickering_score(frames) for frames in per_video_frames]
    if not scores:
        raise UsageError("temporal_flickering_dataset_score: no videos given")
    return float(np.mean(scores))


@dataclass(frozen=True)
class DynamicDegreeProxy:
    """Result of :func:`dynamic_degree_proxy` (a Farnebäck proxy of VBench's RAFT dynamic degree).

    Attributes:
        is_dynamic: 1 if at least ``need`` pairs have a top-5 % flow magnitude above ``threshold``, else 0.
        pair_magnitudes: ``[count - 1]`` mean of the largest ⌊0.05·H·W⌋ flow magnitudes per kept pair,
            pixels per kept step.
        threshold: 6 · min(H, W) / 256, pixels.
        need: round(count / 4) pairs.
        step: frame subsampling step, max(1, round(fps / 8)).
        count: number of frames kept after subsampling.
    """

    is_dynamic: int
    pair_magnitudes: np.ndarray
    threshold: float
    need: int
    step: int
    count: int


def _farneback_magnitudes(previous_gray: np.ndarray, next_gray: np.ndarray) -> np.ndarray:
    """Flow magnitude ``[H, W]`` (pixels) from OpenCV Farnebäck with its customary parameters."""
    import cv2

    flow = cv2.calcOpticalFlowFarneback(
        previous_gray,
        next_gray,
        None,
        pyr_scale=0.5,
        levels=3,
        winsize=15,
        iterations=3,
        poly_n=5,
        poly_sigma=1.2,
        flags=0,
    )
    return np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)


def dynamic_degree_proxy(frames: object, fps: float) -> DynamicDegreeProxy:
    """PROXY of VBench's dynamic degree using Farnebäck flow instead of RAFT.

    Follows VBench's decision rule: keep frames ``frames[::step]`` with step = max(1, round(fps / 8))
    (Python rounding); per consecutive kept pair m = mean of the ⌊0.05·H·W⌋ largest flow magnitudes;
    thres = 6·min(H, W)/256; need = round(count / 4); dynamic if at least ``need`` pairs have m > thres
    (need = 0: dynamic whenever there is at least one pair).

    Args:
        frames: uint8 RGB ``[T, H, W, 3]`` (or ``[T, H, W, 1]`` grey), native resolution.
        fps: frame rate of ``frames`` in frames per second.
    """
    import cv2

    array = _as_frames(frames)
    if not fps > 0:
        raise UsageError(f"dynamic_degree_proxy: fps must be > 0, got {fps}")
    if array.shape[-1] not in (1, 3):
        raise UsageError(f"dynamic_degree_proxy: expected 1 or 3 channels, got {array.shape[-1]}")
    step = max(1, round(fps / 8))
    kept = array[::step]
    count = kept.shape[0]
    height, width = kept.shape[1:3]
    top_k = max(1, int(0.05 * height * width))
    threshold = 6.0 * min(height, width) / 256.0
    need = round(count / 4)

    grays = [
        frame[..., 0] if frame.shape[-1] == 1 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in kept
    ]
    magnitudes = []
    for previous_gray, next_gray in zip(grays[:-1], grays[1:], strict=True):
        flat = _farneback_magnitudes(
            np.ascontiguousarray(previous_gray), np.ascontiguousarray(next_gray)
        ).ravel()
        magnitudes.append(float(np.mean(np.partition(flat, flat.size - top_k)[-top_k:])))
    pair_magnitudes = np.asarray(magnitudes, dtype=np.float64)
    above = int(np.sum(pair_magnitudes > threshold))
    if need == 0:
        is_dynamic = int(pair_magnitudes.size > 0)
    else:
        is_dynamic = int(above >= need)
    return DynamicDegreeProxy(
        is_dynamic=is_dynamic,
        pair_magnitudes=pair_magnitudes,
        threshold=threshold,
        need=need,
        step=step,
        count=count,
    )


def dynamic_degree_dataset_score(results: Iterable[DynamicDegreeProxy]) -> float:
    """VBench's aggregate: the fraction of dynamic videos (mean of the 0/1 decisions)."""
    decisions = [result.is_dynamic for result in results]
    if not decisions:
        raise UsageError("dynamic_degree_dataset_score: no videos given")
    return float(np.mean(decisions))
