"""Build and save the world generator as a diffusers ``WanPipeline`` directory.

Components: a tiny :class:`~pisces_cli.world.generator.transformer.WorldWanTransformer` (a Wan transformer
predicting the clean clip, reporting the velocity) denoising pixels (patches of ``patch x patch`` pixels per token), the identity pixel VAE of :mod:`pisces_cli.world.generator.pixel_vae`, a frozen random
tiny UMT5 text encoder and a unigram tokenizer whose pieces are the world's words (one token per word).
The saved directory carries ``pisces_backbone.json`` hints (text length, guidance) and loads with
``pisces_cli.backbones.registry.load_backbone``.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pisces_cli.atomic import apply_default_mode
from pisces_cli.backbones.tiny import HINTS_FILE
from pisces_cli.world.captions import world_vocabulary
from pisces_cli.world.generator.pixel_vae import build_pixel_vae

#: Side-car file with the generator's training configuration.
GENERATOR_CONFIG_FILE = "world_generator.json"


@dataclass(frozen=True)
class GeneratorArchitecture:
    """Sizes of the tiny Wan transformer and UMT5 text encoder (pixel-space, 3 latent channels)."""

    patch: int = 8
    heads: int = 4
    head_dim: int = 24
    layers: int = 3
    ffn_dim: int = 192
    text_dim: int = 32
    text_layers: int = 2
    max_sequence_length: int = 40


def world_tokenizer():
    """``T5Tokenizer`` over the world vocabulary: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, then ``▁word`` pieces.

    Characters are kept as low-score fallback pieces, so any text tokenizes; world words are single tokens.
    """
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -8.0)]
    pieces += [("▁" + word, -1.0) for word in world_vocabulary()]
    seen = {piece for piece, _ in pieces}
    for char in string.ascii_lowercase + string.digits + string.punctuation:
        if char not in seen:
            pieces.append((char, -10.0))
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def build_text_encoder(arch: GeneratorArchitecture, vocab_size: int, seed: int):
    """Frozen random tiny ``UMT5EncoderModel`` (its embeddings are distinct random codes per word)."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return (
        UMT5EncoderModel(
            UMT5Config(
                vocab_size=vocab_size,
                d_model=arch.text_dim,
                d_kv=8,
                d_ff=2 * arch.text_dim,
                num_layers=arch.text_layers,
                num_heads=4,
                relative_attention_num_buckets=8,
                pad_token_id=0,
                eos_token_id=1,
            )
        )
        .eval()
        .requires_grad_(False)
    )


def build_transformer(arch: GeneratorArchitecture, seed: int):
    """Tiny :class:`WorldWanTransformer` (an ``x0``-predicting ``WanTransformer3DModel``) over 3-channel pixel
    latents with ``(1, patch, patch)`` patches."""
    from pisces_cli.world.generator.transformer import WorldWanTransformer

    torch.manual_seed(seed)
    return WorldWanTransformer(
        patch_size=(1, arch.patch, arch.patch),
        num_attention_heads=arch.heads,
        attention_head_dim=arch.head_dim,
        in_channels=3,
        out_channels=3,
        text_dim=arch.text_dim,
        freq_dim=64,
        ffn_dim=arch.ffn_dim,
        num_layers=arch.layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    )


def build_pipeline(
    arch: GeneratorArchitecture,
    *,
    seed: int,
    latents_mean: list[float],
    latents_std: list[float],
):
    """A ``WanPipeline`` with a fresh transformer, the identity pixel VAE and the frozen world text encoder."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer = world_tokenizer()
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=build_text_encoder(arch, len(tokenizer), seed + 1),
        vae=build_pixel_vae(latents_mean, latents_std),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=build_transformer(arch, seed),
    )


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_pipeline(
    pipeline,
    directory: str | os.PathLike,
    arch: GeneratorArchitecture,
    *,
    guidance: float,
    extra: dict | None = None,
) -> Path:
    """Save ``pipeline`` (safetensors) plus the pisces hints and :data:`GENERATOR_CONFIG_FILE`; returns the dir."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(target, safe_serialization=True)
    apply_default_mode(target)  # diffusers' safetensors files are 0600 whatever the umask
    _write_json_atomic(
        target / HINTS_FILE, {"max_sequence_length": arch.max_sequence_length, "guidance": float(guidance)}
    )
    _write_json_atomic(target / GENERATOR_CONFIG_FILE, {"architecture": asdict(arch), **(extra or {})})
    return target


def load_world_generator(path: str | os.PathLike, **kwargs):
    """``load_backbone(path, **kwargs)`` after importing the module of :class:`WorldWanTransformer`.

    diffusers only instantiates a custom component class (``model_index.json`` names
    ``pisces_cli.world.generator.transformer``) when its module has already been imported; this does that.
    """
    import pisces_cli.world.generator.transformer  # noqa: F401 - registers the class for diffusers
    from pisces_cli.backbones.registry import load_backbone

    return load_backbone(str(path), **kwargs)
