"""HunyuanVideo (T2V, guidance-distilled) behind :class:`BackboneAdapter`, as ``HunyuanVideoPipeline`` runs it."""

from __future__ import annotations

import torch

from pisces_cli.backbones.base import (
    BackboneAdapter,
    PromptEmbeds,
    load_frozen_pipeline,
    read_hints,
    sigma_to_timestep,
)
from pisces_cli.backbones.decode import encode_raw_latents, vae_output_to_pixels
from pisces_cli.errors import UsageError

_DUAL_ATTN = r"attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
_DUAL_MLP = r"ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2)"
_SINGLE_ATTN = r"attn\.(to_q|to_k|to_v)"
_SINGLE_MLP = r"proj_mlp|proj_out"


class HunyuanVideoAdapter(BackboneAdapter):
    """HunyuanVideo: Llama + CLIP text encoders, embedded guidance (``guidance·1000``), VAE latents × scaling_factor."""

    family = "hunyuan_video"
    default_shift = 7.0
    default_guidance = 6.0
    pipeline_class_name = "HunyuanVideoPipeline"
    component_classes = {
        "transformer": ("HunyuanVideoTransformer3DModel",),
        "vae": ("AutoencoderKLHunyuanVideo",),
        "scheduler": ("FlowMatchEulerDiscreteScheduler",),
        "text_encoder": ("LlamaModel",),
        "tokenizer": ("LlamaTokenizerFast", "LlamaTokenizer", "PreTrainedTokenizerFast"),
        "text_encoder_2": ("CLIPTextModel",),
        "tokenizer_2": ("CLIPTokenizer", "CLIPTokenizerFast"),
    }

    @classmethod
    def config_problems(cls, pipeline_config: dict, configs: dict[str, dict]) -> list[str]:
        """Latent channels (transformer ``in_channels`` = VAE ``latent_channels``), text widths (``text_embed_dim``
        = Llama ``hidden_size``, ``pooled_projection_dim`` = CLIP ``hidden_size``) and an integer patch size."""
        transformer, vae = configs.get("transformer"), configs.get("vae")
        llama, clip = configs.get("text_encoder"), configs.get("text_encoder_2")
        problems = []
        if transformer and vae and transformer["in_channels"] != vae["latent_channels"]:
            problems.append(
                f"transformer in_channels {transformer['in_channels']} != vae latent_channels {vae['latent_channels']}"
            )
        if transformer and not isinstance(transformer["patch_size"], int):
            problems.append(f"transformer patch_size {transformer['patch_size']!r} is not an integer")
        if transformer and llama and transformer["text_embed_dim"] != llama["hidden_size"]:
            problems.append(
                f"transformer text_embed_dim {transformer['text_embed_dim']} != text_encoder hidden_size "
                f"{llama['hidden_size']}"
            )
        if transformer and clip and transformer["pooled_projection_dim"] != clip["hidden_size"]:
            problems.append(
                f"transformer pooled_projection_dim {transformer['pooled_projection_dim']} != text_encoder_2 "
                f"hidden_size {clip['hidden_size']}"
            )
        return problems

    @classmethod
    def geometry_factors(cls, configs: dict[str, dict]) -> tuple[int, int]:
        vae, transformer = configs["vae"], configs["transformer"]
        return int(vae["temporal_compression_ratio"]), int(vae["spatial_compression_ratio"]) * int(
            transformer["patch_size"]
        )

    def __init__(
        self,
        pipeline,
        *,
        prompt_template: dict | None = None,
        max_sequence_length: int = 256,
        default_guidance: float | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.transformer_2 = None
        self.vae = pipeline.vae
        # Right padding is required: the transformer counts valid text tokens and keeps the first ones.
        pipeline.tokenizer.padding_side = "right"
        self.prompt_template = prompt_template
        self.max_sequence_length = max_sequence_length
        if default_guidance is not None:
            self.default_guidance = float(default_guidance)
        self.latent_channels = int(self.transformer.config.in_channels)
        self.spatial_factor = int(self.vae.config.spatial_compression_ratio)
        self.temporal_factor = int(self.vae.config.temporal_compression_ratio)
        self.size_multiple = self.spatial_factor * int(self.transformer.config.patch_size)
        self.scaling_factor = float(self.vae.config.scaling_factor)

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        text_encoders: bool = True,
    ) -> HunyuanVideoAdapter:
        """Load transformer, VAE, scheduler config, tokenizers and (unless ``text_encoders=False``, e.g. when
        training on precomputed prompt embeddings) the Llama and CLIP text encoders."""
        from diffusers import HunyuanVideoPipeline

        skip = {} if text_encoders else {"text_encoder": None, "text_encoder_2": None}
        pipeline = load_frozen_pipeline(
            HunyuanVideoPipeline, path_or_hub_id, dtype=dtype, device=device, skip=skip, label="HunyuanVideo"
        )
        hints = read_hints(path_or_hub_id)
        kwargs = {}
        if "prompt_template" in hints:
            kwargs["prompt_template"] = hints["prompt_template"]
        return cls(
            pipeline,
            max_sequence_length=int(hints.get("max_sequence_length", 256)),
            default_guidance=hints.get("guidance"),
            **kwargs,
        )

    def set_scheduler_timesteps(self, scheduler, steps: int, device: torch.device) -> None:
        """``HunyuanVideoPipeline``: ``set_timesteps(sigmas=linspace(1, 0, steps + 1)[:-1])`` — the scheduler shifts
        them once and appends σ = 0 (flow-match Euler: the grid of :func:`~pisces_cli.backbones.schedule.sigma_grid`)."""
        import inspect

        import numpy as np

        if "sigmas" not in inspect.signature(scheduler.set_timesteps).parameters:
            raise UsageError(
                f"{type(scheduler).__name__} does not take custom sigmas, which HunyuanVideo sampling needs; "
                "set generate.sampler=euler"
            )
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1], device=device)

    # ------------------------------------------------------------------------------------------- text
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], *, negative_prompt: str | None = None) -> PromptEmbeds:
        """``embeds [B, L, D]``, right-padded ``mask [B, L]`` (int64), ``pooled [B, P]``; no negative (distilled CFG)."""
        if self.pipeline.text_encoder is None or self.pipeline.text_encoder_2 is None:
            raise UsageError(
                "this HunyuanVideo backbone was loaded with text_encoders=False; cannot encode prompts"
            )
        kwargs = {} if self.prompt_template is None else {"prompt_template": self.prompt_template}
        embeds, pooled, mask = self.pipeline.encode_prompt(
            prompt=list(prompts),
            max_sequence_length=self.max_sequence_length,
            device=self.device,
            dtype=self.dtype,
            **kwargs,
        )
        return PromptEmbeds(embeds=embeds, mask=mask.long(), pooled=pooled)

    # ------------------------------------------------------------------------------------ denoising
    def predict_velocity(
        self, latents: torch.Tensor, sigma, prompt_embeds: PromptEmbeds, *, guidance: float | None = None
    ) -> torch.Tensor:
        """``v`` ``[B, C, F, h, w]``; the embedded guidance passed to the model is ``guidance·1000``."""
        if prompt_embeds.mask is None or prompt_embeds.pooled is None:
            raise UsageError("HunyuanVideo needs prompt embeddings with a mask and pooled CLIP embedding")
        batch = latents.shape[0]
        if len(prompt_embeds) != batch:
            raise UsageError(f"batch mismatch: {batch} latents but {len(prompt_embeds)} prompt embeddings")
        timestep = sigma_to_timestep(sigma, batch, latents.device)
        scale = self.default_guidance if guidance is None else float(guidance)
        # In the transformer's dtype, as diffusers does (bf16 rounds 6000 to 6016, FastVideo's value).
        guidance_tensor = torch.full((batch,), 1000.0 * scale, device=latents.device, dtype=self.dtype)
        output = self.transformer(
            hidden_states=latents.to(self.dtype),
            timestep=timestep,  # fp32 like the diffusers pipeline (bf16 would round 1000σ)
            encoder_hidden_states=prompt_embeds.embeds.to(self.dtype),
            encoder_attention_mask=prompt_embeds.mask,
            pooled_projections=prompt_embeds.pooled.to(self.dtype),
            guidance=guidance_tensor,
            return_dict=False,
        )[0]
        return output.to(latents.dtype)

    # ------------------------------------------------------------------------------------------- VAE
    def decode(
        self, latents: torch.Tensor, *, grad: bool = True, checkpoint: bool = True, tiling: bool = False
    ) -> torch.Tensor:
        """``vae.decode(z / scaling_factor)`` → ``[B, T, 3, H, W]`` in [0, 1]; temporal tiling is diffusers' default."""
        vae = self.vae
        if checkpoint:
            vae.enable_gradient_checkpointing()
        else:
            vae.disable_gradient_checkpointing()
        if tiling:
            vae.enable_tiling()
        else:
            vae.disable_tiling()
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            video = vae.decode((latents / self.scaling_factor).to(vae.dtype), return_dict=False)[0]
        return vae_output_to_pixels(video)

    @torch.no_grad()
    def encode_video(
        self, pixels: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``vae.encode(2p − 1)`` (mode or sample) × scaling_factor → ``[B, C, F_lat, h, w]`` fp32."""
        self.validate_geometry(pixels.shape[1], pixels.shape[3], pixels.shape[4])
        raw = encode_raw_latents(self.vae, pixels, sample=sample, generator=generator, family="HunyuanVideo")
        return raw * self.scaling_factor

    # -------------------------------------------------------------------------------------------- LoRA
    def lora_target_modules(self, preset: str = "attn") -> str:
        """Dual-stream attention (+ ff/ff_context) and single-stream q/k/v (+ proj_mlp/proj_out); never the
        top-level ``proj_out`` or the token refiner."""
        self._check_preset(preset)
        dual, single = _DUAL_ATTN, _SINGLE_ATTN
        if preset == "attn_mlp":
            dual, single = f"{_DUAL_ATTN}|{_DUAL_MLP}", f"{_SINGLE_ATTN}|{_SINGLE_MLP}"
        return rf"transformer_blocks\.\d+\.({dual})|single_transformer_blocks\.\d+\.({single})"
