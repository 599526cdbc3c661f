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
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli import __version__
from pisces_cli.atomic import atomic_write_json, atomic_write_safetensors, remove_stale_temps
from pisces_cli.errors import PiscesRuntimeError, UsageError

if TYPE_CHECKING:
    import torch

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
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{source}: the pisces header is not valid JSON ({exc})") from exc
        known = {f for f in cls.__dataclass_fields__}
        if not isinstance(raw, dict) or "schema" not in raw:
            raise UsageError(f"{source}: the pisces header has no 'schema'")
        return cls(**{k: v for k, v in raw.items() if k in known})


def save_artifact(path: str | Path, tensors: Mapping[str, torch.Tensor], header: ArtifactHeader) -> Path:
    """Write ``tensors`` (contiguous CPU copies are made) with ``header``, atomically. Returns the path."""
    path = Path(path)
    atomic_write_safetensors(path, tensors, {HEADER_KEY: header.to_json()})
    return path


def read_header(path: str | Path) -> ArtifactHeader:
    """Read only the header of an artifact (no tensor data is loaded)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such artifact file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception as exc:  # safetensors raises several error types for bad files
        raise UsageError(f"{path}: not a safetensors file ({exc})") from exc
    if HEADER_KEY not in meta:
        raise UsageError(f"{path}: safetensors file without a pisces header (not written by pisces?)")
    return ArtifactHeader.from_json(meta[HEADER_KEY], source=str(path))


def check_safetensors_file(path: str | Path, *, what: str = "") -> None:
    """Refuse a file that is not a complete safetensors file (truncated, damaged, another format), naming
    it (and ``what`` asked for it, e.g. ``--adapter``), before a library crashes on it. Reads the header only.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.metadata()
    except Exception as exc:  # safetensors raises several error types for bad files
        prefix = f"{what}: " if what else ""
        raise UsageError(
            f"{prefix}{path}: not a complete safetensors file (truncated or damaged?): {exc}"
        ) from exc


def tensor_shapes(path: str | Path) -> dict[str, tuple[list[int], str]]:
    """Name -> (shape, dtype) of every tensor in a safetensors file, without loading data."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
            sl = handle.get_slice(name)
            out[name] = (list(sl.get_shape()), str(sl.get_dtype()))
    return out


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
    "keys_first", "keys_last"}], "header": {...}}``. It is rewritten atomically after every shard,
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
            data = json.loads(self.manifest_path.read_text())
            if data.get("schema") != self.header.schema:
                raise UsageError(
                    f"{self.manifest_path}: holds a {data.get('schema')!r} artifact, not {self.header.schema!r}; "
                    "use another output folder"
                )
            old_hash = data.get("header", {}).get("recipe_fingerprint")
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
        self, index: int, tensors: Mapping[str, torch.Tensor], keys: list[str], **info: Any
    ) -> Path:
        """Write shard ``index`` (rows = len(keys)) and record it in the manifest."""
        header = ArtifactHeader(
            **{**asdict(self.header), "extra": {**self.header.extra, "shard_index": index}}
        )
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
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UsageError(f"{folder}: no {MANIFEST} (not a pisces sharded artifact folder?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from exc


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
        keys.extend(json.loads((folder / entry["keys_file"]).read_text()))
    merged = {name: torch.cat(chunks) for name, chunks in parts.items()}
    assert header is not None
    return merged, keys, header
