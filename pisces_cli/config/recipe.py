"""Recipes: load a bundled or local YAML recipe, apply ``key=value`` overrides, validate it.

Resolution order for ``--recipe X``: an existing file path, else a bundled recipe named ``X`` or
``X.yaml`` in ``recipes/``. Overrides are ``a.b.c=value`` (value parsed as YAML, then typed by the
schema; lists as ``[1, 2]``) and ``~a.b`` (remove the key so its default applies). After
overrides, string values may refer to other keys as ``${a.b}`` (e.g. ``${output_dir}/ot``).
Nothing here imports torch: a recipe is fully validated before any heavy import or GPU work.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pisces_cli.config import schema
from pisces_cli.config.sections.common import DataSection, ModelsSection, RuntimeSection
from pisces_cli.config.sections.embed import EmbedSection
from pisces_cli.config.sections.eval import EvalSection
from pisces_cli.config.sections.finetune import FinetuneSection
from pisces_cli.config.sections.fit_ot import FitOTSection
from pisces_cli.config.sections.generate import GenerateSection
from pisces_cli.config.sections.reward import RewardSection
from pisces_cli.config.sections.score import ScoreSection
from pisces_cli.errors import UsageError
from pisces_cli.textfile import read_text


@dataclass
class Recipe:
    """The root of every recipe: shared sections plus one section per stage."""

    name: str = ""
    description: str = ""
    output_dir: schema.LocalPath = "outputs"
    seed: schema.Seed = 0
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    data: DataSection = field(default_factory=DataSection)
    reward: RewardSection = field(default_factory=RewardSection)
    embed: EmbedSection = field(default_factory=EmbedSection)
    fit_ot: FitOTSection = field(default_factory=FitOTSection)
    score: ScoreSection = field(default_factory=ScoreSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    generate: GenerateSection = field(default_factory=GenerateSection)
    eval: EvalSection = field(default_factory=EvalSection)


@dataclass
class ResolvedRecipe:
    """A validated recipe: the typed object, its plain data (defaults filled in) and provenance."""

    recipe: Recipe
    data: dict[str, Any]
    source: str
    overrides: list[str]

    @property
    def hash(self) -> str:
        """sha256 (first 16 hex digits) of the canonical JSON of the resolved recipe."""
        return recipe_hash(self.data)

    def to_yaml(self) -> str:
        return dump_yaml(self.data)

    def portable_data(self, base: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """:attr:`data` with every local path made absolute (:func:`portable_data`)."""
        return portable_data(self.data, base)

    def portable_yaml(self) -> str:
        """The YAML of :meth:`portable_data`: what pisces writes as a recipe, runnable from any folder."""
        return dump_yaml(self.portable_data())


def _absolute(value: str, kind: str, base: Path) -> str:
    if not value or Path(value).expanduser().is_absolute():
        return value
    candidate = base / value
    if kind == "input" and not candidate.exists():
        return value  # a hub id, a bundled prompt suite or "latest": not a path here
    return os.path.normpath(candidate)


def portable_data(data: Any, base: str | os.PathLike[str] | None = None, cls: Any = None) -> Any:
    """A copy of recipe ``data`` whose relative paths are absolute (resolved against ``base``, default the
    working directory): the rule for every recipe pisces writes, so that it runs from any folder.

    Keys typed :data:`~pisces_cli.config.schema.LocalPath` are always made absolute; keys typed
    :data:`~pisces_cli.config.schema.InputPath` only when ``base/value`` exists (else it is a hub id or a
    bundled name). Keys the schema does not know are copied unchanged.
    """
    root = Path(base) if base is not None else Path.cwd()
    cls = Recipe if cls is None else cls
    if not isinstance(data, dict):
        return copy.deepcopy(data)
    fields = schema.section_fields(cls)
    out: dict[str, Any] = {}
    for key, value in data.items():
        tp = fields[key][1] if key in fields else None
        kind = schema.path_kind(tp) if tp is not None else None
        section = schema.section_type(tp) if tp is not None else None
        if kind is not None and isinstance(value, str):
            out[key] = _absolute(value, kind, root)
        elif section is not None and isinstance(value, dict):
            out[key] = portable_data(value, root, section)
        else:
            out[key] = copy.deepcopy(value)
    return out


def recipe_hash(data: dict[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def bundled_recipes_dir() -> Path:
    """The folder holding the bundled recipes (``recipes/`` of the source tree or the installed copy)."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "recipes", here.parents[1] / "recipes"):
        if candidate.is_dir():
            return candidate
    raise UsageError("bundled recipes folder not found (expected recipes/ next to pisces_cli/)")


