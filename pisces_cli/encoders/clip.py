"""The ``clip`` reward-encoder backend: any transformers CLIP, SigLIP or SigLIP2 dual encoder.

A video is encoded frame by frame with the image tower; the text with the text tower. Exactly:

CLIP (``CLIPModel``)
    ``h = vision_model(frames).last_hidden_state`` is ``[B·T, 1 + g², Hv]`` (before the
    post-layernorm). The frame embedding is ``visual_projection(post_layernorm(h[:, 0]))`` (this is
    ``CLIPModel.get_image_features``: the projection of the pooled [CLS] state). The patch tokens are
    ``visual_projection(post_layernorm(h[:, 1:]))``, i.e. the same map applied per patch, so they live
    in the joint space; the [CLS] is dropped from the tokens. Text: ``s = text_model(ids)
    .last_hidden_state`` (after the final layer norm); tokens ``text_projection(s)``, global embedding
    ``text_projection(s[eos])`` (``get_text_features``).
SigLIP (``SiglipModel``)
    The vision tower's last hidden state is already post-layernormed and has no [CLS]; there is no
    projection matrix, the joint space is the vision width. Frame embedding = the attention-pooling head
    output (``get_image_features``); tokens = the post-layernorm patch states. Text: tokens
    ``text_model.head(s)``, global ``text_model.head(s[:, -1])`` (``get_text_features``); captions are
    padded to the maximum length as SigLIP was trained (the pooled token is the last position).
SigLIP2 (``Siglip2Model``)
    As SigLIP, with frames cut into ``g x g`` patches of ``p x p x 3`` (row-major patches, pixels
    row-major, channels last inside a patch) and all patches valid.

For all families: ``frame_embeddings [B, T, D]``; video ``global_embedding [B, D]`` = mean over the
``T`` frames of the frame embeddings (not normalised); video ``tokens [B, T·g², D]`` frame-major,
row-major, with ``TokenGeometry(T, g, g, has_cls=False)``. The text attention mask is passed to the
text tower only when the checkpoint's tokenizer lists ``attention_mask`` among its model inputs (as the
Hugging Face processors do); padding never changes the features of real tokens for CLIP (causal mask).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
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
from pisces_cli.errors import PiscesRuntimeError, UsageError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from pisces_cli.ot import TokenOTSettings

__all__ = [
    "FAMILIES",
    "ClipBackend",
    "checkpoint_identity",
    "checkpoint_name",
    "derive_preprocessing",
    "load_clip_backend",
    "plan_weighted_cosine",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
#: CLIP clamps its learned temperature at 100.
MAX_LOGIT_SCALE = 100.0
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class _Family:
    """What differs between the supported dual-encoder families."""

    model_class: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    pad_to_max_length: bool


#: ``config.json`` ``model_type`` -> family description.
FAMILIES: dict[str, _Family] = {
    "clip": _Family("CLIPModel", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "bicubic", False),
    "siglip": _Family("SiglipModel", SIGLIP_MEAN, SIGLIP_STD, "bilinear", True),
    "siglip2": _Family("Siglip2Model", SIGLIP_MEAN, SIGLIP_STD, "bilinear", True),
}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return data


def _native_size(model_type: str, vision_config: Any) -> int:
    """Input side in pixels the vision tower was built for."""
    if model_type == "siglip2":
        return math.isqrt(int(vision_config.num_patches)) * int(vision_config.patch_size)
    return int(vision_config.image_size)


def _side_from(value: Any, key: str, path: Path) -> int:
    """Square side from a HF image-processor size entry (int or dict)."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value:
            if value["height"] != value["width"]:
                raise UsageError(f"{path}: `{key}` must be square, got {value}")
            return int(value["height"])
    raise UsageError(
        f"{path}: `{key}` must be an int or {{height, width}} / {{shortest_edge}}, got {value!r}"
    )


def _triple(value: Any, key: str, path: Path) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3  # type: ignore[return-value]
    if isinstance(value, list) and len(value) == 3:
        return (float(value[0]), float(value[1]), float(value[2]))
    raise UsageError(f"{path}: `{key}` must be a number or a list of 3 numbers, got {value!r}")


