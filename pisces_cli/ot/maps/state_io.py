"""Reading safetensors files and pickle-free (de)serialisation of optimiser states.

Writes go through :mod:`pisces_cli.atomic` (``atomic_write_safetensors``, ``atomic_write_json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from pisces_cli.errors import PiscesRuntimeError


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU; raises :class:`PiscesRuntimeError` on a corrupt file."""
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own error types
        raise PiscesRuntimeError(f"{path}: cannot read safetensors file ({error})") from error


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def split_optimizer_state(
    prefix: str, state: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into safetensors tensors and a JSON-able remainder.

    Tensors become ``{prefix}.{param_id}.{key}``; ``param_groups`` go to JSON (tuples become lists).
    """
    tensors: dict[str, torch.Tensor] = {}
    extra: dict[str, Any] = {}
    for param_id, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{param_id}.{key}"] = value
            else:
                extra[f"{param_id}.{key}"] = value
    return tensors, {"param_groups": _jsonable(state["param_groups"]), "non_tensor_state": _jsonable(extra)}


def join_optimizer_state(
    prefix: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> dict[str, Any]:
    """Inverse of :func:`split_optimizer_state`: rebuild a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if not name.startswith(prefix + "."):
            continue
        param_id, key = name[len(prefix) + 1 :].split(".", 1)
        state.setdefault(int(param_id), {})[key] = tensor
    for name, value in meta.get("non_tensor_state", {}).items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}