def list_bundled() -> list[tuple[str, str, Path]]:
    """(name, one-line description, path) of every bundled recipe, sorted by name."""
    out = []
    for path in sorted(bundled_recipes_dir().glob("*.yaml")):
        out.append((path.stem, describe(path), path))
    return out


def describe(path: Path) -> str:
    """A recipe's one-line description: its ``description`` key, else its first comment line."""
    text = read_text(path)
    try:
        data = parse_yaml(text)
        if isinstance(data, dict) and isinstance(data.get("description"), str):
            return data["description"].strip().splitlines()[0]
    except yaml.YAMLError:
        pass
    for line in text.splitlines():
        if line.startswith("#") and line.strip("# ").strip():
            return line.strip("# ").strip()
    return ""


def resolve_recipe_path(spec: str) -> Path:
    """Turn ``--recipe`` into a file: a local path, or a bundled name (``hunyuan`` / ``hunyuan.yaml``)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise UsageError(f"recipe {spec!r} is not a file")
    names = {name: p for name, _, p in list_bundled()}
    stem = spec[:-5] if spec.endswith(".yaml") else spec[:-4] if spec.endswith(".yml") else spec
    if "/" not in spec and stem in names:
        return names[stem]
    hint = schema.suggest(stem, names)
    raise UsageError(
        f"recipe {spec!r} not found: no such file and no bundled recipe of that name{hint}. "
        f"Bundled: {', '.join(sorted(names)) or 'none'} (see `pisces ls`)."
    )


#: Most YAML values a document may hold once its aliases are expanded (a recipe holds a few hundred).
MAX_YAML_VALUES = 100_000


class YamlTooLarge(yaml.YAMLError):
    """A YAML document whose aliases expand past :data:`MAX_YAML_VALUES` values, refer to themselves,
    or that nests too deeply to parse."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph whose expanded size (every alias counted in full, at any depth) passes
    :data:`MAX_YAML_VALUES`, or that refers to itself. Iterative: no recursion limit to hit."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_YAML_VALUES:
                raise YamlTooLarge(
                    f"its aliases expand to more than {MAX_YAML_VALUES} values (an alias bomb?); "
                    "write the values out instead of nesting aliases"
                )
            continue
        if key in sizes:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise YamlTooLarge("an alias refers to a value that contains it (a recursive alias)")
            if id(child) not in sizes:
                stack.append((child, False))


