"""Self-describing safetensors artifacts.

Every file a stage writes is a safetensors file whose ``__metadata__`` holds one key, ``pisces``,
a JSON header:

.. code-block:: json

    {"schema": "pisces.embeddings", "schema_version": 1, "stage": "embed",
     "pisces_version": "0.1.0", "created_utc": "...", "recipe_hash": "...", "recipe": {...},
     "fingerprints": {"encoder": {"backend": "clip", "model": "...", "weights_sha256": "..."}},
     "tensors": {"text_cls": "[N, D] projected text embeddings, row i = keys[i]"},
     "metrics": {...}, "extra": {...}}

Large outputs are sharded as ``NAME-00000.safetensors``, ``NAME-00001.safetensors``, ... with a
``manifest.json`` listing completed shards; a re-run skips them (resume). Writes are atomic
(:mod:`pisces_cli.atomic`). Only safetensors and JSON are ever read: no pickle.

Headers and manifests are checked against their schema when read, types included (:func:`json_type_problems`
with :class:`ArtifactHeader`, the per-schema :data:`EXTRA_SCHEMAS` and :class:`ManifestSchema`): a file that
parses but holds a list where a mapping belongs, a string for a count, or a shard outside its folder is
refused with :class:`~pisces_cli.errors.UsageError` (exit 2) naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import types
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

from pisces_cli import __version__
from pisces_cli.atomic import atomic_write_json, atomic_write_safetensors, remove_stale_temps
from pisces_cli.config.schema import describe_value, type_name
from pisces_cli.errors import PiscesRuntimeError, UsageError

if TYPE_CHECKING:
    import torch

    from pisces_cli.safetensors_header import SafetensorsHeader

HEADER_KEY = "pisces"
MANIFEST = "manifest.json"


@dataclass
class ArtifactHeader:
    """The JSON header stored in every pisces artifact."""

    schema: str
    schema_version: int = 1
    stage: str = ""
    pisces_version: str = __version__
    created_utc: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    recipe_hash: str | None = None
    recipe: dict[str, Any] | None = None
    fingerprints: dict[str, dict[str, Any]] = field(default_factory=dict)
    tensors: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False, default=str)

    @classmethod
    def from_json(cls, text: str, *, source: str = "") -> ArtifactHeader:
        """Parse and type-check a header (the class's fields, and ``extra`` of known schemas).

        Raises:
            UsageError: not JSON, no ``schema``, or a field of the wrong type (the message names it).
        """
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise UsageError(f"{source}: the pisces header is not valid JSON ({exc})") from exc
        if not isinstance(raw, dict) or "schema" not in raw:
            raise UsageError(f"{source}: the pisces header has no 'schema'")
        problems = json_type_problems(raw, cls)
        extra_schema = EXTRA_SCHEMAS.get(raw["schema"]) if isinstance(raw["schema"], str) else None
        if not problems and extra_schema is not None:
            problems = json_type_problems(raw.get("extra", {}), extra_schema, "extra")
        if problems:
            raise UsageError(f"{source}: invalid pisces header: " + "; ".join(problems))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})


def json_type_problems(value: Any, tp: Any, path: str = "") -> list[str]:
    """``"field: expected T, got V"`` for every place where parsed JSON ``value`` does not have type ``tp``.

    ``tp``: ``str``, ``int`` (not bool), ``float`` (finite; ints accepted), ``bool``, ``Any``, optional values,
    ``list[...]``, ``dict[str, ...]`` or a dataclass (its fields without defaults are required; unknown keys are
    allowed, so newer files with more fields still read).
    """
    problems: list[str] = []
    where = path or "<root>"
    origin = get_origin(tp)
    if tp is Any:
        return problems
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return problems
        if any(not json_type_problems(value, arg, path) for arg in args if arg is not type(None)):
            return problems
        return [f"{where}: expected {type_name(tp)}, got {describe_value(value)}"]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping, got {describe_value(value)}"]
        hints = get_type_hints(tp)
        for spec in dataclasses.fields(tp):
            sub = f"{path}.{spec.name}" if path else spec.name
            if spec.name in value:
                problems += json_type_problems(value[spec.name], hints[spec.name], sub)
            elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                problems.append(f"{sub}: missing")
        return problems
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping, got {describe_value(value)}"]
        item_tp = get_args(tp)[1] if get_args(tp) else Any
        for key, item in value.items():
            problems += json_type_problems(item, item_tp, f"{path}.{key}" if path else str(key))
        return problems
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {describe_value(value)}"]
        item_tp = get_args(tp)[0] if get_args(tp) else Any
        for index, item in enumerate(value):
            problems += json_type_problems(item, item_tp, f"{path}[{index}]")
        return problems
    ok = {
        str: lambda v: isinstance(v, str),
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    }.get(tp)
    if ok is None:
        raise TypeError(f"json_type_problems: unsupported type {tp!r}")
    return [] if ok(value) else [f"{where}: expected {type_name(tp)}, got {describe_value(value)}"]


@dataclass
class OTMapConfig:
    """``extra.map`` of a ``pisces.ot_map`` header (:meth:`pisces_cli.ot.maps.TransportMap.config`)."""

    method: str
    normalization: str
    format_version: int | None = None
    ridge: float | None = None
    input_dim: int | None = None
    hidden_dim: int | None = None
    output_dim: int | None = None


@dataclass
class OTMapExtra:
    map: OTMapConfig


@dataclass
class EmbeddingsExtra:
    """``extra`` of a ``pisces.embeddings`` shard header (written by ``embed``)."""

    recipe_fingerprint: str | None = None
    num_frames: int | None = None
    embed_dim: int | None = None
    shard_index: int | None = None
    #: hash of the items the shard was made from (the manifest entry's ``items_sha256`` must equal it)
    items_sha256: str | None = None


#: Typed ``extra`` of the header of each schema whose readers use it.
EXTRA_SCHEMAS: dict[str, type] = {"pisces.ot_map": OTMapExtra, "pisces.embeddings": EmbeddingsExtra}


@dataclass
class ShardEntry:
    """One shard of a sharded artifact's ``manifest.json``."""

    file: str
    index: int
    rows: int
    keys_file: str | None = None
    #: hash of the items the shard was made from (``embed``), and its error rows
    items_sha256: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EmptyShardEntry:
    """A shard that finished without rows (every item failed): its index, items hash and error rows."""

    index: int
    items_sha256: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ManifestSchema:
    """``manifest.json`` of a sharded artifact (:class:`ShardedArtifactWriter`)."""

    schema: str
    shards: list[ShardEntry]
    name: str | None = None
    complete: bool = False
    header: dict[str, Any] = field(default_factory=dict)
    empty_shards: list[EmptyShardEntry] = field(default_factory=list)
    #: ``embed --limit``: finished shards of items beyond the limit, kept for a later run (not loaded)
    beyond_limit_shards: list[ShardEntry] = field(default_factory=list)
    beyond_limit_empty_shards: list[EmptyShardEntry] = field(default_factory=list)
    #: items the run listed and shards it planned (informational; written by ``embed`` and ``finalize``)
    num_items: int | None = None
    num_shards: int | None = None


def read_manifest_file(path: str | Path) -> dict[str, Any]:
    """A ``manifest.json`` (or a rank's ``manifest.rankN.json``), parsed and type-checked.

    Besides types, every shard's ``file``/``keys_file`` must be a plain name inside the folder, its
    ``index``/``rows`` non-negative, and no shard index or file may be listed twice (its rows would be
    loaded twice).

    Raises:
        UsageError: unreadable, not JSON, or not a manifest (names the file and the field).
    """
    from pisces_cli.textfile import read_text

    path = Path(path)
    try:
        data = json.loads(read_text(path))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from exc
    problems = json_type_problems(data, ManifestSchema)
    first_seen: dict[tuple[str, Any], str] = {}  # (field, value) -> where it was listed first

    def once(key: str, value: Any, where: str) -> None:
        if (key, value) in first_seen:
            problems.append(f"{where}.{key}: {value!r} is listed twice (also {first_seen[key, value]})")
        first_seen.setdefault((key, value), where)

    for kind in ("shards", "beyond_limit_shards"):
        for i, shard in enumerate(data.get(kind, []) if not problems else []):
            for key in ("file", "keys_file"):
                name = shard.get(key)
                if name is not None and (Path(name).name != name or name in ("", ".", "..")):
                    problems.append(f"{kind}[{i}].{key}: {name!r} is not a file name inside the folder")
                if name is not None:
                    once(key, name, f"{kind}[{i}]")
            for key in ("index", "rows"):
                if shard[key] < 0:
                    problems.append(f"{kind}[{i}].{key}: must be >= 0, got {shard[key]}")
            once("index", shard["index"], f"{kind}[{i}]")
    for kind in ("empty_shards", "beyond_limit_empty_shards"):
        for i, entry in enumerate(data.get(kind, []) if not problems else []):
            if entry["index"] < 0:
                problems.append(f"{kind}[{i}].index: must be >= 0, got {entry['index']}")
            once("index", entry["index"], f"{kind}[{i}]")
    if problems:
        raise UsageError(f"{path}: invalid manifest: " + "; ".join(problems))
    return data


def save_artifact(path: str | Path, tensors: Mapping[str, torch.Tensor], header: ArtifactHeader) -> Path:
    """Write ``tensors`` (contiguous CPU copies are made) with ``header``, atomically. Returns the path.

    The stored recipe gets absolute paths (:func:`pisces_cli.config.recipe.portable_data`), like every
    recipe pisces writes, so that it runs from any folder."""
    from pisces_cli.config.recipe import portable_data

    path = Path(path)
    if not isinstance(header, ArtifactHeader):
        raise UsageError(f"{path}: header must be a pisces_cli.ArtifactHeader, got {type(header).__name__}")
    metrics = {name: _metric_value(name, value, path) for name, value in header.metrics.items()}
    header = dataclasses.replace(header, metrics=metrics)
    if header.recipe is not None:
        header = dataclasses.replace(header, recipe=portable_data(header.recipe))
    atomic_write_safetensors(path, tensors, {HEADER_KEY: header.to_json()})
    return path


def _metric_value(name: str, value: Any, path: Path) -> Any:
    """A header metric as JSON: a one-element tensor or a NumPy scalar becomes its float (not its repr)."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (int, float)):
        try:
            return float(value.item())
        except (TypeError, ValueError, RuntimeError):
            raise UsageError(
                f"{path}: metric {name!r} must be a number, got a {type(value).__name__} of several values"
            ) from None
    return value


def safetensors_header_of(path: str | Path, what: str = "") -> SafetensorsHeader:
    """The parsed header of a safetensors file (plain Python, no torch), or UsageError naming the file."""
    from pisces_cli.safetensors_header import SafetensorsHeaderError, read_safetensors_header

    prefix = f"{what}: " if what else ""
    try:
        return read_safetensors_header(path)
    except SafetensorsHeaderError as exc:
        raise UsageError(
            f"{prefix}{path}: not a complete safetensors file (truncated or damaged?): {exc}"
        ) from exc
    except OSError as exc:
        raise UsageError(f"{prefix}{path}: cannot read ({exc.strerror or exc})") from exc


def read_header(path: str | Path) -> ArtifactHeader:
    """Read only the header of an artifact (no tensor data is loaded; no torch import)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such artifact file")
    meta = safetensors_header_of(path).metadata
    if HEADER_KEY not in meta:
        raise UsageError(f"{path}: safetensors file without a pisces header (not written by pisces?)")
    return ArtifactHeader.from_json(meta[HEADER_KEY], source=str(path))


def check_safetensors_file(path: str | Path, *, what: str = "") -> None:
    """Refuse a file that is not a complete safetensors file (truncated, damaged, another format), naming
    it (and ``what`` asked for it, e.g. ``--adapter``), before a library crashes on it. Reads the header only.
    """
    safetensors_header_of(path, what)


def tensor_shapes(path: str | Path) -> dict[str, tuple[list[int], str]]:
    """Name -> (shape, dtype) of every tensor in a safetensors file, without loading data (dtype as the file
    spells it: ``F32``, ``BF16``, ...)."""
    header = safetensors_header_of(path)
    return {name: (list(entry.shape), entry.dtype) for name, entry in header.tensors.items()}


def load_artifact(
    path: str | Path, *, expect_schema: str | None = None, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], ArtifactHeader]:
    """Load tensors + header; with ``expect_schema`` a different schema is refused (UsageError)."""
    from safetensors.torch import load_file

    header = read_header(path)
    if expect_schema is not None:
        check_schema(header, expect_schema, path)
    try:
        tensors = load_file(str(path), device=device)
    except Exception as exc:
        raise PiscesRuntimeError(f"{path}: cannot read tensors ({exc})") from exc
    return tensors, header


