"""Stable SHA-256 fingerprints of model weights (files on disk or an in-memory state dict).

A directory's fingerprint hashes, for each weight file in sorted relative-path order, the
relative path (UTF-8) then the file bytes read in 8 MiB chunks. Results are cached in memory per
``(path, size, mtime_ns, inode)`` of every hashed file, so re-loading an unchanged 1B-parameter
checkpoint does not re-read it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from pisces_cli.errors import UsageError

__all__ = [
    "WEIGHT_SUFFIXES",
    "clear_cache",
    "hash_directory",
    "hash_state_dict",
    "hash_weight_files",
    "weight_files",
]

#: file name endings counted as weights when hashing a checkpoint directory.
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")

_CHUNK_BYTES = 8 * 1024 * 1024
_cache: dict[tuple[tuple[str, int, int, int], ...], str] = {}
_cache_lock = threading.Lock()


def weight_files(directory: str | Path) -> list[Path]:
    """Weight files under ``directory`` (recursive, hidden entries skipped), sorted by relative path.

    Raises:
        UsageError: ``directory`` is not a directory or holds no weight file.
    """
    root = Path(directory)
    if not root.is_dir():
        raise UsageError(f"{root}: expected a checkpoint directory")
    files = sorted(
        (
            p
            for p in root.rglob("*")
            if p.is_file()
            and p.name.endswith(WEIGHT_SUFFIXES)
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise UsageError(f"{root}: no weight file ({', '.join(WEIGHT_SUFFIXES)}) to fingerprint")
    return files


def hash_weight_files(files: Iterable[str | Path], root: str | Path | None = None) -> str:
    """SHA-256 hex digest over ``(relative name, bytes)`` of ``files`` in the given order.

    Each file contributes ``len(name)`` (8 bytes, little-endian), the UTF-8 name, then its bytes.

    Args:
        files: weight files; names are taken relative to ``root`` (else the bare file name).
        root: directory the names are relative to.
    """
    paths = [Path(f) for f in files]
    names = [p.relative_to(root).as_posix() if root is not None else p.name for p in paths]
    stats = [p.stat() for p in paths]
    key = tuple(
        (str(p.resolve()) + "|" + name, st.st_size, st.st_mtime_ns, st.st_ino)
        for p, name, st in zip(paths, names, stats, strict=True)
    )
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for path, name in zip(paths, names, strict=True):
        encoded = name.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK_BYTES):
                digest.update(chunk)
    result = digest.hexdigest()
    with _cache_lock:
        _cache[key] = result
    return result


def hash_directory(directory: str | Path) -> str:
    """SHA-256 fingerprint of the weight files of a checkpoint directory (cached)."""
    return hash_weight_files(weight_files(directory), root=directory)


def clear_cache() -> None:
    """Forget every cached directory hash (the next call re-reads the files)."""
    with _cache_lock:
        _cache.clear()


def hash_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 hex digest over sorted parameter names, dtypes, shapes and raw bytes.

    Per tensor: ``len(header)`` (8 bytes) + header ``"name|dtype|shape"`` + the raw bytes of a
    contiguous CPU copy.

    Tensors are hashed from a contiguous CPU copy, so the result does not depend on the device
    or memory layout; it does depend on dtype (a bf16 copy hashes differently from fp32).
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous().reshape(-1)
        header = f"{name}|{tensor.dtype}|{tuple(state_dict[name].shape)}".encode()
        digest.update(len(header).to_bytes(8, "little"))
        digest.update(header)
        if tensor.numel():
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
