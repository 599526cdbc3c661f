"""Typed recipe schemas: dataclasses validated from plain YAML data.

A recipe section is a dataclass. :func:`build` turns a mapping (parsed YAML) into that
dataclass, checking every key against the schema before any heavy import happens:

- unknown keys fail with a "did you mean" suggestion (a key a section lists in ``REMOVED_KEYS`` fails with
  the message it gives there),
- values must match the annotated type (``int``, ``float``, ``bool``, ``str``, ``Literal``,
  ``list[...]``, ``dict[str, ...]``, optional values, nested sections),
- every number must be finite and lie in the :class:`Range` its key declares: numeric keys are typed
  ``Annotated[int, Range(...)]`` / ``Annotated[float, Range(...)]`` (the aliases below: :data:`Count`,
  :data:`Seed`, :data:`Probability`, ...), and a test fails on any numeric key without one,
- fields without a default are required,
- a section may define ``check(self) -> list[str]`` for invalid combinations.

Every error names the full key path (``fit_ot.neural.lr``). All problems found are
reported together as one :class:`RecipeError` (exit code 2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from pisces_cli.errors import UsageError

MISSING = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid values of a numeric recipe key: ``low``/``high`` bounds (``None``: unbounded), each
    inclusive unless ``low_open``/``high_open``. Floats must be finite whatever the bounds."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        """``>= 1``, ``> 0``, ``in [0, 1)``, or ``a finite number``."""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return "a finite number"

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


#: An integer count: >= 1 (batch sizes, steps, frames, ...).
Count = Annotated[int, Range(low=1)]
#: An integer >= 0 (workers, warm-up steps, indices).
NonNegativeInt = Annotated[int, Range(low=0)]
#: A random seed: what torch, NumPy and Python all accept, [0, 2**32 - 1].
Seed = Annotated[int, Range(low=0, high=2**32 - 1)]
#: A float > 0 (learning rates, tolerances, frame rates, time limits).
PositiveFloat = Annotated[float, Range(low=0, low_open=True)]
#: A float >= 0 (weights that switch a term off at 0, ridge, decay).
NonNegativeFloat = Annotated[float, Range(low=0)]
#: A probability or fraction in [0, 1].
Probability = Annotated[float, Range(low=0, high=1)]
#: Any finite float (signed weights).
FiniteFloat = Annotated[float, Range()]


@dataclasses.dataclass(frozen=True)
class PathKey:
    """Marks a recipe key that names a path, for :func:`pisces_cli.config.recipe.portable_data`.

    ``kind="local"``: always a local file, folder or glob (outputs, data); ``kind="input"``: a local path
    when one exists, else something else (a hub id, a bundled prompt suite, ``latest``)."""

    kind: Literal["local", "input"]


#: A key naming a local file, folder or glob (relative paths are relative to the working directory).
LocalPath = Annotated[str, PathKey("local")]
#: A key naming a local path or, when no such path exists, a hub id / bundled name.
InputPath = Annotated[str, PathKey("input")]


def path_kind(tp: Any) -> str | None:
    """``"local"``/``"input"`` for a key typed :data:`LocalPath`/:data:`InputPath` (optional or not)."""
    if get_origin(tp) in (Union, types.UnionType):
        return next((k for k in map(path_kind, get_args(tp)) if k is not None), None)
    if get_origin(tp) is Annotated:
        return next((m.kind for m in tp.__metadata__ if isinstance(m, PathKey)), None)
    return None


def section_type(tp: Any) -> type | None:
    """The section dataclass a key holds (optional or not), else ``None``."""
    tp = _strip_annotated(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return next((s for s in map(section_type, get_args(tp)) if s is not None), None)
    return tp if dataclasses.is_dataclass(tp) else None


def numeric_range(tp: Any) -> Range | None:
    """The :class:`Range` declared by ``Annotated[int | float, Range(...)]``, else ``None``."""
    if get_origin(tp) is Annotated:
        return next((m for m in tp.__metadata__ if isinstance(m, Range)), None)
    return None


class RecipeError(UsageError):
    """One or more recipe keys are invalid; ``problems`` lists ``(key_path, message)`` pairs.

    A problem whose key was set (or removed) by one of ``overrides`` (the ``key=value`` arguments of the
    command line) is reported as ``command-line override 'key=value': ...``, not as a fault of the file.
    """

    def __init__(
        self, problems: list[tuple[str, str]], source: str | None = None, overrides: typing.Sequence[str] = ()
    ) -> None:
        self.problems = problems
        self.source = source
        lines = []
        from_overrides = 0
        for path, msg in problems:
            item = override_for(path, overrides)
            from_overrides += item is not None
            where = f"command-line override '{item}': " if item is not None else ""
            lines.append(f"  {where}{path or '<root>'}: {msg}")
        if problems and from_overrides == len(problems):
            title = "invalid command-line override" + ("s" if len(problems) > 1 else "") + ":"
        else:
            title = f"invalid recipe{f' in {source}' if source else ''}:"
        super().__init__("\n".join([title, *lines]))


def override_key(item: str) -> str:
    """The key path an override argument sets (``a.b=1``) or removes (``~a.b``)."""
    return item[1:].strip() if item.startswith("~") else item.split("=", 1)[0].strip()


def override_for(path: str, overrides: typing.Sequence[str]) -> str | None:
    """The last override that set ``path``, a section above it or a key below it; ``None`` if none did."""
    for item in reversed(overrides):
        key = override_key(item)
        if key and (path == key or path.startswith((f"{key}.", f"{key}[")) or key.startswith(f"{path}.")):
            return item
    return None


def suggest(name: str, candidates: typing.Iterable[str]) -> str:
    """Return a `` (did you mean 'x'?)`` hint for a misspelt key, or an empty string."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        bounds = numeric_range(tp)
        base = _type_name(get_args(tp)[0])
        if bounds is None:
            return base
        if bounds.low is None and bounds.high is None:
            return f"finite {base}"
        return f"{base} {bounds.describe()}"
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


