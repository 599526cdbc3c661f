"""Wan 2.1 / 2.2 (incl. A14B two experts and TI2V-5B per-token timesteps) behind :class:`BackboneAdapter`.

As ``WanPipeline`` does it: UMT5 text (zero-padded, no mask), real CFG with a negative prompt, per-channel latent
normalisation ``z = (μ_vae − mean_c) / std_c``, causal VAE without built-in gradient checkpointing. The released
checkpoints sample with a UniPC multistep scheduler (flow prediction, shifted flow sigmas).
"""

from __future__ import annotations

import torch

from pisces_cli.backbones.base import (
    BackboneAdapter,
    PromptEmbeds,
    load_frozen_pipeline,
    read_hints,
    sigma_to_timestep,
)
from pisces_cli.backbones.decode import encode_raw_latents, vae_output_to_pixels, wan_decode_checkpointed
from pisces_cli.errors import UsageError


class WanAdapter(BackboneAdapter):
    """Wan text-to-video. ``use_cfg`` turns on real classifier-free guidance when ``guidance > 1``."""

    family = "wan"
    default_shift = 3.0
    default_guidance = 5.0
    pipeline_class_name = "WanPipeline"
    component_classes = {
        "transformer": ("WanTransformer3DModel",),
        "transformer_2": ("WanTransformer3DModel",),
        "vae": ("AutoencoderKLWan",),
        "scheduler": ("UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"),
        "text_encoder": ("UMT5EncoderModel",),
        "tokenizer": ("T5TokenizerFast", "T5Tokenizer", "AutoTokenizer"),
    }
    optional_components = ("transformer_2",)

    @classmethod
    def config_problems(cls, pipeline_config: dict, configs: dict[str, dict]) -> list[str]:
        """Latent channels (``in_channels`` = VAE ``z_dim`` = length of ``latents_mean``/``latents_std``), a
        3-long ``patch_size``, text width (``text_dim`` = UMT5 ``d_model``) and ``transformer_2`` only with
        ``boundary_ratio`` (the A14B expert switch)."""
        vae, text = configs.get("vae"), configs.get("text_encoder")
        problems = []
        for name in ("transformer", "transformer_2"):
            transformer = configs.get(name)
            if not transformer:
                continue
            if vae and transformer["in_channels"] != vae["z_dim"]:
                problems.append(
                    f"{name} in_channels {transformer['in_channels']} != vae z_dim {vae['z_dim']}"
                )
            if len(transformer["patch_size"]) != 3:
                problems.append(f"{name} patch_size {transformer['patch_size']!r} is not (t, h, w)")
            if text and transformer["text_dim"] != text["d_model"]:
                problems.append(
                    f"{name} text_dim {transformer['text_dim']} != text_encoder d_model {text['d_model']}"
                )
        if vae:
            for key in ("latents_mean", "latents_std"):
                if len(vae[key]) != vae["z_dim"]:
                    problems.append(f"vae {key} has {len(vae[key])} values for z_dim {vae['z_dim']}")
        if "transformer_2" in configs and pipeline_config.get("boundary_ratio") is None:
            problems.append("transformer_2 without boundary_ratio in model_index.json")
        return problems

    @classmethod
    def geometry_factors(cls, configs: dict[str, dict]) -> tuple[int, int]:
        vae, transformer = configs["vae"], configs["transformer"]
        return int(vae["scale_factor_temporal"]), int(vae["scale_factor_spatial"]) * int(
            transformer["patch_size"][1]
        )

    def __init__(
        self,
        pipeline,
        *,
        max_sequence_length: int = 512,
        use_cfg: bool = True,
        default_guidance: float | None = None,
        negative_prompt: str = "",
    ) -> None:
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.transformer_2 = getattr(pipeline, "transformer_2", None)
        self.vae = pipeline.vae
        self.max_sequence_length = max_sequence_length
        self.use_cfg = use_cfg
        self.negative_prompt = negative_prompt
        if default_guidance is not None:
            self.default_guidance = float(default_guidance)
        config = pipeline.config
        self.boundary_ratio = config.get("boundary_ratio", None)
        self.expand_timesteps = bool(config.get("expand_timesteps", False))
        if self.transformer_2 is not None and self.boundary_ratio is None:
            raise UsageError("Wan pipeline has transformer_2 but no boundary_ratio in model_index.json")
        self.latent_channels = int(self.transformer.config.in_channels)
        self.spatial_factor = int(self.vae.config.scale_factor_spatial)
        self.temporal_factor = int(self.vae.config.scale_factor_temporal)
        self.patch_size = tuple(self.transformer.config.patch_size)
        self.size_multiple = self.spatial_factor * int(self.patch_size[1])
        channels = int(self.vae.config.z_dim)
        self._latents_mean = torch.tensor(self.vae.config.latents_mean, dtype=torch.float32).view(
            1, channels, 1, 1, 1
        )
        self._latents_std = torch.tensor(self.vae.config.latents_std, dtype=torch.float32).view(
            1, channels, 1, 1, 1
        )

    @property
    def variant(self) -> str:
        """``"2.2-a14b"`` (two experts), ``"2.2-ti2v-5b"`` (per-token timesteps) or ``"2.1"``."""
        if self.transformer_2 is not None:
            return "2.2-a14b"
        return "2.2-ti2v-5b" if self.expand_timesteps else "2.1"

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        use_cfg: bool = True,
        text_encoders: bool = True,
    ) -> WanAdapter:
        """Load transformer(s), VAE, scheduler config, tokenizer and (unless ``text_encoders=False``) UMT5."""
        from diffusers import WanPipeline

        skip = {} if text_encoders else {"text_encoder": None}
        pipeline = load_frozen_pipeline(
            WanPipeline, path_or_hub_id, dtype=dtype, device=device, skip=skip, label="Wan"
        )
        hints = read_hints(path_or_hub_id)
        return cls(
            pipeline,
            max_sequence_length=int(hints.get("max_sequence_length", 512)),
            use_cfg=use_cfg,
            default_guidance=hints.get("guidance"),
        )

    # ------------------------------------------------------------------------------------------- text
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], *, negative_prompt: str | None = None) -> PromptEmbeds:
        """``embeds [B, L, D]`` zero-padded after each prompt; ``negative`` filled when ``use_cfg``."""
        if self.pipeline.text_encoder is None:
            raise UsageError("this Wan backbone was loaded with text_encoders=False; cannot encode prompts")
        negative_text = self.negative_prompt if negative_prompt is None else negative_prompt
        embeds, negative = self.pipeline.encode_prompt(
            prompt=list(prompts),
            negative_prompt=[negative_text] * len(prompts),
            do_classifier_free_guidance=self.use_cfg,
            max_sequence_length=self.max_sequence_length,
            device=self.device,
            dtype=self.dtype,
        )
        return PromptEmbeds(
            embeds=embeds, negative=None if negative is None else PromptEmbeds(embeds=negative)
        )

    def set_scheduler_timesteps(self, scheduler, steps: int, device: torch.device) -> None:
        """``WanPipeline``: ``set_timesteps(steps)`` (UniPC: shifted flow sigmas from 1 to 1/1000, integer
        timesteps, final σ 0)."""
        scheduler.set_timesteps(steps, device=device)

    # ------------------------------------------------------------------------------------ denoising
    def expert_for_timestep(self, timestep: torch.Tensor) -> torch.Tensor:
        """``[B]`` bool: True where the high-noise ``transformer`` runs (``t ≥ boundary_ratio·1000``, as
        ``WanPipeline``)."""
        if self.transformer_2 is None:
            return torch.ones_like(timestep, dtype=torch.bool)
        return timestep >= self.boundary_ratio * 1000.0

    def _run(
        self, model, latents: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor
    ) -> torch.Tensor:
        if self.expand_timesteps:
            _, _, frames, height, width = latents.shape
            tokens = (
                (frames // self.patch_size[0])
                * (height // self.patch_size[1])
                * (width // self.patch_size[2])
            )
            timestep = timestep[:, None].expand(latents.shape[0], tokens)
        return model(
            hidden_states=latents.to(model.dtype),
            timestep=timestep,
            encoder_hidden_states=embeds.to(model.dtype),
            return_dict=False,
        )[0]

    def _velocity(self, model, latents, timestep, prompt_embeds: PromptEmbeds, scale: float) -> torch.Tensor:
        conditional = self._run(model, latents, timestep, prompt_embeds.embeds)
        if not (self.use_cfg and scale > 1.0):
            return conditional
        if prompt_embeds.negative is None:
            raise UsageError(
                "Wan CFG (guidance > 1) needs negative prompt embeddings; encode with use_cfg=True"
            )
        unconditional = self._run(model, latents, timestep, prompt_embeds.negative.embeds)
        return unconditional + scale * (conditional - unconditional)

    def predict_velocity(
        self, latents: torch.Tensor, sigma, prompt_embeds: PromptEmbeds, *, guidance: float | None = None
    ) -> torch.Tensor:
        """``v`` ``[B, C, F, h, w]``; CFG ``u + w·(c − u)`` when ``use_cfg`` and w > 1; A14B picks the expert per sample."""
        batch = latents.shape[0]
        if len(prompt_embeds) != batch:
            raise UsageError(f"batch mismatch: {batch} latents but {len(prompt_embeds)} prompt embeddings")
        timestep = sigma_to_timestep(sigma, batch, latents.device)
        scale = self.default_guidance if guidance is None else float(guidance)
        high = self.expert_for_timestep(timestep)
        if bool(high.all()):
            return self._velocity(self.transformer, latents, timestep, prompt_embeds, scale).to(latents.dtype)
        if not bool(high.any()):
            return self._velocity(self.transformer_2, latents, timestep, prompt_embeds, scale).to(
                latents.dtype
            )
        velocity = torch.empty_like(latents)
        for mask, model in ((high, self.transformer), (~high, self.transformer_2)):
            index = mask.nonzero(as_tuple=True)[0]
            part = self._velocity(model, latents[index], timestep[index], prompt_embeds.select(index), scale)
            velocity = velocity.index_put((index,), part.to(latents.dtype))
        return velocity

    # ------------------------------------------------------------------------------------------- VAE
    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._latents_mean.to(like.device), self._latents_std.to(like.device)

    def decode(
        self, latents: torch.Tensor, *, grad: bool = True, checkpoint: bool = True, tiling: bool = False
    ) -> torch.Tensor:
        """``z·std + mean`` → causal VAE decode → ``[B, T, 3, H, W]`` in [0, 1].

        ``checkpoint`` (with gradients on, no tiling) runs the per-latent-frame checkpointed loop; ``tiling`` uses
        diffusers' spatial tiling (not checkpointed).
        """
        mean, std = self._stats(latents)
        z_raw = (latents.float() * std + mean).to(self.vae.dtype)
        if tiling:
            self.vae.enable_tiling()
        else:
            self.vae.disable_tiling()
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            if checkpoint and not tiling and torch.is_grad_enabled():
                video = wan_decode_checkpointed(self.vae, z_raw)
            else:
                video = self.vae.decode(z_raw, return_dict=False)[0]
        return vae_output_to_pixels(video)

    @torch.no_grad()
    def encode_video(
        self, pixels: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``(μ_vae − mean) / std`` per channel → ``[B, C, F_lat, h, w]`` fp32."""
        self.validate_geometry(pixels.shape[1], pixels.shape[3], pixels.shape[4])
        raw = encode_raw_latents(self.vae, pixels, sample=sample, generator=generator, family="Wan")
        mean, std = self._stats(raw)
        return (raw - mean) / std

    # -------------------------------------------------------------------------------------------- LoRA
    def lora_target_modules(self, preset: str = "attn") -> str:
        """Self- and cross-attention q/k/v/out of every block (+ the FFN projections for ``attn_mlp``)."""
        self._check_preset(preset)
        pattern = r"blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)"
        if preset == "attn_mlp":
            pattern += r"|blocks\.\d+\.ffn\.net\.(0\.proj|2)"
        return pattern