class YamlDuplicateKey(yaml.YAMLError):
    """A YAML mapping that gives one key twice (YAML itself would keep the last value without a word)."""


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_duplicate_keys(root: yaml.Node) -> None:
    """Refuse a mapping, at any depth, that holds the same scalar key twice (naming the key and both
    lines). Iterative, and each node is visited once, however often aliases repeat it."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for key, _value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
                    continue
                line = key.start_mark.line + 1
                first = lines.get((key.tag, key.value))
                lines[(key.tag, key.value)] = line
                if first is not None:
                    raise YamlDuplicateKey(
                        f"key {key.value!r} is given twice (lines {first} and {line}); YAML would keep "
                        "only the last one: keep one"
                    )
        stack.extend(_children(node))


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` with aliases bounded (:func:`_check_expansion`) and duplicate keys refused
    (:func:`_check_duplicate_keys`) before anything is built.

    Raises:
        yaml.YAMLError: invalid YAML, :class:`YamlTooLarge` or :class:`YamlDuplicateKey`.
    """
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError as exc:
            raise YamlTooLarge("it nests values too deeply to read") from exc
        if node is None:
            return None
        _check_expansion(node)
        _check_duplicate_keys(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A recipe file as a mapping (text read by :func:`pisces_cli.textfile.read_text`, YAML by
    :func:`parse_yaml`). Raises UsageError naming the file."""
    text = read_text(path)
    try:
        data = parse_yaml(text)
    except YamlTooLarge as exc:
        raise UsageError(f"{path}: refused: {exc}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a recipe must be a YAML mapping of sections, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str = "overrides") -> dict[str, Any]:
    """Apply ``a.b=value`` / ``~a.b`` overrides to a copy of ``data``; keys are checked against the schema."""
    out = copy.deepcopy(data)
    problems: list[tuple[str, str]] = []
    for item in overrides:
        if item.startswith("-"):
            raise UsageError(
                f"unexpected option {item!r}: recipe overrides look like key.path=value or ~key.path"
            )
        if item.startswith("~"):
            key = item[1:]
            if not key.strip():
                raise UsageError(f"bad override {item!r}: no key after '~'; expected ~key.path")
            _tp, err = schema.schema_for_path(Recipe, key)
            if err:
                problems.append((key, err))
                continue
            _remove(out, key.split("."))
            continue
        if "=" not in item:
            raise UsageError(f"bad override {item!r}: expected key.path=value or ~key.path")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UsageError(f"bad override {item!r}: no key before '='; expected key.path=value")
        _tp, err = schema.schema_for_path(Recipe, key)
        if err:
            problems.append((key, err))
            continue
        try:
            value = parse_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:  # not YAML (or an alias bomb): the text itself
            value = raw
        _assign(out, key.split("."), value, problems, key)
    if problems:
        raise schema.RecipeError(problems, source, overrides)
    return out


def _assign(data: dict[str, Any], parts: list[str], value: Any, problems: list, key: str) -> None:
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            problems.append((key, f"'{part}' holds a value, not a section"))
            return
        node = nxt
    node[parts[-1]] = value


def _remove(data: dict[str, Any], parts: list[str]) -> None:
    node = data
    for part in parts[:-1]:
        node = node.get(part)
        if not isinstance(node, dict):
            return
    node.pop(parts[-1], None)


_REF = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


def interpolate(
    data: dict[str, Any], source: str = "interpolation", overrides: list[str] | None = None
) -> dict[str, Any]:
    """Replace ``${a.b}`` references in string values by the referenced (resolved) values."""
    problems: list[tuple[str, str]] = []

    def lookup(key: str, stack: tuple[str, ...]) -> Any:
        if key in stack:
            problems.append((stack[-1], f"reference cycle: {' -> '.join(stack + (key,))}"))
            return ""
        node: Any = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                problems.append((stack[-1] if stack else key, f"${{{key}}} refers to an unknown key"))
                return ""
            node = node[part]
        return resolve(node, stack + (key,))

    def resolve(value: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(value, str):
            whole = _REF.fullmatch(value)
            if whole:
                return lookup(whole.group(1), stack)
            return _REF.sub(lambda m: str(lookup(m.group(1), stack)), value)
        if isinstance(value, dict):
            return {k: resolve(v, stack) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, stack) for v in value]
        return value

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, f"{path}.{k}" if path else k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, path) for v in node]
        return resolve(node, (path,))

    out = walk(data, "")
    if problems:
        raise schema.RecipeError(problems, source, overrides or [])
    return out


def resolve_data(data: dict[str, Any], overrides: list[str], source: str) -> ResolvedRecipe:
    """Validate raw recipe data (+ overrides), fill defaults, interpolate, validate again."""
    raw = apply_overrides(data, overrides, source)
    first = schema.build(Recipe, raw, source=source, overrides=overrides)
    full = interpolate(schema.to_dict(first), source, overrides)
    recipe = schema.build(Recipe, full, source=source, overrides=overrides)
    return ResolvedRecipe(
        recipe=recipe, data=schema.to_dict(recipe), source=source, overrides=list(overrides)
    )


def load_recipe(spec: str, overrides: list[str] | None = None) -> ResolvedRecipe:
    """Resolve ``--recipe`` (bundled name or path), apply overrides, validate. Raises UsageError (exit 2)."""
    path = resolve_recipe_path(spec)
    return resolve_data(read_yaml_mapping(path), list(overrides or []), str(path))
