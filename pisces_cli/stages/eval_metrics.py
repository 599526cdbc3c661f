"""Per-video metrics of ``pisces eval`` that need no model download, and their documented formulas.

Two sources:

- **Encoder frame features** (the recipe's reward encoder, the frames sampled for the reward):
  ``subject_consistency`` from the per-frame global embeddings ``[T, D]``
  (:attr:`VideoFeatures.frame_embeddings`; for a backend without them, the mean of each frame's
  patch tokens, stated in ``eval.json``) and ``background_consistency`` from the mean of each frame's
  patch tokens ``[T, Dv]`` (every patch counts equally, so the background dominates). Both use VBench's
  formula (:func:`pisces_cli.evaluation.temporal.consistency_score`) but not VBench's DINO / CLIP
  models: they are encoder-feature analogues, comparable between runs with the same encoder only.
- **Native pixels** (every decoded frame): ``frame_stability`` (VBench's flicker formula on every video),
  ``temporal_flickering`` (the same value, kept only for the videos a Farnebäck proxy of VBench's RAFT
  static filter calls static: VBench scores flicker on static videos only) and ``dynamic_degree`` (a
  Farnebäck proxy of VBench's RAFT rule, :func:`pisces_cli.evaluation.temporal.dynamic_degree_proxy`).

One name, one meaning: a metric's per-video value, its dataset value in ``eval`` and its per-prompt value in
``eval compare`` are the same quantity (``temporal_flickering`` is null for a video that is not static,
everywhere). :data:`VBENCH_DIFFERENCES` says, for each metric named after a VBench dimension, how it differs
from VBench's definition; ``eval`` and ``eval compare`` print it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from pisces_cli.encoders.base import VideoFeatures

REWARD_METRICS = ("quality", "semantic", "quality_no_ot", "total")
FEATURE_METRICS = ("subject_consistency", "background_consistency")
PIXEL_METRICS = ("temporal_flickering", "frame_stability", "dynamic_degree")

METRIC_FORMULAS: dict[str, str] = {
    "quality": "cos(E_v(v), T(n(E_t(c)))): video embedding vs OT-mapped caption embedding (PISCES quality reward)",
    "semantic": "token-level partial-OT semantic reward of the encoder backend (PISCES semantic reward)",
    "quality_no_ot": "cos(E_v(v), E_t(c)): the plain video-text cosine, no OT map",
    "total": "w_q * quality + w_s * semantic (reward.weights)",
    "subject_consistency": (
        "mean_{t>=2} 1/2[max(0, cos(f_{t-1}, f_t)) + max(0, cos(f_1, f_t))] on the encoder's per-frame "
        "global embeddings f_t of the T frames sampled for the reward (VBench formula; encoder analogue of "
        "VBench's DINO features). Dataset value: pair-weighted mean, Σ_v Σ_t s_t / Σ_v (T_v - 1)"
    ),
    "background_consistency": (
        "same formula on f_t = mean of frame t's patch tokens (encoder analogue of VBench's CLIP features). "
        "Dataset value: pair-weighted mean"
    ),
    "temporal_flickering": (
        "1 - mean_t MAE(frame_t, frame_{t+1}) / 255 over every native uint8 frame (VBench formula), for STATIC "
        "videos only (static = Farnebäck proxy of VBench's RAFT static filter, flow at a short side <= 256 px); "
        "null for a video that is not static, as VBench scores flicker on static-filtered videos only. "
        "Dataset value: mean over the static videos"
    ),
    "frame_stability": (
        "1 - mean_t MAE(frame_t, frame_{t+1}) / 255 over every native uint8 frame, for EVERY video (VBench's "
        "flicker formula without its static filter: motion lowers it as much as flicker; not a VBench "
        "dimension). Dataset value: mean over all videos"
    ),
    "dynamic_degree": (
        "PROXY: VBench's rule with OpenCV Farnebäck flow instead of RAFT: frames[::max(1, round(fps/8))]; per "
        "pair m = mean of the top 5% flow magnitudes; dynamic (1) if at least round(count/4) pairs have "
        "m > 6·min(H, W)/256, else 0; flow on frames downscaled to a short side <= 256 px (threshold and "
        "magnitudes in those pixels). Dataset value: fraction of dynamic videos"
    ),
}


#: how each metric named after a VBench dimension differs from VBench's definition (printed by eval and compare).
VBENCH_DIFFERENCES: dict[str, str] = {
    "subject_consistency": "VBench's formula on the reward encoder's frame features, not VBench's DINO features",
    "background_consistency": "VBench's formula on the reward encoder's patch features, not VBench's CLIP features",
    "temporal_flickering": (
        "VBench's formula on the videos a Farnebäck-flow proxy of VBench's RAFT static filter calls static "
        "(VBench filters with RAFT, so the static set can differ); frame_stability is the same formula on every video"
    ),
    "dynamic_degree": "VBench's rule with OpenCV Farnebäck flow instead of RAFT (a proxy)",
}


class FeatureTap:
    """Stands in for an encoder and keeps the :class:`VideoFeatures` of its last ``encode_video`` call.

    The reward module encodes each clip once; wrapping its encoder with this tap lets ``eval`` read the
    same per-frame features for the consistency metrics instead of encoding every clip twice.
    """

    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder
        self.last: VideoFeatures | None = None

    def encode_video(self, pixels: torch.Tensor) -> VideoFeatures:
        features = self._encoder.encode_video(pixels)
        self.last = features
        return features

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)


@dataclass(frozen=True)
class FrameFeatures:
    """Per-frame features of a batch for the consistency metrics.

    Attributes:
        subject: ``[B, T, D]`` per-frame global features (or pooled tokens, see ``subject_source``).
        background: ``[B, T, Dv]`` per-frame mean of the patch tokens, or ``None`` when the token grid
            does not have one entry per frame.
        subject_source: ``"frame_embeddings"``, ``"mean_pooled_frame_tokens"`` or ``"unavailable ..."``
            (then both arrays are ``None`` and the consistency metrics are null).
    """

    subject: np.ndarray | None
    background: np.ndarray | None
    subject_source: str


def pooled_frame_tokens(features: VideoFeatures) -> np.ndarray | None:
    """Mean over each frame's patch tokens, ``[B, T, Dv]`` (the CLS token, if any, left out).

    ``None`` when the tokens do not form ``T >= 2`` frames of ``grid_h * grid_w`` patches.
    """
    geometry = features.geometry
    tokens = features.tokens.detach().float().cpu()
    start = int(geometry.has_cls)
    patches = geometry.grid_h * geometry.grid_w
    if geometry.num_frames < 2 or tokens.shape[1] - start != geometry.num_frames * patches:
        return None
    grid = tokens[:, start:].reshape(tokens.shape[0], geometry.num_frames, patches, tokens.shape[-1])
    return grid.mean(dim=2).numpy()


def frame_features(features: VideoFeatures) -> FrameFeatures:
    """Subject / background per-frame features of a batch (see :class:`FrameFeatures`)."""
    background = pooled_frame_tokens(features)
    if features.frame_embeddings is not None and features.frame_embeddings.shape[1] >= 2:
        subject = features.frame_embeddings.detach().float().cpu().numpy()
        return FrameFeatures(subject, background, "frame_embeddings")
    if background is None:
        return FrameFeatures(None, None, "unavailable (no per-frame embeddings or per-frame token grid)")
    return FrameFeatures(background, background, "mean_pooled_frame_tokens")


@dataclass(frozen=True)
class PixelMetrics:
    """Native-pixel metrics of one video.

    Attributes:
        temporal_flickering: ``frame_stability`` when the video is static (by the proxy), else None.
        frame_stability: VBench's flicker formula in [0, 1] (1 = identical consecutive frames), any video.
        static: the Farnebäck static-filter proxy's verdict.
        dynamic_degree: 0 or 1 (Farnebäck proxy).
        flow_top5_px: per kept pair, mean of the top-5 % flow magnitudes in pixels of the flow frames
            (:func:`flow_frames`).
        flow_threshold_px: 6·min(H, W)/256 of the flow frames.
    """

    temporal_flickering: float | None
    frame_stability: float | None
    static: bool | None
    dynamic_degree: int | None
    flow_top5_px: list[float]
    flow_threshold_px: float | None


def _flow_magnitudes(first_rgb: np.ndarray, second_rgb: np.ndarray) -> np.ndarray:
    """Farnebäck flow magnitude ``[H, W]`` in pixels between two uint8 RGB frames ``[H, W, 3]``."""
    import cv2

    from pisces_cli.evaluation.temporal import _farneback_magnitudes

    first = np.ascontiguousarray(cv2.cvtColor(first_rgb, cv2.COLOR_RGB2GRAY))
    second = np.ascontiguousarray(cv2.cvtColor(second_rgb, cv2.COLOR_RGB2GRAY))
    return _farneback_magnitudes(first, second)


def _top_mean(magnitudes: np.ndarray, fraction: float) -> float:
    flat = magnitudes.ravel()
    k = max(1, int(fraction * flat.size))
    return float(np.mean(np.partition(flat, flat.size - k)[-k:]))


def is_static_proxy(frames: np.ndarray) -> bool:
    """Farnebäck proxy of VBench's static filter (docs/vbench.md §2.3) for uint8 RGB ``[T, H, W, 3]``.

    Pair score = mean of the top ⌊2 %⌋ flow magnitudes; thres = 3·min(H, W)/256; c = round(2·T/16).
    Static if at most c consecutive pairs exceed thres and neither first→last nor last→first exceeds
    thres·c·2 (VBench's rule; RAFT replaced by Farnebäck).
    """
    count, height, width = frames.shape[0], frames.shape[1], frames.shape[2]
    threshold = 3.0 * min(height, width) / 256.0
    allowed = round(2 * count / 16)
    moving = sum(
        _top_mean(_flow_magnitudes(frames[t], frames[t + 1]), 0.02) > threshold for t in range(count - 1)
    )
    if moving > allowed:
        return False
    ends = (_flow_magnitudes(frames[0], frames[-1]), _flow_magnitudes(frames[-1], frames[0]))
    return all(_top_mean(m, 0.02) <= threshold * allowed * 2 for m in ends)


FLOW_MAX_SHORT_SIDE = 256


def flow_frames(frames: np.ndarray, max_short_side: int = FLOW_MAX_SHORT_SIDE) -> np.ndarray:
    """``frames`` ``[T, H, W, 3]`` downscaled (area) so that min(H, W) <= ``max_short_side``; else unchanged.

    The flow proxies run on these: their thresholds scale with min(H, W) (VBench's rule is defined
    relative to 256 px), so the decision rule is kept while a 480p video costs ~4x less.
    """
    import cv2

    height, width = frames.shape[1:3]
    scale = max_short_side / min(height, width)
    if scale >= 1.0:
        return frames
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in frames])


def pixel_metrics(frames: np.ndarray, fps: float, *, flicker: bool, dynamic: bool) -> PixelMetrics:
    """Native-pixel metrics of one video, uint8 RGB ``[T, H, W, 3]`` at ``fps`` frames per second.

    Flicker uses the native pixels; the flow proxies use :func:`flow_frames` (short side <= 256 px).
    """
    from pisces_cli.evaluation.temporal import dynamic_degree_proxy, temporal_flickering_score

    if frames.shape[0] < 2:
        return PixelMetrics(None, None, None, None, [], None)
    small = flow_frames(frames) if flicker or dynamic else frames
    stability = static = None
    if flicker:
        stability = temporal_flickering_score(frames)
        static = is_static_proxy(small)
    degree, magnitudes, threshold = None, [], None
    if dynamic:
        result = dynamic_degree_proxy(small, fps)
        degree, magnitudes, threshold = result.is_dynamic, result.pair_magnitudes.tolist(), result.threshold
    flickering = stability if static else None
    return PixelMetrics(flickering, stability, static, degree, [round(m, 4) for m in magnitudes], threshold)
