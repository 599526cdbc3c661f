"""What changed between two settings records (nested JSON objects), and the refusal that names it.

Used wherever saved state is reused only under the settings that made it: score / eval / embed folders (run
keys) and fine-tuning checkpoints (training keys). A change is reported field by field as ``old → new``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pisces_cli.errors import UsageError

__all__ = ["changed_fields", "refuse_changed", "short_value"]


_MISSING = object()


def _diff(old: Any, new: Any, prefix: str, out: list[tuple[str, Any, Any]]) -> None:
    """Append ``(dotted field, old, new)`` for every difference; a field that is an object on one side only
    (a section switched on or off) is one change of the whole field, not one per leaf."""
    if isinstance(old, Mapping) and isinstance(new, Mapping) and (old or new):
        for key in sorted(set(old) | set(new), key=str):
            _diff(
                old.get(key, _MISSING), new.get(key, _MISSING), f"{prefix}.{key}" if prefix else str(key), out
            )
    elif old != new:
        out.append((prefix, None if old is _MISSING else old, None if new is _MISSING else new))


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted field, old value, new value)`` for every leaf that differs (JSON-normalised); a missing
    field reads as None."""
    out: list[tuple[str, Any, Any]] = []
    _diff(json.loads(json.dumps(old, default=str)), json.loads(json.dumps(new, default=str)), "", out)
    return out


def short_value(value: Any) -> str:
    """A value as one short token for a message (hashes cut to 12 hex digits, anything at most 40 characters)."""
    if value is None:
        return "none"
    if isinstance(value, str):
        hexish = len(value) >= 32 and all(c in "0123456789abcdef" for c in value)
        text = value[:12] if hexish else value
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 40 else text[:37] + "..."


def refuse_changed(where: str, changes: list[tuple[str, Any, Any]], *, rows: str, ways_out: str) -> None:
    """Raise UsageError naming each changed field (``old → new``) and the ways out; no-op without changes.

    Args:
        where: the folder or file holding the state.
        changes: from :func:`changed_fields`.
        rows: what the folder holds, e.g. ``"12 score rows"``.
        ways_out: the sentence telling the user what to do.
    """
    if not changes:
        return
    lines = [f"  {name}: {short_value(before)} → {short_value(after)}" for name, before, after in changes]
    raise UsageError(f"{where} holds {rows} made with other settings:\n" + "\n".join(lines) + f"\n{ways_out}")
