"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder.

An interrupted write leaves at most a hidden ``.NAME.tmp-PID`` file, never a partial file under
the final name, so nothing half-written ever looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


#: Longest file name (bytes) most file systems accept.
NAME_MAX = 255


def temp_path_for(path: Path) -> Path:
    """The hidden temp file ``.NAME.tmp-PID`` next to ``path``.

    A name too long for the file system with the suffix (e.g. a VBench prompt name near 255 bytes) is cut
    and tagged with a hash of the whole name, so the temp file can always be created and stays unique.
    """
    suffix = f"{TMP_MARK}{os.getpid()}"
    name = f".{path.name}"
    if len(f"{name}{suffix}".encode()) > NAME_MAX:
        tag = "~" + hashlib.sha1(path.name.encode()).hexdigest()[:10]
        budget = NAME_MAX - len(f"{tag}{suffix}".encode())
        name = name.encode()[:budget].decode("utf-8", errors="ignore") + tag
    return path.with_name(f"{name}{suffix}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path to write to; on success it is fsynced and renamed onto ``path``."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(final)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


def atomic_write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and publish its file atomically under ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)


def remove_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Delete leftover temp files of interrupted writes in ``folder``; return how many."""
    removed = 0
    root = Path(folder)
    if not root.is_dir():
        return 0
    for item in root.iterdir():
        if item.name.startswith(".") and TMP_MARK in item.name and item.is_file():
            with contextlib.suppress(OSError):
                item.unlink()
                removed += 1
    return removed
