"""Preflight of the generator (``models.generator.path``): a diffusers-format folder or hub id.

Cheap: the folder (or the hub id's snapshot in the local cache) exists and its ``model_index.json`` names the
pipeline of ``models.generator.backbone``; an uncached hub id fails offline and warns online (diffusers would
download it when the stage starts). Deep (``--weights``): every component the backbone adapter needs is there
with a class the adapter accepts (:attr:`BackboneAdapter.component_classes`); each config is read with its
class defaults filled in and handed to :meth:`BackboneAdapter.config_problems` (channels, patch sizes, text
widths); the transformer(s) and the VAE are built on the meta device and their tensor names and shapes compared
with the safetensors headers; text encoders' weight files must be present and readable. No weight is loaded.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import UsageError
from pisces_cli.io.weight_check import numel
from pisces_cli.preflight.paths import Location, locate, offline_variable
from pisces_cli.preflight.report import PreflightReport, Status, human_count

if TYPE_CHECKING:
    from pisces_cli.config import Recipe

GENERATOR_KEY = "models.generator.path"
FAMILY_OF_BACKBONE = {"hunyuan": "hunyuan_video", "wan": "wan"}
#: components whose tensors are compared key by key with a meta-device model
KEY_CHECKED = ("transformer", "transformer_2", "vae")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def check_generator(
    recipe: Recipe,
    report: PreflightReport,
    *,
    deep: bool,
    key: str = GENERATOR_KEY,
    sections: tuple[str, ...] = (),
) -> None:
    """Rows for the generator folder (and, with ``deep``, one per component and one for the clip geometry of
    each recipe section in ``sections``: ``generate``, ``finetune``)."""
    from pisces_cli.backbones.registry import adapter_class

    spec = recipe.models.generator.path
    if not spec:
        report.add("generator", key, Status.FAIL, "not set: give a diffusers-format folder or hub id")
        return
    location = locate(spec)
    if location.local is None:
        _report_missing(spec, location, report, key)
        return
    folder = location.local
    where = f"{spec} (hub cache: {folder})" if location.hub_id else str(folder)
    adapter = adapter_class(FAMILY_OF_BACKBONE[recipe.models.generator.backbone])
    index = _read_index(folder, report, key)
    if index is None:
        return
    found = index.get("_class_name")
    if found != adapter.pipeline_class_name:
        report.add(
            "generator",
            key,
            Status.FAIL,
            f"{where}: model_index.json is a {found} but models.generator.backbone="
            f"{recipe.models.generator.backbone} runs a {adapter.pipeline_class_name} folder",
        )
        return
    report.add("generator", key, Status.OK, f"{where}: {found}")
    if deep:
        _check_components(folder, index, adapter, report, key)
        for section in sections:
            problem = geometry_problem(recipe, section)
            detail = problem or (
                f"{getattr(recipe, section).num_frames} frames of {getattr(recipe, section).height}×"
                f"{getattr(recipe, section).width} fit the VAE and patch sizes"
            )
            report.add(
                f"{section} geometry",
                f"{section}.num_frames/height/width",
                Status.FAIL if problem else Status.OK,
                detail,
            )


def geometry_problem(recipe: Recipe, section: str) -> str | None:
    """Why the clips of recipe section ``section`` (``generate`` or ``finetune``: its ``num_frames``, ``height``
    and ``width``) cannot be made by the generator (frames ``4k+1``, sides multiples of the VAE's spatial factor
    × the transformer's patch size), read from the folder's configs without loading weights; None when they
    can, or when the configs cannot be read (the other checks, and the loader, say why)."""
    from pisces_cli.backbones.registry import adapter_class

    spec = recipe.models.generator.path
    location = locate(spec) if spec else None
    if location is None or location.local is None:
        return None
    folder = location.local
    configs: dict[str, dict[str, Any]] = {}
    try:
        index = _read_json(folder / "model_index.json")
        for component in ("transformer", "vae"):
            library, class_name = index[component][0], index[component][1]
            configs[component] = _with_defaults(
                _component_class(library, class_name), _read_json(folder / component / "config.json")
            )
        adapter = adapter_class(FAMILY_OF_BACKBONE[recipe.models.generator.backbone])
        temporal, multiple = adapter.geometry_factors(configs)
    except (UsageError, KeyError, IndexError, TypeError, ValueError):
        return None
    values = getattr(recipe, section)
    problem = adapter.geometry_problem(values.num_frames, values.height, values.width, temporal, multiple)
    return None if problem is None else f"{section}.{problem} ({folder})"


def check_geometry(recipe: Recipe, section: str) -> None:
    """Raise UsageError (exit 2) when :func:`geometry_problem` finds one: before a stage loads the generator."""
    problem = geometry_problem(recipe, section)
    if problem is not None:
        raise UsageError(problem)


def _with_defaults(cls: Any, raw: dict[str, Any]) -> dict[str, Any]:
    """A diffusers component's ``config.json`` with the class's ``__init__`` defaults filled in."""
    import inspect

    parameters = inspect.signature(cls.__init__).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return {**defaults, **{k: v for k, v in raw.items() if not k.startswith("_")}}


def _report_missing(spec: str, location: Location, report: PreflightReport, key: str) -> None:
    if location.hub_id is None:
        report.add("generator", key, Status.FAIL, f"{spec} not found (a diffusers-format folder or a hub id)")
        return
    offline = offline_variable()
    if offline:
        report.add(
            "generator",
            key,
            Status.FAIL,
            f"{spec} is not a local folder and not in the local Hugging Face cache, and {offline} is set: "
            "download it on a machine with network first (see the README section 'Real model weights')",
        )
    else:
        report.add(
            "generator",
            key,
            Status.WARN,
            f"{spec} is not a local folder and not in the local Hugging Face cache: diffusers will download it "
            "when the stage starts (set HF_HUB_OFFLINE=1 on machines without network)",
        )


def _read_index(folder: Path, report: PreflightReport, key: str) -> dict[str, Any] | None:
    try:
        return _read_json(folder / "model_index.json")
    except UsageError as error:
        report.add("generator", key, Status.FAIL, f"{error} (a diffusers-format folder has one)")
        return None


def _check_components(
    folder: Path, index: dict[str, Any], adapter: type, report: PreflightReport, key: str
) -> None:
    configs: dict[str, dict[str, Any]] = {}
    for component, accepted in adapter.component_classes.items():
        entry = index.get(component)
        if not entry or entry[0] is None:
            if component not in adapter.optional_components:
                report.add(
                    f"generator {component}",
                    key,
                    Status.FAIL,
                    f"{folder}: model_index.json has no {component}",
                )
            continue
        try:
            detail, config = _check_component(folder / component, component, entry, accepted)
        except UsageError as error:
            report.add(f"generator {component}", key, Status.FAIL, str(error))
            continue
        if config is not None:
            configs[component] = config
        report.add(f"generator {component}", key, Status.OK, detail)
    problems = adapter.config_problems(index, configs)
    if problems:
        report.add("generator configs", key, Status.FAIL, f"{folder}: " + "; ".join(problems))
    else:
        report.add(
            "generator configs",
            key,
            Status.OK,
            f"{len(configs)} component configs agree ({adapter.__name__})",
        )


def _check_component(
    directory: Path, component: str, entry: list, accepted: tuple[str, ...]
) -> tuple[str, dict[str, Any] | None]:
    """(detail, full config or None) of one component; UsageError says what is wrong."""
    library, class_name = entry[0], entry[1]
    cls = _component_class(library, class_name)
    lineage = [base.__name__ for base in getattr(cls, "__mro__", ())] or [class_name]
    if not any(name in accepted for name in lineage):
        raise UsageError(f"{directory}: {class_name} from {library}, expected one of {', '.join(accepted)}")
    if not directory.is_dir():
        raise UsageError(f"{directory}: folder missing ({component} is listed in model_index.json)")
    if component.startswith("tokenizer"):
        present = [name for name in TOKENIZER_FILES if (directory / name).is_file()]
        if not present:
            raise UsageError(f"{directory}: no tokenizer file ({', '.join(TOKENIZER_FILES)})")
        return f"{class_name}: {', '.join(present)}", None
    if component == "scheduler":
        config = _read_json(directory / "scheduler_config.json")
        if config.get("_class_name") not in (None, class_name):
            raise UsageError(
                f"{directory}: scheduler_config.json is a {config.get('_class_name')}, not {class_name}"
            )
        return f"{class_name}", None
    raw = _read_json(directory / "config.json")
    files = _weight_files(directory)
    if library == "transformers":
        full = _transformers_config(directory)
        shapes = _shapes(files)
        elements = sum(numel(shape) for shape in shapes.values())
        return f"{class_name}: {len(shapes)} tensors, {human_count(elements)} parameters", full
    full, expected = _meta_model(cls, raw)
    if component not in KEY_CHECKED:
        return f"{class_name}", full
    from pisces_cli.io.weight_check import compare_shapes

    check = compare_shapes(expected, _shapes(files))
    if not check.ok:
        raise UsageError(
            f"{directory}: weights do not match {class_name}({component} config): {check.describe()}"
        )
    return (
        f"{class_name}: {check.matched_tensors} tensors, {human_count(check.matched_elements)} parameters match "
        "its config",
        full,
    )


def _component_class(library: str, class_name: str) -> Any:
    try:
        return getattr(importlib.import_module(library), class_name)
    except (ImportError, AttributeError) as error:
        raise UsageError(
            f"model_index.json names {library}.{class_name}, which cannot be imported ({error})"
        ) from error


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"{path}: missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return data


def _weight_files(directory: Path) -> list[Path]:
    """The safetensors files a component loads: the shards its ``*.safetensors.index.json`` lists (all must
    exist), else its ``*.safetensors`` without a variant infix."""
    indexes = sorted(directory.glob("*.safetensors.index.json"))
    if indexes:
        weight_map = _read_json(indexes[0]).get("weight_map", {})
        shards = sorted({directory / name for name in weight_map.values()})
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise UsageError(f"{directory}: {indexes[0].name} lists missing shard(s) {missing}")
        return shards
    files = [path for path in sorted(directory.glob("*.safetensors")) if path.name.count(".") == 1]
    if not files:
        raise UsageError(f"{directory}: no safetensors weights (pisces reads safetensors folders)")
    return files


def _shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    from pisces_cli.io.weight_check import safetensors_shapes

    try:
        return safetensors_shapes(files)
    except Exception as error:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise UsageError(f"{files[0].parent}: unreadable safetensors header ({error})") from error


def _meta_model(cls: Any, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """(full config, name → shape) of ``cls`` built from ``config`` on the meta device."""
    import torch

    try:
        with torch.device("meta"):
            model = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    except Exception as error:  # noqa: BLE001 - a config the class cannot build is bad input
        raise UsageError(f"{cls.__name__}: cannot build from its config.json ({error})") from error
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    return dict(model.config), shapes


def _transformers_config(directory: Path) -> dict[str, Any]:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(directory, local_files_only=True).to_dict()
    except (OSError, ValueError) as error:
        raise UsageError(f"{directory}: cannot read config.json ({error})") from error
