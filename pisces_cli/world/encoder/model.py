"""The world encoder: a tiny video-text model with a fusion (matching) head, in plain PyTorch.

Video tower (per clip ``[B, T, 3, S, S]``, normalised pixels):

1. per frame, the frame and its forward difference ``x_{t+1} - x_t`` (zero for the last frame) are stacked
   (6 channels) and a conv stem of ``log2(patch)`` stride-2 convs maps them to a ``g x g`` grid of ``width``-dim
   tokens (``g = S / patch``), plus a learned spatial position embedding;
2. ``spatial_layers`` pre-norm transformer layers per frame;
3. a learned temporal embedding (``max_frames`` rows) and ``temporal_layers`` layers over all ``T·g²`` tokens;
4. tokens ``[B, T·g², width]`` (frame-major, row-major; no CLS) after a final LayerNorm; the global embedding
   is ``vision_proj`` of an attention pooling (one learned query) over the tokens; frame embeddings are
   ``vision_proj`` of each frame's mean token.

Text tower: word embeddings + positions, ``text_layers`` pre-norm layers (padding masked) and a LayerNorm:
states ``[B, L, width]``; the global embedding is ``text_proj(states[:, 0])`` (the ``[CLS]``).

Fusion: ``fusion_layers`` pre-norm layers (self-attention over the caption, cross-attention from caption
tokens to the video tokens, MLP); ``itm_head`` on the final ``[CLS]`` gives match / no-match logits, and the
match probability is ``softmax(logits)[:, 1]``. Every cross-attention calls an optional hook
``hook(layer, probs [B, H, L, M], query_full [B, L, width], key_full [B, M, width]) -> probs`` after the
softmax and before ``probs @ V`` (the same contract as the InternVideo2 backend's BERT).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pisces_cli.encoders.prior_fusion import CrossAttentionHook
from pisces_cli.errors import UsageError


@dataclass(frozen=True)
class WorldEncoderConfig:
    """Sizes of the world encoder (saved as ``config.json``)."""

    vocab_size: int
    size: int = 32
    patch: int = 8
    max_frames: int = 16
    width: int = 64
    heads: int = 4
    spatial_layers: int = 1
    temporal_layers: int = 1
    text_layers: int = 2
    fusion_layers: int = 2
    embed_dim: int = 64
    max_text_length: int = 48
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def grid(self) -> int:
        """Patch rows (= columns) per frame, ``size / patch``."""
        return self.size // self.patch

    def validate(self) -> WorldEncoderConfig:
        """Raise :class:`UsageError` naming the first inconsistent field; return ``self``."""
        if self.patch < 2 or self.patch & (self.patch - 1):
            raise UsageError(f"world encoder config: `patch` must be a power of two >= 2, got {self.patch}")
        if self.size % self.patch:
            raise UsageError(
                f"world encoder config: `size` {self.size} must be a multiple of `patch` {self.patch}"
            )
        if self.width % self.heads:
            raise UsageError(
                f"world encoder config: `width` {self.width} must be divisible by `heads` {self.heads}"
            )
        for name in ("vocab_size", "max_frames", "width", "embed_dim", "max_text_length", "fusion_layers"):
            if getattr(self, name) < 1:
                raise UsageError(f"world encoder config: `{name}` must be >= 1, got {getattr(self, name)}")
        return self

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> WorldEncoderConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"world encoder config: unknown key(s) {unknown}")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        try:
            return cls(**values).validate()
        except TypeError as exc:
            raise UsageError(f"world encoder config: {exc}") from exc


def _layer(width: int, heads: int) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(
        width,
        heads,
        dim_feedforward=4 * width,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )


class CrossAttention(nn.Module):
    """Multi-head attention from caption tokens to video tokens with the OT hook (see module docstring)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def _split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, text: Tensor, video: Tensor, hook: CrossAttentionHook | None, layer: int) -> Tensor:
        """``text [B, L, W]``, ``video [B, M, W]`` → ``[B, L, W]``."""
        query_full, key_full = self.query(text), self.key(video)
        query, key, value = self._split(query_full), self._split(key_full), self._split(self.value(video))
        probs = (query @ key.transpose(-1, -2) / math.sqrt(self.head_dim)).softmax(dim=-1)
        if hook is not None:
            probs = hook(layer, probs, query_full, key_full)
        context = (probs.to(value.dtype) @ value).transpose(1, 2).reshape(text.shape)
        return self.out(context)


class FusionLayer(nn.Module):
    """Pre-norm: self-attention (padding masked) → cross-attention to the video → MLP."""

    def __init__(self, width: int, heads: int, index: int) -> None:
        super().__init__()
        self.index = index
        self.norm_self = nn.LayerNorm(width)
        self.self_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_cross = nn.LayerNorm(width)
        self.norm_video = nn.LayerNorm(width)
        self.cross_attention = CrossAttention(width, heads)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(
        self, text: Tensor, pad_mask: Tensor, video: Tensor, hook: CrossAttentionHook | None
    ) -> Tensor:
        normed = self.norm_self(text)
        text = (
            text
            + self.self_attention(normed, normed, normed, key_padding_mask=pad_mask, need_weights=False)[0]
        )
        text = text + self.cross_attention(self.norm_cross(text), self.norm_video(video), hook, self.index)
        return text + self.mlp(self.norm_mlp(text))


