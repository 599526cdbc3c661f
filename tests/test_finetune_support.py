"""Shared helpers for the finetune/generate tests: tiny models built once per session, tiny recipes.

No tests here; other ``test_finetune_*`` / ``test_generate_*`` modules import these helpers.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import torch

MODEL_ROOT_ENV = "PISCES_TEST_FINETUNE_MODELS"
PROMPTS = ["a cat runs on grass", "a dog jumps over the road", "a red car drives", "a bird flies in the sky"]


@functools.lru_cache(maxsize=1)
def model_root() -> Path:
    """A temporary folder holding tiny Hunyuan / Wan / CLIP checkpoints (built once per test session)."""
    from pisces_cli.backbones.tiny import save_tiny_hunyuan, save_tiny_wan
    from pisces_cli.encoders.tiny_clip import save_tiny_clip

    inherited = os.environ.get(MODEL_ROOT_ENV)
    if inherited and (Path(inherited) / "clip").is_dir():
        return Path(inherited)  # built by the parent of a spawned test process
    root = Path(tempfile.mkdtemp(prefix="pisces-ft-models-"))
    save_tiny_hunyuan(root / "hunyuan", seed=0)
    save_tiny_wan(root / "wan", seed=0)
    save_tiny_clip(root / "clip")
    os.environ[MODEL_ROOT_ENV] = str(root)
    return root


def write_prompts(folder: Path, prompts: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prompts.txt"
    path.write_text("\n".join(prompts or PROMPTS) + "\n", encoding="utf-8")
    return path


def tiny_overrides(tmp: Path, backbone: str = "hunyuan", **finetune) -> list[str]:
    """Recipe overrides for a tiny CPU run of the bundled ``demo`` recipe (fp32, no OT map)."""
    root = model_root()
    prompts = write_prompts(tmp)
    values = {
        "output_dir": str(tmp / "run"),
        "seed": 5,
        "runtime.device": "cpu",
        "models.encoder.backend": "clip",
        "models.encoder.path": str(root / "clip"),
        "models.generator.backbone": backbone,
        "models.generator.path": str(root / ("hunyuan" if backbone == "hunyuan" else "wan")),
        "models.generator.dtype": "float32",
        "reward.ot_map": "null",
        "reward.token_ot.max_iter": 10,
        "finetune.data.prompts": str(prompts),
        "finetune.max_steps": 2,
        "finetune.batch_size": 1,
        "finetune.gradient_accumulation_steps": 1,
        "finetune.learning_rate": 1e-3,
        "finetune.mixed_precision": "'no'",
        "finetune.lora.rank": 4,
        "finetune.lora.alpha": 4,
        "finetune.num_frames": 5,
        "finetune.height": 16,
        "finetune.width": 16,
        "finetune.guidance": 1.0 if backbone == "wan" else 6.0,
        "finetune.prompt_x0": "noise",
        "finetune.checkpointing_steps": 1,
        "finetune.checkpoints_total_limit": 4,
        "finetune.schedule.shift": 17.0,
        "finetune.schedule.euler_steps": 50,
        "finetune.lora.targets": "[attn_mlp]",
        "generate.output": str(tmp / "run" / "videos"),
        "generate.batch_size": 1,
        "generate.fps": 8,
        "generate.num_frames": 5,
        "generate.height": 16,
        "generate.width": 16,
        "generate.steps": 2,
        "generate.guidance": 1.0 if backbone == "wan" else 6.0,
    }
    values.update({f"finetune.{k}": v for k, v in finetune.items()})
    return [f"{key}={value}" for key, value in values.items()]


def resolve(tmp: Path, backbone: str = "hunyuan", extra: list[str] | None = None, **finetune):
    from pisces_cli.config import load_recipe

    return load_recipe("demo", tiny_overrides(tmp, backbone, **finetune) + list(extra or []))


def trainable_snapshot(trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.named_trainable.items()}
