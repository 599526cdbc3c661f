"""Video decoding (decord first, PyAV fallback) and frame-index sampling rules.

Decoding
--------
:func:`probe` and :func:`read_frames` accept a path or the raw bytes of a video
(e.g. a WebDataset tar member). With ``decoder="auto"`` they try decord and fall
back to PyAV when decord is not importable *or* fails on the given input. Both
decoders detect the container by content (FFmpeg probing), so the file extension
does not matter: an mp4 named ``.mov`` decodes, a text file named ``.mp4`` does not.

decord 0.6.0 mis-reshapes frames whose RGB row length is not aligned (e.g. widths
16, 48, 72 px: it returns 4 or 6 "channels" or raises a size check); its output is
therefore validated against ``[H, W, 3]`` and a mismatch counts as a decord failure.
decord cannot read GIFs; those always go through PyAV.

Every failure (missing, zero-byte, corrupt, truncated, zero-frame, unreadable
input, index out of range) raises :class:`VideoDecodeError`, whose message is one readable
sentence naming the file and the reason; its ``detail`` keeps what every decoder tried said.
No decoder error escapes as another type.

Before any decoder runs, an mp4/mov's declared sizes are read from its boxes (no decoding) and
capped: a header that declares more than :data:`MAX_DECLARED_FRAMES` frames, frames lasting far
longer than its track, or a side longer than :data:`MAX_FRAME_SIDE` pixels is refused, because
decoders allocate for what the header declares (decord aborts the process with ``std::bad_alloc``
on a clip whose ``stts`` box claims 2^31 frames). A decoder that still crashes or hangs is
contained by :mod:`pisces_cli.io.dataset`, which decodes in child processes.
A truncated file fails as soon as its index is lost (an mp4 cut before its trailing
``moov`` atom) or a requested frame lies in the missing part; decoding stops after the
last requested frame, so damage beyond it is not noticed.

Frame sampling
--------------
:func:`uniform_indices`, :func:`fps_indices` and :func:`vbench_middle_indices`
return plain ``list[int]`` indices into ``[0, num_frames)``; their docstrings give
the exact rule.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

import numpy as np

from pisces_cli.errors import PiscesRuntimeError, UsageError

__all__ = [
    "DECODERS",
    "MAX_DECLARED_FRAMES",
    "MAX_FRAME_SIDE",
    "VideoDecodeError",
    "VideoInfo",
    "VideoSource",
    "available_decoders",
    "fps_indices",
    "probe",
    "read_clip",
    "read_frames",
    "uniform_indices",
    "vbench_middle_indices",
]

VideoSource = Union[str, os.PathLike, bytes]
"""A path to a video file, or the encoded bytes of one."""

DecoderName = Literal["auto", "decord", "pyav"]
DECODERS: tuple[str, ...] = ("decord", "pyav")

IndexSelector = Callable[[int, float], Sequence[int]]
"""``select(num_frames, fps) -> indices``: chooses frames once the length is known."""


#: Most frames a container may declare (about 18 hours at 30 fps); more is a corrupt or hostile header.
MAX_DECLARED_FRAMES = 2_000_000
#: Longest frame side, in pixels, a container may declare (16K video is 15360 px wide).
MAX_FRAME_SIDE = 16_384


class VideoDecodeError(PiscesRuntimeError):
    """A video could not be decoded.

    ``str(error)`` is one sentence naming the file and the reason (``cannot decode video X: reason``);
    ``reason`` is that reason alone and ``detail`` what every decoder tried said, for bug reports.
    """

    def __init__(self, label: str, reason: str, detail: str | None = None) -> None:
        super().__init__(f"cannot decode video {label}: {reason}")
        self.label = label
        self.reason = reason
        self.detail = detail or reason

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # picklable from a decode process
        return (type(self), (self.label, self.reason, self.detail))


@dataclass(frozen=True)
class VideoInfo:
    """Stream facts of a decodable video.

    Attributes:
        num_frames: number of decodable frames.
        fps: average frame rate in frames per second (> 0).
        width: frame width in pixels.
        height: frame height in pixels.
        duration_s: ``num_frames / fps`` in seconds.
        decoder: the decoder that produced these facts (``"decord"`` or ``"pyav"``).
    """

    num_frames: int
    fps: float
    width: int
    height: int
    duration_s: float
    decoder: str


# --------------------------------------------------------------------------------------------------
# decoder availability


def _decord_module():
    with contextlib.suppress(Exception):
        # PyAV's FFmpeg libraries first: loaded after decord's bundled copies, PyAV's libvpx-vp9 encoder
        # fails to open (EINVAL); in this order both work
        import av  # noqa: F401
    try:
        import decord
    except Exception:  # ImportError, or a broken native library
        return None
    return decord


def available_decoders() -> list[str]:
    """Decoders importable in this environment, in the order ``decoder="auto"`` tries them."""
    names = []
    if _decord_module() is not None:
        names.append("decord")
    try:
        import av  # noqa: F401

        names.append("pyav")
    except Exception:
        pass
    return names


# --------------------------------------------------------------------------------------------------
# helpers


def _describe(source: VideoSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, bytes):
        return f"<{len(source)} bytes in memory>"
    return os.fspath(source)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _DecoderFailure(Exception):
    """Internal: one decoder failed. The message is what happened (kept in the error's ``detail``);
    ``reason`` the readable sentence a user sees, ``None`` when the failure says nothing about the file
    (a decoder that is not installed) or nothing readable (a raw library error)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


#: The reason shown when no decoder gave a readable one (raw library errors on unreadable data).
UNREADABLE = "not a video pisces can read (unknown format, or damaged data)"


def _check_source(source: VideoSource, label: str) -> None:
    """Reject missing and empty inputs before any decoder runs."""
    if isinstance(source, bytes):
        if len(source) == 0:
            raise VideoDecodeError(label, "empty input (0 bytes)")
        return
    path = Path(source)
    if not path.exists():
        raise VideoDecodeError(label, "file not found")
    if not path.is_file():
        raise VideoDecodeError(label, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(label, "empty file (0 bytes)")
    try:  # a file without read permission is that, not "damaged data" after every decoder failed
        os.close(os.open(path, os.O_RDONLY))
    except OSError as exc:
        raise VideoDecodeError(label, f"cannot open it ({exc.strerror or exc})") from exc


def _validate_indices(indices: Sequence[int], num_frames: int) -> list[int]:
    out = [int(i) for i in indices]
    bad = [i for i in out if i < 0 or i >= num_frames]
    if bad:
        message = f"frame index {bad[0]} out of range for a video of {num_frames} frames"
        raise _DecoderFailure(message, message)
    return out


# --------------------------------------------------------------------------------------------------
# decord backend


def _decord_open(source: VideoSource):
    decord = _decord_module()
    if decord is None:
        raise _DecoderFailure("decord is not importable")
    target = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
    try:
        reader = decord.VideoReader(target, ctx=decord.cpu(0))
    except Exception as exc:
        raise _DecoderFailure(_short(exc)) from exc
    return reader


def _decord_counts(reader) -> tuple[int, float]:
    num_frames = len(reader)
    if num_frames <= 0:
        raise _DecoderFailure("no video frames", "it holds no video frames")
    fps = float(reader.get_avg_fps())
    if not math.isfinite(fps) or fps <= 0:
        raise _DecoderFailure(f"invalid frame rate {fps}", "its frame rate is missing or invalid")
    return num_frames, fps


def _check_decord_frames(array: np.ndarray, leading: tuple[int, ...]) -> None:
    """decord 0.6 returns 4 or 6 "channels" for some widths: accept only uint8 [..., H, W, 3]."""
    if (
        array.dtype != np.uint8
        or array.ndim != len(leading) + 3
        or array.shape[: len(leading)] != leading
        or array.shape[-1] != 3
    ):
        raise _DecoderFailure(
            f"decord returned {array.dtype} {tuple(array.shape)}, expected uint8 [H, W, 3] frames"
        )


def _decord_info(reader) -> VideoInfo:
    num_frames, fps = _decord_counts(reader)
    first = reader[0].asnumpy()
    _check_decord_frames(first, ())
    height, width = int(first.shape[0]), int(first.shape[1])
    return VideoInfo(num_frames, fps, width, height, num_frames / fps, "decord")


def _decord_read(
    source: VideoSource, select: IndexSelector | None
) -> tuple[np.ndarray, VideoInfo, list[int]]:
    reader = _decord_open(source)
    try:
        num_frames, fps = _decord_counts(reader)
        wanted = list(range(num_frames)) if select is None else select(num_frames, fps)
        wanted = _validate_indices(wanted, num_frames)
        if not wanted:
            info = _decord_info(reader)
            return np.zeros((0, info.height, info.width, 3), np.uint8), info, wanted
        # Fetch each distinct frame once (decord seeks per index), then gather with repeats.
        unique = sorted(set(wanted))
        batch = reader.get_batch(unique).asnumpy()
    except (_DecoderFailure, UsageError):
        raise
    except Exception as exc:
        raise _DecoderFailure(_short(exc)) from exc
    _check_decord_frames(batch, (len(unique),))
    height, width = int(batch.shape[1]), int(batch.shape[2])
    info = VideoInfo(num_frames, fps, width, height, num_frames / fps, "decord")
    position = {index: row for row, index in enumerate(unique)}
    frames = batch[[position[i] for i in wanted]]
    return np.ascontiguousarray(frames), info, wanted


# --------------------------------------------------------------------------------------------------
# PyAV backend


def _pyav_module():
    try:
        import av
    except Exception as exc:
        raise _DecoderFailure("PyAV is not importable") from exc
    return av


def _pyav_target(source: VideoSource):
    return io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)


def _rgb_converter() -> Callable[[object], np.ndarray]:
    """frame -> uint8 [H, W, 3] RGB, reusing one swscale context (about 3x faster than
    ``frame.to_ndarray(format="rgb24")``, which builds a new one per frame; same pixels)."""
    try:
        from av.video.reformatter import VideoReformatter
    except Exception:
        return lambda frame: frame.to_ndarray(format="rgb24")
    reformatter = VideoReformatter()
    return lambda frame: reformatter.reformat(frame, format="rgb24").to_ndarray()


def _pyav_length(source: VideoSource) -> tuple[int, float, str]:
    """(frame count, fps, where the count came from) without decoding.

    The count is the header's (mp4/mov/gif) or, when the container has none (webm/mkv), the
    number of non-empty video packets found by demuxing.
    """
    av = _pyav_module()
    with av.open(_pyav_target(source), mode="r") as container:
        if not container.streams.video:
            raise _DecoderFailure("no video stream", "it has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        declared = int(stream.frames or 0)
        if declared > 0:
            return declared, fps, "the header declares"
        counted = sum(1 for packet in container.demux(stream) if packet.size > 0)
        return counted, fps, "the container holds"


def _pyav_read(source: VideoSource, select: IndexSelector | None) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """Count frames, choose indices, then decode once, converting only the chosen frames to RGB.

    Decoding stops after the last chosen frame, so a damaged tail beyond it goes unnoticed
    (as with decord); a chosen frame that cannot be decoded is a failure.
    """
    av = _pyav_module()
    decoded = 0
    try:
        num_frames, fps, origin = _pyav_length(source)
        if num_frames <= 0:
            raise _DecoderFailure("no video frames", "it holds no video frames")
        if not math.isfinite(fps) or fps <= 0:
            raise _DecoderFailure("unknown frame rate", "its frame rate is missing or invalid")
        wanted = list(range(num_frames)) if select is None else select(num_frames, fps)
        wanted = _validate_indices(wanted, num_frames)
        needed = set(wanted) or {0}  # decode frame 0 anyway: proves decodability, gives the size
        last_needed = max(needed)
        kept: dict[int, np.ndarray] = {}
        to_rgb = _rgb_converter()
        with av.open(_pyav_target(source), mode="r") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if decoded in needed:
                    kept[decoded] = to_rgb(frame)
                decoded += 1
                if decoded > last_needed:
                    break
    except (_DecoderFailure, UsageError):
        raise
    except Exception as exc:
        # Damage after some good frames (a truncated or corrupt tail) is still a failure.
        where = f" after {decoded} frames" if decoded else ""
        reason = f"it is damaged: decoding stopped after {decoded} frames" if decoded else None
        raise _DecoderFailure(f"decoding failed{where}: {_short(exc)}", reason) from exc
    if decoded == 0:
        raise _DecoderFailure("no video frames could be decoded", "no frame of it could be decoded")
    if decoded <= last_needed:
        message = f"truncated: {origin} {num_frames} frames, only {decoded} decoded"
        raise _DecoderFailure(message, message)
    height, width = (int(v) for v in next(iter(kept.values())).shape[:2])
    info = VideoInfo(num_frames, fps, width, height, num_frames / fps, "pyav")
    if not wanted:
        return np.zeros((0, height, width, 3), np.uint8), info, wanted
    return np.stack([kept[i] for i in wanted]), info, wanted


def _pyav_probe(source: VideoSource) -> VideoInfo:
    _frames, info, _ = _pyav_read(source, lambda n, f: [])
    return info


# --------------------------------------------------------------------------------------------------
# public API


def _check_declared_sizes(source: VideoSource, label: str) -> None:
    """Refuse an mp4/mov whose header declares absurd sizes, before a decoder allocates for them.

    Reads the boxes only (:func:`pisces_cli.io.mp4header.read_mp4_header`, no decoding). Other containers,
    and headers it cannot read, pass: the decoders then report, and a decoder that crashes on them is
    contained by the decode worker (:mod:`pisces_cli.io.isolation`).
    """
    from pisces_cli.io.mp4header import read_mp4_header

    header = read_mp4_header(source)
    if header is None:
        return
    detail = f"mp4 header: {header}"
    if header.frames > MAX_DECLARED_FRAMES:
        reason = (
            f"its header declares {header.frames} frames, more than the {MAX_DECLARED_FRAMES} pisces reads "
            "(a corrupt header?)"
        )
        raise VideoDecodeError(label, reason, detail)
    if header.track_duration_s > 0 and header.table_duration_s > 10 * header.track_duration_s + 1:
        reason = (
            f"its header declares {header.frames} frames lasting {header.table_duration_s:g} s in a track of "
            f"{header.track_duration_s:g} s (a corrupt header?)"
        )
        raise VideoDecodeError(label, reason, detail)
    if max(header.width, header.height) > MAX_FRAME_SIDE:
        reason = (
            f"its header declares {header.width}x{header.height} frames, larger than the "
            f"{MAX_FRAME_SIDE} px pisces reads"
        )
        raise VideoDecodeError(label, reason, detail)


def _run_decoders(source: VideoSource, decoder: str, name: str | None, action: Callable[[str], object]):
    label = _describe(source, name)
    if decoder not in ("auto", *DECODERS):
        raise UsageError(f"unknown video decoder {decoder!r}; expected one of auto, decord, pyav")
    _check_source(source, label)
    _check_declared_sizes(source, label)
    order = list(DECODERS) if decoder == "auto" else [decoder]
    failures: list[tuple[str, _DecoderFailure]] = []
    for backend in order:
        try:
            return action(backend)
        except _DecoderFailure as exc:
            failures.append((backend, exc))
    detail = "; ".join(f"{backend}: {exc}" for backend, exc in failures) + f" (tried {', '.join(order)})"
    # the last decoder's readable reason (PyAV's are the clearer), else any, else a generic sentence
    readable = [exc.reason for _backend, exc in reversed(failures) if exc.reason]
    if readable:
        reason = readable[0]
    elif all("not importable" in str(exc) for _backend, exc in failures):
        reason = f"no decoder is available ({detail})"
    else:
        reason = UNREADABLE
    raise VideoDecodeError(label, reason, detail)


def probe(source: VideoSource, *, decoder: DecoderName = "auto", name: str | None = None) -> VideoInfo:
    """Frame count, frame rate and size of a video.

    Args:
        source: path or encoded bytes.
        decoder: ``"auto"`` (decord, then PyAV), ``"decord"`` or ``"pyav"``.
        name: label used in error messages (defaults to the path).

    Raises:
        VideoDecodeError: the video cannot be decoded (message names file, reason, decoders tried).

    Both decoders take the frame count from the container (PyAV counts packets when the
    header has no count, as in webm/mkv) and decode only the first frame, so a damaged
    tail is found by :func:`read_frames`, not here.
    """

    def action(backend: str) -> VideoInfo:
        if backend == "decord":
            reader = _decord_open(source)
            try:
                return _decord_info(reader)
            except _DecoderFailure:
                raise
            except Exception as exc:
                raise _DecoderFailure(_short(exc)) from exc
        return _pyav_probe(source)

    return _run_decoders(source, decoder, name, action)


def read_clip(
    source: VideoSource,
    select: IndexSelector | None = None,
    *,
    decoder: DecoderName = "auto",
    name: str | None = None,
) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """Open a video once, choose frames from its length and rate, and decode them.

    Args:
        source: path or encoded bytes.
        select: ``select(num_frames, fps) -> indices``; ``None`` reads every frame.
        decoder: ``"auto"``, ``"decord"`` or ``"pyav"``.
        name: label used in error messages.

    Returns:
        ``(frames, info, indices)`` with frames uint8 ``[T, H, W, 3]`` RGB, T = len(indices).

    Raises:
        VideoDecodeError: undecodable input or an index outside ``[0, num_frames)``.
    """

    def action(backend: str):
        return _decord_read(source, select) if backend == "decord" else _pyav_read(source, select)

    return _run_decoders(source, decoder, name, action)


def read_frames(
    source: VideoSource,
    indices: Sequence[int] | None = None,
    *,
    decoder: DecoderName = "auto",
    name: str | None = None,
) -> np.ndarray:
    """Decode frames of a video as uint8 RGB ``[T, H, W, 3]``.

    Args:
        source: path or encoded bytes.
        indices: frame indices to return, in the given order (repeats allowed); ``None`` = all frames.
        decoder: ``"auto"`` (decord, PyAV fallback), ``"decord"`` or ``"pyav"``.
        name: label used in error messages.

    Raises:
        VideoDecodeError: undecodable input or an index outside ``[0, num_frames)``.
    """
    chosen = None if indices is None else [int(i) for i in indices]
    frames, _info, _ = read_clip(
        source, None if chosen is None else (lambda n, f: chosen), decoder=decoder, name=name
    )
    return frames


# --------------------------------------------------------------------------------------------------
# frame sampling rules


def _check_counts(num_frames_total: int, k: int) -> None:
    if num_frames_total <= 0:
        raise UsageError(f"cannot sample from a video of {num_frames_total} frames")
    if k <= 0:
        raise UsageError(f"number of frames to sample must be positive, got {k}")


def uniform_indices(num_frames_total: int, k: int) -> list[int]:
    """``k`` evenly spaced frames including the first and the last.

    Rule: index_i = floor(i·(N−1)/(k−1) + 1/2) for i = 0..k−1 (``np.linspace(0, N−1, k)``
    rounded half up); k = 1 gives ``[0]``. When k > N, frames repeat (non-decreasing).
    """
    _check_counts(num_frames_total, k)
    if k == 1:
        return [0]
    last = num_frames_total - 1
    # Integer arithmetic: floor((2·i·last + (k−1)) / (2·(k−1))) avoids float rounding at .5.
    return [(2 * i * last + (k - 1)) // (2 * (k - 1)) for i in range(k)]


def fps_indices(total: int, src_fps: float, target_fps: float, max_frames: int | None = None) -> list[int]:
    """Frames that resample a ``src_fps`` video to ``target_fps``, starting at frame 0.

    Rule: output frame j shows time t_j = j/target_fps; it takes source frame
    floor(t_j·src_fps) (i.e. the frame on screen at t_j) for every t_j < total/src_fps.
    With target_fps > src_fps source frames repeat. ``max_frames`` keeps only the first ones.
    """
    if total <= 0:
        raise UsageError(f"cannot sample from a video of {total} frames")
    if not (src_fps > 0 and target_fps > 0):
        raise UsageError(f"frame rates must be positive, got src_fps={src_fps}, target_fps={target_fps}")
    if max_frames is not None and max_frames <= 0:
        raise UsageError(f"max_frames must be positive, got {max_frames}")
    step = src_fps / target_fps
    indices: list[int] = []
    j = 0
    while True:
        # The small epsilon keeps exact ratios (e.g. 30→10 fps: 3.0·j) from flooring down a frame.
        index = int(math.floor(j * step + 1e-9))
        if index >= total or (max_frames is not None and len(indices) >= max_frames):
            break
        indices.append(index)
        j += 1
    return indices


def vbench_middle_indices(n: int, k: int) -> list[int]:
    """VBench's "middle" sampling of ``k`` frames from ``n`` (``get_frame_indices``).

    Rule: a_i = int(i·n/k) for i = 0..k (``np.linspace(0, n, k+1).astype(int)``); frame
    i = floor((a_i + a_{i+1} − 1)/2). If n < k: all n frames, padded with the last index to k.
    """
    _check_counts(n, k)
    if n < k:
        return list(range(n)) + [n - 1] * (k - n)
    bounds = np.linspace(0, n, k + 1).astype(int)
    return [int((int(bounds[i]) + int(bounds[i + 1]) - 1) // 2) for i in range(k)]
