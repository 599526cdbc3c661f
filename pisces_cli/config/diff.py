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


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted field, old value, new value)`` for every leaf that differs (JSON-normalised)."""
    old_flat = _flatten(json.loads(json.dumps(old, default=str)))
    new_flat = _flatten(json.loads(json.dumps(new, default=str)))
    missing = object()
    out = []
    for name in sorted(set(old_flat) | set(new_flat)):
        before, after = old_flat.get(name, missing), new_flat.get(name, missing)
        if before != after:
            out.append((name, None if before is missing else before, None if after is missing else after))
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