def check_schema(header: ArtifactHeader, expect_schema: str, path: str | Path, max_version: int = 1) -> None:
    if header.schema != expect_schema:
        raise UsageError(f"{path}: expected a {expect_schema!r} artifact, found {header.schema!r}")
    if header.schema_version > max_version:
        raise UsageError(
            f"{path}: {expect_schema} schema version {header.schema_version} is newer than this pisces "
            f"supports ({max_version}); upgrade pisces"
        )


def check_fingerprint(
    found: Mapping[str, Any] | None, expected: Mapping[str, Any], *, what: str, source: str
) -> None:
    """Refuse an artifact made with another model: compares every key of ``expected``.

    Raises UsageError (exit 2) naming the differing keys, e.g. embeddings of another encoder than
    the OT map was fit on.
    """
    if not found:
        raise UsageError(f"{source}: has no {what} fingerprint; cannot check it matches {dict(expected)}")
    diffs = [
        f"{key}: artifact has {found.get(key)!r}, current is {value!r}"
        for key, value in expected.items()
        if found.get(key) != value
    ]
    if diffs:
        raise UsageError(f"{source}: made with a different {what} — " + "; ".join(diffs))


# --------------------------------------------------------------------------------------------- shards


def shard_name(name: str, index: int) -> str:
    return f"{name}-{index:05d}.safetensors"


