"""LoRA (peft) on the backbone transformers: attach, disable for the teacher, save and load.

Saved adapter directory layout (``save_lora``)::

    pytorch_lora_weights.safetensors            diffusers format, keys ``transformer.<module>.lora_A.weight``,
                                                with ``lora_adapter_metadata`` (alpha survives loading)
    pytorch_lora_weights_transformer_2.safetensors   Wan 2.2 A14B low-noise expert (same format)
    adapter_config.json, adapter_model.safetensors   peft format (``PeftModel.from_pretrained``)
    transformer_2/adapter_config.json, …             peft format of the second expert
    pisces_lora.json                            pisces metadata (backbone, rank, targets, step …)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from pisces_cli.atomic import apply_default_mode, atomic_write_json
from pisces_cli.backbones.lora_files import DIFFUSERS_WEIGHT_NAMES, METADATA_FILE, PEFT_SUBDIRS
from pisces_cli.errors import PiscesRuntimeError, UsageError

DEFAULT_ADAPTER = "default"


def _as_dict(transformers) -> dict[str, torch.nn.Module]:
    if isinstance(transformers, torch.nn.Module):
        return {"transformer": transformers}
    return dict(transformers)


def cast_trainable_to_fp32(module: torch.nn.Module) -> None:
    """Cast every parameter with ``requires_grad`` to fp32 (LoRA weights inherit a bf16 base dtype otherwise)."""
    for parameter in module.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()


def apply_lora(
    transformer: torch.nn.Module,
    *,
    rank: int,
    alpha: float,
    target_modules: str | list[str],
    dropout: float = 0.0,
    init_lora_weights: bool | str = True,
    adapter_name: str = DEFAULT_ADAPTER,
) -> int:
    """Attach a peft LoRA to ``transformer`` (freezes everything else), cast LoRA params to fp32.

    ``target_modules`` as a string is a regex full-matched against module names. ``init_lora_weights``: peft's
    options (True = A Kaiming, B zero; "gaussian"; False = both random). Returns the number of trainable params.
    """
    from peft import LoraConfig

    if rank < 1:
        raise UsageError(f"lora rank must be >= 1, got {rank}")
    if alpha <= 0:
        raise UsageError(f"lora alpha must be > 0, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"lora dropout must be in [0, 1), got {dropout}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        init_lora_weights=init_lora_weights,
        target_modules=target_modules,
    )
    try:
        transformer.add_adapter(config, adapter_name=adapter_name)
    except ValueError as error:
        raise UsageError(f"lora target_modules {target_modules!r} matched no layer: {error}") from error
    cast_trainable_to_fp32(transformer)
    return sum(p.numel() for p in transformer.parameters() if p.requires_grad)


def enable_full_finetune(
    transformer: torch.nn.Module, *, master_dtype: torch.dtype | None = torch.float32
) -> int:
    """Full fine-tuning: every transformer parameter trainable (cast to ``master_dtype`` unless None)."""
    transformer.requires_grad_(True)
    if master_dtype is not None:
        transformer.to(master_dtype)
    return sum(p.numel() for p in transformer.parameters())


def lora_parameters(transformer: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The LoRA A/B parameters by name."""
    return {name: p for name, p in transformer.named_parameters() if "lora_" in name}


@contextlib.contextmanager
def adapters_disabled(transformers) -> Iterator[None]:
    """Run the frozen base model (the teacher / reference) inside ``with``; adapters are re-enabled on exit.

    Use it only under ``torch.no_grad()`` and only *before* ``backward()``: the safe order is student forward
    (grad) → ``no_grad``: disable → teacher forward → enable → backward (docs/backbones.md §5.2). Under grad it raises,
    because backward through a disabled adapter silently drops LoRA gradients or breaks checkpoint recomputation.
    """
    if torch.is_grad_enabled():
        raise PiscesRuntimeError(
            "adapters_disabled() must run under torch.no_grad() (teacher/reference passes)"
        )
    modules = list(_as_dict(transformers).values())
    disabled = []
    try:
        for module in modules:
            module.disable_adapters()
            disabled.append(module)
        yield
    finally:
        for module in disabled:
            module.enable_adapters()


def _fsync_replace(source: Path, target: Path) -> None:
    with open(source, "rb") as handle:
        os.fsync(handle.fileno())
    apply_default_mode(source)  # safetensors writes 0600 whatever the umask
    os.replace(source, target)


