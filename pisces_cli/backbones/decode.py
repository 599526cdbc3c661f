"""VAE helpers shared by the adapters: pixel range conversions and Wan's checkpointed causal decode."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint


def vae_output_to_pixels(video: torch.Tensor) -> torch.Tensor:
    """VAE output ``[B, 3, T, H, W]`` in ≈[−1, 1] → pixels ``[B, T, 3, H, W]`` in [0, 1] (fp32, ``x/2 + 0.5``, clamped)."""
    return (video.float() / 2 + 0.5).clamp(0.0, 1.0).permute(0, 2, 1, 3, 4)


def pixels_to_vae_input(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels ``[B, T, 3, H, W]`` in [0, 1] → VAE input ``[B, 3, T, H, W]`` in [−1, 1]."""
    if pixels.ndim != 5 or pixels.shape[2] != 3:
        from pisces_cli.errors import UsageError

        raise UsageError(f"pixels must be shaped [B, T, 3, H, W], got {tuple(pixels.shape)}")
    return (pixels * 2.0 - 1.0).permute(0, 2, 1, 3, 4)


def encode_raw_latents(
    vae, pixels: torch.Tensor, *, sample: bool, generator: torch.Generator | None, family: str
) -> torch.Tensor:
    """``vae.encode(2p − 1)`` of pixels ``[B, T, 3, H, W]``: the posterior mode, or a sample drawn with
    ``generator`` → raw VAE latents ``[B, z, F_lat, h, w]`` fp32 (before the adapter's scaling/normalisation).

    Raises PiscesRuntimeError naming ``family`` if the latents are not finite.
    """
    posterior = vae.encode(pixels_to_vae_input(pixels).to(vae.dtype)).latent_dist
    raw = (posterior.sample(generator) if sample else posterior.mode()).float()
    if not torch.isfinite(raw).all():
        from pisces_cli.errors import PiscesRuntimeError

        raise PiscesRuntimeError(f"{family} VAE encode produced non-finite latents")
    return raw


def wan_decode_checkpointed(vae, z_raw: torch.Tensor) -> torch.Tensor:
    """Differentiable Wan decode of raw VAE latents ``[B, z, F, h, w]`` → ``[B, 3, T, H, W]`` in [−1, 1].

    Same computation as ``AutoencoderKLWan._decode`` (no tiling): ``post_quant_conv``, then one latent frame at a
    time through the causal decoder with its feature cache, then ``unpatchify`` (Wan 2.2-5B) and clamp. Each
    frame runs inside non-reentrant ``torch.utils.checkpoint`` with the cache tensors passed **in as arguments and
    out as results**, so the recomputation in backward sees the same cache and activations are freed per frame.
    Cache slots that hold no tensor (``None`` or the ``"Rep"`` marker) are carried outside the checkpoint.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    vae.clear_cache()
    num_slots = vae._cached_conv_counts["decoder"]
    cache: list = [None] * num_slots
    hidden = vae.post_quant_conv(z_raw)
    frames = []
    for frame_index in range(hidden.shape[2]):
        tensor_slots = [i for i, entry in enumerate(cache) if isinstance(entry, torch.Tensor)]
        constants = {i: entry for i, entry in enumerate(cache) if not isinstance(entry, torch.Tensor)}
        layout: dict[str, list] = {}

        def run_frame(
            frame: torch.Tensor,
            *cached: torch.Tensor,
            _slots=tensor_slots,
            _consts=constants,
            _layout=layout,
            _first=frame_index == 0,
        ):
            local_cache = [None] * num_slots
            for slot, entry in _consts.items():
                local_cache[slot] = entry
            for slot, entry in zip(_slots, cached):
                local_cache[slot] = entry
            out = vae.decoder(frame, feat_cache=local_cache, feat_idx=[0], first_chunk=_first)
            out_slots = [i for i, entry in enumerate(local_cache) if isinstance(entry, torch.Tensor)]
            _layout["slots"] = out_slots
            _layout["consts"] = {i: e for i, e in enumerate(local_cache) if not isinstance(e, torch.Tensor)}
            return (out, *[local_cache[i] for i in out_slots])

        frame_input = hidden[:, :, frame_index : frame_index + 1]
        cached_tensors = [cache[i] for i in tensor_slots]
        results = torch_checkpoint(run_frame, frame_input, *cached_tensors, use_reentrant=False)
        frames.append(results[0])
        cache = [None] * num_slots
        for slot, entry in layout["consts"].items():
            cache[slot] = entry
        for slot, entry in zip(layout["slots"], results[1:]):
            cache[slot] = entry
    video = torch.cat(frames, dim=2)
    if vae.config.patch_size is not None:
        video = unpatchify(video, patch_size=vae.config.patch_size)
    vae.clear_cache()
    return video.clamp(-1.0, 1.0)
