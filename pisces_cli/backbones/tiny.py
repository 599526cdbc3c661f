"""Tiny random-weight HunyuanVideo / Wan pipelines saved as diffusers-format directories.

The configurations follow diffusers' own fast tests of these pipelines; the tokenizers are built in memory from
small character vocabularies, so nothing is downloaded. Each tiny pipeline ships the scheduler its released
checkpoints ship (flow-match Euler, shift 7 for HunyuanVideo; UniPC multistep with flow sigmas, flow shift 3
for Wan). Tests and demos load the saved
directories through the adapters' ``from_pretrained`` exactly like real checkpoints.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import torch

from pisces_cli.atomic import apply_default_mode, atomic_write_text
from pisces_cli.errors import UsageError

#: Name of the optional side-car file with pisces loading hints (prompt template, text length).
HINTS_FILE = "pisces_backbone.json"

_CHARACTERS = string.ascii_letters + string.digits + string.punctuation + " "


def _llama_tokenizer():
    """Byte-fallback BPE tokenizer with single characters only (vocab 354), right padding."""
    from transformers import LlamaTokenizer

    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + ["▁"]
    pieces += [c for c in _CHARACTERS if c != " " and c not in pieces]
    vocab = {piece: index for index, piece in enumerate(pieces)}
    tokenizer = LlamaTokenizer(vocab=vocab, merges=[], padding_side="right")
    tokenizer.pad_token = "</s>"
    tokenizer.padding_side = "right"
    return tokenizer


def _clip_tokenizer():
    """Character-level CLIP BPE tokenizer; pad = eos = ``<|endoftext|>`` (id 1)."""
    from transformers import CLIPTokenizer

    pieces = ["<|startoftext|>", "<|endoftext|>"]
    for char in string.ascii_lowercase + string.digits + string.punctuation:
        pieces += [char, char + "</w>"]
    vocab = {piece: index for index, piece in enumerate(dict.fromkeys(pieces))}
    return CLIPTokenizer(vocab=vocab, merges=[])


def _t5_tokenizer():
    """Unigram tokenizer: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, then ``▁``, characters and ``▁``+letter."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(char, -3.0) for char in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("▁" + char, -2.5) for char in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def build_tiny_hunyuan(seed: int = 0, *, vae_width: int = 8, vae_layers: int = 1):
    """A tiny random ``HunyuanVideoPipeline`` (4 latent channels, widths <= 20), fp32 on CPU.

    ``vae_width`` / ``vae_layers``: the VAE's block channels and ``layers_per_block`` (the released VAE has 2
    layers per block; the benchmarks use that depth).
    """
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4),
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(vae_width,) * 4,
        layers_per_block=vae_layers,
        act_fn="silu",
        norm_num_groups=4,
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )
    tokenizer = _llama_tokenizer()
    clip_tokenizer = _clip_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = LlamaModel(
        LlamaConfig(
            hidden_size=16,
            intermediate_size=37,
            num_attention_heads=4,
            num_key_value_heads=4,
            num_hidden_layers=2,
            vocab_size=1000,
            hidden_act="gelu",
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=8,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=1000,
            projection_dim=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    return HunyuanVideoPipeline(
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        transformer=transformer.eval(),
        vae=vae.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=clip_tokenizer,
    )


def _tiny_wan_transformer(seed: int, channels: int):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=channels,
        out_channels=channels,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()


WAN_VARIANTS = ("2.1", "2.2-a14b", "2.2-ti2v-5b")


def build_tiny_wan(seed: int = 0, variant: str = "2.1", *, vae_width: int = 3, vae_layers: int = 1):
    """A tiny random ``WanPipeline``: ``"2.1"``, ``"2.2-a14b"`` (two experts, boundary 0.875) or ``"2.2-ti2v-5b"``.

    ``vae_width`` / ``vae_layers``: the VAE's ``base_dim`` and ``num_res_blocks`` (2 in the released VAE).
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    if variant not in WAN_VARIANTS:
        raise UsageError(f"unknown tiny Wan variant {variant!r}; expected one of {', '.join(WAN_VARIANTS)}")
    torch.manual_seed(seed + 1)
    if variant == "2.2-ti2v-5b":
        vae = AutoencoderKLWan(
            base_dim=vae_width,
            z_dim=48,
            in_channels=12,
            out_channels=12,
            is_residual=True,
            patch_size=2,
            latents_mean=[0.0] * 48,
            latents_std=[1.0] * 48,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=vae_layers,
            scale_factor_spatial=16,
            scale_factor_temporal=4,
            temperal_downsample=[False, True, True],
        )
        channels = 48
    else:
        generator = torch.Generator().manual_seed(seed + 7)
        vae = AutoencoderKLWan(
            base_dim=vae_width,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=vae_layers,
            temperal_downsample=[False, True, True],
            latents_mean=(torch.randn(16, generator=generator) * 0.5).tolist(),
            latents_std=(torch.rand(16, generator=generator) + 0.5).tolist(),
        )
        channels = 16
    vae = vae.eval()
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=200,
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    ).eval()
    transformer = _tiny_wan_transformer(seed, channels)
    kwargs: dict = {}
    if variant == "2.2-a14b":
        kwargs = {"transformer_2": _tiny_wan_transformer(seed + 100, channels), "boundary_ratio": 0.875}
    elif variant == "2.2-ti2v-5b":
        kwargs = {"expand_timesteps": True}
    return WanPipeline(
        tokenizer=_t5_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
        ),
        transformer=transformer,
        **kwargs,
    )


def _write_hints(directory: Path, hints: dict) -> None:
    atomic_write_text(directory / HINTS_FILE, json.dumps(hints, indent=2, sort_keys=True))


def save_tiny_hunyuan(directory: str | os.PathLike, seed: int = 0, **vae: int) -> Path:
    """Build :func:`build_tiny_hunyuan` (``vae``: its VAE size keywords) and save it (diffusers format + pisces
    hints); returns the directory."""
    target = Path(directory)
    build_tiny_hunyuan(seed, **vae).save_pretrained(target, safe_serialization=True)
    apply_default_mode(target)  # diffusers' safetensors files are 0600 whatever the umask
    _write_hints(
        target,
        {"prompt_template": {"template": "{}", "crop_start": 0}, "max_sequence_length": 16, "guidance": 6.0},
    )
    return target


def save_tiny_wan(directory: str | os.PathLike, seed: int = 0, variant: str = "2.1", **vae: int) -> Path:
    """Build :func:`build_tiny_wan` (``vae``: its VAE size keywords) and save it (diffusers format + pisces
    hints); returns the directory."""
    target = Path(directory)
    build_tiny_wan(seed, variant, **vae).save_pretrained(target, safe_serialization=True)
    apply_default_mode(target)
    _write_hints(target, {"max_sequence_length": 16, "guidance": 1.0})
    return target
