"""The sizes an mp4/mov file declares, read from its boxes without a decoder.

Decoders allocate for what the container declares before decoding anything: decord aborts the whole
process with ``std::bad_alloc`` on a clip whose ``stts`` box claims 2^31 frames. :func:`read_mp4_header`
reads only the ``moov`` box (a few kB for a short clip; no frame is decoded, unlike ``av.open``, which
decodes frames to fill in stream facts) and returns the first video track's declared frame count,
sample-table duration, track duration and frame size, so :mod:`pisces_cli.io.video` can refuse absurd
values first.

ISO base media file format (ISO/IEC 14496-12) boxes read: ``moov`` → ``trak`` → ``tkhd`` (frame size),
``mdia`` → ``hdlr`` (``vide``), ``mdhd`` (timescale, duration), ``minf`` → ``stbl`` → ``stts`` (sample counts
and durations) and ``stsd`` (the visual sample entry's width and height). Anything unexpected (another
container, a truncated or malformed box) gives ``None``: the decoders then say what is wrong.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["Mp4Header", "read_mp4_header"]

#: Top-level box types an ISO media file may start with.
_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"}
#: Largest ``moov`` box read (long videos hold big sample tables; beyond this the check is skipped).
MAX_MOOV_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Mp4Header:
    """What the first video track declares.

    Attributes:
        frames: sum of the ``stts`` sample counts.
        table_duration_s: sum of count × delta of ``stts``, in seconds (``mdhd`` timescale).
        track_duration_s: ``mdhd`` duration in seconds (0 when not given).
        width, height: the largest of the ``tkhd`` and sample-entry sizes, in pixels.
    """

    frames: int
    table_duration_s: float
    track_duration_s: float
    width: int
    height: int


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    """``(type, payload_start, payload_end)`` of the boxes in ``data[start:end]``; stops at a bad size."""
    end = len(data) if end is None else end
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            if at + 16 > end:
                return
            (size,) = struct.unpack_from(">Q", data, at + 8)
            header = 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            return
        yield kind, at + header, at + size
        at += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    return next(((s, e) for k, s, e in _boxes(data, start, end) if k == kind), None)


def _video_track(data: bytes, start: int, end: int) -> Mp4Header | None:
    mdia = _child(data, start, end, b"mdia")
    if mdia is None:
        return None
    hdlr = _child(data, *mdia, b"hdlr")
    if hdlr is None or data[hdlr[0] + 8 : hdlr[0] + 12] != b"vide":
        return None
    mdhd = _child(data, *mdia, b"mdhd")
    if mdhd is None:
        return None
    if data[mdhd[0]] == 1:
        timescale, duration = struct.unpack_from(">IQ", data, mdhd[0] + 20)
    else:
        timescale, duration = struct.unpack_from(">II", data, mdhd[0] + 12)
    stbl = None
    minf = _child(data, *mdia, b"minf")
    if minf is not None:
        stbl = _child(data, *minf, b"stbl")
    if stbl is None or timescale == 0:
        return None
    stts = _child(data, *stbl, b"stts")
    if stts is None:
        return None
    (count,) = struct.unpack_from(">I", data, stts[0] + 4)
    entries = min(count, (stts[1] - stts[0] - 8) // 8)  # a count past the box's end is cut to what is there
    frames, ticks = 0, 0
    for index in range(entries):
        samples, delta = struct.unpack_from(">II", data, stts[0] + 8 + 8 * index)
        frames += samples
        ticks += samples * delta
    width = height = 0
    tkhd = _child(data, start, end, b"tkhd")
    if tkhd is not None:
        offset = tkhd[0] + (88 if data[tkhd[0]] == 1 else 76)
        if offset + 8 <= tkhd[1]:
            w, h = struct.unpack_from(">II", data, offset)
            width, height = w >> 16, h >> 16
    stsd = _child(data, *stbl, b"stsd")
    if stsd is not None and stsd[0] + 8 + 36 <= stsd[1]:
        w, h = struct.unpack_from(">HH", data, stsd[0] + 8 + 32)
        width, height = max(width, w), max(height, h)
    return Mp4Header(frames, ticks / timescale, duration / timescale, width, height)


def _read_moov(handle: BinaryIO, total: int) -> bytes | None:
    first = handle.read(8)
    if len(first) < 8 or first[4:8] not in _FIRST_BOXES:
        return None
    at = 0
    while at + 8 <= total:
        handle.seek(at)
        head = handle.read(16)
        if len(head) < 8:
            return None
        size, kind = struct.unpack_from(">I4s", head)
        header = 8
        if size == 1 and len(head) >= 16:
            (size,) = struct.unpack_from(">Q", head, 8)
            header = 16
        elif size == 0:
            size = total - at
        if size < header:
            return None
        if kind == b"moov":
            if size > MAX_MOOV_BYTES:
                return None
            handle.seek(at + header)
            return handle.read(size - header)
        at += size
    return None


def read_mp4_header(source: str | os.PathLike[str] | bytes) -> Mp4Header | None:
    """The first video track's declared sizes of an mp4/mov file or its bytes; ``None`` when the input is
    not an ISO media file, has no video track, or its boxes cannot be read (never raises)."""
    try:
        if isinstance(source, bytes):
            moov = _read_moov(io.BytesIO(source), len(source))
        else:
            with open(source, "rb") as handle:
                moov = _read_moov(handle, os.fstat(handle.fileno()).st_size)
        if moov is None:
            return None
        for kind, start, end in _boxes(moov):
            if kind == b"trak":
                track = _video_track(moov, start, end)
                if track is not None:
                    return track
    except (OSError, struct.error, IndexError, ValueError):
        return None
    return None
