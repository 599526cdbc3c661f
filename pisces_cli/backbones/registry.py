"""Pick the adapter class for a diffusers-format directory from its ``model_index.json``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pisces_cli.errors import UsageError

FAMILIES = ("hunyuan_video", "wan")
_ALIASES = {
    "hunyuan": "hunyuan_video",
    "hunyuanvideo": "hunyuan_video",
    "hunyuan_video": "hunyuan_video",
    "wan": "wan",
    "wan2.1": "wan",
    "wan2.2": "wan",
}
_PIPELINE_TO_FAMILY = {"HunyuanVideoPipeline": "hunyuan_video", "WanPipeline": "wan"}


def adapter_class(family: str):
    """The :class:`BackboneAdapter` subclass for ``family`` (``hunyuan_video``/``hunyuan`` or ``wan``/``wan2.x``)."""
    family = _ALIASES.get(str(family).lower(), family)
    if family == "hunyuan_video":
        from pisces_cli.backbones.hunyuan import HunyuanVideoAdapter

        return HunyuanVideoAdapter
    if family == "wan":
        from pisces_cli.backbones.wan import WanAdapter

        return WanAdapter
    raise UsageError(f"unknown backbone family {family!r}; expected one of {', '.join(FAMILIES)}")


def detect_family(path: str | Path) -> str:
    """Family from ``<path>/model_index.json``'s ``_class_name``."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise UsageError(f"{path}: no model_index.json; pass a diffusers-format directory or name the family")
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except json.JSONDecodeError as error:
        raise UsageError(f"{index}: not valid JSON ({error})") from error
    if class_name not in _PIPELINE_TO_FAMILY:
        raise UsageError(
            f"{index}: unsupported pipeline {class_name!r}; expected one of {sorted(_PIPELINE_TO_FAMILY)}"
        )
    return _PIPELINE_TO_FAMILY[class_name]


def import_pisces_components(path: str | Path) -> list[str]:
    """Import every ``pisces_cli.*`` library named in ``path/model_index.json``; returns their names."""
    import importlib
    import json

    index = Path(path) / "model_index.json"
    if not index.is_file():
        return []
    try:
        entries = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    modules = sorted(
        {
            value[0]
            for value in entries.values()
            if isinstance(value, list)
            and value
            and isinstance(value[0], str)
            and value[0].startswith("pisces_cli.")
        }
    )
    for module in modules:
        importlib.import_module(module)
    return modules


def load_backbone(
    path_or_hub_id: str,
    *,
    family: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    text_encoders: bool = True,
):
    """Load a backbone adapter; the family is read from ``model_index.json`` unless given.

    Components whose library is a ``pisces_cli`` module (e.g. the synthetic world's generator
    transformer) are imported first so diffusers can build them; other libraries are left to diffusers.
    """
    import_pisces_components(path_or_hub_id)
    chosen = family or detect_family(path_or_hub_id)
    return adapter_class(chosen).from_pretrained(
        path_or_hub_id, dtype=dtype, device=device, text_encoders=text_encoders
    )