def type_name(tp: Any) -> str:
    """How a schema type reads in a message: ``int >= 1``, ``list of str``, ``mapping (section)``."""
    return _type_name(tp)


def describe_value(value: Any) -> str:
    """A value as a message shows it (``repr``, cut to 60 characters)."""
    return _describe(value)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _coerce(value: Any, tp: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    """Convert ``value`` to type ``tp``; append a problem and return None when impossible."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        problems_before = len(problems)
        out = _coerce(value, get_args(tp)[0], path, problems)
        bounds = numeric_range(tp)
        if len(problems) == problems_before and bounds is not None and not bounds.contains(out):
            problems.append((path, f"must be {bounds.describe()}, got {_describe(value)}"))
            return None
        if path_kind(tp) is not None and isinstance(out, str) and not out.strip():
            # '' is no path: `output_dir=$RUN` with RUN unset would put every output under / or the cwd
            problems.append((path, "an empty path (an unset shell variable?); give a path"))
            return None
        return out
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        alternatives = [arg for arg in args if arg is not type(None)]
        if len(alternatives) == 1:  # an optional value: report the one type's own problem
            before = len(problems)
            out = _coerce(value, alternatives[0], path, problems)
            for i in range(before, len(problems)):
                where, msg = problems[i]
                if where == path:
                    problems[i] = (where, msg.replace(", got", " or null, got", 1))
            return out
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
        number: float | None = None
        if isinstance(value, (int, float)):
            try:
                number = float(value)
            except OverflowError:  # an integer too large for a float
                number = math.inf
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            problems.append((path, f"expected a number, got {_describe(value)}"))
            return None
        if not math.isfinite(number):
            problems.append((path, f"expected a finite number, got {_describe(value)}"))
            return None
        return number
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
    """Map field name -> (field, resolved type, ``Annotated`` ranges kept) for a section dataclass."""
    hints = get_type_hints(cls, include_extras=True)
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


def build(
    cls: type,
    data: Mapping[str, Any] | None,
    *,
    source: str | None = None,
    overrides: typing.Sequence[str] = (),
) -> Any:
    """Validate ``data`` against section dataclass ``cls`` and return the instance.

    Raises :class:`RecipeError` listing every problem (unknown keys, wrong types, missing
    required values, invalid combinations) with its full key path.
    """
    problems: list[tuple[str, str]] = []
    obj = _build(cls, data or {}, "", problems)
    if problems:
        raise RecipeError(problems, source, overrides)
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


def _strip_annotated(tp: Any) -> Any:
    return get_args(tp)[0] if get_origin(tp) is Annotated else tp


def schema_for_path(cls: type, dotted: str) -> tuple[Any, str | None]:
    """Resolve ``a.b.c`` against the schema: return (type at that path, error message or None)."""
    tp: Any = cls
    walked: list[str] = []
    for part in dotted.split("."):
        inner = _strip_annotated(tp)
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