def derive_preprocessing(directory: str | Path, model_type: str, vision_config: Any) -> VideoPreprocessing:
    """Frame preprocessing of a checkpoint, from its ``preprocessor_config.json`` when present.

    Size: ``crop_size`` (when cropping), else ``size`` (``shortest_edge`` or square ``height/width``),
    SigLIP2: ``patch_size · √max_num_patches``; without the file, the vision tower's native size.
    Mean/std: ``image_mean`` / ``image_std``, else the family's standard constants (OpenAI CLIP or
    0.5/0.5). Interpolation: ``resample`` (PIL code), else bicubic (CLIP) / bilinear (SigLIP).
    ``num_frames`` is ``None``: frames are encoded independently, any count works.
    """
    family = FAMILIES[model_type]
    path = Path(directory) / "preprocessor_config.json"
    size = _native_size(model_type, vision_config)
    mean, std, interpolation = family.mean, family.std, family.interpolation
    if path.is_file():
        config = _read_json(path)
        if model_type == "siglip2" and "max_num_patches" in config:
            patch = int(config.get("patch_size", vision_config.patch_size))
            size = math.isqrt(int(config["max_num_patches"])) * patch
        elif config.get("do_center_crop", True) and config.get("crop_size") is not None:
            size = _side_from(config["crop_size"], "crop_size", path)
        elif config.get("size") is not None:
            size = _side_from(config["size"], "size", path)
        if config.get("image_mean") is not None:
            mean = _triple(config["image_mean"], "image_mean", path)
        if config.get("image_std") is not None:
            std = _triple(config["image_std"], "image_std", path)
        resample = config.get("resample")
        if isinstance(resample, int) and resample in _PIL_RESAMPLE:
            interpolation = _PIL_RESAMPLE[resample]
        elif isinstance(resample, str):
            interpolation = resample.lower()
    patch_size = int(vision_config.patch_size)
    if size <= 0 or size % patch_size:
        raise UsageError(
            f"{path}: input size {size} must be a positive multiple of the patch size {patch_size}"
        )
    return VideoPreprocessing(num_frames=None, size=size, mean=mean, std=std, interpolation=interpolation)


def _load_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    """The tokenizer the checkpoint names in ``tokenizer_config.json`` (else ``AutoTokenizer``'s choice).

    Honouring the named class matters for generic fast tokenizers: ``AutoTokenizer`` would otherwise
    substitute the family's default tokenizer class for SigLIP2 checkpoints.
    """
    import transformers
    from transformers import AutoTokenizer

    config_path = directory / "tokenizer_config.json"
    named = _read_json(config_path).get("tokenizer_class") if config_path.is_file() else None
    tokenizer_class = getattr(transformers, named, None) if isinstance(named, str) else None
    try:
        if tokenizer_class is not None and hasattr(tokenizer_class, "from_pretrained"):
            return tokenizer_class.from_pretrained(directory)
        return AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, ImportError) as exc:
        raise UsageError(f"{directory}: cannot load the tokenizer ({exc})") from exc


def checkpoint_name(directory: str | Path) -> str:
    """Readable model name of a checkpoint directory, for fingerprints and reports.

    A Hugging Face cache snapshot ``.../models--org--name/snapshots/<commit>`` gives ``org/name``;
    any other directory gives its own name.
    """
    resolved = Path(directory).resolve()
    repo_dir = resolved.parent.parent
    if resolved.parent.name == "snapshots" and repo_dir.name.startswith("models--"):
        return repo_dir.name[len("models--") :].replace("--", "/")
    return resolved.name


def joint_width(config: Any, model_type: str, model_name: str) -> int:
    """Width ``D`` of the global embeddings: CLIP's ``projection_dim``; SigLIP's vision width (its pooling head)."""
    if model_type == "clip":
        return int(config.projection_dim)
    if not getattr(config.vision_config, "vision_use_head", True):
        raise UsageError(
            f"clip backend: {model_name}: SigLIP vision tower without its pooling head "
            "(vision_use_head=false) has no image embedding"
        )
    return int(config.vision_config.hidden_size)


