"""The ``world`` reward-encoder backend: the tiny world encoder behind :class:`EncoderBackend`.

* Preprocessing: frames in [0, 1] at the checkpoint's ``size`` (bilinear resize), ``(x - 0.5) / 0.5``; any
  frame count up to ``max_frames`` works (``num_frames`` is ``None``).
* Global features: ``vision_proj`` of the attention-pooled video tokens and ``text_proj`` of the text
  ``[CLS]`` (not normalised, the OT map's input space).
* Tokens: video tokens ``[B, T·g², W]`` (no CLS, frame-major, row-major; ``TokenGeometry(T, g, g, False)``);
  text tokens = the text tower's states ``[B, L, W]`` (also ``extra["text_embeds"]``, the fusion input).
* Semantic reward: the matching probability ``softmax(itm_head(fused [CLS]))[:, 1]`` of the fusion layers run
  with cross-attention to the video tokens. With token OT, each selected fusion layer's cross-attention is
  fused with the token-OT prior (:func:`pisces_cli.ot.token_ot_prior_rows` → :func:`pisces_cli.ot.fuse_rows`)
  on lexical rows, exactly as the InternVideo2 backend does; default layers: all fusion layers but the last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pisces_cli.encoders.base import (
    EncoderBackend,
    EncoderIdentity,
    SemanticResult,
    TextFeatures,
    TokenGeometry,
    VideoFeatures,
    VideoPreprocessing,
)
from pisces_cli.encoders.fingerprint import hash_directory
from pisces_cli.encoders.prior_fusion import cross_attention_semantic_reward, select_ot_layers
from pisces_cli.errors import UsageError
from pisces_cli.ot import TokenOTSettings
from pisces_cli.world.encoder.checkpoint import load_world_encoder, read_world_config
from pisces_cli.world.encoder.model import WorldEncoder
from pisces_cli.world.encoder.tokenizer import WordTokenizer

__all__ = ["WorldEncoderBackend", "checkpoint_identity", "load_world_backend"]


def load_world_backend(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **options: Any,
) -> WorldEncoderBackend:
    """Load a world encoder checkpoint directory (``config.json`` + ``model.safetensors`` + ``vocab.json``).

    Raises:
        UsageError: an option was given (the world backend takes none), or the directory is not a checkpoint.
    """
    if options:
        raise UsageError(f"world backend: unknown option(s) {', '.join(sorted(options))}; it takes none")
    fingerprint = checkpoint_identity(path).fingerprint
    model, tokenizer = load_world_encoder(path, device=device, dtype=dtype)
    return WorldEncoderBackend(model, tokenizer, fingerprint["model"], fingerprint["weights_sha256"])


def checkpoint_identity(path: str | Path, *, weights_sha256: bool = True) -> EncoderIdentity:
    """Fingerprint (model = the directory's resolved name) and embedding width from ``config.json``."""
    directory = Path(path)
    if not directory.is_dir():
        raise UsageError(f"world backend: {path}: expected a world encoder checkpoint directory")
    config = read_world_config(directory)
    fingerprint = {"backend": WorldEncoderBackend.name, "model": directory.resolve().name}
    if weights_sha256:
        fingerprint["weights_sha256"] = hash_directory(directory)
    return EncoderIdentity(fingerprint, config.embed_dim)


class WorldEncoderBackend(EncoderBackend):
    """Frozen world encoder as a video-text reward model (see the module docstring)."""

    name = "world"

    def __init__(
        self, model: WorldEncoder, tokenizer: WordTokenizer, model_name: str, weights_sha256: str
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self._model_name = model_name
        self._weights_sha256 = weights_sha256
        config = model.config
        self.preprocessing = VideoPreprocessing(
            num_frames=None, size=config.size, mean=config.mean, std=config.std, interpolation="bilinear"
        )
        self.embed_dim = config.embed_dim

    def fingerprint(self) -> dict[str, str]:
        """``{"backend": "world", "model": <checkpoint dir name>, "weights_sha256": <weight files hash>}``."""
        return {"backend": self.name, "model": self._model_name, "weights_sha256": self._weights_sha256}

    @property
    def device(self) -> torch.device:
        return self.model.spatial_position.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.spatial_position.dtype

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> WorldEncoderBackend:
        self.model.to(device=device, dtype=dtype)
        return self

    # ------------------------------------------------------------------ text
    def encode_text(self, captions: list[str]) -> TextFeatures:
        """Encode ``B`` captions under ``no_grad`` (padded to the longest, ``<= max_text_length`` tokens).

        Returns ``global_embedding [B, D]``, ``tokens [B, L, W]`` (also ``extra["text_embeds"]``), bool
        ``attention_mask`` / ``lexical_mask [B, L]`` (lexical = real tokens minus [CLS]/[SEP]),
        ``token_strings`` and ``extra["input_ids"]``.
        """
        if isinstance(captions, str) or not captions:
            raise UsageError("world backend: encode_text expects a non-empty list of caption strings")
        encoded = self.tokenizer.encode(list(captions), self.model.config.max_text_length)
        device = self.device
        input_ids = encoded.input_ids.to(device)
        attention_mask = encoded.attention_mask.to(device)
        with torch.no_grad():
            states, global_embedding = self.model.encode_text(input_ids, attention_mask)
        return TextFeatures(
            global_embedding=global_embedding,
            tokens=states,
            attention_mask=attention_mask,
            lexical_mask=encoded.lexical_mask.to(device),
            token_strings=encoded.token_strings,
            extra={"text_embeds": states, "input_ids": input_ids},
        )

    # ------------------------------------------------------------------ video
    def encode_video(self, pixels: Tensor) -> VideoFeatures:
        """Encode preprocessed clips ``[B, T, 3, S, S]``; differentiable w.r.t. ``pixels``.

        Returns ``global_embedding [B, D]``, ``tokens [B, T·g², W]``, ``frame_embeddings [B, T, D]`` and the
        geometry ``(T, g, g, has_cls=False)``.
        """
        if pixels.ndim != 5:
            raise UsageError(f"world backend: expected pixels [B, T, 3, S, S], got {tuple(pixels.shape)}")
        tokens, global_embedding, frame_embeddings = self.model.encode_video(pixels.to(self.device))
        grid = self.model.config.grid
        return VideoFeatures(
            global_embedding=global_embedding,
            tokens=tokens,
            geometry=TokenGeometry(num_frames=pixels.shape[1], grid_h=grid, grid_w=grid, has_cls=False),
            frame_embeddings=frame_embeddings,
            extra={},
        )

    # ------------------------------------------------------------------ semantic reward
    def ot_layers(self, token_ot: TokenOTSettings) -> tuple[int, ...]:
        """Fusion layer indices (0-based) that get the OT prior (default: all but the last)."""
        return select_ot_layers(tuple(range(self.model.config.fusion_layers)), token_ot, "world")

    def semantic_reward(
        self,
        text: TextFeatures,
        video: VideoFeatures,
        token_ot: TokenOTSettings | None,
    ) -> SemanticResult:
        """Matching probability of each (caption, clip) pair, with the token-OT prior fused into the cross-attention.

        Returns ``reward [B]`` (fp32, differentiable through the video tokens), the detached ``plan [B, L, M]``
        (the OT prior averaged over heads and OT layers; zero rows off the lexical tokens; ``None`` without OT
        or with no OT layer) and, with OT, diagnostics ``ot_iterations`` (mean), ``ot_mass`` (mean),
        ``ot_marginal_error`` (max), ``ot_converged`` (all) over heads and layers, ``[B]`` each.
        """
        return cross_attention_semantic_reward(
            "world", text, video, token_ot, self.ot_layers, self.model.match_probability
        )
