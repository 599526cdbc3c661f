"""A real tiny video-text encoder trained on the synthetic world (reward backend ``world``).

``train_world_encoder(out_dir, seed=..., steps=...)`` trains it on world clips in minutes on a CPU and saves a
checkpoint directory; ``load_encoder("world", out_dir)`` (or :func:`load_world_backend`) loads it as an
:class:`~pisces_cli.encoders.base.EncoderBackend` with global, token and matching-head features.
"""

from __future__ import annotations

from pisces_cli.world.encoder.backend import WorldEncoderBackend, load_world_backend
from pisces_cli.world.encoder.checkpoint import load_world_encoder, save_world_encoder
from pisces_cli.world.encoder.model import WorldEncoder, WorldEncoderConfig
from pisces_cli.world.encoder.tokenizer import WordTokenizer
from pisces_cli.world.encoder.train import evaluate_encoder, train_world_encoder

__all__ = [
    "WordTokenizer",
    "WorldEncoder",
    "WorldEncoderBackend",
    "WorldEncoderConfig",
    "evaluate_encoder",
    "load_world_backend",
    "load_world_encoder",
    "save_world_encoder",
    "train_world_encoder",
]
