"""One reward module for ``score``, ``eval`` and ``finetune``.

For a video ``v`` (pixels in [0, 1]) and its caption ``c``, with a frozen encoder ``E``:

- ``quality      = cos(E_v(v), T(n(E_t(c))))`` — the video's global embedding against the caption's global
  embedding mapped by the OT map ``T`` (``n`` = the map's recorded input normalisation, the same one it
  was fit with). Without a map (the "No OT" arm) ``T`` is the identity.
- ``quality_no_ot = cos(E_v(v), E_t(c))`` — the vanilla cosine, always reported so users see what OT changed.
- ``semantic`` — the backend's semantic reward with the token-level partial-OT prior (InternVideo2:
  VTM probability with the prior fused into cross-attention; CLIP/world: plan-weighted token cosine);
  ``semantic_no_ot`` the same without the prior (optional).
- ``total = w_q · quality + w_s · semantic`` with the recipe's ``reward.weights``.

Rewards are differentiable w.r.t. the pixels (gradients flow through the encoder's video path; the
text path and every OT plan are detached), so ``finetune`` can backpropagate them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from pisces_cli.errors import UsageError

if TYPE_CHECKING:
    from pisces_cli.encoders.base import EncoderBackend, TextFeatures
    from pisces_cli.ot import TokenOTSettings
    from pisces_cli.ot.maps import TransportMap

REWARD_COMPONENTS = ("quality", "semantic")

#: how far outside [0, 1] finite pixel values may stray (an unclamped VAE decode) before ``reward(pixels, ...)``
#: refuses them as being on another scale (``[-1, 1]`` or ``0..255``).
PIXEL_RANGE_SLACK = 0.25


#: the reward columns a :class:`RewardOutput` maps by name, in this order (absent ones are skipped).
REWARD_COLUMNS = ("quality", "semantic", "quality_no_ot", "total", "semantic_no_ot")


@dataclass(eq=False)
class RewardOutput(Mapping[str, torch.Tensor]):
    """Per-video rewards of a batch, each ``[B]``; also a read-only mapping of name → tensor.

    As a mapping it holds ``quality``, ``semantic`` (absent when its weight is 0 and no no-OT semantic
    reward was asked for), ``quality_no_ot``, ``total`` and, when computed, ``semantic_no_ot``, so
    ``out["total"]``, ``dict(out)`` and ``{k: v.mean() for k, v in out.items()}`` work.

    ``quality``, ``semantic`` and ``total`` keep gradients to the pixels when the pixels require grad;
    ``quality_no_ot`` and ``semantic_no_ot`` are detached diagnostics. The attributes that are not
    mapping keys are for reports: ``plan`` is the detached ``[B, L, M]`` token plan, ``token_strings``
    the caption tokens its rows refer to, ``lexical_mask`` ``[B, L]`` which of them are words,
    ``geometry`` the video-token layout and ``diagnostics`` the solver's convergence numbers.
    """

    quality: torch.Tensor
    semantic: torch.Tensor | None
    quality_no_ot: torch.Tensor
    total: torch.Tensor
    semantic_no_ot: torch.Tensor | None = None
    plan: torch.Tensor | None = None
    token_strings: list[list[str]] | None = None
    lexical_mask: torch.Tensor | None = None
    geometry: Any = None
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)

    def _named(self) -> dict[str, torch.Tensor]:
        values = {name: getattr(self, name) for name in REWARD_COLUMNS}
        return {name: value for name, value in values.items() if value is not None}

    def __getitem__(self, name: str) -> torch.Tensor:
        named = self._named()
        if name not in named:
            raise KeyError(f"{name!r} is not in this reward output (it holds {', '.join(named)})")
        return named[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._named())

    def __len__(self) -> int:
        return len(self._named())

    def __eq__(self, other: object) -> bool:  # tensors have no single truth value: identity, as object
        return self is other

    __hash__ = object.__hash__

    def components(self) -> dict[str, torch.Tensor]:
        """The weighted components by name (what training logs and sums)."""
        return {name: self[name] for name in REWARD_COMPONENTS if name in self}

    def columns(self) -> dict[str, torch.Tensor]:
        """Every reported value by column name, detached."""
        return {name: value.detach() for name, value in self.items()}


class PiscesReward:
    """The PISCES dual reward over a frozen :class:`EncoderBackend`.

    Args:
        encoder: the frozen reward model.
        ot_map: the distributional map (None = no OT for the quality reward).
        weights: ``{"quality": w_q, "semantic": w_s}``; a zero weight skips that component.
        token_ot: token-OT settings for the semantic reward (None = the no-OT semantic reward).
        crop: ``center`` (deterministic, default) or ``random`` (the reference's behaviour).
        with_no_ot_semantic: also compute the semantic reward without the token prior.
    """

    def __init__(
        self,
        encoder: EncoderBackend,
        *,
        ot_map: TransportMap | None = None,
        weights: dict[str, float] | None = None,
        token_ot: TokenOTSettings | None = None,
        crop: str = "center",
        with_no_ot_semantic: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.encoder = encoder
        self.ot_map = ot_map
        self.weights = {"quality": 1.0, "semantic": 1.0, **(weights or {})}
        self.token_ot = token_ot
        self.crop = crop
        self.with_no_ot_semantic = with_no_ot_semantic
        self.generator = generator

    @property
    def needs_semantic(self) -> bool:
        return self.weights.get("semantic", 0.0) != 0.0 or self.with_no_ot_semantic

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, T, 3, H, W]`` in [0, 1] → the encoder's normalised input ``[B, T, 3, S, S]``."""
        from pisces_cli.io.preprocess import preprocess_pixels

        prep = self.encoder.preprocessing
        return preprocess_pixels(
            pixels,
            size=prep.size,
            mean=prep.mean,
            std=prep.std,
            interpolation=prep.interpolation,
            crop=self.crop,  # type: ignore[arg-type]
            generator=self.generator,
        )

    def encode_text(self, captions: Sequence[str]) -> TextFeatures:
        with torch.no_grad():
            return self.encoder.encode_text(list(captions))

    def __call__(self, pixels: torch.Tensor, captions: Sequence[str]) -> RewardOutput:
        """Rewards of raw pixels ``[B, T, 3, H, W]`` in [0, 1] (any T the encoder accepts).

        Raises:
            UsageError: pixels that are not a floating ``[B, T, 3, H, W]`` tensor, pixels on another
                scale (finite values below ``-0.25`` or above ``1.25``: ``[-1, 1]`` or ``0..255`` frames),
                or captions that are not a list of ``B`` strings. NaN pixels are not refused: they give
                NaN rewards (a diverged generator), which a trainer skips.
        """
        check_pixel_range(pixels)
        return self.from_preprocessed(self.preprocess(pixels), captions)

    def map_text(self, text_global: torch.Tensor) -> torch.Tensor:
        """``T(n(t))`` for raw text embeddings ``[B, D]`` (identity when no map)."""
        if self.ot_map is None:
            return text_global
        return self.ot_map.apply(text_global.float()).to(text_global.dtype)

    def from_preprocessed(self, clips: torch.Tensor, captions: Sequence[str]) -> RewardOutput:
        """Rewards of clips already preprocessed for the encoder, ``[B, T, 3, S, S]``."""
        if not isinstance(clips, torch.Tensor) or not clips.is_floating_point():
            raise UsageError(
                f"clips must be a floating torch tensor [B, T, 3, S, S], got {type(clips).__name__}"
                + (f" of {clips.dtype}" if isinstance(clips, torch.Tensor) else "")
            )
        captions = checked_captions(captions, int(clips.shape[0]) if clips.ndim else 0)
        text = self.encode_text(captions)
        video = self.encoder.encode_video(clips)
        video_global = video.global_embedding.float()
        text_global = text.global_embedding.float().to(video_global.device)
        quality_no_ot = F.cosine_similarity(video_global, text_global, dim=-1).detach()
        quality = F.cosine_similarity(
            video_global, self.map_text(text_global).to(video_global.device), dim=-1
        )
        semantic = semantic_no_ot = plan = None
        diagnostics: dict[str, torch.Tensor] = {}
        if self.needs_semantic:
            result = self.encoder.semantic_reward(text, video, self.token_ot)
            semantic, plan, diagnostics = result.reward.float(), result.plan, dict(result.diagnostics)
            if self.with_no_ot_semantic:
                if self.token_ot is None:
                    semantic_no_ot = semantic.detach()
                else:
                    with torch.no_grad():
                        semantic_no_ot = self.encoder.semantic_reward(text, video, None).reward.float()
        total = self.weights["quality"] * quality
        if semantic is not None and self.weights.get("semantic", 0.0) != 0.0:
            total = total + self.weights["semantic"] * semantic
        return RewardOutput(
            quality=quality,
            semantic=semantic,
            quality_no_ot=quality_no_ot,
            total=total,
            semantic_no_ot=semantic_no_ot,
            plan=None if plan is None else plan.detach(),
            token_strings=text.token_strings,
            lexical_mask=text.lexical_mask,
            geometry=video.geometry,
            diagnostics=diagnostics,
        )


def checked_captions(captions: Sequence[str], batch: int) -> list[str]:
    """``captions`` as a list of ``batch`` strings; a bare string or a length mismatch is a UsageError."""
    if isinstance(captions, (str, bytes)):
        raise UsageError(
            f"captions must be a list of {batch} strings (one per video), got a single string {captions!r}; "
            "wrap it in a list"
        )
    try:
        captions = list(captions)
    except TypeError:
        raise UsageError(
            f"captions must be a list of {batch} strings, got {type(captions).__name__}"
        ) from None
    bad = [index for index, caption in enumerate(captions) if not isinstance(caption, str)]
    if bad:
        raise UsageError(
            f"captions must be strings; caption(s) {bad[:5]} are {type(captions[bad[0]]).__name__}"
        )
    if len(captions) != batch:
        raise UsageError(f"{batch} video(s) but {len(captions)} caption(s): give one caption per video")
    return captions


def check_pixel_range(pixels: torch.Tensor) -> None:
    """Refuse pixels on another scale than [0, 1] (one reduction; NaN passes, see :meth:`PiscesReward.__call__`)."""
    if not isinstance(pixels, torch.Tensor) or not pixels.is_floating_point() or pixels.numel() == 0:
        return  # the shape/dtype checks of preprocessing name the problem
    low, high = torch.aminmax(pixels.detach())
    low_value, high_value = float(low), float(high)
    if low_value < -PIXEL_RANGE_SLACK or high_value > 1.0 + PIXEL_RANGE_SLACK:
        hint = "0..255 frames: divide by 255" if high_value > 2.0 else "[-1, 1] frames: use x / 2 + 0.5"
        raise UsageError(
            f"pixels must be in [0, 1], got values in [{low_value:.4g}, {high_value:.4g}] ({hint})"
        )


def token_ot_settings_from_recipe(section: Any) -> TokenOTSettings | None:
    """``reward.token_ot`` recipe section → :class:`TokenOTSettings` (None when disabled)."""
    from pisces_cli.ot import TokenOTSettings

    if not section.enabled:
        return None
    return TokenOTSettings(
        gamma=section.gamma,
        eta=section.eta,
        eps=section.eps,
        mass=section.mass,
        mode=section.mode,
        max_iter=section.max_iter,
        tol=section.tol,
        check_every=section.check_every,
        exclude_cls=section.exclude_cls,
        layers=None if section.layers is None else tuple(section.layers),
    ).validate()