class ShardedArtifactWriter:
    """Write a large artifact as numbered shards plus ``manifest.json``; resumable.

    ``manifest.json`` = ``{"schema", "name", "complete", "shards": [{"file", "index", "rows",
    "keys_file", ...}], "empty_shards": [...], "header": {...}}`` (:class:`ManifestSchema`; a writer may add
    fields to an entry, e.g. ``embed``'s ``items_sha256`` and ``errors``). It is rewritten atomically after every shard,
    so after an interruption the shards it lists are complete and are skipped on resume.
    """

    def __init__(
        self, folder: str | Path, name: str, header: ArtifactHeader, manifest_name: str = MANIFEST
    ) -> None:
        self.folder = Path(folder)
        self.name = name
        self.header = header
        self.manifest_path = self.folder / manifest_name
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.folder)
        self.manifest = self._load_or_start()

    def _load_or_start(self) -> dict[str, Any]:
        if self.manifest_path.is_file():
            data = read_manifest_file(self.manifest_path)
            if data.get("schema") != self.header.schema:
                raise UsageError(
                    f"{self.manifest_path}: holds a {data.get('schema')!r} artifact, not {self.header.schema!r}; "
                    "use another output folder"
                )
            old_hash = (data.get("header", {}).get("extra") or {}).get("recipe_fingerprint")
            new_hash = self.header.extra.get("recipe_fingerprint")
            if old_hash and new_hash and old_hash != new_hash:
                raise UsageError(
                    f"{self.manifest_path}: was written with different settings (model or data); "
                    "delete the folder or choose another output to start over"
                )
            # keep only shards whose files still exist
            data["shards"] = [s for s in data.get("shards", []) if (self.folder / s["file"]).is_file()]
            return data
        return {
            "schema": self.header.schema,
            "name": self.name,
            "complete": False,
            "shards": [],
            "header": {},
        }

    def done_indices(self) -> set[int]:
        return {int(s["index"]) for s in self.manifest["shards"]}

    def write_shard(
        self,
        index: int,
        tensors: Mapping[str, torch.Tensor],
        keys: list[str],
        *,
        header_extra: Mapping[str, Any] | None = None,
        **info: Any,
    ) -> Path:
        """Write shard ``index`` (rows = len(keys)) and record it in the manifest (``info``: fields of its
        manifest entry; ``header_extra``: fields of the shard file's own header ``extra``)."""
        extra = {**self.header.extra, "shard_index": index, **(header_extra or {})}
        header = ArtifactHeader(**{**asdict(self.header), "extra": extra})
        path = save_artifact(self.folder / shard_name(self.name, index), tensors, header)
        keys_path = self.folder / f"{self.name}-{index:05d}.keys.json"
        atomic_write_json(keys_path, keys, indent=0)
        entry = {"file": path.name, "keys_file": keys_path.name, "index": index, "rows": len(keys), **info}
        self.manifest["shards"] = sorted(
            [s for s in self.manifest["shards"] if int(s["index"]) != index] + [entry],
            key=lambda s: int(s["index"]),
        )
        self._save_manifest()
        return path

    def record_empty_shard(self, index: int, **info: Any) -> None:
        """Record shard ``index`` as finished without rows (every item failed) under ``empty_shards``."""
        entry = {"index": index, **info}
        self.manifest["empty_shards"] = sorted(
            [e for e in self.manifest.get("empty_shards", []) if int(e["index"]) != index] + [entry],
            key=lambda e: int(e["index"]),
        )
        self._save_manifest()

    def finalize(self, **extra: Any) -> dict[str, Any]:
        self.manifest["complete"] = True
        self.manifest.update(extra)
        self._save_manifest()
        return self.manifest

    def _save_manifest(self) -> None:
        header = json.loads(self.header.to_json())
        header.pop("recipe", None)
        self.manifest["header"] = header
        atomic_write_json(self.manifest_path, self.manifest)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The type-checked ``manifest.json`` of a sharded artifact folder (:func:`read_manifest_file`)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UsageError(f"{folder}: no {MANIFEST} (not a pisces sharded artifact folder?)")
    return read_manifest_file(path)


