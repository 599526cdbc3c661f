"""Where a recipe path points: a local file or folder, a Hugging Face hub id (cached or not), or nothing;
and whether an output folder can be written, with the free space under it."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: ``org/name`` as the Hugging Face hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: environment variables that make the Hugging Face libraries work offline (as huggingface_hub reads them).
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def offline_variable() -> str | None:
    """The first variable of :data:`OFFLINE_VARIABLES` set to a true value, or None when the hub is reachable."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return name
    return None


@dataclass(frozen=True)
class Location:
    """Where a model path points.

    Attributes:
        local: the local file or folder to read (the hub cache snapshot for a cached hub id), else None.
        hub_id: the spec when it is not a local path but reads as ``org/name``.
    """

    local: Path | None
    hub_id: str | None = None


def locate(spec: str) -> Location:
    """A local path when it exists; else, for an ``org/name`` spec, its snapshot in the local hub cache
    (looked up with ``local_files_only``: no network) or just the hub id when it is not cached."""
    path = Path(spec).expanduser()
    if path.exists():
        return Location(path)
    if not _HUB_ID.match(spec):
        return Location(None)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Location(Path(snapshot_download(spec, local_files_only=True)), spec)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return Location(None, spec)


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its closest existing ancestor."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable_problem(folder: str | Path) -> str | None:
    """Why files cannot be created in ``folder`` (or the folder created), else None.

    Probes by creating and removing a file in the folder or, when it does not exist yet, in its closest
    existing ancestor (permission bits do not tell the truth for root or on read-only mounts).
    """
    target = Path(folder).expanduser()
    base = nearest_existing(target)
    if not base.is_dir():
        within = f" (to write {target})" if base != target.absolute() else ""
        return f"{base} is a file, but pisces needs a folder there{within}"
    try:
        with tempfile.NamedTemporaryFile(dir=base, prefix=".pisces-preflight-"):
            pass
    except OSError as error:
        return f"cannot create files in {base} ({error.strerror or error})"
    return None


def free_bytes(folder: str | Path) -> int:
    """Free bytes on the file system that holds ``folder`` (or its closest existing ancestor)."""
    return shutil.disk_usage(nearest_existing(Path(folder))).free
