"""Reading the text files users give pisces (recipes, prompt files, CSVs, sidecar captions).

One rule for every text input: UTF-8, with or without a byte-order mark; UTF-16 and UTF-32 are decoded
when a byte-order mark says that is what the file is (Excel's "Unicode text" and Windows Notepad write
UTF-16 with a BOM). Anything else is refused with :class:`~pisces_cli.errors.UsageError` (exit 2) naming
the file and what it looks like (UTF-16 without a BOM, Latin-1/Windows-1252, binary data), so a
``UnicodeDecodeError`` never reaches the user and a file is never read as garbage.
"""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path

from pisces_cli.errors import UsageError

__all__ = ["decode_text", "read_text"]

#: Byte-order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one).
_BOMS: tuple[tuple[bytes, str, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16"),
)


def _guess(data: bytes) -> str:
    """A readable guess at what undecodable bytes are."""
    sample = data[:4096]
    zeros_even = sample[0::2].count(0)
    zeros_odd = sample[1::2].count(0)
    half = max(1, len(sample) // 2)
    if zeros_odd > 0.3 * half and zeros_even < 0.05 * half:
        return "UTF-16 (little-endian) without a byte-order mark"
    if zeros_even > 0.3 * half and zeros_odd < 0.05 * half:
        return "UTF-16 (big-endian) without a byte-order mark"
    control = sum(1 for b in sample if b < 32 and b not in (9, 10, 13))
    if 0 in sample or control > 0.1 * len(sample):
        return "binary data, not text"
    return "an 8-bit encoding such as Latin-1 or Windows-1252"


def decode_text(data: bytes, name: str) -> str:
    """Decode ``data`` by the rule of the module docstring; ``name`` labels the error message.

    Raises:
        UsageError: the bytes are not UTF-8 / BOM-marked UTF-16 or UTF-32 text, or hold NUL characters.
    """
    encoding, label, body = "utf-8", "UTF-8", data
    for bom, codec, bom_label in _BOMS:
        if data.startswith(bom):
            encoding, label, body = codec, bom_label, data[len(bom) :]
            break
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as exc:
        what = _guess(body) if encoding == "utf-8" else f"damaged {label} (byte {exc.start} is invalid)"
        if what.startswith("binary"):
            raise UsageError(f"{name}: not a text file (it holds binary data)") from exc
        raise UsageError(
            f"{name}: cannot read it as text: it is not UTF-8 (it looks like {what}); "
            "save it as UTF-8 and try again"
        ) from exc
    if "\x00" in text:
        what = _guess(body)
        if what.startswith("UTF-16"):  # plain ASCII saved as UTF-16 without a BOM decodes as UTF-8 + NULs
            raise UsageError(
                f"{name}: cannot read it as text: it looks like {what}; save it as UTF-8 and try again"
            )
        raise UsageError(f"{name}: not a text file (it holds NUL characters: binary data?)")
    return text


def read_text(path: str | os.PathLike[str]) -> str:
    """The text of ``path`` (see the module docstring); line endings are left as they are.

    Raises:
        UsageError: the file is missing, unreadable, not a regular file (a FIFO would block the read
            for ever), or not text in a supported encoding.
    """
    file = Path(path)
    try:
        mode = file.stat().st_mode
        if stat.S_ISDIR(mode):
            raise UsageError(f"{file}: is a folder, expected a text file")
        if not stat.S_ISREG(mode):  # a FIFO or a device: the read could block for ever
            raise UsageError(f"{file}: not a regular file (a pipe or a device?), expected a text file")
        data = file.read_bytes()
    except FileNotFoundError as exc:
        raise UsageError(f"{file}: no such file") from exc
    except OSError as exc:
        raise UsageError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    return decode_text(data, str(file))
