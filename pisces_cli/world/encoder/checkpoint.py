"""Save / load the world encoder as ``config.json`` + ``model.safetensors`` + ``vocab.json`` (atomic writes)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pisces_cli.atomic import atomic_write_json, atomic_write_safetensors
from pisces_cli.errors import UsageError
from pisces_cli.world.encoder.model import WorldEncoder, WorldEncoderConfig
from pisces_cli.world.encoder.tokenizer import VOCAB_FILE, WordTokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: ``config.json`` ``model_type`` of a world encoder checkpoint.
MODEL_TYPE = "pisces_world_encoder"


def save_world_encoder(model: WorldEncoder, tokenizer: WordTokenizer, directory: str | Path) -> Path:
    """Write the checkpoint directory (created if needed); returns it."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    atomic_write_safetensors(target / WEIGHTS_FILE, model.state_dict(), {"format": "pt"})
    tokenizer.save(target / VOCAB_FILE)
    atomic_write_json(target / CONFIG_FILE, {"model_type": MODEL_TYPE, **model.config.to_dict()})
    return target


def read_world_config(directory: str | Path) -> WorldEncoderConfig:
    """The config of a checkpoint directory, after checking its three files exist (no weights are read)."""
    root = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE):
        if not (root / name).is_file():
            raise UsageError(
                f"world encoder: {root}: missing {name} (expected a pisces world encoder checkpoint)"
            )
    try:
        data = json.loads((root / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"world encoder: {root / CONFIG_FILE}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict) or data.pop("model_type", None) != MODEL_TYPE:
        raise UsageError(f"world encoder: {root / CONFIG_FILE}: model_type must be {MODEL_TYPE!r}")
    return WorldEncoderConfig.from_dict(data)


def load_world_encoder(
    directory: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> tuple[WorldEncoder, WordTokenizer]:
    """Load a checkpoint written by :func:`save_world_encoder` (strict: every weight must match)."""
    from safetensors.torch import load_file

    root = Path(directory)
    config = read_world_config(root)
    tokenizer = WordTokenizer.load(root / VOCAB_FILE)
    if len(tokenizer) != config.vocab_size:
        raise UsageError(
            f"world encoder: {root}: vocab.json has {len(tokenizer)} tokens, config.json says {config.vocab_size}"
        )
    model = WorldEncoder(config)
    state = load_file(str(root / WEIGHTS_FILE), device="cpu")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        raise UsageError(
            f"world encoder: {root / WEIGHTS_FILE}: weights do not match the config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {mismatched[:3]})"
        )
    model.load_state_dict(state, strict=True)
    model.to(device=device, dtype=dtype)
    return model.eval().requires_grad_(False), tokenizer
