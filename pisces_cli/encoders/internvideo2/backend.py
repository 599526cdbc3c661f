"""InternVideo2-Stage2 as a reward-encoder backend (:class:`~pisces_cli.encoders.base.EncoderBackend`).

* Global features: ``vision_proj(pooled)`` and ``text_proj(text [CLS])``, not normalised (the OT map's input space).
* Token features: video tokens ``x_vis [B, 1 + T·g², C]`` (CLS first, frame-major); text tokens are the
  text-mode output ``[B, L, hidden]`` (also in ``extra["text_embeds"]``, the fusion input).
* Semantic reward: the VTM probability ``softmax(itm_head(fused [CLS]))[:, 1]`` of the fusion layers run on the
  text-mode states with cross-attention to ``x_vis`` (the reference's fine-grained reward). With token OT, every selected fusion
  layer's cross-attention probabilities are fused with the token-OT prior (``pisces_cli.ot.token_ot_prior_rows`` →
  ``fuse_rows``, through ``prior_fusion.PriorFusionHook``) on lexical rows; one batched solve per layer for all videos × heads. Default layers: all
  fusion layers but the last, whose prior cannot reach the [CLS] output (the VTM head reads only [CLS], and a
  layer's cross-attention never changes the [CLS] row it outputs).
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
from pisces_cli.encoders.fingerprint import hash_directory, hash_weight_files
from pisces_cli.encoders.internvideo2.checkpoint import load_internvideo2
from pisces_cli.encoders.internvideo2.config import InternVideo2Config
from pisces_cli.encoders.internvideo2.model import CONFIG_FILE, InternVideo2Stage2
from pisces_cli.encoders.internvideo2.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from pisces_cli.encoders.internvideo2.tokenizer import (
    DEFAULT_MAX_LENGTH,
    check_vocabulary_fits,
    load_bert_tokenizer,
    tokenize_captions,
)
from pisces_cli.encoders.prior_fusion import (
    CrossAttentionHook,
    cross_attention_semantic_reward,
    select_ot_layers,
)
from pisces_cli.errors import UsageError
from pisces_cli.ot import TokenOTSettings

KNOWN_OPTIONS = ("tokenizer_dir", "num_frames", "max_text_length", "use_checkpoint")


def find_tokenizer_dir(model_path: Path, tokenizer_dir: str | Path | None) -> Path:
    """``tokenizer_dir`` if given, else the first of the model's folder, its ``tokenizer/`` and
    ``bert-large-uncased/`` sub-folders that holds ``vocab.txt`` or ``tokenizer.json``."""
    if tokenizer_dir is not None:
        return Path(tokenizer_dir)
    base = model_path if model_path.is_dir() else model_path.parent
    for candidate in (base, base / "tokenizer", base / "bert-large-uncased"):
        if (candidate / "vocab.txt").is_file() or (candidate / "tokenizer.json").is_file():
            return candidate
    raise UsageError(
        f"internvideo2 backend: no BERT tokenizer found next to {model_path} (looked for vocab.txt in "
        f"{base}, {base / 'tokenizer'}, {base / 'bert-large-uncased'}); pass tokenizer_dir=<local bert-large-uncased>"
    )


def checkpoint_identity(path_or_id: str | Path, *, weights_sha256: bool = True) -> EncoderIdentity:
    """Fingerprint (model = the export directory's or ``.pt``'s name) and embedding width of a checkpoint,
    from ``config.json`` (an export) or the 1B config (the released ``.pt``); weights are hashed, never loaded."""
    path = Path(path_or_id)
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise UsageError(
                f"internvideo2 backend: {path}: no {CONFIG_FILE} (expected a pisces InternVideo2 export)"
            )
        embed_dim = InternVideo2Config.load_json(path / CONFIG_FILE).embed_dim
    elif path.is_file():
        embed_dim = InternVideo2Config.stage2_1b().embed_dim
    else:
        raise UsageError(
            f"internvideo2 backend: {path_or_id}: not found (expected an export directory or the released .pt)"
        )
    fingerprint = {"backend": InternVideo2Backend.name, "model": path.name}
    if weights_sha256:
        fingerprint["weights_sha256"] = hash_directory(path) if path.is_dir() else hash_weight_files([path])
    return EncoderIdentity(fingerprint, embed_dim)


def load_backend(
    path_or_id: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    tokenizer_dir: str | Path | None = None,
    num_frames: int | None = None,
    max_text_length: int = DEFAULT_MAX_LENGTH,
    use_checkpoint: bool = False,
    **options: Any,
) -> InternVideo2Backend:
    """Load InternVideo2-Stage2 as a frozen reward encoder.

    Args:
        path_or_id: our export directory (``config.json`` + ``model.safetensors``), or the released ``.pt``
            file (1B config; an explicit weights-only torch import).
        device: where the model runs.
        dtype: parameter dtype (``None`` keeps the stored dtype; the released ``.pt`` then loads as float32).
        tokenizer_dir: local ``bert-large-uncased`` directory (default: the model directory itself, or its
            ``tokenizer/`` or ``bert-large-uncased/`` sub-directory).
        num_frames: frames per clip (``pos_embed`` interpolated from the stored count; default: stored count).
        max_text_length: caption token budget (300 as in PISCES with token OT).
        use_checkpoint: activation checkpointing of the vision blocks (less memory on the backprop path).

    Raises:
        UsageError: unknown option, missing files, or a checkpoint that does not load strictly.
    """
    if options:
        raise UsageError(
            f"internvideo2 backend: unknown option(s) {', '.join(sorted(options))}; known: {', '.join(KNOWN_OPTIONS)}"
        )
    path = Path(path_or_id)
    identity = checkpoint_identity(path)
    if path.is_dir():
        model = InternVideo2Stage2.from_pretrained(path, num_frames, dtype, device, use_checkpoint)
    else:
        model = load_internvideo2(
            path,
            num_frames=num_frames,
            dtype=dtype or torch.float32,
            device=device,
            use_checkpoint=use_checkpoint,
        )
    tokenizer_folder = find_tokenizer_dir(path, tokenizer_dir)
    tokenizer = load_bert_tokenizer(tokenizer_folder)
    check_vocabulary_fits(
        tokenizer, tokenizer_folder, model.config.text.vocab_size, released=not path.is_dir()
    )
    fingerprint = identity.fingerprint
    return InternVideo2Backend(
        model, tokenizer, fingerprint["model"], fingerprint["weights_sha256"], max_text_length
    )


class InternVideo2Backend(EncoderBackend):
    """Frozen InternVideo2-Stage2 reward encoder (see the module docstring for the features it returns)."""

    name = "internvideo2"

    def __init__(
        self,
        model: InternVideo2Stage2,
        tokenizer: Any,
        model_name: str,
        weights_sha256: str,
        max_text_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_text_length = max_text_length
        self._model_name = model_name
        self._weights_sha256 = weights_sha256
        vision = model.config.vision
        self.preprocessing = VideoPreprocessing(
            num_frames=vision.num_frames,
            size=vision.img_size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            interpolation="bicubic",
        )
        self.embed_dim = model.config.embed_dim

    def fingerprint(self) -> dict[str, str]:
        """``{"backend": "internvideo2", "model": <export dir or .pt name>, "weights_sha256": <weight files hash>}``."""
        return {"backend": self.name, "model": self._model_name, "weights_sha256": self._weights_sha256}

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> InternVideo2Backend:
        self.model.to(device=device, dtype=dtype)
        return self

    # ------------------------------------------------------------------ text
    def encode_text(self, captions: list[str]) -> TextFeatures:
        """Encode ``B`` captions under ``no_grad`` at their real length (padded to the longest, ≤ max_text_length).

        Returns ``global_embedding [B, D]`` (``text_proj`` of [CLS]), ``tokens [B, L, hidden]`` (text-mode states,
        also ``extra["text_embeds"]``), bool ``attention_mask`` / ``lexical_mask [B, L]``, ``token_strings``,
        ``extra["input_ids"]``.
        """
        if isinstance(captions, str) or not captions:
            raise UsageError("internvideo2 backend: encode_text expects a non-empty list of caption strings")
        tokens = tokenize_captions(self.tokenizer, list(captions), self.max_text_length)
        device = self.device
        input_ids = tokens.input_ids.to(device)
        attention_mask = tokens.attention_mask.to(device)
        with torch.no_grad():
            text_embeds = self.model.encode_text(input_ids, attention_mask)
            global_embedding = self.model.text_embedding(text_embeds)
        return TextFeatures(
            global_embedding=global_embedding,
            tokens=text_embeds,
            attention_mask=attention_mask.bool(),
            lexical_mask=tokens.lexical_mask.to(device),
            token_strings=tokens.token_strings,
            extra={"text_embeds": text_embeds, "input_ids": input_ids},
        )

    # ------------------------------------------------------------------ video
    def encode_video(self, pixels: Tensor) -> VideoFeatures:
        """Encode preprocessed clips ``[B, T, 3, S, S]``; differentiable w.r.t. ``pixels``.

        Returns ``global_embedding [B, D]`` (``vision_proj(pooled)``), ``tokens = x_vis [B, 1 + T·g², C]``,
        the geometry ``(T, g, g, has_cls=True)``, no frame embeddings, ``extra["pooled"] [B, clip_embed_dim]``.
        """
        if pixels.ndim != 5:
            raise UsageError(
                f"internvideo2 backend: expected pixels [B, T, 3, S, S], got {tuple(pixels.shape)}"
            )
        x_vis, pooled = self.model.encode_vision(pixels.to(self.device))
        grid = self.model.config.vision.grid_size
        return VideoFeatures(
            global_embedding=self.model.video_embedding(pooled),
            tokens=x_vis,
            geometry=TokenGeometry(num_frames=pixels.shape[1], grid_h=grid, grid_w=grid, has_cls=True),
            frame_embeddings=None,
            extra={"pooled": pooled},
        )

    # ------------------------------------------------------------------ semantic reward
    def ot_layers(self, token_ot: TokenOTSettings) -> tuple[int, ...]:
        """Absolute BERT layer indices that get the OT prior (default: fusion layers but the last)."""
        text = self.model.config.text
        return select_ot_layers(tuple(range(text.fusion_layer, text.num_layers)), token_ot, "internvideo2")

    def semantic_reward(
        self,
        text: TextFeatures,
        video: VideoFeatures,
        token_ot: TokenOTSettings | None,
    ) -> SemanticResult:
        """VTM probability of each (caption, clip) pair, with the token-OT prior fused into the cross-attention.

        Returns ``reward [B]`` (fp32, differentiable through the video tokens), the detached ``plan [B, L, M]``
        (the OT prior averaged over heads and OT layers; zero rows off the lexical tokens; ``None`` without OT
        or with no OT layer) and, with OT, diagnostics ``ot_iterations`` (mean), ``ot_mass`` (mean),
        ``ot_marginal_error`` (max), ``ot_converged`` (all) over heads and layers, ``[B]`` each.
        """

        def match(states: Tensor, mask: Tensor, tokens: Tensor, hook: CrossAttentionHook | None) -> Tensor:
            fused = self.model.fusion(states, mask.long(), tokens, cross_attn_hook=hook)
            return self.model.vtm_probability(fused[:, 0])

        return cross_attention_semantic_reward("internvideo2", text, video, token_ot, self.ot_layers, match)
