"""A real tiny text-to-video generator trained on the synthetic world (a diffusers ``WanPipeline``).

``train_world_generator(out_dir, seed=..., steps=...)`` trains a tiny pixel-space Wan transformer by flow
matching on world clips (CPU, minutes) and saves a diffusers directory that
``pisces_cli.backbones.registry.load_backbone`` loads once :mod:`pisces_cli.world.generator.transformer` is
imported (:func:`load_world_generator` does both); :mod:`~pisces_cli.world.generator.evaluate` scores its
samples with the world oracle.
"""

from __future__ import annotations

from pisces_cli.world.generator.evaluate import (
    ATTRIBUTES,
    chance_levels,
    evaluate_generator,
    held_out_prompts,
    reference_levels,
)
from pisces_cli.world.generator.pipeline import (
    GeneratorArchitecture,
    build_pipeline,
    load_world_generator,
    world_tokenizer,
)
from pisces_cli.world.generator.pixel_vae import build_pixel_vae
from pisces_cli.world.generator.train import train_world_generator

__all__ = [
    "ATTRIBUTES",
    "GeneratorArchitecture",
    "build_pipeline",
    "build_pixel_vae",
    "chance_levels",
    "evaluate_generator",
    "held_out_prompts",
    "load_world_generator",
    "reference_levels",
    "train_world_generator",
    "world_tokenizer",
]
