"""Typed recipe schemas: dataclasses validated from plain YAML data.

A recipe section is a dataclass. :func:`build` turns a mapping (parsed YAML) into that
dataclass, checking every key against the schema before any heavy import happens:

- unknown keys fail with a "did you mean" suggestion (a key a section lists in ``REMOVED_KEYS`` fails with
  the message it gives there),
- values must match the annotated type (``int``, ``float``, ``bool``, ``str``, ``Literal``,
  ``list[...]``, ``dict[str, ...]``, optional values, nested sections),
- fields without a default are required,
- a section may define ``check(self) -> list[str]`` for invalid combinations.

Every error names the full key path (``fit_ot.neural.lr``). All problems found are
reported together as one :class:`RecipeError` (exit code 2).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from pisces_cli.errors import UsageError

MISSING = dataclasses.MISSING


class RecipeError(UsageError):
    """One or more recipe keys are invalid; ``problems`` lists ``(key_path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"invalid recipe{where}:"] + [f"  {path or '<root>'}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


def suggest(name: str, candidates: typing.Iterable[str]) -> str:
    """Return a `` (did you mean 'x'?)`` hint for a misspelt key, or an empty string."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_name(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "mapping (section)"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _coerce(value: Any, tp: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    """Convert ``value`` to type ``tp``; append a problem and return None when impossible."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[tuple[str, str]] = []
            out = _coerce(value, arg, path, trial)
            if not trial:
                return out
        problems.append((path, f"expected {_type_name(tp)}, got {_describe(value)}"))
        return None
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, bool):
            # YAML 1.1 reads bare no/off/yes/on as booleans; map them back onto a string choice.
            spellings = ("no", "off", "false", "none") if value is False else ("yes", "on", "true")
            for word in spellings:
                if word in allowed:
                    return word
        if value in allowed and not isinstance(value, bool):
            return value
        hint = suggest(str(value), [str(a) for a in allowed])
        problems.append(
            (path, f"expected one of {', '.join(repr(a) for a in allowed)}, got {_describe(value)}{hint}")
        )
        return None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            problems.append((path, f"expected a mapping (section), got {_describe(value)}"))
            return None
        return _build(tp, value, path, problems)
    if origin in (list, tuple):
        (item_tp,) = get_args(tp)[:1] or (Any,)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            problems.append((path, f"expected a list, got {_describe(value)}"))
            return None
        return [_coerce(v, item_tp, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        _key_tp, val_tp = get_args(tp) or (str, Any)
        if not isinstance(value, Mapping):
            problems.append((path, f"expected a mapping, got {_describe(value)}"))
            return None
        return {str(k): _coerce(v, val_tp, _join(path, str(k)), problems) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        problems.append((path, f"expected true or false, got {_describe(value)}"))
        return None
    if tp is int:
        if isinstance(value, bool):
            problems.append((path, f"expected an integer, got {_describe(value)}"))
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        problems.append((path, f"expected an integer, got {_describe(value)}"))
        return None
    if tp is float:
        if isinstance(value, bool):
            problems.append((path, f"expected a number, got {_describe(value)}"))
            return None
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        problems.append((path, f"expected a number, got {_describe(value)}"))
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append((path, f"expected a string, got {_describe(value)}"))
        return None
    problems.append((path, f"unsupported schema type {tp!r}"))
    return None


def section_fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """Map field name -> (field, resolved type) for a section dataclass."""
    hints = get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if not f.name.startswith("_")}


def _build(cls: type, data: Mapping[str, Any], path: str, problems: list[tuple[str, str]]) -> Any:
    fields = section_fields(cls)
    problems_before = len(problems)
    kwargs: dict[str, Any] = {}
    removed = getattr(cls, "REMOVED_KEYS", {})
    for key in data:
        if key in removed:
            problems.append((_join(path, str(key)), removed[key]))
        elif key not in fields:
            problems.append((_join(path, str(key)), "unknown key" + suggest(str(key), fields)))
    for name, (field, tp) in fields.items():
        sub = _join(path, name)
        if name in data:
            kwargs[name] = _coerce(data[name], tp, sub, problems)
        elif field.default is MISSING and field.default_factory is MISSING:
            problems.append((sub, f"missing required value ({_type_name(tp)})"))
    if len(problems) > problems_before:
        return None
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        for key, msg in check():
            problems.append((_join(path, key) if key else path, msg))
    return obj


def build(cls: type, data: Mapping[str, Any] | None, *, source: str | None = None) -> Any:
    """Validate ``data`` against section dataclass ``cls`` and return the instance.

    Raises :class:`RecipeError` listing every problem (unknown keys, wrong types, missing
    required values, invalid combinations) with its full key path.
    """
    problems: list[tuple[str, str]] = []
    obj = _build(cls, data or {}, "", problems)
    if problems:
        raise RecipeError(problems, source)
    return obj


def to_dict(obj: Any) -> Any:
    """Turn a section instance (or nested values) back into plain YAML-able data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: to_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not f.name.startswith("_")
        }
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def schema_for_path(cls: type, dotted: str) -> tuple[Any, str | None]:
    """Resolve ``a.b.c`` against the schema: return (type at that path, error message or None)."""
    tp: Any = cls
    walked: list[str] = []
    for part in dotted.split("."):
        inner = tp
        if get_origin(inner) in (Union, types.UnionType):
            non_none = [a for a in get_args(inner) if a is not type(None)]
            inner = non_none[0] if len(non_none) == 1 else inner
        if dataclasses.is_dataclass(inner):
            fields = section_fields(inner)
            removed = getattr(inner, "REMOVED_KEYS", {})
            if part in removed:
                return None, removed[part]
            if part not in fields:
                where = ".".join(walked) or "the recipe root"
                return None, f"'{part}' is not a key of {where}" + suggest(part, fields)
            tp = fields[part][1]
        elif get_origin(inner) is dict:
            tp = get_args(inner)[1] if get_args(inner) else Any
        elif inner is Any:
            tp = Any
        else:
            return None, f"'{'.'.join(walked)}' is a value ({_type_name(inner)}), it has no key '{part}'"
        walked.append(part)
    return tp, None
