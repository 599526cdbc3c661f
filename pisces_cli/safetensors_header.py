"""Read a safetensors file's header (tensor names, dtypes, shapes and metadata) in plain Python.

The format: 8 bytes little-endian ``N``, then ``N`` bytes of JSON — one entry per tensor,
``{"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}``, plus an optional ``__metadata__`` object of
strings — then the tensor data, whose offsets count from the end of the header. Reading it here needs neither
torch nor numpy (the safetensors library imports torch to open a file with ``framework="pt"``), so headers are
read in milliseconds by commands that must stay light: ``inspect``, the stage preflight, no-op re-runs.

A file whose header is not what the format says, or whose data does not end exactly where the header says it
does (a truncated or padded file), is refused with :class:`SafetensorsHeaderError` giving the reason.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SafetensorsHeader", "SafetensorsHeaderError", "TensorEntry", "read_safetensors_header"]

#: a header larger than this is refused (the safetensors library caps it at 100 MB too).
MAX_HEADER_BYTES = 100_000_000

#: bytes per element of each safetensors dtype.
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip

#: ``struct`` codes of the dtypes :meth:`SafetensorsHeader.read_values` decodes.
_STRUCT_CODES = {"I64": "q", "I32": "i", "I16": "h", "I8": "b", "U8": "B", "U16": "H", "U32": "I",
                 "U64": "Q", "F64": "d", "F32": "f", "F16": "e", "BOOL": "?"}  # fmt: skip


class SafetensorsHeaderError(ValueError):
    """The file is not a complete safetensors file; the message says why."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the header: dtype name (``F32``, ``BF16``, ...), shape and byte range in the data."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed header: tensors by name, the ``__metadata__`` strings and where the data starts (bytes)."""

    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int

    def read_values(self, name: str) -> list[float | int | bool]:
        """The values of a small tensor ``name``, flattened (for a few numbers such as a map's ``dims``)."""
        entry = self.tensors[name]
        code = _STRUCT_CODES.get(entry.dtype)
        if code is None:
            raise SafetensorsHeaderError(f"tensor {name!r}: cannot decode dtype {entry.dtype} here")
        with open(self.path, "rb") as handle:
            handle.seek(self.data_start + entry.begin)
            raw = handle.read(entry.end - entry.begin)
        count = len(raw) // DTYPE_BYTES[entry.dtype]
        return list(struct.unpack(f"<{count}{code}", raw))


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and check the header of the safetensors file ``path`` (no tensor data is read).

    Raises:
        SafetensorsHeaderError: the path is not a regular file, the file is too short, its header is not a JSON object of well-formed entries,
            a tensor's byte range does not match its dtype and shape, or the data does not fill the file exactly.
        OSError: the file cannot be opened.
    """
    path = Path(path)
    status = path.stat()
    if not stat.S_ISREG(status.st_mode):  # a FIFO would block the read below for ever
        raise SafetensorsHeaderError("not a regular file (a folder, a pipe or a device)")
    size = status.st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise SafetensorsHeaderError(f"{size} bytes: too short for a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise SafetensorsHeaderError(f"the header claims {length} bytes but the file has {size}")
        raw = handle.read(length)
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SafetensorsHeaderError(f"the header is not JSON ({error})") from error
    except RecursionError as error:
        raise SafetensorsHeaderError("the header's JSON is nested too deeply") from error
    if not isinstance(parsed, dict):
        raise SafetensorsHeaderError("the header is not a JSON object")
    metadata = parsed.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsHeaderError("__metadata__ is not an object of strings")
    tensors = {name: _entry(name, value) for name, value in parsed.items()}
    data_bytes = size - 8 - length
    end = max((t.end for t in tensors.values()), default=0)
    if end != data_bytes:
        raise SafetensorsHeaderError(
            f"the header describes {end} bytes of tensor data but the file holds {data_bytes} (truncated?)"
        )
    return SafetensorsHeader(path, tensors, dict(metadata), 8 + length)


def _entry(name: str, value: object) -> TensorEntry:
    if not isinstance(value, dict):
        raise SafetensorsHeaderError(f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise SafetensorsHeaderError(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise SafetensorsHeaderError(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise SafetensorsHeaderError(f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end]")
    elements = 1
    for size in shape:
        elements *= size
    if offsets[1] - offsets[0] != elements * DTYPE_BYTES[dtype]:
        raise SafetensorsHeaderError(
            f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for {dtype} of shape {shape}"
        )
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])
