"""Fine-tuning checkpoints: a slim inference artifact plus the resumable training state, no pickle.

Layout of ``{finetune.output}/checkpoint-{step}/``::

    pytorch_lora_weights.safetensors      LoRA, diffusers format (``pipeline.load_lora_weights(dir)``)
    adapter_config.json, adapter_model.safetensors   the same LoRA in peft format
    pisces_lora.json                      backbone, rank, alpha, targets, step
    transformer/ (full fine-tuning only)  ``diffusers`` ``save_pretrained`` of the trained transformer
    training_state/                       everything else needed to resume (never needed for inference)
        trainable.safetensors             trainable parameters by name, fp32 (LoRA runs only)
        optimizer.safetensors             optimizer tensors ``state/{param_index}/{name}`` (+ torch RNG)
        state.json                        format_version, step, optimizer param_groups and scalar state,
                                          lr scheduler state, Python/NumPy RNG, algorithm state, counters

A checkpoint is written into a hidden temporary folder and renamed into place, so a folder named
``checkpoint-{step}`` is always complete.

``state.json`` also records the *training key* (:func:`training_key`, plus the reward's file contents): the
settings that change what training computes. A resume under another key is refused (:func:`check_training_key`), so a checkpoint's weights never
continue under settings that did not make them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pisces_cli.atomic import (
    apply_default_mode,
    atomic_write_json,
    atomic_write_safetensors,
    remove_stale_temps,
    temp_path_for,
)
from pisces_cli.errors import UsageError
from pisces_cli.training.checkpoint_layout import STATE_DIR, checkpoint_dirs

FORMAT_VERSION = 1
#: ``finetune`` keys that do not change what a training step computes: when to stop, save, log, validate and
#: sanity-check, where to write, and memory-only switches (``batch_size`` and ``gradient_accumulation_steps``
#: enter as the effective batch instead). Every other recipe key of ``seed``, ``models``, ``reward`` and
#: ``finetune`` is in the training key.
UNKEYED_FINETUNE = (
    "batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "checkpointing_steps",
    "checkpoints_total_limit",
    "resume",
    "log_every",
    "report_to",
    "validation",
    "output",
    "max_nan_steps",
    "distributed",
    "gradient_checkpointing",
    "offload_text_encoders",
)
#: the same for the ``finetune.grpo`` and ``finetune.vae`` sub-sections
UNKEYED_SUBKEYS = {"grpo": ("chunk_size", "sanity_check", "sanity_prompts"), "vae": ("decode_checkpointing",)}
#: ``finetune.lr_scheduler`` values whose learning rate at a step depends on ``finetune.max_steps`` (the decay
#: ends there): under them ``max_steps`` is the schedule's horizon and part of the training key.
DECAYING_SCHEDULES = ("linear", "cosine")


def training_key(recipe_data: dict[str, Any], world_size: int) -> dict[str, Any]:
    """The settings a checkpoint's training state depends on, from the resolved recipe ``recipe_data`` (paths
    absolute): ``seed``, ``models``, ``reward`` and ``finetune`` without :data:`UNKEYED_FINETUNE` and
    :data:`UNKEYED_SUBKEYS`, plus the effective batch (``batch_size`` × ``gradient_accumulation_steps`` ×
    ``world_size``), so 8 GPUs × 4 accumulation steps resume as 1 GPU × 32. Under a decaying learning-rate
    schedule (:data:`DECAYING_SCHEDULES`) ``max_steps`` sets every step's learning rate, so it is keyed too."""
    section = recipe_data.get("finetune", {})
    finetune = {k: v for k, v in section.items() if k not in UNKEYED_FINETUNE}
    if section.get("lr_scheduler") in DECAYING_SCHEDULES:
        finetune["max_steps"] = section.get("max_steps")
    for name, unkeyed in UNKEYED_SUBKEYS.items():
        if isinstance(finetune.get(name), dict):
            finetune[name] = {k: v for k, v in finetune[name].items() if k not in unkeyed}
    accumulation = section.get("gradient_accumulation_steps") or 1
    finetune["effective_batch"] = (section.get("batch_size") or 1) * accumulation * world_size
    return {
        "seed": recipe_data.get("seed"),
        "models": recipe_data.get("models"),
        "reward": recipe_data.get("reward"),
        "finetune": finetune,
    }


