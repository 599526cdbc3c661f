"""The backbone interface shared by the HunyuanVideo and Wan adapters.

Conventions (diffusers' flow matching, both backbones): σ ∈ [0, 1] (1 = noise), ``x_σ = σ·ε + (1 − σ)·x0``, the
transformer predicts ``v ≈ ε − x0`` at timestep ``1000·σ``. Latents are ``[B, C, F_lat, h, w]`` in *transformer* latent space
(already scaled / normalised); pixels are ``[B, T, 3, H, W]`` in [0, 1].
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from pisces_cli.errors import UsageError

LORA_PRESETS = ("attn", "attn_mlp")


@dataclass
class PromptEmbeds:
    """Text conditioning for a batch of B prompts.

    Attributes:
        embeds: ``[B, L, D]`` token embeddings (Wan: zero rows after each prompt's length).
        mask: ``[B, L]`` int64 right-padded attention mask (HunyuanVideo) or None (Wan).
        pooled: ``[B, P]`` pooled CLIP embedding (HunyuanVideo) or None.
        negative: unconditional embeddings for classifier-free guidance (Wan with CFG), else None.
    """

    embeds: torch.Tensor
    mask: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    negative: PromptEmbeds | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def select(self, index: torch.Tensor | slice | list[int]) -> PromptEmbeds:
        """Rows ``index`` of every field (negative included)."""
        return PromptEmbeds(
            embeds=self.embeds[index],
            mask=None if self.mask is None else self.mask[index],
            pooled=None if self.pooled is None else self.pooled[index],
            negative=None if self.negative is None else self.negative.select(index),
        )

    def repeat_interleave(self, repeats: int) -> PromptEmbeds:
        """Each prompt repeated ``repeats`` times consecutively (for groups of samples per prompt)."""
        return self.select(torch.arange(len(self)).repeat_interleave(repeats))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PromptEmbeds:
        """Move to ``device``; floating fields are cast to ``dtype`` (the mask keeps its integer type)."""
        return replace(
            self,
            embeds=self.embeds.to(device=device, dtype=dtype),
            mask=None if self.mask is None else self.mask.to(device=device),
            pooled=None if self.pooled is None else self.pooled.to(device=device, dtype=dtype),
            negative=None if self.negative is None else self.negative.to(device, dtype),
        )


def read_hints(path: str | Path) -> dict:
    """Optional ``pisces_backbone.json`` next to ``model_index.json`` (prompt template, text length, guidance)."""
    hints_path = Path(path) / "pisces_backbone.json"
    if not hints_path.is_file():
        return {}
    try:
        return json.loads(hints_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UsageError(f"{hints_path}: not valid JSON ({error})") from error


def load_frozen_pipeline(pipeline_class, path_or_hub_id, *, dtype, device, skip: dict, label: str):
    """``pipeline_class.from_pretrained`` (``skip`` maps components not to load to ``None``), moved to
    ``device`` with every model component frozen in eval mode; a load failure is a UsageError naming ``label``."""
    try:
        pipeline = pipeline_class.from_pretrained(str(path_or_hub_id), dtype=dtype, **skip)
    except (OSError, ValueError) as error:
        raise UsageError(
            f"cannot load a {label} diffusers pipeline from {path_or_hub_id}: {error}"
        ) from error
    pipeline.to(device)
    for module in pipeline.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False).eval()
    return pipeline


def sigma_to_timestep(sigma: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """``[B]`` fp32 timesteps ``1000·σ`` from a float or ``[B]`` σ.

    The product is formed in fp64 and rounded once to fp32, so ``σ = t / 1000`` gives back exactly the
    scheduler's timestep ``t`` (UniPC's integers, FlowMatchEuler's fp32 values), and an fp32 σ gives the
    correctly rounded fp32 ``1000·σ``.
    """
    sigma_tensor = torch.as_tensor(sigma, dtype=torch.float64, device=device)
    if sigma_tensor.ndim == 0:
        sigma_tensor = sigma_tensor.expand(batch)
    if sigma_tensor.shape != (batch,):
        raise UsageError(f"sigma must be a float or shaped [{batch}], got {tuple(sigma_tensor.shape)}")
    if bool(((sigma_tensor < 0) | (sigma_tensor > 1)).any()):
        raise UsageError(f"sigma must lie in [0, 1] (1 = pure noise), got {sigma_tensor.tolist()}")
    return (1000.0 * sigma_tensor).to(torch.float32)


class BackboneAdapter(ABC):
    """One text-to-video flow-matching backbone behind a small interface.

    Subclasses set: ``family`` (name), ``pipeline`` (the diffusers pipeline holding every component),
    ``transformer`` (and ``transformer_2`` for two-expert Wan 2.2), ``vae``, ``latent_channels``,
    ``spatial_factor``, ``temporal_factor``, ``size_multiple`` (H and W must be multiples), ``default_shift`` (used
    only when the checkpoint's scheduler config has no shift), ``default_guidance``.
    """

    family: str = ""
    #: ``_class_name`` of the family's diffusers pipeline in ``model_index.json``
    pipeline_class_name: str = ""
    #: pipeline component → the ``model_index.json`` class names this adapter can run
    component_classes: dict[str, tuple[str, ...]] = {}
    #: components a folder may leave out (absent or ``[null, null]`` in ``model_index.json``)
    optional_components: tuple[str, ...] = ()
    pipeline: object
    transformer: torch.nn.Module
    transformer_2: torch.nn.Module | None = None
    vae: torch.nn.Module
    latent_channels: int
    spatial_factor: int
    temporal_factor: int = 4
    size_multiple: int
    default_shift: float
    default_guidance: float

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    @abstractmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        text_encoders: bool = True,
    ) -> BackboneAdapter:
        """Load the components from a diffusers-format directory (or a hub id when online).

        ``text_encoders=False`` skips the text encoders (training on precomputed prompt embeddings).
        """

    @classmethod
    def config_problems(cls, pipeline_config: dict, configs: dict[str, dict]) -> list[str]:
        """What in a folder's configs this adapter cannot run, read without loading weights.

        ``pipeline_config`` is ``model_index.json``; ``configs`` maps a component to its full config (class
        defaults filled in); components missing from ``configs`` are not checked. Returns one line per problem.
        """
        return []

    @classmethod
    def geometry_factors(cls, configs: dict[str, dict]) -> tuple[int, int]:
        """(temporal factor, spatial size multiple) from the ``transformer`` and ``vae`` full configs (class
        defaults filled in), as :attr:`temporal_factor` and :attr:`size_multiple` are set when loading."""
        raise NotImplementedError

    @classmethod
    def geometry_problem(
        cls, num_frames: int, height: int, width: int, temporal: int, multiple: int
    ) -> str | None:
        """Why a ``num_frames`` × ``height`` × ``width`` clip cannot be made (None: it can): frames ``4k+1`` for a
        temporal factor 4, sides positive multiples of ``multiple`` pixels."""
        if num_frames < 1 or (num_frames - 1) % temporal:
            return f"num_frames must be {temporal}k+1 (e.g. 9, 17, 33, 81, 129) for {cls.family}, got {num_frames}"
        for name, value in (("height", height), ("width", width)):
            if value <= 0 or value % multiple:
                return f"{name} must be a positive multiple of {multiple} for {cls.family}, got {value}"
        return None

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the transformer runs in."""
        return self.transformer.dtype

    def transformers(self) -> dict[str, torch.nn.Module]:
        """The trainable denoisers by pipeline component name (``transformer`` and maybe ``transformer_2``)."""
        found = {"transformer": self.transformer}
        if self.transformer_2 is not None:
            found["transformer_2"] = self.transformer_2
        return found

    # ----------------------------------------------------------------------------------- scheduler
    def scheduler_shift(self) -> float:
        """The flow shift of the checkpoint's own scheduler config (``flow_shift`` for UniPC, ``shift`` for
        FlowMatchEuler), else :attr:`default_shift`."""
        config = self.pipeline.scheduler.config
        for key in ("flow_shift", "shift"):
            if config.get(key) is not None:
                return float(config[key])
        return self.default_shift

    @abstractmethod
    def set_scheduler_timesteps(self, scheduler, steps: int, device: torch.device) -> None:
        """Call ``scheduler.set_timesteps`` for ``steps`` sampling steps exactly as this backbone's diffusers
        pipeline does (the grid depends on the pipeline, not only on the scheduler)."""

    def enable_gradient_checkpointing(self) -> None:
        """Checkpoint every transformer block (active only while gradients are enabled)."""
        for module in self.transformers().values():
            module.enable_gradient_checkpointing()

    # ------------------------------------------------------------------------------------------- text
    @abstractmethod
    def encode_prompts(self, prompts: list[str], *, negative_prompt: str | None = None) -> PromptEmbeds:
        """Encode B prompts (no gradient). ``negative`` is filled when the adapter uses real CFG."""

    # ------------------------------------------------------------------------------------ denoising
    @abstractmethod
    def predict_velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor | float,
        prompt_embeds: PromptEmbeds,
        *,
        guidance: float | None = None,
    ) -> torch.Tensor:
        """Velocity ``v ≈ ε − x0`` ``[B, C, F, h, w]`` (latents' dtype) at σ (float or ``[B]``), timestep 1000σ."""

    # ------------------------------------------------------------------------------------------- VAE
    @abstractmethod
    def decode(
        self, latents: torch.Tensor, *, grad: bool = True, checkpoint: bool = True, tiling: bool = False
    ) -> torch.Tensor:
        """Transformer latents ``[B, C, F, h, w]`` → pixels ``[B, T, 3, H, W]`` in [0, 1] (fp32)."""

    @abstractmethod
    def encode_video(
        self, pixels: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Pixels ``[B, T, 3, H, W]`` in [0, 1] → transformer latents ``[B, C, F_lat, h, w]`` (no gradient).

        ``sample=False`` uses the posterior mode, ``True`` draws from it with ``generator``.
        """

    # -------------------------------------------------------------------------------------------- LoRA
    @abstractmethod
    def lora_target_modules(self, preset: str = "attn") -> str:
        """A regex (PEFT full-matches it against module names) selecting exactly the block projections."""

    def _check_preset(self, preset: str) -> None:
        if preset not in LORA_PRESETS:
            raise UsageError(
                f"unknown LoRA target preset {preset!r}; expected one of {', '.join(LORA_PRESETS)}"
            )

    # ---------------------------------------------------------------------------------------- geometry
    def validate_geometry(self, num_frames: int, height: int, width: int) -> None:
        """Raise UsageError unless ``num_frames = 4k + 1`` and H, W are positive multiples of ``size_multiple``."""
        problem = self.geometry_problem(num_frames, height, width, self.temporal_factor, self.size_multiple)
        if problem is not None:
            raise UsageError(problem)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, F_lat, h, w)`` of the transformer latent for a clip of ``num_frames`` × H × W pixels."""
        self.validate_geometry(num_frames, height, width)
        return (
            self.latent_channels,
            (num_frames - 1) // self.temporal_factor + 1,
            height // self.spatial_factor,
            width // self.spatial_factor,
        )

    def num_pixel_frames(self, num_latent_frames: int) -> int:
        """Pixel frames decoded from ``F_lat`` latent frames: ``4·(F_lat − 1) + 1``."""
        if num_latent_frames < 1:
            raise UsageError(f"num_latent_frames must be >= 1, got {num_latent_frames}")
        return self.temporal_factor * (num_latent_frames - 1) + 1
