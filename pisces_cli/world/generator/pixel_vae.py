"""A Wan VAE (``AutoencoderKLWan``) whose weights make it an exact pixel-space identity.

The world generator denoises pixels directly (no learned compression), yet it must be a normal diffusers
``WanPipeline`` so every pisces stage loads it with ``load_backbone``. This module builds an
``AutoencoderKLWan`` with no spatial or temporal resampling (``dim_mult=[1]``, ``z_dim=3``,
``scale_factor_spatial = scale_factor_temporal = 1``) and sets its weights so that

    encode: pixels in [-1, 1] -> posterior mean = the same values (log-variance -30, so sampling = mode)
    decode: latents -> the same values, clamped to [-1, 1]

Construction (encoder and decoder alike): the input conv is a causal delta kernel copying channel ``c`` to
channel ``c`` plus ``OFFSET`` and writing the constant ``ANCHOR`` into channel 3; every residual branch and
attention projection is zero (identity blocks); the output RMS norm divides by ``sqrt(sum x^2)``, which the
huge constant channel makes ``ANCHOR`` up to a relative ``< 1e-5``, and its gain multiplies ``ANCHOR`` back;
``OFFSET`` keeps SiLU in its linear regime (``sigmoid(OFFSET - 1) > 1 - 1e-8``); the output conv subtracts
``OFFSET``. Round-trip error is below 1e-3 (0.13 pixel levels).
"""

from __future__ import annotations

import torch
from torch import nn

#: Constant carried in channel 3 so the RMS normalisation is (almost) a fixed division.
ANCHOR = 1.0e4
#: Shift that keeps SiLU linear on values in [-1, 1].
OFFSET = 20.0
#: Base width of the VAE (>= 4: three colour channels plus the anchor channel).
BASE_DIM = 4
#: Log-variance written into the posterior (so a sample equals the mean to ~3e-7).
LOGVAR = -30.0


def _delta_conv(conv: nn.Conv3d, channels: int, bias: list[float] | None = None) -> None:
    """Make a causal 3-D conv copy input channel ``c`` to output channel ``c`` for ``c < channels``."""
    kt, kh, kw = conv.kernel_size
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(channels):
            conv.weight[c, c, kt - 1, kh // 2, kw // 2] = 1.0
        conv.bias.zero_()
        if bias is not None:
            conv.bias[: len(bias)] = torch.tensor(bias)


def _identity_head_norm(norm: nn.Module, channels: int) -> None:
    with torch.no_grad():
        norm.gamma.zero_()
        norm.gamma[:channels] = ANCHOR / norm.scale


def _zero_blocks(module: nn.Module) -> None:
    """Zero the last conv of every residual block and the output projection of every attention block."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanAttentionBlock, WanResidualBlock

    with torch.no_grad():
        for block in module.modules():
            if isinstance(block, WanResidualBlock):
                if block.in_dim != block.out_dim:
                    raise ValueError("pixel VAE: residual blocks must keep their width")
                block.conv2.weight.zero_()
                block.conv2.bias.zero_()
            elif isinstance(block, WanAttentionBlock):
                block.proj.weight.zero_()
                block.proj.bias.zero_()


def build_pixel_vae(latents_mean: list[float] | None = None, latents_std: list[float] | None = None):
    """An ``AutoencoderKLWan`` that encodes/decodes pixels unchanged (``[B, 3, T, H, W]`` in [-1, 1]).

    ``latents_mean`` / ``latents_std`` (3 values each) are the per-channel statistics of raw latents
    (= pixels in [-1, 1]) that the Wan adapter uses to normalise the transformer's latent space.
    """
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(
        base_dim=BASE_DIM,
        z_dim=3,
        dim_mult=[1],
        num_res_blocks=0,
        attn_scales=[],
        temperal_downsample=[],
        latents_mean=list(latents_mean or [0.0, 0.0, 0.0]),
        latents_std=list(latents_std or [1.0, 1.0, 1.0]),
        scale_factor_spatial=1,
        scale_factor_temporal=1,
    )
    encoder, decoder = vae.encoder, vae.decoder
    _zero_blocks(vae)
    _delta_conv(encoder.conv_in, 3, [OFFSET, OFFSET, OFFSET, ANCHOR])
    _identity_head_norm(encoder.norm_out, 3)
    _delta_conv(encoder.conv_out, 3, [-OFFSET] * 3 + [LOGVAR] * 3)
    with torch.no_grad():
        encoder.conv_out.weight[3:].zero_()
    _delta_conv(vae.quant_conv, 6)
    _delta_conv(vae.post_quant_conv, 3)
    _delta_conv(decoder.conv_in, 3, [OFFSET, OFFSET, OFFSET, ANCHOR])
    _identity_head_norm(decoder.norm_out, 3)
    _delta_conv(decoder.conv_out, 3, [-OFFSET] * 3)
    return vae.eval().requires_grad_(False)
