"""BERT-large text / fusion encoder of InternVideo2-Stage2 (``xbert.py``) in plain PyTorch.

Post-norm BERT; layers ``>= fusion_layer`` add a cross-attention to the video tokens ``x_vis`` between
self-attention and the feed-forward block (the released BERT-large layout). Parameter names equal the released
checkpoint's names under ``text_encoder.bert.`` (see ``checkpoint.py``).

Modes: ``forward_text`` runs the embeddings and layers ``[0, fusion_layer)``; ``forward_fusion`` runs layers
``[fusion_layer, num_layers)`` on given text hidden states. Text then fusion equals one pass over all layers.

Cross-attention hook: ``hook(layer_index, attn_probs [B, H, L, M], query_full [B, L, hidden],
key_full [B, M, hidden]) -> attn_probs`` is called in every cross-attention after the softmax and before
``probs @ V``. ``layer_index`` is the absolute BERT layer index (19..23 in the 1B model). ``query_full`` is
the query projection of the text before the head split; ``key_full`` the key projection of the video
tokens with the heads concatenated. The returned probabilities (same shape) are used for the context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pisces_cli.encoders.internvideo2.config import TextConfig
from pisces_cli.encoders.prior_fusion import CrossAttentionHook
from pisces_cli.errors import UsageError

MASK_FILL = -10000.0  # additive self-attention mask value of the reference (not -inf)


def extended_attention_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """``m`` [B, L] (1 = real token) → additive mask ``(1 - m) · -10000`` [B, 1, 1, L] in ``dtype``."""
    return ((1.0 - attention_mask[:, None, None, :].to(torch.float32)) * MASK_FILL).to(dtype)


class BertEmbeddings(nn.Module):
    """``LN(word[ids] + position[0..L-1] + token_type[0])``."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        length = input_ids.shape[1]
        if length > self.position_embeddings.num_embeddings:
            raise UsageError(
                f"caption of {length} tokens exceeds max_position_embeddings {self.position_embeddings.num_embeddings}"
            )
        positions = torch.arange(length, device=input_ids.device)
        embeddings = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings.weight[0][None, None]
        )
        return self.LayerNorm(embeddings)


class BertSelfAttention(nn.Module):
    """Scaled dot-product attention; ``key``/``value`` read ``kv_width`` channels (``encoder_width`` for cross-attention)."""

    def __init__(self, config: TextConfig, kv_width: int) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(kv_width, config.hidden_size)
        self.value = nn.Linear(kv_width, config.hidden_size)

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden: Tensor,
        context_states: Tensor | None = None,
        additive_mask: Tensor | None = None,
        hook: CrossAttentionHook | None = None,
        layer_index: int = -1,
    ) -> Tensor:
        """``hidden`` [B, L, hidden]; ``context_states`` [B, M, kv_width] (cross) or None (self) → [B, L, hidden]."""
        source = hidden if context_states is None else context_states
        query_full = self.query(hidden)
        key_full = self.key(source)
        value = self._heads(self.value(source))
        query, key = self._heads(query_full), self._heads(key_full)
        if hook is None:
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=additive_mask)
        else:
            scores = (query * self.head_dim**-0.5) @ key.transpose(-1, -2)  # scale the small factor
            if additive_mask is not None:
                scores = scores + additive_mask
            probs = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(
                query.dtype
            )
            probs = hook(layer_index, probs, query_full, key_full)
            context = probs.to(value.dtype) @ value
        batch, _, length, _ = context.shape
        return context.transpose(1, 2).reshape(batch, length, -1)


class BertOutput(nn.Module):
    """``LN(residual + dense(x))``: after the attention (``in_features`` = hidden size) and after the
    feed-forward block (``in_features`` = intermediate size)."""

    def __init__(self, config: TextConfig, in_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(residual + self.dense(x))


class BertAttention(nn.Module):
    def __init__(self, config: TextConfig, kv_width: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(config, kv_width)
        self.output = BertOutput(config, config.hidden_size)

    def forward(
        self,
        hidden: Tensor,
        context_states: Tensor | None = None,
        additive_mask: Tensor | None = None,
        hook: CrossAttentionHook | None = None,
        layer_index: int = -1,
    ) -> Tensor:
        return self.output(self.self(hidden, context_states, additive_mask, hook, layer_index), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))  # exact erf GELU (hidden_act "gelu")


class BertLayer(nn.Module):
    """Self-attention, then (fusion layers only) cross-attention to video tokens, then the feed-forward block."""

    def __init__(self, config: TextConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.attention = BertAttention(config, config.hidden_size)
        self.has_cross_attention = layer_index >= config.fusion_layer
        if self.has_cross_attention:
            self.crossattention = BertAttention(config, config.encoder_width)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config, config.intermediate_size)

    def forward(
        self,
        hidden: Tensor,
        additive_mask: Tensor,
        video_tokens: Tensor | None = None,
        hook: CrossAttentionHook | None = None,
    ) -> Tensor:
        hidden = self.attention(hidden, additive_mask=additive_mask)
        if self.has_cross_attention:
            if video_tokens is None:
                raise UsageError(f"BERT layer {self.layer_index} is a fusion layer and needs video tokens")
            # The video mask is all ones, so the cross-attention has no additive mask.
            hidden = self.crossattention(hidden, video_tokens, None, hook, self.layer_index)
        return self.output(self.intermediate(hidden), hidden)


class BertEncoder(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config, index) for index in range(config.num_layers))


class BertTextFusionEncoder(nn.Module):
    """BERT without pooler: ``embeddings`` and ``encoder.layer.{i}``."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def run_layers(
        self,
        hidden: Tensor,
        attention_mask: Tensor,
        start: int,
        stop: int,
        video_tokens: Tensor | None = None,
        cross_attn_hook: CrossAttentionHook | None = None,
    ) -> Tensor:
        """Run layers ``[start, stop)`` on ``hidden`` [B, L, hidden] with the tokenizer mask [B, L]."""
        additive_mask = extended_attention_mask(attention_mask, hidden.dtype)
        for layer in self.encoder.layer[start:stop]:
            hidden = layer(hidden, additive_mask, video_tokens, cross_attn_hook)
        return hidden

    def forward_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Text mode: ``input_ids`` [B, L] → layer ``fusion_layer - 1`` output [B, L, hidden]."""
        hidden = self.embeddings(input_ids)
        return self.run_layers(hidden, attention_mask, 0, self.config.fusion_layer)

    def forward_fusion(
        self,
        text_embeds: Tensor,
        attention_mask: Tensor,
        video_tokens: Tensor,
        cross_attn_hook: CrossAttentionHook | None = None,
    ) -> Tensor:
        """Fusion mode: text-mode output [B, L, hidden] + video tokens [B, M, encoder_width] → [B, L, hidden]."""
        return self.run_layers(
            text_embeds,
            attention_mask,
            self.config.fusion_layer,
            self.config.num_layers,
            video_tokens,
            cross_attn_hook,
        )
