"""The reward-encoder backend interface shared by every video-text reward model.

Every backend (``clip``, ``internvideo2``, the synthetic world's ``world`` encoder) implements
:class:`EncoderBackend`. The reward module (quality / semantic rewards) and the ``embed`` /
``score`` / ``finetune`` stages talk to reward models only through this interface.

Conventions
-----------
- ``B`` batch, ``T`` frames, ``S`` input side in pixels, ``L`` text tokens, ``M`` video tokens,
  ``D`` joint (global) embedding width, ``Dt`` / ``Dv`` token feature widths.
- Global embeddings are *not* L2-normalised: they are the input space of the OT embedding map.
- Video tokens are ordered ``[CLS] + frames * grid_h * grid_w`` (CLS only when
  ``geometry.has_cls``), frame-major, patches row-major inside a frame.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    import torch

    from pisces_cli.ot import TokenOTSettings

__all__ = [
    "EncoderBackend",
    "EncoderIdentity",
    "SemanticResult",
    "TextFeatures",
    "TokenGeometry",
    "VideoFeatures",
    "VideoPreprocessing",
]


@dataclass(frozen=True)
class VideoPreprocessing:
    """How raw frames must be prepared before :meth:`EncoderBackend.encode_video`.

    Frames in [0, 1] -> resize the short side to ``size`` (``interpolation``) -> crop
    ``size x size`` (centre by default, one crop shared by all frames of a clip) ->
    ``(x - mean) / std`` per RGB channel.

    Attributes:
        num_frames: frames per clip the encoder runs with by default; ``None`` when any count works.
        size: square input side in pixels after resize + crop.
        mean: per-channel RGB mean subtracted, in [0, 1] pixel units.
        std: per-channel RGB standard deviation divided by, in [0, 1] pixel units.
        interpolation: resize mode for the short side (``"bicubic"``, ``"bilinear"``, ``"nearest"``).
    """

    num_frames: int | None
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


@dataclass(frozen=True)
class EncoderIdentity:
    """What an encoder checkpoint will be once loaded, read from its config files without loading weights.

    Attributes:
        fingerprint: ``{"backend", "model"}`` plus ``"weights_sha256"`` when hashed: equal to
            :meth:`EncoderBackend.fingerprint` of the loaded encoder (the keys present).
        embed_dim: width ``D`` of the global embeddings (the OT map's input width).
    """

    fingerprint: dict[str, str]
    embed_dim: int


@dataclass(frozen=True)
class TokenGeometry:
    """Layout of the video tokens: ``[CLS] + num_frames * grid_h * grid_w``, frame-major, row-major.

    Attributes:
        num_frames: frames ``T`` the tokens cover.
        grid_h: patch rows per frame.
        grid_w: patch columns per frame.
        has_cls: whether token 0 is a visual [CLS] token preceding the patches.
    """

    num_frames: int
    grid_h: int
    grid_w: int
    has_cls: bool

    @property
    def num_tokens(self) -> int:
        """Total video tokens ``M = has_cls + num_frames * grid_h * grid_w``."""
        return int(self.has_cls) + self.num_frames * self.grid_h * self.grid_w


@dataclass
class TextFeatures:
    """Text-side features of a batch of captions (computed under ``no_grad``).

    Attributes:
        global_embedding: ``[B, D]`` projected text embedding, NOT L2-normalised.
        tokens: ``[B, L, Dt]`` per-token features, the OT "text" side.
        attention_mask: ``[B, L]`` bool, real (non-pad) tokens.
        lexical_mask: ``[B, L]`` bool, real tokens minus special tokens (CLS/SEP/BOS/EOS/PAD).
        token_strings: ``[B][L]`` readable tokens, for reports.
        extra: backend-specific tensors (e.g. InternVideo2's layer-18 text states for fusion).
    """

    global_embedding: Tensor
    tokens: Tensor
    attention_mask: Tensor
    lexical_mask: Tensor
    token_strings: list[list[str]]
    extra: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class VideoFeatures:
    """Video-side features of a batch of clips, differentiable w.r.t. the input pixels.

    Attributes:
        global_embedding: ``[B, D]`` projected video embedding, NOT L2-normalised.
        tokens: ``[B, M, Dv]`` video token features, the OT "video" side.
        geometry: layout of the ``M`` tokens.
        frame_embeddings: ``[B, T, D]`` per-frame embeddings when the model has them, else ``None``.
        extra: backend-specific tensors.
    """

    global_embedding: Tensor
    tokens: Tensor
    geometry: TokenGeometry
    frame_embeddings: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class SemanticResult:
    """Output of :meth:`EncoderBackend.semantic_reward`.

    Attributes:
        reward: ``[B]`` semantic reward, differentiable w.r.t. pixels through the video features.
        plan: ``[B, L, M]`` detached token transport plan for reports (averaged over heads/layers;
            zero rows for non-lexical tokens), or ``None``.
        diagnostics: named ``[B]`` tensors, e.g. ``"ot_iterations"``, ``"ot_mass"``,
            ``"ot_marginal_error"``.
    """

    reward: Tensor
    plan: Tensor | None
    diagnostics: dict[str, Tensor] = field(default_factory=dict)


class EncoderBackend(ABC):
    """A frozen video-text reward model.

    Attributes:
        name: backend name, ``"clip"``, ``"internvideo2"`` or ``"world"``.
        preprocessing: how frames must be prepared for :meth:`encode_video`.
        embed_dim: ``D``, width of the global embeddings.
    """

    name: str
    preprocessing: VideoPreprocessing
    embed_dim: int

    @abstractmethod
    def fingerprint(self) -> dict[str, str]:
        """Identity of the loaded model: ``{"backend", "model", "weights_sha256"}``."""

    @abstractmethod
    def encode_text(self, captions: list[str]) -> TextFeatures:
        """Encode ``B`` captions (under ``no_grad``)."""

    @abstractmethod
    def encode_video(self, pixels: Tensor) -> VideoFeatures:
        """Encode preprocessed clips.

        Args:
            pixels: ``[B, T, 3, S, S]`` frames already resized, cropped and normalised as
                :attr:`preprocessing` says.
        """

    @abstractmethod
    def semantic_reward(
        self,
        text: TextFeatures,
        video: VideoFeatures,
        token_ot: TokenOTSettings | None,
    ) -> SemanticResult:
        """Semantic reward of each (caption, clip) pair; ``token_ot=None`` is the "no OT" arm."""

    @abstractmethod
    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> EncoderBackend:
        """Move the model (and optionally cast it); returns ``self``."""

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary for reports and artifact metadata."""
        prep = self.preprocessing
        return {
            **self.fingerprint(),
            "embed_dim": self.embed_dim,
            "preprocessing": {
                "num_frames": prep.num_frames,
                "size": prep.size,
                "mean": list(prep.mean),
                "std": list(prep.std),
                "interpolation": prep.interpolation,
            },
        }
