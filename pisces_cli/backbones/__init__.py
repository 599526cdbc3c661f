"""Backbone adapters over diffusers (HunyuanVideo, Wan 2.1/2.2), LoRA I/O, noise grids and the GRPO SDE step.

Import the submodules directly; this package imports nothing heavy itself::

    from pisces_cli.backbones.registry import load_backbone
    from pisces_cli.backbones.lora import apply_lora, adapters_disabled, save_backbone_lora
    from pisces_cli.backbones.sampling import generate

    backbone = load_backbone("path/to/diffusers-dir", dtype=torch.bfloat16, device="cuda")
    apply_lora(backbone.transformer, rank=64, alpha=64, target_modules=backbone.lora_target_modules("attn"))
    video = generate(backbone, ["a cat"], num_frames=33, height=480, width=832, steps=30, seeds=[0])

Modules: ``base`` (interface, :class:`~pisces_cli.backbones.base.PromptEmbeds`), ``hunyuan``, ``wan``,
``registry``, ``lora``, ``schedule`` (σ grids), ``sde`` (Euler / SDE steps with log-probs), ``decode`` (VAE
helpers), ``sampling`` (Euler ODE ``generate``), ``tiny`` (tiny random checkpoints for tests and demos).
"""

from __future__ import annotations

__all__ = ["base", "decode", "hunyuan", "lora", "registry", "sampling", "schedule", "sde", "tiny", "wan"]
