"""Writing generated videos: atomic H.264 mp4 files and VBench-style file names.

:func:`write_mp4` encodes with PyAV (libx264, yuv420p). yuv420p needs even width and
height, so an odd side is **padded by one pixel** that repeats the last row/column
(no content is lost; the file is then one pixel larger than the input on that side).
If libx264 is missing, the first available of ``mpeg4`` / ``libopenh264`` is used and a
:class:`UserWarning` says so. The file appears atomically: it is written to a temporary
file in the same folder, fsynced, then ``os.replace``-d onto the target.

:func:`vbench_filename` builds ``{prompt}-{index}.mp4`` (VBench's names, docs/vbench.md §6) made filesystem-safe.
Callers should also record a file-name → prompt map (e.g. ``prompts.jsonl``), since a
sanitised or truncated name no longer spells the exact prompt.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from pisces_cli.atomic import atomic_path
from pisces_cli.errors import PiscesRuntimeError, UsageError

__all__ = ["WriteResult", "to_uint8_frames", "vbench_filename", "write_mp4"]

_FALLBACK_CODECS = ("mpeg4", "libopenh264")


@dataclass(frozen=True)
class WriteResult:
    """What :func:`write_mp4` wrote.

    Attributes:
        path: the final file.
        codec: encoder used (``"libx264"`` unless it was missing).
        width, height: encoded size in pixels (even; input padded by one pixel if odd).
        num_frames: frames written.
        note: why the output differs from the request (fallback codec, padding), else ``""``.
    """

    path: Path
    codec: str
    width: int
    height: int
    num_frames: int
    note: str


def to_uint8_frames(frames) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` RGB from uint8 ``[T, H, W, 3]`` or float ``[T, 3, H, W]`` in [0, 1].

    Accepts numpy arrays or torch tensors (detached, moved to CPU). Floats are clamped to [0, 1]
    and rounded to the nearest of 256 levels.
    """
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().numpy()
    array = np.asarray(frames)
    if array.ndim != 4:
        raise UsageError(f"frames must be 4-D ([T,H,W,3] uint8 or [T,3,H,W] float), got shape {array.shape}")
    if array.dtype == np.uint8:
        if array.shape[-1] != 3:
            raise UsageError(f"uint8 frames must be [T, H, W, 3], got shape {array.shape}")
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise UsageError(f"frames must be uint8 or float, got {array.dtype}")
    if array.shape[1] != 3:
        raise UsageError(f"float frames must be [T, 3, H, W] in [0, 1], got shape {array.shape}")
    scaled = np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0) * 255.0
    return np.ascontiguousarray(np.rint(scaled).astype(np.uint8).transpose(0, 2, 3, 1))


def _pad_even(frames: np.ndarray) -> tuple[np.ndarray, str]:
    pad_h = frames.shape[1] % 2
    pad_w = frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames, ""
    padded = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return (
        padded,
        f"padded {frames.shape[1]}x{frames.shape[2]} to {padded.shape[1]}x{padded.shape[2]} (yuv420p needs even sides)",
    )


def _pick_codec(requested: str) -> tuple[str, str]:
    import av

    available = av.codecs_available
    if requested in available:
        return requested, ""
    for codec in _FALLBACK_CODECS:
        if codec in available:
            note = f"encoder {requested} is not available in this PyAV build; wrote {codec} instead"
            warnings.warn(note, UserWarning, stacklevel=3)
            return codec, note
    raise PiscesRuntimeError(
        f"no usable video encoder: {requested} and {', '.join(_FALLBACK_CODECS)} are all missing"
    )


def write_mp4(
    path: str | os.PathLike, frames, fps: float, *, codec: str = "libx264", crf: int = 18
) -> WriteResult:
    """Write frames as an mp4 file, atomically.

    Args:
        path: target file (its folder must exist).
        frames: uint8 ``[T, H, W, 3]`` RGB, or float ``[T, 3, H, W]`` in [0, 1] (numpy or torch).
        fps: frames per second (> 0; fractional rates such as 23.976 are kept as a fraction).
        codec: preferred encoder; falls back to mpeg4 with a warning when missing.
        crf: libx264 constant rate factor (lower = better; 18 is visually lossless).

    Returns:
        :class:`WriteResult` (codec used, encoded size, note about padding or fallback).

    Raises:
        UsageError: bad frames or fps. PiscesRuntimeError: the encoder failed.
    """
    import av

    target = Path(path)
    pixels = to_uint8_frames(frames)
    if pixels.shape[0] == 0:
        raise UsageError(f"cannot write {target}: no frames")
    if not (fps > 0):
        raise UsageError(f"cannot write {target}: fps must be positive, got {fps}")
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {target}: folder {target.parent} does not exist")
    pixels, pad_note = _pad_even(pixels)
    chosen, codec_note = _pick_codec(codec)
    rate = Fraction(fps).limit_denominator(1001 * 1000)
    height, width = pixels.shape[1:3]

    try:
        with atomic_path(target) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(chosen, rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            if chosen == "libx264":
                stream.options = {"crf": str(crf), "preset": "medium"}
            else:
                stream.bit_rate = max(2_000_000, int(width * height * float(rate) * 2))
            for image in pixels:
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise PiscesRuntimeError(f"failed to write video {target} with {chosen}: {exc}") from exc
    note = "; ".join(n for n in (codec_note, pad_note) if n)
    return WriteResult(target, chosen, width, height, int(pixels.shape[0]), note)


def _safe_text(prompt: str) -> str:
    """Replace what a POSIX file name cannot (or should not) hold: '/', NUL, control chars, and a leading
    '.' (a hidden file, which folder listings skip)."""
    safe = "".join("_" if ch == "/" or unicodedata.category(ch) == "Cc" else ch for ch in prompt)
    return "_" + safe[1:] if safe.startswith(".") else safe


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")[: max(0, max_bytes)]
    return encoded.decode("utf-8", errors="ignore")


def vbench_filename(prompt: str, index: int, max_bytes: int = 200) -> str:
    """``{prompt}-{index}.mp4``, safe as a single file name and at most ``max_bytes`` UTF-8 bytes.

    Rule: '/', NUL and other control characters, and a leading '.' (a hidden file ``score`` and ``eval``
    would skip), become '_'. If that changed the prompt, or the
    name would exceed ``max_bytes``, the prompt part is cut on a UTF-8 character boundary and a
    suffix ``~`` + the first 10 hex digits of SHA-1(prompt) is appended, so two distinct prompts
    never share a name (and the name no longer spells the prompt: keep a name → prompt map).
    An unchanged prompt that fits gives exactly ``f"{prompt}-{index}.mp4"``.
    """
    if index < 0:
        raise UsageError(f"video index must be >= 0, got {index}")
    tail = f"-{index}.mp4"
    safe = _safe_text(prompt)
    plain = safe + tail
    if safe == prompt and len(plain.encode("utf-8")) <= max_bytes:
        return plain
    suffix = "~" + hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:10]
    budget = max_bytes - len((suffix + tail).encode("utf-8"))
    if budget < 0:
        raise UsageError(f"max_bytes={max_bytes} is too small for a hashed file name")
    return _truncate_utf8(safe, budget) + suffix + tail