def read_shard_keys(folder: str | Path, entry: Mapping[str, Any]) -> list[str]:
    """The row keys of one manifest shard entry: a JSON list of ``rows`` strings (UsageError otherwise)."""
    if not isinstance(entry.get("keys_file"), str):
        raise UsageError(f"{Path(folder) / MANIFEST}: shard {entry.get('index')} names no keys_file")
    path = Path(folder) / entry["keys_file"]
    try:
        keys = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read the shard's row keys ({exc})") from exc
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(keys) != entry["rows"]:
        raise UsageError(f"{path}: expected a JSON list of {entry['rows']} row keys (strings)")
    return keys


def load_sharded(
    folder: str | Path,
    *,
    expect_schema: str,
    names: Iterable[str] | None = None,
    require_complete: bool = True,
) -> tuple[dict[str, torch.Tensor], list[str], ArtifactHeader]:
    """Concatenate the shards of a sharded artifact: (tensors, row keys, header of the first shard)."""
    import torch

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.get("schema") != expect_schema:
        raise UsageError(f"{folder}: expected a {expect_schema!r} artifact, found {manifest.get('schema')!r}")
    if require_complete and not manifest.get("complete"):
        raise UsageError(
            f"{folder}: the artifact is incomplete (an interrupted run?); re-run the stage to resume it"
        )
    if not manifest.get("shards"):
        raise UsageError(f"{folder}: the artifact has no shards")
    parts: dict[str, list[torch.Tensor]] = {}
    keys: list[str] = []
    header: ArtifactHeader | None = None
    for entry in manifest["shards"]:
        tensors, shard_header = load_artifact(folder / entry["file"], expect_schema=expect_schema)
        header = header or shard_header
        for name, tensor in tensors.items():
            if names is None or name in names:
                parts.setdefault(name, []).append(tensor)
        keys.extend(read_shard_keys(folder, entry))
    merged = {name: torch.cat(chunks) for name, chunks in parts.items()}
    assert header is not None
    return merged, keys, header