def _checked_config(directory: Path, path_or_id: str | Path) -> dict[str, Any]:
    """``config.json`` of a local checkpoint directory whose ``model_type`` is supported."""
    if not directory.is_dir():
        raise UsageError(
            f"clip backend: {path_or_id}: expected a local checkpoint directory "
            "(pisces does not download; fetch it first, e.g. with `hf download`)"
        )
    config = _read_json(directory / "config.json") if (directory / "config.json").is_file() else None
    if config is None:
        raise UsageError(f"clip backend: {directory}: no config.json")
    if config.get("model_type") not in FAMILIES:
        raise UsageError(
            f"clip backend: {directory / 'config.json'}: model_type {config.get('model_type')!r} is not "
            f"supported; expected one of {', '.join(FAMILIES)}"
        )
    return config


def checkpoint_identity(path_or_id: str | Path, *, weights_sha256: bool = True) -> EncoderIdentity:
    """Fingerprint and embedding width of a checkpoint directory from its ``config.json`` (weights are
    hashed when asked, never loaded)."""
    from transformers import AutoConfig

    directory = Path(path_or_id)
    model_type = _checked_config(directory, path_or_id)["model_type"]
    name = checkpoint_name(directory)
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UsageError(f"clip backend: {directory / 'config.json'}: cannot read ({exc})") from exc
    fingerprint = {"backend": ClipBackend.name, "model": name}
    if weights_sha256:
        fingerprint["weights_sha256"] = hash_directory(directory)
    return EncoderIdentity(fingerprint, joint_width(config, model_type, name))


