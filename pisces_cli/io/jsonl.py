"""Reading JSON-lines files (one JSON object per line; blank lines skipped)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pisces_cli.errors import UsageError
from pisces_cli.textfile import read_text


def iter_jsonl(path: str | os.PathLike[str], *, strict: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of ``path`` (1-based line numbers).

    The text is read by :func:`pisces_cli.textfile.read_text` (UTF-8, BOM-marked UTF-16/32; anything else
    is a :class:`UsageError` naming the file; files pisces appends to are read as UTF-8).

    ``strict`` (input a user wrote): a line that is not valid JSON, or not a JSON object, raises
    :class:`UsageError` naming the file and the line. Otherwise (files pisces appends to) such lines are
    skipped, e.g. the torn last line of an interrupted run.
    """
    if strict:
        text = read_text(path)
    else:  # a torn last line may end inside a multi-byte character: it fails as JSON and is skipped
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if not strict:
                continue
            raise UsageError(f"{path} line {line_no}: invalid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            if not strict:
                continue
            raise UsageError(f"{path} line {line_no}: expected a JSON object")
        yield line_no, record
