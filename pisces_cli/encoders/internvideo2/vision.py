"""InternVideo2 vision encoder (``PretrainInternVideo2`` at inference) in plain PyTorch.

Module and parameter names equal the released checkpoint's names under ``vision_encoder.`` (see
``checkpoint.py``). The architecture (docs/internvideo2.md §1):

* patch embedding: ``Conv3d(3, C, (1, p, p), stride (1, p, p))``, tokens frame-major then row-major,
  a learned ``cls_token`` first, then ``pos_embed`` (video) or ``img_pos_embed`` (T == 1) added to all tokens;
* pre-norm blocks: ``x + ls1 ⊙ attn(rms1(x))``, ``x + ls2 ⊙ mlp(rms2(x))``; RMSNorm (eps 1e-6) computed in fp32;
  ``qkv`` without bias; QK RMSNorm over the full width (all heads together); LayerScale in fp32; tanh-GELU MLP;
* no final norm: ``x_vis`` is the last block's output;
* ``clip_projector``: attention pooling with the token mean as the single query.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pisces_cli.encoders.internvideo2.config import VisionConfig
from pisces_cli.errors import UsageError


def at_least_fp32(x: Tensor) -> Tensor:
    """``x`` promoted to fp32 when it is a half type (fp64 stays fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class RMSNorm(nn.Module):
    """``y = weight ⊙ cast(x / sqrt(mean(x²) + eps))``; the normalisation runs in fp32, the weight multiply in x's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        wide = at_least_fp32(x)
        normed = wide * torch.rsqrt(wide.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight.to(x.dtype) * normed.to(x.dtype)


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` [C]; the multiply runs in fp32 and is cast back (``layerscale_no_force_fp32=False``)."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return (at_least_fp32(x) * at_least_fp32(self.gamma)).to(x.dtype)


class PatchEmbed(nn.Module):
    """``[B, 3, T, H, W]`` → ``[B, T · g², C]`` (frame-major, row-major inside a frame)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        kernel = (config.tubelet_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_chans, config.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: Tensor) -> Tensor:
        features = self.proj(video.to(self.proj.weight.dtype))  # [B, C, T, g, g]
        batch, channels, frames = features.shape[:3]
        return features.flatten(3).permute(0, 2, 3, 1).reshape(batch, -1, channels)


class Attention(nn.Module):
    """Multi-head self-attention with bias-free ``qkv`` and RMSNorm on the full-width q and k."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.qk_normalization = config.qk_normalization
        if config.qk_normalization:
            self.q_norm = RMSNorm(dim, config.norm_eps)
            self.k_norm = RMSNorm(dim, config.norm_eps)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [B, N, C] → [B, N, C]."""
        batch, tokens, dim = x.shape
        query, key, value = self.qkv(x).chunk(3, dim=-1)  # each [B, N, C], head-major channels
        if self.qk_normalization:
            query = self.q_norm(query)
            key = self.k_norm(key)
        head_shape = (batch, tokens, self.num_heads, dim // self.num_heads)
        query, key, value = (t.reshape(head_shape).transpose(1, 2) for t in (query, key, value))
        context = F.scaled_dot_product_attention(query, key, value)  # scale head_dim^-0.5
        return self.proj(context.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))`` with tanh-approximate (default) or exact GELU."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.embed_dim, config.mlp_hidden_dim)
        self.fc2 = nn.Linear(config.mlp_hidden_dim, config.embed_dim)
        self.gelu_approximate = config.gelu_approximate

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.gelu_approximate))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(config.embed_dim, config.norm_eps)
        self.attn = Attention(config)
        self.ls1 = LayerScale(config.embed_dim)
        self.norm2 = RMSNorm(config.embed_dim, config.norm_eps)
        self.mlp = Mlp(config)
        self.ls2 = LayerScale(config.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class AttentionPoolCrossAttention(nn.Module):
    """Cross-attention of the pooling head: bias-free ``q``/``k``/``v`` weights plus separate biases."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.num_heads = config.attn_pool_num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.k_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, config.clip_embed_dim)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """``query`` [B, 1, C], ``key``/``value`` [B, N, C] → [B, 1, clip_embed_dim]."""
        batch, tokens, dim = key.shape
        head_dim = dim // self.num_heads
        q = (
            F.linear(query, self.q.weight, self.q_bias)
            .reshape(batch, -1, self.num_heads, head_dim)
            .transpose(1, 2)
        )
        k = (
            F.linear(key, self.k.weight, self.k_bias)
            .reshape(batch, tokens, self.num_heads, head_dim)
            .transpose(1, 2)
        )
        v = (
            F.linear(value, self.v.weight, self.v_bias)
            .reshape(batch, tokens, self.num_heads, head_dim)
            .transpose(1, 2)
        )
        context = F.scaled_dot_product_attention(q, k, v)  # [B, heads, 1, head_dim]
        return self.proj(context.transpose(1, 2).reshape(batch, -1, dim))


class AttentionPoolingBlock(nn.Module):
    """``clip_projector``: query = LN_q(mean_N x), keys = LN_k(x), values = LN_v(x); returns [B, clip_embed_dim]."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1_q = nn.LayerNorm(dim, eps=1e-5)
        self.norm1_k = nn.LayerNorm(dim, eps=1e-5)
        self.norm1_v = nn.LayerNorm(dim, eps=1e-5)
        self.cross_attn = AttentionPoolCrossAttention(config)

    def forward(self, x_vis: Tensor) -> Tensor:
        query = x_vis.mean(dim=1, keepdim=True)
        pooled = self.cross_attn(self.norm1_q(query), self.norm1_k(x_vis), self.norm1_v(x_vis))
        return pooled.squeeze(1)


class VisionEncoder(nn.Module):
    """InternVideo2 ViT plus attention pooling.

    ``forward(video [B, 3, T, H, W])`` returns ``(x_vis [B, 1 + T·g², C], pooled [B, clip_embed_dim])``.
    ``T == 1`` uses ``img_pos_embed``; any other ``T`` uses the temporal position embedding: ``pos_embed`` holds the
    checkpoint's own table (``config.table_frames`` frames, 4 for the released model) and every other frame count
    is interpolated **once, directly from that table** — the reference's frame-count change
    (:func:`~pisces_cli.encoders.internvideo2.checkpoint.interpolate_pos_embed`), applied when a clip of that length
    first arrives and cached per ``T``, so a reward works on whatever frame count a VAE decodes. When the loader
    kept the table as stored in the checkpoint (``source_pos_embed``, a plain CPU tensor in the checkpoint's
    dtype), it interpolates from that, exactly as the reference does before casting the model.
    ``use_checkpoint`` recomputes block activations in backward (same numbers, less memory).
    """

    def __init__(self, config: VisionConfig, use_checkpoint: bool = False) -> None:
        super().__init__()
        self.config = config
        self.use_checkpoint = use_checkpoint
        dim, patches = config.embed_dim, config.patches_per_frame
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + patches * config.table_frames, dim))
        self.img_pos_embed = nn.Parameter(torch.zeros(1, 1 + patches, dim))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.clip_projector = AttentionPoolingBlock(config)
        self.source_pos_embed: Tensor | None = None

    def embed(self, video: Tensor) -> Tensor:
        """Patch tokens with CLS and position embedding: [B, 3, T, H, W] → [B, 1 + T·g², C]."""
        frames = video.shape[2]
        expected = (self.config.img_size, self.config.img_size)
        if tuple(video.shape[-2:]) != expected:
            raise UsageError(
                f"InternVideo2 expects {expected[0]}x{expected[1]} frames, got {tuple(video.shape[-2:])}"
            )
        tokens = self.patch_embed(video)
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        position = self.img_pos_embed if frames == 1 else self.video_pos_embed(frames)
        return tokens + position.to(tokens.dtype)

    def video_pos_embed(self, frames: int) -> Tensor:
        """``[1, 1 + frames·g², C]``: the stored table, or its temporal interpolation from the checkpoint's own
        ``table_frames`` (cached per frame count; recomputed every call while ``pos_embed`` is trainable)."""
        stored_frames = self.config.table_frames
        if frames == stored_frames:
            return self.pos_embed
        from pisces_cli.encoders.internvideo2.checkpoint import interpolate_pos_embed

        grid = self.config.grid_size
        if self.pos_embed.requires_grad:
            return interpolate_pos_embed(self.pos_embed, stored_frames, frames, grid)
        key = (
            frames,
            self.pos_embed.data_ptr(),
            self.pos_embed.dtype,
            self.pos_embed.device,
            self.pos_embed._version,
        )
        cache = self.__dict__.setdefault("_pos_cache", {})
        if key not in cache:
            source = self.pos_embed.detach()
            kept = self.source_pos_embed
            # the loader's copy stands for pos_embed only while pos_embed still holds it (not after a
            # load_state_dict or an edit): then interpolate from the copy, in the checkpoint's own dtype
            if kept is not None and torch.equal(kept.to(device=source.device, dtype=source.dtype), source):
                source = kept
            table = interpolate_pos_embed(source, stored_frames, frames, grid)
            cache.clear()
            cache[key] = table.to(device=self.pos_embed.device, dtype=self.pos_embed.dtype)
        return cache[key]

    def forward(self, video: Tensor) -> tuple[Tensor, Tensor]:
        x = self.embed(video)
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x, self.clip_projector(x)