def load_clip_backend(
    path_or_id: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    max_text_length: int | None = None,
    **options: Any,
) -> ClipBackend:
    """Load a local CLIP / SigLIP / SigLIP2 checkpoint directory as a frozen reward encoder.

    Args:
        path_or_id: checkpoint directory with ``config.json``, ``*.safetensors``, tokenizer files and
            optionally ``preprocessor_config.json`` (pisces never downloads).
        device: where the model runs.
        dtype: parameter dtype (``None`` keeps the checkpoint's).
        max_text_length: caption token budget (default: the tokenizer's and the position table's limit).

    Raises:
        UsageError: unknown option, missing directory, unsupported ``model_type``, no safetensors weights.
    """
    if options:
        raise UsageError(
            f"clip backend: unknown option(s) {', '.join(sorted(options))}; known: max_text_length"
        )
    directory = Path(path_or_id)
    model_type = _checked_config(directory, path_or_id)["model_type"]
    if not any(directory.glob("*.safetensors")):
        raise UsageError(
            f"clip backend: {directory}: no *.safetensors weights (pisces loads safetensors only; "
            "convert pickled .bin checkpoints first)"
        )
    import transformers

    model_class = getattr(transformers, FAMILIES[model_type].model_class)
    try:
        model = model_class.from_pretrained(directory, use_safetensors=True, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise UsageError(f"clip backend: {directory}: cannot load {model_class.__name__} ({exc})") from exc
    tokenizer = _load_tokenizer(directory)
    preprocessing = derive_preprocessing(directory, model_type, model.config.vision_config)
    backend = ClipBackend(
        model,
        tokenizer,
        preprocessing,
        model_type=model_type,
        model_name=checkpoint_name(directory),
        weights_sha256=hash_directory(directory),
        max_text_length=max_text_length,
    )
    return backend.to(device)


def plan_weighted_cosine(cosine: Tensor, plan: Tensor) -> Tensor:
    """``Σ_ij P_ij cos_ij / Σ_ij P_ij`` per batch item.

    Args:
        cosine: ``[B, L, M]`` token cosine similarities (may carry gradients).
        plan: ``[B, L, M]`` non-negative weights (detached), zero on excluded rows/columns.

    Returns:
        ``[B]``; 0 where the plan has no mass.
    """
    plan = plan.to(cosine.dtype)
    mass = plan.sum((-2, -1))
    weighted = (plan * cosine).sum((-2, -1))
    return torch.where(
        mass > 0, weighted / mass.clamp_min(torch.finfo(cosine.dtype).tiny), torch.zeros_like(mass)
    )


class ClipBackend(EncoderBackend):
    """Frozen CLIP / SigLIP / SigLIP2 dual encoder as a video-text reward model (see module docstring)."""

    name = "clip"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        preprocessing: VideoPreprocessing,
        *,
        model_type: str,
        model_name: str,
        weights_sha256: str,
        max_text_length: int | None = None,
    ) -> None:
        if model_type not in FAMILIES:
            raise UsageError(f"clip backend: model_type {model_type!r} not in {', '.join(FAMILIES)}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.model_type = model_type
        self._model_name = model_name
        self._weights_sha256 = weights_sha256
        config = model.config
        vision_config = config.vision_config
        self.patch_size = int(vision_config.patch_size)
        self._native_size = _native_size(model_type, vision_config)
        self.embed_dim = joint_width(config, model_type, model_name)
        position_limit = int(config.text_config.max_position_embeddings)
        tokenizer_limit = int(getattr(tokenizer, "model_max_length", position_limit) or position_limit)
        limit = min(position_limit, tokenizer_limit)
        self.max_text_length = limit if max_text_length is None else int(max_text_length)
        if not 2 <= self.max_text_length <= position_limit:
            raise UsageError(
                f"clip backend: max_text_length must be in [2, {position_limit}], got {self.max_text_length}"
            )
        self._pass_text_mask = "attention_mask" in getattr(tokenizer, "model_input_names", ["attention_mask"])
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        for attr in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
            token_id = getattr(tokenizer, attr, None)
            if isinstance(token_id, int):
                special.add(token_id)
        self._special_ids = torch.tensor(sorted(special), dtype=torch.long)

    # ------------------------------------------------------------------ identity / placement
    def fingerprint(self) -> dict[str, str]:
        """``{"backend": "clip", "model": <checkpoint dir name>, "weights_sha256": <weight files hash>}``."""
        return {"backend": self.name, "model": self._model_name, "weights_sha256": self._weights_sha256}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ClipBackend:
        self.model.to(device=device, dtype=dtype)
        return self

    @property
    def logit_scale(self) -> float:
        """The model's learned inverse temperature ``exp(logit_scale)`` (capped at 100 for CLIP)."""
        scale = float(self.model.logit_scale.detach().float().exp())
        return min(scale, MAX_LOGIT_SCALE) if self.model_type == "clip" else scale

    # ------------------------------------------------------------------ text
    def encode_text(self, captions: list[str]) -> TextFeatures:
        """Encode ``B`` captions under ``no_grad``.

        Returns:
            ``global_embedding [B, D]``, ``tokens [B, L, D]`` (per-token projection into the joint
            space), ``attention_mask`` / ``lexical_mask [B, L]`` bool, ``token_strings [B][L]``.
            ``L`` is the longest caption (CLIP) or ``max_text_length`` (SigLIP: padded as trained).
        """
        if isinstance(captions, str) or not captions:
            raise UsageError("clip backend: encode_text expects a non-empty list of caption strings")
        encoded = self.tokenizer(
            list(captions),
            padding="max_length" if FAMILIES[self.model_type].pad_to_max_length else "longest",
            truncation=True,
            max_length=self.max_text_length,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = self.device
        input_ids = encoded["input_ids"].to(device)
        attention_mask = encoded["attention_mask"].to(device).bool()
        text_model = self.model.text_model
        with torch.no_grad():
            out = text_model(
                input_ids=input_ids,
                attention_mask=attention_mask.long() if self._pass_text_mask else None,
            )
            states = out.last_hidden_state
            if self.model_type == "clip":
                tokens = self.model.text_projection(states)
                global_embedding = self.model.text_projection(out.pooler_output)
            else:
                tokens = text_model.head(states)
                global_embedding = out.pooler_output
        special = torch.isin(input_ids, self._special_ids.to(device))
        lexical_mask = attention_mask & ~special
        token_strings = [self.tokenizer.convert_ids_to_tokens(row) for row in input_ids.tolist()]
        return TextFeatures(
            global_embedding=global_embedding,
            tokens=tokens,
            attention_mask=attention_mask,
            lexical_mask=lexical_mask,
            token_strings=token_strings,
            extra={"input_ids": input_ids},
        )

    # ------------------------------------------------------------------ video
    def encode_video(self, pixels: Tensor) -> VideoFeatures:
        """Encode preprocessed clips; differentiable w.r.t. ``pixels``.

        Args:
            pixels: ``[B, T, 3, S, S]`` normalised frames, ``S = preprocessing.size``.

        Returns:
            ``global_embedding [B, D]`` (mean of ``frame_embeddings`` over T), ``tokens [B, T·g², D]``,
            ``frame_embeddings [B, T, D]``, geometry ``(T, g, g, has_cls=False)``, ``g = S / patch``.
        """
        size = self.preprocessing.size
        if pixels.ndim != 5 or pixels.shape[2] != 3 or pixels.shape[-2:] != (size, size):
            raise UsageError(
                f"clip backend: encode_video expects pixels [B, T, 3, {size}, {size}], got {tuple(pixels.shape)}"
            )
        batch, frames = pixels.shape[:2]
        flat = pixels.reshape(batch * frames, 3, size, size).to(device=self.device, dtype=self.dtype)
        grid = size // self.patch_size
        vision = self.model.vision_model
        interpolate = size != self._native_size
        if self.model_type == "clip":
            out = vision(pixel_values=flat, interpolate_pos_encoding=interpolate)
            patches = vision.post_layernorm(out.last_hidden_state[:, 1:])
            tokens = self.model.visual_projection(patches)
            frame_embeddings = self.model.visual_projection(out.pooler_output)
        elif self.model_type == "siglip":
            out = vision(pixel_values=flat, interpolate_pos_encoding=interpolate)
            tokens = out.last_hidden_state
            frame_embeddings = out.pooler_output
        else:
            patch = self.patch_size
            patchified = (
                flat.reshape(batch * frames, 3, grid, patch, grid, patch)
                .permute(0, 2, 4, 3, 5, 1)
                .reshape(batch * frames, grid * grid, patch * patch * 3)
            )
            shapes = torch.tensor([[grid, grid]], dtype=torch.long, device=flat.device).expand(
                batch * frames, 2
            )
            valid = torch.ones(batch * frames, grid * grid, dtype=torch.long, device=flat.device)
            out = vision(pixel_values=patchified, pixel_attention_mask=valid, spatial_shapes=shapes)
            tokens = out.last_hidden_state
            frame_embeddings = out.pooler_output
        if tokens.shape[1] != grid * grid:
            raise PiscesRuntimeError(
                f"clip backend: vision tower returned {tokens.shape[1]} patch tokens, expected {grid * grid}"
            )
        frame_embeddings = frame_embeddings.reshape(batch, frames, -1)
        return VideoFeatures(
            global_embedding=frame_embeddings.mean(dim=1),
            tokens=tokens.reshape(batch, frames * grid * grid, -1),
            geometry=TokenGeometry(num_frames=frames, grid_h=grid, grid_w=grid, has_cls=False),
            frame_embeddings=frame_embeddings,
            extra={},
        )

    # ------------------------------------------------------------------ semantic reward
    def semantic_reward(
        self,
        text: TextFeatures,
        video: VideoFeatures,
        token_ot: TokenOTSettings | None,
    ) -> SemanticResult:
        """Token-level OT alignment score between lexical caption tokens and video tokens.

        Definition (per pair ``b``; ``Y_i`` lexical text tokens ``i = 1..N``, ``X_j`` video tokens
        ``j = 1..M``, both in the joint space)::

            c_ij = cos(Y_i, X_j)
            r_s  = Σ_ij P_ij c_ij / Σ_ij P_ij

        With ``token_ot`` set, ``P`` is the partial/unbalanced entropic OT plan of
        :func:`pisces_cli.ot.token_ot_cost` (semantic ``1 - c``, temporal and spatial costs, min-max
        normalised) solved by :func:`pisces_cli.ot.sinkhorn`. The attention ``A`` that the cost needs for
        the expected frame ``τ_i`` and position ``π_i`` is ``A_i = softmax_j(s · c_ij)`` with ``s`` the
        model's logit scale (one "head"). ``P`` is detached: gradients reach the video tokens and the
        pixels only through ``c``. ``token_ot = None`` (the no-OT arm) uses the uniform plan over
        lexical × video tokens, so ``r_s`` is the mean token cosine. ``r_s ∈ [-1, 1]``.

        Args:
            text: ``B`` captions' features (``tokens [B, L, D]``, ``lexical_mask [B, L]``).
            video: ``B`` clips' features (``tokens [B, M, D]``).
            token_ot: OT settings, or ``None`` for the no-OT arm.

        Returns:
            ``reward [B]`` (float32), the detached ``plan [B, L, M]`` (zero rows on non-lexical tokens)
            and, with OT, diagnostics ``ot_iterations``, ``ot_mass``, ``ot_marginal_error``,
            ``ot_converged`` (``[B]`` each).

        Raises:
            UsageError: batch sizes or widths differ, or a caption has no lexical token.
        """
        if text.tokens.shape[0] != video.tokens.shape[0]:
            raise UsageError(
                f"clip backend: semantic_reward got {text.tokens.shape[0]} captions for "
                f"{video.tokens.shape[0]} videos"
            )
        if text.tokens.shape[-1] != video.tokens.shape[-1]:
            raise UsageError(
                f"clip backend: text token width {text.tokens.shape[-1]} != video token width "
                f"{video.tokens.shape[-1]}"
            )
        lexical = text.lexical_mask.to(video.tokens.device).bool()
        empty = (~lexical.any(-1)).nonzero().flatten().tolist()
        if empty:
            raise UsageError(f"clip backend: caption(s) {empty} have no lexical token to align")
        text_tokens = F.normalize(text.tokens.to(video.tokens.device).float(), dim=-1)
        video_tokens = F.normalize(video.tokens.float(), dim=-1)
        cosine = text_tokens @ video_tokens.transpose(-2, -1)  # [B, L, M]
        diagnostics: dict[str, Tensor] = {}
        if token_ot is None:
            plan = lexical[:, :, None].expand_as(cosine).to(cosine.dtype)
            plan = plan / plan.sum((-2, -1), keepdim=True)
        else:
            plan, diagnostics = _token_plan(
                cosine.detach(), text_tokens, video_tokens.detach(), lexical, video.geometry,
                self.logit_scale, token_ot,
            )  # fmt: skip
        plan = plan.detach()
        reward = plan_weighted_cosine(cosine, plan)
        return SemanticResult(reward=reward, plan=plan, diagnostics=diagnostics)


def _token_plan(
    cosine: Tensor,
    text_tokens: Tensor,
    video_tokens: Tensor,
    lexical: Tensor,
    geometry: TokenGeometry,
    logit_scale: float,
    settings: TokenOTSettings,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Detached OT plan between lexical text tokens and video tokens, solved for the whole batch at once.

    Args:
        cosine: ``[B, L, M]`` detached token cosines.
        text_tokens: ``[B, L, D]`` text tokens (rows of the cost; non-lexical rows are masked out).
        video_tokens: ``[B, M, D]`` detached video tokens.
        lexical: ``[B, L]`` bool lexical rows.
        geometry: video token layout (frame index and patch position of each token).
        logit_scale: inverse temperature of the pseudo-attention ``softmax_j(scale · cos_ij)``.
        settings: cost weights and solver settings (``layers`` has no meaning here: no fusion layers).

    Returns:
        The raw (not row-normalised) plan ``[B, L, M]`` float32, zero on non-lexical rows, and the
        ``[B]`` diagnostics ``ot_iterations``, ``ot_mass``, ``ot_marginal_error``, ``ot_converged``.
    """
    from pisces_cli.ot import video_token_geometry
    from pisces_cli.ot.token_cost import solve_token_ot

    settings.validate()
    frame_index, coords = video_token_geometry(
        geometry.num_frames, geometry.grid_h, geometry.grid_w, geometry.has_cls, device=cosine.device
    )
    if frame_index.shape[0] != video_tokens.shape[1]:
        raise PiscesRuntimeError(
            f"clip backend: {video_tokens.shape[1]} video tokens do not match the geometry {geometry}"
        )
    with torch.no_grad():
        attention = torch.softmax(logit_scale * cosine, dim=-1)[:, None]  # [B, 1, L, M], one head
        plan, info = solve_token_ot(
            text_tokens, video_tokens, attention, (frame_index, coords), lexical, settings
        )
    diagnostics = {
        "ot_iterations": info.iterations[:, 0],
        "ot_mass": info.mass[:, 0].float(),
        "ot_marginal_error": info.marginal_error[:, 0].float(),
        "ot_converged": info.converged[:, 0],
    }
    return plan[:, 0].float(), diagnostics
