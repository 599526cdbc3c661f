"""Peak-memory measurement and the ``--dry-run`` estimate of one training step (before loading weights).

Public API (stable; ``pisces finetune --dry-run`` prints it and other commands may call it):
:func:`estimate_step_memory` ``(recipe, family, lora_pattern, world_size) → MemoryEstimate`` — per-process bytes by
part (``parts``), the alternatives and assumptions behind them (``notes``) and what the estimate leaves out
(``excluded``); :func:`pisces_cli.stages.finetune.estimate` wraps it for a resolved recipe.

Estimate (bytes per process; B = samples per differentiable pass, b = bytes per element of
``models.generator.dtype``, b_r of the reward dtype ``finetune.reward_dtype`` / ``models.encoder.dtype``):

- weights: every safetensors tensor of the generator folder (transformer, VAE; text encoders unless offloaded)
  × b (the transformer's ÷ world size with ``finetune.distributed: fsdp``), or pisces' table of the published
  configurations for known hub ids; the reward encoder × b_r: its safetensors folder, or — for the released
  InternVideo2 ``.pt`` — the parameters of the InternVideo2-Stage2-1B configuration it is loaded into;
- trainable: P_train = LoRA parameters (Σ over targeted Linear layers of r·(in + out)) or all transformer
  parameters for full fine-tuning, at fp32 master weights; gradients + AdamW: P_train × (4 grad + 8 moments);
- transformer activations, N = latent tokens (+ text tokens in HunyuanVideo's joint stream), d = hidden width,
  d_ff = MLP width, L = blocks: one block stores ≈ ``A_block = b·B·N·(10·d + 2·d_ff)`` (norm/modulation outputs,
  q, k, v, attention output, projections, residuals, the MLP hidden before and after its activation; attention
  scores are not stored with SDPA/flash kernels; Wan adds its cross-attention keys/values ``2·b·B·L_text·d``).
  With gradient checkpointing ``L·b·B·N·d + A_block`` (block inputs + one recomputed block), without it
  ``L·A_block``. Real classifier-free guidance (Wan with guidance > 1) runs two passes: ×2.
  backprop: B = ``finetune.batch_size``; GRPO: B = ``grpo.chunk_size`` or all ``P·G`` samples of a micro-batch;
- VAE decoder activations (backprop only; GRPO decodes without gradients), per resolution level l with c_l
  channels on T·(H·W/4^l) pixels and R_l resnets: ``A_level = 10·R_l·c_l·B·T·H·W/4^l·b`` (per resnet two norm
  inputs, two activation inputs, two causally padded conv inputs, and the level's share of the upsampler's padded
  input and the mid-block attention: about ten feature maps, the count measured on the tiny VAEs). Without
  checkpointing Σ_l A_level. With decoder checkpointing, HunyuanVideo (every resnet checkpointed) keeps the resnet
  inputs, ``Σ_l R_l·c_l·B·T·H·W/4^l·b``, plus one resnet being recomputed, ``10·c_0·B·T·H·W·b``; Wan (decoded one
  latent frame at a time) recomputes one latent frame's decode, ``Σ_l A_level · 4/T``, while every frame's
  causal-conv caches stay, ``F_lat · 2·(2R + 1) · Σ_l c_l·B·H·W/4^l·b`` (two frames of each conv's input);
- reward activations (backprop only: the reward is differentiable w.r.t. the decoded pixels): the vision tower
  as a ViT over n tokens (InternVideo2: one sequence of ``1 + T·g²`` tokens per video; CLIP-like: ``B·T`` frames
  of ``1 + g²`` tokens), one block ``b_r·n·(10·C + 2·C_ff)``, all blocks without ``models.encoder.options.
  use_checkpoint`` and ``L·b_r·n·C`` + one block with it; InternVideo2 adds its fusion layers' cross-attention
  over the video tokens, ``b_r·B·M·(2·h + 2·H·32)`` each (keys, values, two copies of the attention
  probabilities for a 32-token caption);
- GRPO rollout buffer: the stored trajectories of a micro-batch, ``P·G·(2S)`` latents in fp32.

Spatial VAE tiling (``finetune.vae.tiling``) avoids INT32-sized intermediates but keeps every tile's saved
tensors for backward, so it does not lower this number. ``tests/test_finetune_memory.py`` checks the activation
terms against the bytes autograd actually saves on the tiny models.
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
#: text tokens per prompt when the checkpoint has no pisces hints (the pipelines' defaults)
DEFAULT_TEXT_TOKENS = {"hunyuan_video": 256, "wan": 512}
#: caption tokens assumed for the reward's cross-attention terms
REWARD_CAPTION_TOKENS = 32
#: what no term of the estimate covers (printed with every estimate)
EXCLUDED = (
    "the CUDA context and kernel workspaces (cuBLAS/cuDNN/attention), typically 0.5-1.5 GiB per GPU",
    "allocator fragmentation and caching (PyTorch reserves more than it allocates)",
    "temporaries of backward: the gradient of the largest activation and its operands, a few activations' worth",
    "no-grad passes (teacher, consistency target, prompt-x0 sampling, GRPO rollouts and decodes, validation): their "
    "transient activations are freed layer by layer and usually stay below the differentiable pass's",
    "FSDP's all-gathered block (with finetune.distributed: fsdp) and DDP/NCCL communication buffers",
    "the text encoders when finetune.offload_text_encoders moves them to CPU (host memory instead)",
)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset; CPU: the process's peak resident set size (``ru_maxrss``)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def live_heap_bytes() -> int:
    """Bytes the C allocator has handed out and not freed (glibc ``mallinfo2``: in-use bytes of every arena plus
    mmapped blocks); raises OSError off glibc."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                "keepcost",
            )
        ]  # fmt: skip

    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except AttributeError as error:
        raise OSError("mallinfo2 needs glibc >= 2.33") from error
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


