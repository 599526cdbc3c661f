"""Peak-memory measurement and the ``--dry-run`` estimate of one training step (before loading weights).

Estimate (bytes, per process; B = ``finetune.batch_size``, b = bytes per element of ``models.generator.dtype``):

- weights: every safetensors tensor of the generator folder (transformer, VAE, text encoders) × b (the
  transformer's ÷ world size with ``finetune.distributed: fsdp``), plus the reward encoder's safetensors (at
  ``models.encoder.dtype``) when it is a local folder;
- trainable: P_train = LoRA parameters (Σ over targeted Linear layers of r·(in + out)) or all transformer
  parameters for full fine-tuning, at fp32 master weights;
- gradients + AdamW: P_train × (4 grad + 8 moments) bytes;
- transformer activations, N = latent tokens + text tokens, d = hidden width, d_ff = MLP width, L = blocks:
  one block stores ≈ ``A_block = b·B·N·(10·d + 2·d_ff)`` (norm/modulation outputs, q, k, v, attention output,
  projections, residuals, the MLP hidden before and after its activation; attention scores are not stored with
  SDPA/flash kernels). With gradient checkpointing ``L·b·B·N·d + A_block`` (block inputs + one recomputed
  block), without it ``L·A_block``;
- VAE decoder activations, per resolution level l with c_l channels on T·(H·W/4^l) pixels and R_l resnets:
  ``A_level = 6·R_l·c_l·B·T·H·W/4^l·b_vae`` (two norms, two activations, two convs per resnet). Without
  checkpointing Σ_l A_level; with decoder checkpointing (every resnet recomputed in backward) only the resnet
  inputs stay, ``Σ_l R_l·c_l·B·T·H·W/4^l·b_vae``, plus one resnet being recomputed, ``6·c_0·B·T·H·W·b_vae``
  (Wan decodes one latent frame at a time under checkpointing: divided by the latent frame count).

Spatial VAE tiling (``finetune.vae.tiling``) avoids INT32-sized intermediates but keeps every tile's saved
tensors for backward, so it does not lower this number. Reward-encoder activations are not included. The estimate is an order-of-magnitude plan, not a guarantee.
"""

from __future__ import annotations

import json
import re
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset; CPU: the process's peak resident set size (``ru_maxrss``)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def safetensors_numel(folder: str | Path) -> dict[str, int]:
    """Elements of every tensor in the ``*.safetensors`` files under ``folder``, by top-level sub-folder."""
    from safetensors import safe_open

    counts: dict[str, int] = {}
    root = Path(folder)
    for path in sorted(root.rglob("*.safetensors")):
        component = path.relative_to(root).parts[0] if len(path.relative_to(root).parts) > 1 else "."
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                shape = handle.get_slice(name).get_shape()
                numel = 1
                for size in shape:
                    numel *= int(size)
                counts[component] = counts.get(component, 0) + numel
    return counts


