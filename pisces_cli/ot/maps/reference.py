"""Import a transport map trained by the reference code (``train_OT_map.py``, method.md §2.6).

This is the one place that unpickles: ``torch.load(weights_only=True)`` (tensors and plain
containers only), used solely for an explicit user import.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from pisces_cli.errors import UsageError, torch_load_reason
from pisces_cli.ot.maps.networks import REFERENCE_KEYS, MapDims, dims_from_state_dict

CONTAINER_KEYS = ("T", "ot_map", "state_dict", "model")
"""Keys under which a structured reference checkpoint may hold T's state dict (first found wins)."""
STRIPPED_PREFIXES = ("module.", "_orig_mod.")


def _is_tensor_dict(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(item, torch.Tensor) for item in value.values())
    )


def _strip_prefixes(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                changed = True
    return name


def extract_reference_state_dict(payload: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find T's state dict in a loaded payload and check it has exactly the reference keys.

    Accepts a raw tensor dict, or a mapping with one under the first of :data:`CONTAINER_KEYS`;
    ``module.``/``_orig_mod.`` prefixes are stripped. Raises :class:`UsageError` listing expected vs
    found keys otherwise.
    """
    candidate: object = payload
    if isinstance(payload, Mapping) and not _is_tensor_dict(payload):
        candidate = None
        for key in CONTAINER_KEYS:
            if key in payload:
                candidate = payload[key]
                break
        if candidate is None:
            found = sorted(str(key) for key in payload)
            raise UsageError(
                f"{source}: no OT map state dict found; expected a raw state dict with keys "
                f"{list(REFERENCE_KEYS)} or a checkpoint holding one under one of {list(CONTAINER_KEYS)}; "
                f"found top-level keys {found}"
            )
    if not _is_tensor_dict(candidate):
        raise UsageError(
            f"{source}: the OT map entry is not a tensor state dict (got {type(candidate).__name__}); "
            f"expected keys {list(REFERENCE_KEYS)}"
        )
    state_dict = {_strip_prefixes(str(name)): tensor for name, tensor in candidate.items()}
    if set(state_dict) != set(REFERENCE_KEYS):
        raise UsageError(
            f"{source}: state dict keys do not match the reference OT map layout; "
            f"expected {list(REFERENCE_KEYS)}, found {sorted(state_dict)}"
        )
    _check_shapes(state_dict, source)
    return state_dict


def _check_shapes(state_dict: dict[str, torch.Tensor], source: str) -> None:
    dims = dims_from_state_dict(state_dict)
    hidden, d_in, d_out = dims.hidden_dim, dims.input_dim, dims.output_dim
    expected = {
        "net.0.weight": (hidden, d_in),
        "net.0.bias": (hidden,),
        "net.2.weight": (hidden,),
        "net.2.bias": (hidden,),
        "net.3.weight": (hidden, hidden),
        "net.3.bias": (hidden,),
        "net.5.weight": (hidden,),
        "net.5.bias": (hidden,),
        "net.6.weight": (d_out, hidden),
        "net.6.bias": (d_out,),
    }
    wrong = [
        f"{name}: expected {list(shape)}, found {list(state_dict[name].shape)}"
        for name, shape in expected.items()
        if tuple(state_dict[name].shape) != shape
    ]
    if wrong:
        raise UsageError(f"{source}: OT map tensor shapes are inconsistent: " + "; ".join(wrong))


def import_reference_map(path: str | Path) -> tuple[dict[str, torch.Tensor], MapDims]:
    """Load a reference OT map checkpoint (``.pt``) → (state dict with reference keys, :class:`MapDims`).

    Uses ``torch.load(path, map_location="cpu", weights_only=True)``. Tensors are returned as stored
    (dtype unchanged). Build a usable map with ``NeuralMap.from_state_dict(state_dict, normalization)``;
    note the reference trained on raw text features (normalization ``"none"``).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: reference OT map file not found")
    if path.stat().st_size == 0:
        raise UsageError(f"{path}: empty file (0 bytes), not a torch checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, ...
        raise UsageError(
            f"{path}: cannot load with torch.load(weights_only=True): {torch_load_reason(error)}"
        ) from error
    state_dict = extract_reference_state_dict(payload, str(path))
    return state_dict, dims_from_state_dict(state_dict)
