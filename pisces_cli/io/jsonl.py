"""Reading JSON-lines files (one JSON object per line; blank lines skipped)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pisces_cli.errors import UsageError


def iter_jsonl(path: str | os.PathLike[str], *, strict: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of ``path`` (1-based line numbers).

    ``strict`` (input a user wrote): a line that is not valid JSON, or not a JSON object, raises
    :class:`UsageError` naming the file and the line. Otherwise (files pisces appends to) such lines are
    skipped, e.g. the torn last line of an interrupted run.
    """
    with Path(path).open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
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