def cpu_peak_bytes(step) -> int:
    """Peak live heap bytes above the start while ``step()`` runs on CPU, sampled after every aten operation
    (forward, backward and checkpoint recomputation alike). Precise where RSS is not: freed memory is not counted
    and allocator caching does not hide new allocations."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class PeakMode(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.start = live_heap_bytes()
            self.peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, live_heap_bytes() - self.start)
            return out

    with PeakMode() as mode:
        step()
    return mode.peak


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


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _read_config(folder: Path, component: str) -> dict[str, Any]:
    return _read_json(folder / component / "config.json")


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
    """Bytes per component of one training step (see the module docstring for the formulas).

    Attributes:
        parts: ``{name: bytes}``; names are ``weights:*``, ``trainable_fp32``, ``gradients_and_adamw``,
            ``activations:*`` and (GRPO) ``rollout_trajectories``.
        notes: the assumptions and the alternatives (e.g. a term with and without checkpointing).
        excluded: what no part covers.
    """

    parts: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=lambda: list(EXCLUDED))

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


def vit_activation_bytes(
    tokens: float, width: int, mlp: int, layers: int, bytes_per: int, checkpointed: bool
) -> float:
    """Saved activations of a pre-norm ViT over ``tokens`` tokens in all: one block ``b·n·(10·C + 2·C_ff)``;
    all blocks, or with checkpointing ``L·b·n·C`` + one block."""
    per_block = bytes_per * tokens * (10 * width + 2 * mlp)
    if checkpointed:
        return layers * bytes_per * tokens * width + per_block
    return layers * per_block


@dataclass(frozen=True)
class RewardTower:
    """The differentiable part of a reward encoder, read from its configuration.

    ``tokens(frames, batch)`` is the number of vision tokens in all; ``cross_attention`` the per-token bytes
    factor of the fusion layers (0 without them).
    """

    width: int
    mlp: int
    layers: int
    patches_per_frame: int
    per_frame: bool
    fusion_layers: int = 0
    fusion_width: int = 0
    fusion_heads: int = 0
    parameters: int | None = None

    def tokens(self, frames: int, batch: int) -> int:
        if self.per_frame:
            return batch * frames * (1 + self.patches_per_frame)
        return batch * (1 + frames * self.patches_per_frame)


def reward_tower(encoder_section) -> tuple[RewardTower | None, str]:
    """The reward encoder's vision tower from ``models.encoder`` (no weights read), and where it came from."""
    path = Path(encoder_section.path or "")
    if encoder_section.backend == "internvideo2":
        from pisces_cli.encoders.internvideo2.config import InternVideo2Config

        if path.is_dir() and (path / "config.json").is_file():
            config, source = InternVideo2Config.load_json(path / "config.json"), f"{path}/config.json"
        else:
            config, source = InternVideo2Config.stage2_1b(), "the InternVideo2-Stage2-1B configuration"
        parameters = None
        if not path.is_dir():
            from pisces_cli.encoders.internvideo2.model import InternVideo2Stage2

            with torch.device("meta"):
                parameters = sum(p.numel() for p in InternVideo2Stage2(config).parameters())
        vision, text = config.vision, config.text
        return (
            RewardTower(
                width=vision.embed_dim,
                mlp=vision.mlp_hidden_dim,
                layers=vision.depth,
                patches_per_frame=vision.patches_per_frame,
                per_frame=False,
                fusion_layers=text.num_layers - text.fusion_layer,
                fusion_width=text.hidden_size,
                fusion_heads=text.num_heads,
                parameters=parameters,
            ),
            source,
        )
    vision = _read_json(path / "config.json").get("vision_config") if path.is_dir() else None
    if not vision:
        return None, f"{path}: no config.json with a vision_config"
    grid = int(vision.get("image_size", 224)) // int(vision.get("patch_size", 16))
    return (
        RewardTower(
            width=int(vision.get("hidden_size", 768)),
            mlp=int(vision.get("intermediate_size", 3072)),
            layers=int(vision.get("num_hidden_layers", 12)),
            patches_per_frame=grid * grid,
            per_frame=True,
        ),
        f"{path}/config.json",
    )


