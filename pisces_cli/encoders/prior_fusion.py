"""Fusing the token-OT prior into a matching head's cross-attention (shared by every fusion backend).

A backend with a cross-attention matching head (InternVideo2, the world encoder) passes a
:class:`PriorFusionHook` as its cross-attention hook. For each selected layer the hook solves the token-OT
prior for all videos × heads in one call (:func:`pisces_cli.ot.token_ot_prior_rows`), fuses it into the
lexical attention rows (:func:`pisces_cli.ot.fuse_rows`) and keeps the head-averaged prior and the solver
info, which :meth:`PriorFusionHook.result` turns into the :class:`SemanticResult`. All of it works on the
compacted lexical rows ``[B, H, N, M]`` (``N`` = the longest caption's lexical count); only the fused rows
are written back into a copy of the attention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pisces_cli.encoders.base import SemanticResult, TextFeatures, TokenGeometry, VideoFeatures
from pisces_cli.errors import UsageError
from pisces_cli.ot import TokenOTSettings, fuse_rows, token_ot_prior_rows, video_token_geometry
from pisces_cli.ot.token_cost import gather_rows, lexical_rows, scatter_rows

#: ``hook(layer, probs [B, H, L, M], query_full [B, L, D], key_full [B, M, D]) -> probs``, called by a
#: matching head in each cross-attention after the softmax (see :class:`PriorFusionHook`).
CrossAttentionHook = Callable[[int, Tensor, Tensor, Tensor], Tensor]


def select_ot_layers(
    fusion_layers: tuple[int, ...], settings: TokenOTSettings, backend: str
) -> tuple[int, ...]:
    """Layers that get the prior: ``settings.layers``, or every fusion layer but the last (whose prior cannot
    reach the [CLS] output). Unknown layers raise UsageError naming the backend."""
    if settings.layers is None:
        return fusion_layers[:-1]
    unknown = sorted(set(settings.layers) - set(fusion_layers))
    if unknown:
        raise UsageError(
            f"{backend} backend: token OT layers {unknown} are not fusion layers; "
            f"expected a subset of {list(fusion_layers)}"
        )
    return tuple(sorted(set(settings.layers)))


class PriorFusionHook:
    """Cross-attention hook ``(layer, probs [B,H,L,M], query_full [B,L,D], key_full [B,M,D]) -> probs``.

    Outside autograd the fused rows are written into ``probs`` itself (the model's fresh softmax output,
    which it does not read again); under autograd into a copy.

    Args:
        layers: layer indices (as the model numbers them) that get the prior.
        lexical_mask: ``[B, L]`` bool, the caption rows the prior is fused into.
        geometry: the video tokens' layout.
        settings: token-OT settings (validated here).
    """

    def __init__(
        self,
        layers: tuple[int, ...],
        lexical_mask: Tensor,
        geometry: TokenGeometry,
        settings: TokenOTSettings,
    ) -> None:
        settings.validate()
        self.layers = set(layers)
        self.lexical = lexical_mask.bool()
        self.index, self.row_mask = lexical_rows(self.lexical)
        self.geometry = video_token_geometry(
            geometry.num_frames,
            geometry.grid_h,
            geometry.grid_w,
            geometry.has_cls,
            device=lexical_mask.device,
        )
        self.settings = settings
        self.priors: list[Tensor] = []
        self.infos: list[Any] = []

    def __call__(self, layer: int, probs: Tensor, query_full: Tensor, key_full: Tensor) -> Tensor:
        if layer not in self.layers:
            return probs
        rows = gather_rows(probs, self.index, 2)  # [B, H, N, M], gradients flow through these
        prior, info = token_ot_prior_rows(
            gather_rows(query_full, self.index, 1),
            key_full,
            rows.detach(),
            self.row_mask,
            self.geometry,
            self.settings,
        )
        self.priors.append(prior.mean(dim=1))
        self.infos.append(info)
        fused = fuse_rows(rows, prior, overwrite=True)
        # Outside autograd the fresh softmax output is written in place; under autograd into a copy.
        target = probs.clone() if torch.is_grad_enabled() and probs.requires_grad else probs
        return scatter_rows(target, fused, self.index, self.row_mask)

    def result(self, reward: Tensor) -> SemanticResult:
        """``reward [B]`` with the detached plan (prior averaged over heads and OT layers) and the solver
        diagnostics over heads and layers: ``ot_iterations`` (mean), ``ot_mass`` (mean),
        ``ot_marginal_error`` (max), ``ot_converged`` (all), ``[B]`` each."""
        if not self.priors:
            return SemanticResult(reward=reward, plan=None, diagnostics={})
        infos = self.infos
        diagnostics = {
            "ot_iterations": torch.stack([i.iterations.float().mean(-1) for i in infos]).mean(0),
            "ot_mass": torch.stack([i.mass.float().mean(-1) for i in infos]).mean(0),
            "ot_marginal_error": torch.stack([i.marginal_error.float().amax(-1) for i in infos]).amax(0),
            "ot_converged": torch.stack([i.converged.bool().all(-1) for i in infos]).all(0),
        }
        mean_rows = torch.stack(self.priors).mean(dim=0)  # [B, N, M]
        batch, q_len = self.lexical.shape
        plan = torch.zeros(
            batch, 1, q_len, mean_rows.shape[-1], dtype=mean_rows.dtype, device=mean_rows.device
        )
        plan = scatter_rows(plan, mean_rows[:, None], self.index, self.row_mask)[:, 0]
        return SemanticResult(reward=reward, plan=plan.detach(), diagnostics=diagnostics)


def cross_attention_semantic_reward(
    backend: str,
    text: TextFeatures,
    video: VideoFeatures,
    token_ot: TokenOTSettings | None,
    ot_layers: Callable[[TokenOTSettings], tuple[int, ...]],
    match: Callable[[Tensor, Tensor, Tensor, CrossAttentionHook | None], Tensor],
) -> SemanticResult:
    """``semantic_reward`` of a backend whose matching head cross-attends from caption states to video tokens.

    Checks that there is one caption per video and that ``text.extra["text_embeds"]`` (the caption states the
    head reads) is there, then calls ``match(states, attention_mask [B, L] bool, video tokens, hook)`` → the
    match probability ``[B]``: without a hook when ``token_ot`` is None, else with a :class:`PriorFusionHook`
    on the layers ``ot_layers(token_ot)`` selects. Returns the :class:`SemanticResult` of
    :meth:`PriorFusionHook.result`.
    """
    tokens = video.tokens
    batch = tokens.shape[0]
    if text.tokens.shape[0] != batch:
        raise UsageError(
            f"{backend} backend: semantic_reward got {text.tokens.shape[0]} captions for {batch} videos"
        )
    if "text_embeds" not in text.extra:
        raise UsageError(
            f"{backend} backend: text features lack extra['text_embeds'] (use this backend's encode_text)"
        )
    states = text.extra["text_embeds"].to(device=tokens.device, dtype=tokens.dtype)
    attention_mask = text.attention_mask.to(tokens.device)
    if token_ot is None:
        return SemanticResult(reward=match(states, attention_mask, tokens, None), plan=None, diagnostics={})
    token_ot.validate()
    hook = PriorFusionHook(ot_layers(token_ot), text.lexical_mask.to(tokens.device), video.geometry, token_ot)
    return hook.result(match(states, attention_mask, tokens, hook))
