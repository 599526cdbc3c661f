"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder.

An interrupted write leaves at most a hidden ``.NAME.tmp-PID-HOST`` file, never a partial file under
the final name, so nothing half-written ever looks complete. Such leftovers are removed by
:func:`remove_stale_temps` once their writer is gone, never while another process (another rank of
the same ``torchrun`` job, say) is still writing them.

Every published file gets the mode a plain ``open(path, "w")`` would give it under the process umask
(``0644`` under umask ``022``, ``0640`` under ``027``), whatever its writer used for the temp file
(safetensors creates ``0600`` files). A failed write (a full disk, a quota, a read-only folder) raises
:class:`~pisces_cli.errors.PiscesRuntimeError` naming the file, removes the temp file and leaves the
previous complete file in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import PiscesRuntimeError, UsageError

if TYPE_CHECKING:
    import torch

TMP_MARK = ".tmp-"


#: Longest file name (bytes) most file systems accept.
NAME_MAX = 255

#: Age (seconds) after which a temp file written on another host counts as abandoned.
FOREIGN_TEMP_MAX_AGE_S = 24 * 3600.0


def _host_tag() -> str:
    """8 hex digits naming this host, so ranks on several nodes sharing a folder never collide."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temp_path_for(path: Path) -> Path:
    """The hidden temp file ``.NAME.tmp-PID-HOST`` next to ``path`` (HOST = :func:`_host_tag`).

    A name too long for the file system with the suffix (e.g. a VBench prompt name near 255 bytes) is cut
    and tagged with a hash of the whole name, so the temp file can always be created and stays unique.
    """
    suffix = f"{TMP_MARK}{os.getpid()}-{_host_tag()}"
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


def current_umask() -> int:
    """The process umask (read without changing it where ``/proc`` allows)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_default_mode(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (a file, or a folder and everything below it) the mode the umask gives new files
    (``0o666 & ~umask``) and folders (``0o777 & ~umask``); for writers that create ``0600`` files."""
    mask = current_umask()
    root = Path(path)
    if not root.is_dir():
        os.chmod(root, 0o666 & ~mask)
        return
    os.chmod(root, 0o777 & ~mask)
    for folder, subfolders, files in os.walk(root):
        for name in subfolders:
            os.chmod(Path(folder) / name, 0o777 & ~mask)
        for name in files:
            os.chmod(Path(folder) / name, 0o666 & ~mask)


def write_failure(path: str | os.PathLike[str], error: OSError) -> PiscesRuntimeError:
    """A readable error for a failed write of ``path`` (disk full, quota, permissions...)."""
    import errno

    reason = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
    }.get(error.errno or 0, error.strerror or str(error))
    return PiscesRuntimeError(f"cannot write {path}: {reason}; the previous version of the file is unchanged")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path to write to; on success it is fsynced, given the umask's mode and renamed onto
    ``path``. An ``OSError`` while writing becomes :func:`write_failure` (naming ``path``)."""
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failure(final, exc) from exc
    tmp = temp_path_for(final)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except OSError as exc:
        raise write_failure(final, exc) from exc
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, *, indent: int = 2, sort_keys: bool = False
) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str) + "\n")


def atomic_write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and publish its file atomically under ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)


@contextlib.contextmanager
def appending(path: str | os.PathLike[str]) -> Iterator[Callable[[str], None]]:
    """Yield ``write(text)``, which appends ``text`` (UTF-8) to ``path`` straight to the OS: nothing is left
    in a buffer to fail again at close, and an ``OSError`` (a full disk) names ``path``. A line cut short
    by a full disk is a torn last line, which the readers of append-only files skip."""
    with open(path, "ab", buffering=0) as handle:

        def write(text: str) -> None:
            view = memoryview(text.encode("utf-8"))
            try:
                while view:
                    view = view[handle.write(view) :]
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, os.fspath(path)) from exc

        yield write


def _safetensors_os_error(error: Exception, path: Path) -> OSError | None:
    """The ``OSError`` inside a safetensors serialisation error (it reports I/O failures, a full disk
    included, as its own exception type with ``(os error N)`` in the text), or ``None``."""
    import re

    match = re.search(r"\(os error (\d+)\)", str(error))
    if match is None:
        return None
    code = int(match.group(1))
    return OSError(code, os.strerror(code), os.fspath(path))


def atomic_write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` as a safetensors file (contiguous CPU copies are taken) with ``metadata``, atomically.

    Streams to the temp file (no in-memory copy of the serialised file), so large state dicts are fine.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    cpu: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise UsageError(
                f"{path}: tensors must map names (str) to torch tensors; {name!r} is a {type(tensor).__name__}"
            )
        copy = tensor.detach().to("cpu").contiguous()
        storage = copy.untyped_storage().data_ptr()
        if (
            copy.numel() and storage in storages
        ):  # views of one storage (x and x[:1]): safetensors refuses them
            copy = copy.clone()
        storages.add(copy.untyped_storage().data_ptr())
        cpu[name] = copy
    header = dict(metadata) if metadata is not None else None

    def write(tmp: Path) -> None:
        try:
            save_file(cpu, str(tmp), metadata=header)
        except SafetensorError as exc:  # a full disk: make it the OSError that names the file
            os_error = _safetensors_os_error(exc, tmp)
            if os_error is None:
                raise
            raise os_error from exc

    atomic_write_with(path, write)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _temp_is_abandoned(item: Path, host: str, now: float) -> bool:
    """Whether the temp file ``item`` belongs to no running writer.

    On this host (or with no host tag) the writer's PID decides; a file from another host sharing the
    folder is only taken as abandoned after :data:`FOREIGN_TEMP_MAX_AGE_S` without a change.
    """
    owner = item.name.rsplit(TMP_MARK, 1)[-1]
    pid_text, _, owner_host = owner.partition("-")
    if not pid_text.isdigit():
        return False  # not a name pisces made
    if owner_host and owner_host != host:
        try:
            return now - item.stat().st_mtime > FOREIGN_TEMP_MAX_AGE_S
        except OSError:
            return False
    pid = int(pid_text)
    return pid != os.getpid() and not _pid_alive(pid)


def remove_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Delete temp files (and staging folders named by :func:`temp_path_for`) of interrupted writes in
    ``folder``; return how many.

    Temps whose writer still runs (another rank or run writing into the same folder) are left alone.
    """
    removed = 0
    root = Path(folder)
    if not root.is_dir():
        return 0
    host, now = _host_tag(), time.time()
    for item in root.iterdir():
        if not (item.name.startswith(".") and TMP_MARK in item.name):
            continue
        if _temp_is_abandoned(item, host, now):
            with contextlib.suppress(OSError):
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item)
                else:
                    item.unlink()
                removed += 1
    return removed
