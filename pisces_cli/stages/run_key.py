"""Run keys: everything that changes a number ``score`` / ``eval`` / ``embed`` write, so state is reused
only under the same settings.

A *run key* is a nested JSON object of the settings shared by every row of an output folder:

- ``encoder``: backend, dtype, loader options and a hash of the checkpoint's files below 64 MiB
  (config, tokenizer, preprocessor config) — cheap, read before any model is loaded;
- ``encoder_model``: what only the loaded encoder knows — its fingerprint (weights hash), its
  preprocessing (input size, mean, std, interpolation) and the resolved frame count;
- ``frames``: the requested frame count, fps, sampling rule, crop mode (and seed for a random crop);
- stage parts (``ot_map`` content hash, ``token_ot``, ``weights``, ``metrics``, ``data``, ...).

Everything but ``encoder_model`` is computed from the recipe and small files. ``encoder_model`` is
recorded with a *file signature* of the checkpoint (path, size and mtime of every file): while the
signature is unchanged the recorded ``encoder_model`` is trusted without loading the model, so a
re-run with nothing to do, or with changed settings, answers before any heavy work.

A *per-video key* is the prompt text plus the video file's size and mtime (a tar member's size and
its shard's mtime): a row whose per-video key changed is recomputed.

:func:`~pisces_cli.config.diff.refuse_changed` raises :class:`~pisces_cli.errors.UsageError` (exit 2) naming every changed
field (old → new) and the ways out.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.config.diff import changed_fields, refuse_changed
from pisces_cli.errors import UsageError

if TYPE_CHECKING:
    from pisces_cli.config import Recipe
    from pisces_cli.encoders.base import EncoderBackend
    from pisces_cli.io.prompts import VideoItem

SETTINGS_FILE = "settings.json"
#: files above this size are never read whole for the cheap encoder hash (they are weights)
_SMALL_FILE_BYTES = 64 << 20
_CHUNK = 1 << 20


# ----------------------------------------------------------------------------------------- per video


def video_identity(item: VideoItem) -> dict[str, int] | None:
    """``{"file_size", "file_mtime_ns"}`` of ``item``'s bytes (tar member: its size, the shard's mtime).

    None when the file cannot be read (such an item fails anyway and is retried every run).
    """
    try:
        if item.member is not None:
            return {"file_size": item.member.size, "file_mtime_ns": os.stat(item.member.shard).st_mtime_ns}
        stat = os.stat(item.source)
    except OSError:
        return None
    return {"file_size": stat.st_size, "file_mtime_ns": stat.st_mtime_ns}


#: the file fields of a per-video key (:func:`video_identity`)
IDENTITY_FIELDS = ("file_size", "file_mtime_ns")


def row_matches(row: Mapping[str, Any], item: VideoItem, identity: Mapping[str, int] | None) -> bool:
    """Whether ``row`` was made from this very prompt and file (the per-video key)."""
    if identity is None or row.get("prompt") != item.prompt:
        return False
    return all(row.get(name) == value for name, value in identity.items())


def same_video_key(record: Mapping[str, Any], prompt: str | None, identity: Mapping[str, int] | None) -> bool:
    """Whether ``record`` carries exactly this per-video key: ``prompt`` and the file fields of ``identity``
    (``None``: a file that could not be read, whose rows carry no file fields)."""
    if record.get("prompt") != prompt:
        return False
    return all(record.get(name) == (identity or {}).get(name) for name in IDENTITY_FIELDS)


def has_identity(record: Mapping[str, Any]) -> bool:
    """Whether ``record`` was made from a readable file (it carries the file fields of its per-video key)."""
    return all(record.get(name) is not None for name in IDENTITY_FIELDS)


# ------------------------------------------------------------------------------------------- hashes


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files_under(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
    elif path.is_dir():
        found = (p for p in path.rglob("*") if p.is_file())
        yield from sorted(found, key=lambda p: p.relative_to(path).as_posix())


def _encoder_paths(recipe: Recipe) -> list[Path]:
    section = recipe.models.encoder
    return [Path(p) for p in (section.path, section.tokenizer) if p]


def encoder_file_signature(recipe: Recipe) -> str | None:
    """Hash of (name, size, mtime) of every file of the encoder checkpoint and tokenizer (no file is read).

    None when a path is not a local file or folder (a hub id): the encoder must then be loaded to know
    what it is.
    """
    paths = _encoder_paths(recipe)
    if not paths or not all(p.exists() for p in paths):
        return None
    return files_signature(paths)


def files_signature(paths: list[Path]) -> str:
    """Hash of (name, size, mtime) of every file at or under ``paths`` (no file is read): it changes when a
    file is added, removed or rewritten."""
    digest = hashlib.sha256()
    for root in paths:
        digest.update(str(root.resolve()).encode())
        for path in _files_under(root):
            stat = path.stat()
            digest.update(f"{path.as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def encoder_config_hash(recipe: Recipe) -> str | None:
    """Hash of the contents of the encoder's files below 64 MiB (config, tokenizer, preprocessor config;
    small weight files too).

    Larger files (weights) are covered by the loaded encoder's fingerprint. None for a hub id.
    """
    paths = _encoder_paths(recipe)
    if not paths or not all(p.exists() for p in paths):
        return None
    digest = hashlib.sha256()
    for root in paths:
        for path in _files_under(root):
            if path.stat().st_size > _SMALL_FILE_BYTES:
                continue
            name = path.relative_to(root).as_posix() if root.is_dir() else path.name
            digest.update(f"{name}\n".encode())
            digest.update(sha256_file(path).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- parts


def encoder_part(recipe: Recipe) -> dict[str, Any]:
    """The cheap encoder fields: backend, dtype, loader options, non-weight file contents (and
    ``allow_tf32: true`` when ``runtime.allow_tf32`` is on)."""
    section = recipe.models.encoder
    part = {
        "backend": section.backend,
        "dtype": section.dtype,
        "options": dict(sorted(section.options.items())),
        "config_sha256": encoder_config_hash(recipe),
    }
    if recipe.runtime.allow_tf32:  # TF32 matmuls/convolutions round like a 10-bit mantissa on CUDA
        part["allow_tf32"] = True  # (absent when off: keys written before it was recorded stay valid)
    return part


def encoder_model_part(encoder: EncoderBackend, num_frames: int) -> dict[str, Any]:
    """What the loaded encoder contributes: its fingerprint, preprocessing and the resolved frame count."""
    prep = encoder.preprocessing
    fingerprint = encoder.fingerprint()
    return {
        "model": fingerprint.get("model"),
        "weights_sha256": fingerprint.get("weights_sha256"),
        "num_frames": num_frames,
        "size": prep.size,
        "mean": [float(v) for v in prep.mean],
        "std": [float(v) for v in prep.std],
        "interpolation": prep.interpolation,
    }


def frames_part(recipe: Recipe, *, crop: str, sampling: str = "uniform") -> dict[str, Any]:
    """Frame choice: the requested count (before the encoder's default), fps, sampling rule, crop."""
    part: dict[str, Any] = {
        "requested": recipe.data.num_frames or recipe.models.encoder.num_frames,
        "fps": recipe.data.fps,
        "sampling": sampling,
        "crop": crop,
    }
    if crop == "random":
        part["seed"] = recipe.seed
    return part


def reward_parts(recipe: Recipe, ot_map_path: str | None) -> dict[str, Any]:
    """The reward's settings: the OT map's content hash (not its path), token OT and the weights.

    Raises:
        UsageError: the OT map file does not exist.
    """
    from dataclasses import asdict

    path = ot_map_path if ot_map_path is not None else recipe.reward.ot_map
    ot_map = None
    if path:
        if not Path(path).is_file():
            raise UsageError(
                f"reward.ot_map: {path} does not exist (run `pisces fit-ot` or set reward.ot_map=null)"
            )
        ot_map = {"sha256": sha256_file(path)}
    token_ot = recipe.reward.token_ot
    return {
        "ot_map": ot_map,
        "token_ot": asdict(token_ot) if token_ot.enabled else None,
        "weights": {"quality": recipe.reward.weights.quality, "semantic": recipe.reward.weights.semantic},
    }


# ------------------------------------------------------------------------------------------- compare


def refuse_unkeyed(where: str, *, rows: str, ways_out: str) -> None:
    """Raise UsageError for state written without a run key (an earlier pisces, or a damaged folder)."""
    raise UsageError(
        f"{where} holds {rows} without a recorded run key (written by an earlier pisces, or its "
        f"{SETTINGS_FILE} is missing or damaged), so they cannot be matched to these settings.\n{ways_out}"
    )


def folder_ways_out(flag_hint: str = "--force") -> str:
    """The standard "two ways out" sentence of ``score`` / ``eval``."""
    return (
        f"Pass {flag_hint} to recompute everything into this folder, or choose another folder "
        "with --output DIR."
    )


# --------------------------------------------------------------------------------------------- files


def read_settings(folder: Path) -> dict[str, Any] | None:
    """``folder/settings.json`` as a dict, or None when absent or unreadable."""
    try:
        data = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


#: the rows file of each stage that keeps a ``settings.json`` (how a folder whose ``settings.json`` is gone is told apart)
STAGE_ROWS = {"pisces.score.settings": "scores", "pisces.eval.settings": "videos"}


def refuse_other_stage(folder: Path, settings: Mapping[str, Any] | None, schema: str) -> None:
    """Refuse (exit 2) a folder holding another stage's output (``score`` and ``eval`` write files of the same
    names there: ``settings.json``, ``failed.jsonl``), even with ``--force``: its ``settings.json`` records
    another pisces schema, or, that file gone, the folder holds the other stage's rows (``NAME.jsonl`` or
    rank files).

    Raises:
        UsageError: the folder is another stage's output.
    """
    other = settings.get("schema") if settings else None
    if isinstance(other, str) and other.startswith("pisces."):
        found = f"{SETTINGS_FILE}: schema {other!r}"
    else:
        rows = [(name, stem) for name, stem in STAGE_ROWS.items() if name != schema
                and ((folder / f"{stem}.jsonl").is_file() or any(folder.glob(f"{stem}.rank*.jsonl")))]  # fmt: skip
        if not rows:
            return
        other, stem = rows[0]
        found = f"its {stem}.jsonl"
    if other == schema:
        return
    stage = other.split(".")[1] if other.count(".") >= 2 else other
    raise UsageError(
        f"{folder} holds the output of `pisces {stage}` ({found}); `pisces score` "
        f"and `pisces eval` keep files of the same names, so they cannot share a folder (not even with "
        "--force). Choose another folder with --output DIR."
    )


def stored_model_part(settings: Mapping[str, Any] | None, signature: str | None) -> dict[str, Any] | None:
    """The recorded ``encoder_model`` part when the checkpoint's file signature is unchanged, else None."""
    if not settings or signature is None or settings.get("encoder_files") != signature:
        return None
    key = settings.get("run_key")
    model = key.get("encoder_model") if isinstance(key, Mapping) else None
    return dict(model) if isinstance(model, Mapping) else None


def without(key: Mapping[str, Any], *names: str) -> dict[str, Any]:
    """A copy of ``key`` without the top-level ``names`` (e.g. the model part before loading)."""
    return {k: v for k, v in key.items() if k not in names}


MODEL_PART = "encoder_model"


def refuse_other_key(
    where: Path,
    settings: Mapping[str, Any] | None,
    key: Mapping[str, Any],
    *,
    schema: str,
    rows: str,
    ways_out: str,
    model_part: Mapping[str, Any] | None = None,
) -> None:
    """Refuse (exit 2) when the rows in ``where`` were made under another run key.

    Without ``model_part`` every field but the loaded-model part is compared (before loading anything);
    with it, only the model part (after loading; skipped when none was recorded, i.e. no row needed the
    model).
    """
    stored = settings.get("run_key") if settings and settings.get("schema") == schema else None
    if not isinstance(stored, Mapping):
        refuse_unkeyed(str(where), rows=rows, ways_out=ways_out)
        return
    if model_part is None:
        old, new = without(stored, MODEL_PART), without(key, MODEL_PART)
    else:
        if stored.get(MODEL_PART) is None:
            return
        old, new = {MODEL_PART: stored[MODEL_PART]}, {MODEL_PART: dict(model_part)}
    refuse_changed(str(where), changed_fields(old, new), rows=rows, ways_out=ways_out)