def check_training_key(folder: Path, meta: dict[str, Any], key: dict[str, Any]) -> None:
    """Refuse (UsageError naming each changed setting) to resume ``folder`` under another training key.

    Checkpoints written before keys were recorded carry none and are resumed as before.
    """
    from pisces_cli.config.diff import changed_fields, refuse_changed

    stored = meta.get("training_key")
    if not isinstance(stored, dict):
        return
    stored_contents, contents = stored.get("contents"), key.get("contents")
    stored = {k: v for k, v in stored.items() if k != "contents"}
    key = {k: v for k, v in key.items() if k != "contents"}
    if isinstance(stored_contents, dict) and isinstance(contents, dict):  # compare the file contents both
        # sides know: an older checkpoint recorded fewer, a check before any model loads hashes only the small
        # files (the OT map), not multi-GB encoder weights
        shared = sorted(set(stored_contents) & set(contents))
        stored["contents"] = {name: stored_contents[name] for name in shared}
        key["contents"] = {name: contents[name] for name in shared}
    stored_finetune = stored.get("finetune")
    if (  # a key written before the horizon was keyed: the run's max_steps was its horizon
        isinstance(stored_finetune, dict)
        and "max_steps" in key.get("finetune", {})
        and "max_steps" not in stored_finetune
    ):
        stored = {**stored, "finetune": {**stored_finetune, "max_steps": meta.get("max_steps")}}
    refuse_changed(
        str(folder),
        changed_fields(stored, key),
        rows=f"a training state (step {meta.get('step')})",
        ways_out="Resuming would continue these weights under settings that did not make them. Pass --fresh "
        "to start this output folder over (its checkpoints, logs and validation videos are removed), or set another "
        "finetune.output.",
    )


def read_training_meta(folder: Path) -> dict[str, Any]:
    """``training_state/state.json`` of a checkpoint folder (UsageError when it cannot be read)."""
    path = Path(folder) / STATE_DIR / "state.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(
            f"{path}: cannot read the training state ({error}); resume another checkpoint or --fresh"
        ) from error
    if not isinstance(meta, dict):
        raise UsageError(f"{path}: not a training state (expected a JSON object)")
    return meta


def clear_training_output(output: str | Path) -> list[Path]:
    """Remove what an earlier run wrote in ``output`` (``finetune --fresh``): its checkpoints, ``logs/`` (metrics,
    TensorBoard events) and ``validation/`` videos, so a fresh run never shares a folder with them; returns what
    was removed. Other files of the folder are left alone."""
    root = Path(output)
    removed = [folder for _step, folder in checkpoint_dirs(root)]
    removed += [root / name for name in ("logs", "validation") if (root / name).is_dir()]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def find_resume_checkpoint(output: str | Path, resume: str | None) -> Path | None:
    """``resume``: None/"never" → None; ``latest`` → the newest checkpoint (None if none); else a folder path."""
    if resume in (None, "", "never", "none"):
        return None
    if resume == "latest":
        found = checkpoint_dirs(output)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / STATE_DIR / "state.json").is_file():
        raise UsageError(f"finetune.resume: {resume} is not a checkpoint folder (no {STATE_DIR}/state.json)")
    return path


def prune_checkpoints(output: str | Path, keep: int | None) -> list[Path]:
    """Delete the oldest checkpoints beyond ``keep`` (None keeps all); returns the removed folders."""
    if keep is None:
        return []
    found = checkpoint_dirs(output)
    removed = []
    for _step, folder in found[: max(0, len(found) - keep)]:
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