def text_tokens(folder: Path, family: str) -> int:
    """Prompt tokens the transformer sees: the checkpoint's pisces hints, else the pipeline default."""
    hints = _read_json(folder / "pisces_backbone.json") if folder.is_dir() else {}
    return int(hints.get("max_sequence_length", DEFAULT_TEXT_TOKENS[family]))


def estimate_step_memory(
    recipe, family: str, lora_pattern: str | None, world_size: int = 1
) -> MemoryEstimate:
    """Estimate one training step's peak memory for ``recipe`` without loading any weights.

    Args:
        recipe: a validated :class:`~pisces_cli.config.recipe.Recipe` (its ``finetune`` and ``models`` sections).
        family: ``hunyuan_video`` or ``wan``.
        lora_pattern: the LoRA target regex (None for full fine-tuning).
        world_size: processes; with ``finetune.distributed: fsdp`` (LoRA) the transformer's frozen weights are
            divided by it (plus one gathered block, not counted).
    Returns:
        A :class:`MemoryEstimate` (bytes per process); ``parts`` is empty when the generator's layout is unknown.
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
    reward_dtype = section.reward_dtype or recipe.models.encoder.dtype
    reward_bytes = DTYPE_BYTES[reward_dtype]
    grpo = section.algorithm == "grpo"
    _weights(estimate, recipe, counts, weight_bytes, world_size)
    tower, tower_source = reward_tower(recipe.models.encoder)
    _reward_weights(estimate, recipe, tower, reward_bytes, reward_dtype)
    if section.full_finetune:
        trainable = counts.get("transformer", 0)
    elif lora_pattern is not None and transformer_config:
        trainable = lora_parameter_count(transformer_config, family, lora_pattern, section.lora.rank)
    else:
        trainable = 0
    estimate.parts["trainable_fp32"] = trainable * 4
    estimate.parts["gradients_and_adamw"] = trainable * 12
    samples = _samples_per_pass(section)
    latent_frames = (section.num_frames - 1) // 4 + 1
    if transformer_config:
        _transformer_activations(
            estimate, section, family, transformer_config, vae_config, folder, samples, weight_bytes
        )
    if grpo:
        _rollout_buffer(estimate, section, transformer_config, vae_config, family, latent_frames)
        estimate.notes.append(
            "GRPO: the VAE decode and the reward run without gradients (no activations kept for them)"
        )
        return estimate
    if vae_config:
        _decoder_activations(estimate, section, family, vae_config, weight_bytes, latent_frames)
    if tower is not None:
        _reward_activations(estimate, recipe, tower, tower_source, reward_bytes, family, vae_config)
    else:
        estimate.notes.append(f"reward activations not estimated: {tower_source}")
    return estimate


def _samples_per_pass(section) -> int:
    """Samples in one differentiable transformer pass: the batch (backprop) or a GRPO chunk / micro-batch."""
    if section.algorithm == "grpo":
        total = section.batch_size * section.grpo.num_generations
        return min(total, section.grpo.chunk_size) if section.grpo.chunk_size else total
    return section.batch_size


def _weights(
    estimate: MemoryEstimate, recipe, counts: dict[str, int], weight_bytes: int, world_size: int
) -> None:
    section = recipe.finetune
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


def _reward_weights(
    estimate: MemoryEstimate, recipe, tower: RewardTower | None, reward_bytes: int, reward_dtype: str
) -> None:
    encoder_path = Path(recipe.models.encoder.path or "")
    if encoder_path.is_dir():
        numel = sum(safetensors_numel(encoder_path).values())
        estimate.parts["weights:reward_encoder"] = numel * reward_bytes
    elif tower is not None and tower.parameters is not None:
        estimate.parts["weights:reward_encoder"] = tower.parameters * reward_bytes
        estimate.notes.append(
            f"reward encoder {encoder_path}: {tower.parameters / 1e9:.3g} B parameters of the configuration the "
            f"released .pt is loaded into, in {reward_dtype}"
        )
    else:
        estimate.notes.append(
            f"reward encoder {encoder_path} is neither a safetensors folder nor a known checkpoint: its weights "
            "are not counted"
        )


def _cfg_passes(section, family: str) -> int:
    """2 when the step's differentiable transformer call runs real CFG (Wan, guidance > 1), else 1."""
    guidance = section.guidance
    if section.algorithm == "grpo" and section.grpo.guidance is not None:
        guidance = section.grpo.guidance
    return 2 if family == "wan" and guidance is not None and guidance > 1.0 else 1