def save_lora(
    adapter_dir: str | os.PathLike,
    transformers,
    metadata: dict | None = None,
    *,
    pipeline_class=None,
    adapter_name: str = DEFAULT_ADAPTER,
) -> Path:
    """Write the LoRA of ``transformers`` (a module or ``{"transformer": m, "transformer_2": m2}``).

    Files are written to a temporary directory inside ``adapter_dir`` and moved in with ``os.replace``.
    ``pipeline_class`` (default ``WanPipeline``; any diffusers LoRA mixin works) provides ``save_lora_weights``.
    """
    from peft.utils import get_peft_model_state_dict

    if pipeline_class is None:
        from diffusers import WanPipeline as pipeline_class
    target = Path(adapter_dir)
    target.mkdir(parents=True, exist_ok=True)
    modules = _as_dict(transformers)
    with tempfile.TemporaryDirectory(dir=target, prefix=".tmp-lora-") as staging_name:
        staging = Path(staging_name)
        moves: list[tuple[Path, Path]] = []
        for component, module in modules.items():
            if component not in DIFFUSERS_WEIGHT_NAMES:
                raise UsageError(
                    f"cannot save LoRA of component {component!r}; expected transformer/transformer_2"
                )
            peft_config = getattr(module, "peft_config", {}).get(adapter_name)
            if peft_config is None:
                raise PiscesRuntimeError(f"{component} has no LoRA adapter named {adapter_name!r} to save")
            state = get_peft_model_state_dict(module, adapter_name=adapter_name)
            state = {key: value.detach().contiguous() for key, value in state.items()}
            weight_name = DIFFUSERS_WEIGHT_NAMES[component]
            pipeline_class.save_lora_weights(
                staging,
                transformer_lora_layers=state,
                weight_name=weight_name,
                transformer_lora_adapter_metadata=peft_config.to_dict(),
            )
            moves.append((staging / weight_name, target / weight_name))
            peft_dir = staging / (PEFT_SUBDIRS[component] or "peft")
            peft_dir.mkdir()
            _save_peft_format(peft_dir, state, peft_config)
            final_peft_dir = target / PEFT_SUBDIRS[component] if PEFT_SUBDIRS[component] else target
            final_peft_dir.mkdir(exist_ok=True)
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                moves.append((peft_dir / name, final_peft_dir / name))
        atomic_write_json(staging / METADATA_FILE, {"components": sorted(modules), **(metadata or {})})
        moves.append((staging / METADATA_FILE, target / METADATA_FILE))
        for source, destination in moves:
            _fsync_replace(source, destination)
    return target


def save_backbone_lora(adapter_dir: str | os.PathLike, backbone, metadata: dict | None = None) -> Path:
    """:func:`save_lora` of every transformer of a :class:`BackboneAdapter`, with its pipeline's LoRA writer."""
    return save_lora(adapter_dir, backbone.transformers(), metadata, pipeline_class=type(backbone.pipeline))


def _save_peft_format(directory: Path, state: dict[str, torch.Tensor], peft_config) -> None:
    """peft's on-disk layout: ``adapter_config.json`` + ``adapter_model.safetensors`` (``base_model.model.`` keys)."""
    from safetensors.torch import save_file

    save_file(
        {f"base_model.model.{key}": value for key, value in state.items()},
        str(directory / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    config = peft_config.to_dict()
    for key, value in list(config.items()):
        if isinstance(value, set):
            config[key] = sorted(value)
    atomic_write_json(directory / "adapter_config.json", config)


def read_lora_metadata(adapter_dir: str | os.PathLike) -> dict:
    """The ``pisces_lora.json`` written by :func:`save_lora` (UsageError if missing)."""
    path = Path(adapter_dir) / METADATA_FILE
    if not path.is_file():
        raise UsageError(f"{adapter_dir}: not a pisces LoRA directory (missing {METADATA_FILE})")
    return json.loads(path.read_text(encoding="utf-8"))


def load_lora(
    adapter_dir: str | os.PathLike, adapter, *, adapter_name: str = "pisces", scale: float = 1.0
) -> None:
    """Load a :func:`save_lora` directory into ``adapter.pipeline`` with ``load_lora_weights`` (both experts)."""
    directory = Path(adapter_dir)
    components = read_lora_metadata(directory).get("components", ["transformer"])
    for component in components:
        weight_file = directory / DIFFUSERS_WEIGHT_NAMES[component]
        if not weight_file.is_file():
            raise UsageError(f"{directory}: missing {weight_file.name}")
        if component == "transformer_2" and adapter.transformer_2 is None:
            raise UsageError(
                f"{directory} has a transformer_2 LoRA but the backbone has a single transformer"
            )
        kwargs = {"load_into_transformer_2": True} if component == "transformer_2" else {}
        adapter.pipeline.load_lora_weights(
            str(directory), weight_name=weight_file.name, adapter_name=adapter_name, **kwargs
        )
    if scale != 1.0:
        for module in adapter.transformers().values():
            module.set_adapters([adapter_name], weights=[scale])