# ------------------------------------------------------------------------------------------ optimizer
def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``state/{i}/{name}``) and JSON (groups, scalars)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Inverse of :func:`optimizer_to_flat`; loads into ``optimizer`` (tensors moved by torch to the params)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("state/"):
            continue
        _, index, name = key.split("/", 2)
        state.setdefault(int(index), {})[name] = value
    for index, entries in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ------------------------------------------------------------------------------------------ RNG
def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch CPU/CUDA RNG as tensors; Python and NumPy RNG as JSON."""
    tensors = {"rng/torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/torch_cuda_{index}"] = value
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    meta = {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": [
            numpy_state[0],
            numpy_state[1].tolist(),
            int(numpy_state[2]),
            int(numpy_state[3]),
            float(numpy_state[4]),
        ],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    if "rng/torch_cpu" in tensors:
        torch.set_rng_state(tensors["rng/torch_cpu"].to(torch.uint8))
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            key = f"rng/torch_cuda_{index}"
            if key in tensors:
                torch.cuda.set_rng_state(tensors[key].to(torch.uint8), index)
    if "python" in meta:
        version, internal, gauss = meta["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in meta:
        name, keys, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ------------------------------------------------------------------------------------------ save / load
def save_training_state(
    folder: Path,
    *,
    step: int,
    trainable: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra: dict[str, Any],
) -> None:
    """Write ``folder/training_state/`` (see the module docstring)."""
    state_dir = folder / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    if trainable is not None:
        atomic_write_safetensors(
            state_dir / "trainable.safetensors",
            {k: v.float() for k, v in trainable.items()},
            {"format": "pt"},
        )
    optimizer_tensors, optimizer_meta = optimizer_to_flat(optimizer)
    rng_tensors, rng_meta = rng_state()
    atomic_write_safetensors(
        state_dir / "optimizer.safetensors", {**optimizer_tensors, **rng_tensors}, {"format": "pt"}
    )
    scheduler_state = scheduler.state_dict() if scheduler is not None else None
    if scheduler_state is not None:
        scheduler_state = {k: v for k, v in scheduler_state.items() if k != "lr_lambdas"}
    atomic_write_json(
        state_dir / "state.json",
        {
            "format_version": FORMAT_VERSION,
            "step": step,
            "optimizer": optimizer_meta,
            "scheduler": scheduler_state,
            "rng": rng_meta,
            **extra,
        },
    )


def load_training_state(
    folder: Path,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """``(state.json, optimizer+RNG tensors, trainable tensors or None)`` of a checkpoint folder."""
    from safetensors.torch import load_file

    from pisces_cli.artifacts import check_safetensors_file

    state_dir = Path(folder) / STATE_DIR
    meta = read_training_meta(folder)
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise UsageError(
            f"{folder}: checkpoint format {meta['format_version']} is newer than this pisces supports"
        )
    trainable_path = state_dir / "trainable.safetensors"
    files = [state_dir / "optimizer.safetensors"] + ([trainable_path] if trainable_path.is_file() else [])
    for path in files:  # a missing, truncated or damaged file: a usage error naming it, not a library crash
        check_safetensors_file(
            path, what=f"the training state of {folder} (resume another checkpoint or --fresh)"
        )
    tensors = load_file(str(files[0]))
    trainable = load_file(str(trainable_path)) if trainable_path.is_file() else None
    return meta, tensors, trainable


def staging_dir(output: Path, step: int) -> Path:
    """A fresh hidden folder next to the final ``checkpoint-{step}`` to write into.

    Named like every pisces temp (:func:`pisces_cli.atomic.temp_path_for`), so the staging folders of killed
    runs are removed here (:func:`pisces_cli.atomic.remove_stale_temps`) instead of piling up.
    """
    remove_stale_temps(output)
    staging = temp_path_for(output / f"checkpoint-{step}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, output: Path, step: int) -> Path:
    """Rename a finished staging folder to ``checkpoint-{step}`` (replacing an older one of that step)."""
    final = output / f"checkpoint-{step}"
    apply_default_mode(staging)  # safetensors and tempfile write 0600/0700: give the umask's modes
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return final