class WorldEncoder(nn.Module):
    """Video tower, text tower, fusion layers and heads (see the module docstring)."""

    def __init__(self, config: WorldEncoderConfig) -> None:
        super().__init__()
        self.config = config.validate()
        width, grid = config.width, config.grid
        stem: list[nn.Module] = []
        channels = 6
        for step in range(int(math.log2(config.patch))):
            out = width if step == int(math.log2(config.patch)) - 1 else max(width // 2, 8)
            stem += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GELU()]
            channels = out
        self.stem = nn.Sequential(*stem[:-1])
        self.spatial_position = nn.Parameter(torch.randn(grid * grid, width) * 0.02)
        self.temporal_position = nn.Parameter(torch.randn(config.max_frames, width) * 0.02)
        self.spatial = nn.ModuleList([_layer(width, config.heads) for _ in range(config.spatial_layers)])
        self.temporal = nn.ModuleList([_layer(width, config.heads) for _ in range(config.temporal_layers)])
        self.video_norm = nn.LayerNorm(width)
        self.pool_query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pool = nn.MultiheadAttention(width, config.heads, batch_first=True)
        self.vision_proj = nn.Linear(width, config.embed_dim)

        self.word_embedding = nn.Embedding(config.vocab_size, width)
        self.text_position = nn.Parameter(torch.randn(config.max_text_length, width) * 0.02)
        self.text_layers = nn.ModuleList([_layer(width, config.heads) for _ in range(config.text_layers)])
        self.text_norm = nn.LayerNorm(width)
        self.text_proj = nn.Linear(width, config.embed_dim)

        self.fusion = nn.ModuleList(
            [FusionLayer(width, config.heads, i) for i in range(config.fusion_layers)]
        )
        self.fusion_norm = nn.LayerNorm(width)
        self.itm_head = nn.Linear(width, 2)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    # ------------------------------------------------------------------ video
    def encode_video(self, pixels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``pixels [B, T, 3, S, S]`` (normalised) → ``(tokens [B, T·g², W], global [B, D], frames [B, T, D])``."""
        config = self.config
        if pixels.ndim != 5 or pixels.shape[2] != 3 or pixels.shape[-2:] != (config.size, config.size):
            raise UsageError(
                f"world encoder: expected pixels [B, T, 3, {config.size}, {config.size}], got {tuple(pixels.shape)}"
            )
        batch, frames = pixels.shape[:2]
        if frames > config.max_frames:
            raise UsageError(f"world encoder: {frames} frames exceed max_frames={config.max_frames}")
        pixels = pixels.to(self.spatial_position.dtype)
        difference = torch.cat([pixels[:, 1:] - pixels[:, :-1], torch.zeros_like(pixels[:, :1])], dim=1)
        stacked = torch.cat([pixels, difference], dim=2).reshape(batch * frames, 6, config.size, config.size)
        tokens = self.stem(stacked).flatten(2).transpose(1, 2) + self.spatial_position  # [B·T, g², W]
        for layer in self.spatial:
            tokens = layer(tokens)
        grid2 = tokens.shape[1]
        tokens = tokens.reshape(batch, frames, grid2, -1) + self.temporal_position[:frames, None]
        tokens = tokens.reshape(batch, frames * grid2, -1)
        for layer in self.temporal:
            tokens = layer(tokens)
        tokens = self.video_norm(tokens)
        pooled = self.pool(self.pool_query.expand(batch, -1, -1), tokens, tokens, need_weights=False)[0][:, 0]
        frame_means = tokens.reshape(batch, frames, grid2, -1).mean(dim=2)
        return tokens, self.vision_proj(pooled), self.vision_proj(frame_means)

    # ------------------------------------------------------------------ text
    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``input_ids``, bool ``attention_mask [B, L]`` → ``(states [B, L, W], global [B, D])``."""
        length = input_ids.shape[1]
        if length > self.config.max_text_length:
            raise UsageError(
                f"world encoder: {length} text tokens exceed max_text_length={self.config.max_text_length}"
            )
        states = self.word_embedding(input_ids) + self.text_position[:length]
        pad = ~attention_mask.bool()
        for layer in self.text_layers:
            states = layer(states, src_key_padding_mask=pad)
        states = self.text_norm(states)
        return states, self.text_proj(states[:, 0])

    # ------------------------------------------------------------------ fusion
    def match_logits(
        self,
        text_states: Tensor,
        attention_mask: Tensor,
        video_tokens: Tensor,
        hook: CrossAttentionHook | None = None,
    ) -> Tensor:
        """Match / no-match logits ``[B, 2]`` of caption states ``[B, L, W]`` against video tokens ``[B, M, W]``."""
        hidden = text_states.to(video_tokens.dtype)
        pad = ~attention_mask.bool().to(video_tokens.device)
        for layer in self.fusion:
            hidden = layer(hidden, pad, video_tokens, hook)
        return self.itm_head(self.fusion_norm(hidden[:, 0]))

    def match_probability(
        self,
        text_states: Tensor,
        attention_mask: Tensor,
        video_tokens: Tensor,
        hook: CrossAttentionHook | None = None,
    ) -> Tensor:
        """``[B]`` probability that caption and clip match, ``softmax(match_logits)[:, 1]`` in float32."""
        logits = self.match_logits(text_states, attention_mask, video_tokens, hook)
        return F.softmax(logits.float(), dim=-1)[:, 1]
