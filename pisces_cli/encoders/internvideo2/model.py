"""InternVideo2-Stage2 (vision encoder + BERT text/fusion encoder + heads) as one module.

Top-level names equal the released checkpoint (``vision_encoder``, ``vision_proj``, ``text_proj``,
``itm_head``); the BERT lives under ``text_encoder`` (released: ``text_encoder.bert``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from pisces_cli.encoders.internvideo2.bert import BertTextFusionEncoder, CrossAttentionHook
from pisces_cli.encoders.internvideo2.config import InternVideo2Config
from pisces_cli.encoders.internvideo2.vision import VisionEncoder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class InternVideo2Stage2(nn.Module):
    """The Stage-2 video-text model used as the PISCES reward model (eval-mode inference, optional backprop to pixels)."""

    def __init__(self, config: InternVideo2Config, use_checkpoint: bool = False) -> None:
        super().__init__()
        self.config = config
        self.vision_encoder = VisionEncoder(config.vision, use_checkpoint=use_checkpoint)
        self.text_encoder = BertTextFusionEncoder(config.text)
        self.vision_proj = nn.Linear(config.vision.clip_embed_dim, config.embed_dim)
        self.text_proj = nn.Linear(config.text.hidden_size, config.embed_dim)
        self.itm_head = nn.Linear(config.text.hidden_size, 2)

    @property
    def use_checkpoint(self) -> bool:
        """Whether vision blocks recompute activations in backward (activation checkpointing)."""
        return self.vision_encoder.use_checkpoint

    @use_checkpoint.setter
    def use_checkpoint(self, enabled: bool) -> None:
        self.vision_encoder.use_checkpoint = enabled

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_proj.weight.device

    def encode_vision(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """``pixels`` [B, T, 3, H, W] (ImageNet-normalised) → ``(x_vis [B, 1 + T·g², C], pooled [B, clip_embed_dim])``.

        ``x_vis`` is the last block's output (CLS first, then frame-major patch tokens), the fusion layers' keys.
        """
        if pixels.ndim != 5 or pixels.shape[2] != self.config.vision.in_chans:
            raise ValueError(f"expected pixels [B, T, 3, H, W], got {tuple(pixels.shape)}")
        video = pixels.permute(0, 2, 1, 3, 4).to(self.dtype)
        return self.vision_encoder(video)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Text mode: ``input_ids``/``attention_mask`` [B, L] → ``text_embeds`` [B, L, hidden] (layer fusion_layer-1)."""
        return self.text_encoder.forward_text(input_ids, attention_mask)

    def fusion(
        self,
        text_embeds: Tensor,
        attention_mask: Tensor,
        x_vis: Tensor,
        cross_attn_hook: CrossAttentionHook | None = None,
    ) -> Tensor:
        """Fusion mode: ``text_embeds`` [B, L, hidden], mask [B, L], ``x_vis`` [B, M, C] → fused [B, L, hidden]."""
        return self.text_encoder.forward_fusion(text_embeds, attention_mask, x_vis, cross_attn_hook)

    def vtm_probability(self, fused_cls: Tensor) -> Tensor:
        """P(match) = softmax(itm_head(fused [CLS]))[:, 1]; ``fused_cls`` [B, hidden] → [B] (fp32 or fp64)."""
        logits = self.itm_head(fused_cls)
        return logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))[:, 1]

    def video_embedding(self, pooled: Tensor) -> Tensor:
        """``vision_proj(pooled)`` [B, embed_dim], not normalised."""
        return self.vision_proj(pooled)

    def text_embedding(self, text_embeds: Tensor) -> Tensor:
        """``text_proj`` of the text-mode [CLS] [B, embed_dim], not normalised."""
        return self.text_proj(text_embeds[:, 0])

    # -- our own export: config.json + model.safetensors -------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write ``config.json`` and ``model.safetensors`` (atomic writes) into ``directory``."""
        from pisces_cli.atomic import atomic_write_safetensors

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_safetensors(directory / WEIGHTS_FILE, self.state_dict(), {"format": "pt"})
        self.config.save_json(directory / CONFIG_FILE)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        num_frames: int | None = None,
        dtype: torch.dtype | None = torch.float32,
        device: torch.device | str = "cpu",
        use_checkpoint: bool = False,
    ) -> InternVideo2Stage2:
        """Load a :meth:`save_pretrained` export; ``num_frames`` (default: the export's) is the clip frame count."""
        from pisces_cli.encoders.internvideo2.checkpoint import load_pretrained_dir

        return load_pretrained_dir(directory, num_frames, dtype, device, use_checkpoint)