def _transformer_activations(
    estimate, section, family, transformer_config, vae_config, folder, samples, weight_bytes
) -> None:
    hidden, mlp, blocks, patch, patch_t = _transformer_geometry(transformer_config, family)
    latent_frames = (section.num_frames - 1) // 4 + 1
    vae_factor = _decoder_levels(vae_config, family)[2] if vae_config else 8
    tokens = (
        (latent_frames // patch_t)
        * (section.height // vae_factor // patch)
        * (section.width // vae_factor // patch)
    )
    text = text_tokens(folder, family)
    passes = _cfg_passes(section, family)
    batch = samples * passes
    if family == "hunyuan_video":
        tokens += text
        extra = 0
    else:
        extra = weight_bytes * batch * 2 * text * hidden  # cross-attention keys and values of the prompt
    per_block = weight_bytes * batch * tokens * (10 * hidden + 2 * mlp) + extra
    checkpointed = blocks * weight_bytes * batch * tokens * hidden + per_block
    plain = blocks * per_block
    estimate.parts["activations:transformer"] = checkpointed if section.gradient_checkpointing else plain
    what = f"{samples} sample(s) × {tokens} tokens" + (" × 2 CFG passes" if passes == 2 else "")
    estimate.notes.append(
        f"transformer activations ({what}): {plain / GIB:.4g} GiB without checkpointing, "
        f"{checkpointed / GIB:.4g} GiB with (finetune.gradient_checkpointing={section.gradient_checkpointing})"
    )


def _decoder_activations(estimate, section, family, vae_config, weight_bytes, latent_frames) -> None:
    channels, resnets, _factor = _decoder_levels(vae_config, family)
    pixels = section.batch_size * section.num_frames * section.height * section.width
    levels = [resnets * 10 * c * pixels / 4**level * weight_bytes for level, c in enumerate(channels)]
    inputs = sum(resnets * c * pixels / 4**level * weight_bytes for level, c in enumerate(channels))
    full = sum(levels)
    if family == "wan":
        # one latent frame (4 pixel frames) is recomputed at a time; every frame's causal-conv caches stay (two
        # frames of the input of each of the 2R + 1 convs per level)
        per_frame_maps = sum(c * pixels / section.num_frames / 4**level for level, c in enumerate(channels))
        caches = latent_frames * 2 * (2 * resnets + 1) * per_frame_maps * weight_bytes
        checkpointed = full * min(1.0, 4 / section.num_frames) + caches
    else:  # diffusers checkpoints every resnet: their inputs stay, one resnet is recomputed at a time
        checkpointed = inputs + 10 * channels[0] * pixels * weight_bytes
    estimate.parts["activations:vae_decoder"] = checkpointed if section.vae.decode_checkpointing else full
    estimate.notes.append(
        f"VAE decoder activations: {full / GIB:.4g} GiB without checkpointing, "
        f"{checkpointed / GIB:.4g} GiB with (finetune.vae.decode_checkpointing={section.vae.decode_checkpointing})"
    )


def _reward_activations(estimate, recipe, tower, tower_source, reward_bytes, family, vae_config) -> None:
    section = recipe.finetune
    frames = section.num_frames  # every decoded frame is scored
    tokens = tower.tokens(frames, section.batch_size)
    fusion = 0.0
    if tower.fusion_layers:
        per_token = 2 * tower.fusion_width + 2 * tower.fusion_heads * REWARD_CAPTION_TOKENS
        fusion = tower.fusion_layers * reward_bytes * tokens * per_token
    plain = vit_activation_bytes(tokens, tower.width, tower.mlp, tower.layers, reward_bytes, False) + fusion
    checkpointed = (
        vit_activation_bytes(tokens, tower.width, tower.mlp, tower.layers, reward_bytes, True) + fusion
    )
    options = recipe.models.encoder.options
    supported = recipe.models.encoder.backend == "internvideo2"
    use_checkpoint = supported and bool(options.get("use_checkpoint", False))
    estimate.parts["activations:reward"] = checkpointed if use_checkpoint else plain
    switch = (
        f"models.encoder.options.use_checkpoint={use_checkpoint}"
        if supported
        else "this backend has no checkpointing"
    )
    estimate.notes.append(
        f"reward activations ({tokens} vision tokens, {tower.layers} blocks of width {tower.width}, from "
        f"{tower_source}): {plain / GIB:.4g} GiB without checkpointing, {checkpointed / GIB:.4g} GiB with ({switch})"
    )


def _rollout_buffer(estimate, section, transformer_config, vae_config, family, latent_frames) -> None:
    if not transformer_config:
        return
    channels = int(transformer_config.get("in_channels", 16))
    factor = _decoder_levels(vae_config, family)[2] if vae_config else 8
    latent = channels * latent_frames * (section.height // factor) * (section.width // factor)
    samples = section.batch_size * section.grpo.num_generations
    if section.grpo.num_iterations > 1:  # every micro-batch's rollouts are kept for the repeated updates
        samples *= section.gradient_accumulation_steps
    stored = 2 * section.grpo.sampling_steps  # S + 1 latents and S - 1 means
    estimate.parts["rollout_trajectories"] = samples * stored * latent * 4