def _read_config(folder: Path, component: str) -> dict[str, Any]:
    path = folder / component / "config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def lora_parameter_count(transformer_config: dict[str, Any], family: str, pattern: str, rank: int) -> int:
    """LoRA parameters r·(in + out) over the Linear layers whose names full-match ``pattern`` (meta-device model)."""
    from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

    model_class = HunyuanVideoTransformer3DModel if family == "hunyuan_video" else WanTransformer3DModel
    config = {k: v for k, v in transformer_config.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = model_class.from_config(config)
    regex = re.compile(pattern)
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and regex.fullmatch(name):
            total += rank * (module.in_features + module.out_features)
    return total


#: Hub ids whose layout the dry run knows without weights: transformer config overrides of the diffusers class
#: defaults (the published configurations) and text-encoder parameter counts (approximate: Llama-3-8B body
#: without lm_head + CLIP-L text for HunyuanVideo, the UMT5-XXL encoder for Wan).
KNOWN_HUB_MODELS: dict[str, dict[str, Any]] = {
    "hunyuanvideo-community/HunyuanVideo": {
        "transformer": {},
        "text_encoders": {"text_encoder": 7.50e9, "text_encoder_2": 1.23e8},
    },
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": {
        "transformer": {"num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30},
        "text_encoders": {"text_encoder": 5.68e9},
    },
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": {"transformer": {}, "text_encoders": {"text_encoder": 5.68e9}},
}


def known_model_layout(spec: str, family: str) -> tuple[dict[str, int], dict[str, Any], dict[str, Any]]:
    """(parameters per component, transformer config, VAE config) of a known hub id, from meta-device models."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        AutoencoderKLWan,
        HunyuanVideoTransformer3DModel,
        WanTransformer3DModel,
    )

    known = KNOWN_HUB_MODELS[spec]
    transformer_class = HunyuanVideoTransformer3DModel if family == "hunyuan_video" else WanTransformer3DModel
    vae_class = AutoencoderKLHunyuanVideo if family == "hunyuan_video" else AutoencoderKLWan
    with torch.device("meta"):
        transformer = transformer_class.from_config(known["transformer"])
        vae = vae_class()
    counts = {
        "transformer": sum(p.numel() for p in transformer.parameters()),
        "vae": sum(p.numel() for p in vae.parameters()),
    }
    counts.update({name: int(value) for name, value in known["text_encoders"].items()})
    return counts, dict(transformer.config), dict(vae.config)


@dataclass
class MemoryEstimate:
    """Bytes per component of one training step (see the module docstring for the formulas)."""

    parts: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def rows(self) -> list[tuple[str, float]]:
        return [(name, value / GIB) for name, value in self.parts.items()] + [("total", self.total / GIB)]


def _transformer_geometry(config: dict[str, Any], family: str) -> tuple[int, int, int, int, int]:
    """(hidden d, MLP width d_ff, blocks L, patch p, temporal patch p_t)."""
    if family == "hunyuan_video":
        hidden = int(config.get("num_attention_heads", 24)) * int(config.get("attention_head_dim", 128))
        mlp = int(hidden * float(config.get("mlp_ratio", 4.0)))
        blocks = int(config.get("num_layers", 20)) + int(config.get("num_single_layers", 40))
        return hidden, mlp, blocks, int(config.get("patch_size", 2)), int(config.get("patch_size_t", 1))
    hidden = int(config.get("num_attention_heads", 40)) * int(config.get("attention_head_dim", 128))
    patch = config.get("patch_size", [1, 2, 2])
    return (
        hidden,
        int(config.get("ffn_dim", 13824)),
        int(config.get("num_layers", 40)),
        int(patch[1]),
        int(patch[0]),
    )


def _decoder_levels(vae_config: dict[str, Any], family: str) -> tuple[list[int], int, int]:
    """(channels per level from full resolution down, resnets per level, spatial factor)."""
    if family == "hunyuan_video":
        channels = list(vae_config.get("block_out_channels", [128, 256, 512, 512]))
        return (
            channels,
            int(vae_config.get("layers_per_block", 2)) + 1,
            int(vae_config.get("spatial_compression_ratio", 8)),
        )
    base = int(vae_config.get("decoder_base_dim") or vae_config.get("base_dim", 96))
    channels = [base * int(m) for m in vae_config.get("dim_mult", [1, 2, 4, 4])]
    return (
        channels,
        int(vae_config.get("num_res_blocks", 2)) + 1,
        int(vae_config.get("scale_factor_spatial", 8)),
    )


def estimate_step_memory(
    recipe, family: str, lora_pattern: str | None, world_size: int = 1
) -> MemoryEstimate:
    """Estimate one training step's peak memory for ``recipe`` without loading any weights.

    With ``finetune.distributed: fsdp`` (LoRA) the transformer's frozen weights are divided by ``world_size``
    (plus one gathered block, ignored here).
    """
    section = recipe.finetune
    estimate = MemoryEstimate()
    spec = recipe.models.generator.path or ""
    folder = Path(spec)
    if folder.is_dir():
        counts = safetensors_numel(folder)
        transformer_config, vae_config = _read_config(folder, "transformer"), _read_config(folder, "vae")
    elif spec in KNOWN_HUB_MODELS:
        counts, transformer_config, vae_config = known_model_layout(spec, family)
        estimate.notes.append(
            f"{spec}: not a local folder; used pisces' table of its published configuration"
        )
    else:
        estimate.notes.append(
            f"models.generator.path {spec} is not a local folder nor a known hub id: nothing to estimate"
        )
        return estimate
    weight_bytes = DTYPE_BYTES[recipe.models.generator.dtype]
    sharded = section.distributed == "fsdp" and not section.full_finetune and world_size > 1
    for component, numel in counts.items():
        if component.startswith("text_encoder") and section.offload_text_encoders:
            estimate.notes.append(
                f"{component}: {numel * weight_bytes / GIB:.3g} GiB, on CPU after the captions are "
                "encoded (finetune.offload_text_encoders)"
            )
            continue
        share = world_size if sharded and component.startswith("transformer") else 1
        estimate.parts[f"weights:{component}"] = numel * weight_bytes / share
    encoder_path = Path(recipe.models.encoder.path or "")
    if encoder_path.is_dir():
        encoder_numel = sum(safetensors_numel(encoder_path).values())
        estimate.parts["weights:reward_encoder"] = encoder_numel * DTYPE_BYTES[recipe.models.encoder.dtype]
    else:
        estimate.notes.append(
            f"reward encoder {encoder_path} is not a safetensors folder: its weights are not "
            "counted (InternVideo2-1B in fp16: ~2 GiB)"
        )
    if section.full_finetune:
        trainable = counts.get("transformer", 0)
    elif lora_pattern is not None and transformer_config:
        trainable = lora_parameter_count(transformer_config, family, lora_pattern, section.lora.rank)
    else:
        trainable = 0
    estimate.parts["trainable_fp32"] = trainable * 4
    estimate.parts["gradients_and_adamw"] = trainable * 12
    if transformer_config:
        hidden, mlp, blocks, patch, patch_t = _transformer_geometry(transformer_config, family)
        latent_frames = (section.num_frames - 1) // 4 + 1
        vae_factor = _decoder_levels(vae_config, family)[2]
        tokens = (
            (latent_frames // patch_t)
            * (section.height // vae_factor // patch)
            * (section.width // vae_factor // patch)
        )
        tokens += 256 if family == "hunyuan_video" else 512
        batch = section.batch_size
        per_block = weight_bytes * batch * tokens * (10 * hidden + 2 * mlp)
        if section.gradient_checkpointing:
            estimate.parts["activations:transformer"] = (
                blocks * weight_bytes * batch * tokens * hidden + per_block
            )
        else:
            estimate.parts["activations:transformer"] = blocks * per_block
    if vae_config:
        channels, resnets, _factor = _decoder_levels(vae_config, family)
        pixels = section.batch_size * section.num_frames * section.height * section.width
        levels = [resnets * 6 * c * pixels / 4**level * weight_bytes for level, c in enumerate(channels)]
        inputs = sum(resnets * c * pixels / 4**level * weight_bytes for level, c in enumerate(channels))
        full, checkpointed = sum(levels), inputs + 6 * channels[0] * pixels * weight_bytes
        if family == "wan":
            latent_frames = (section.num_frames - 1) // 4 + 1
            checkpointed = checkpointed / latent_frames
        estimate.parts["activations:vae_decoder"] = checkpointed if section.vae.decode_checkpointing else full
        estimate.notes.append(
            f"VAE decoder activations: {full / GIB:.4g} GiB without checkpointing, "
            f"{checkpointed / GIB:.4g} GiB with (finetune.vae.decode_checkpointing={section.vae.decode_checkpointing})"
        )
    estimate.notes.append("reward-encoder activations are not included")
    return estimate
