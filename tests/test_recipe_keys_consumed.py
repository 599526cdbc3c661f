"""Every recipe key is read by some code: a key nothing reads is a setting users change with no effect.

The check is static. It walks the recipe schema (every field of every section, nested sections included) and
looks, in the package's source outside the schema definitions, for a read of that field on something that names
its section: an attribute chain ``….<section>.<field>`` (``recipe.finetune.max_steps``, ``self.grpo.eta``), a
``getattr(<section>, "<field>")`` (also through a loop over a literal tuple of names), ``<section>["<field>"]`` /
``<section>.get("<field>")``, or the same through an alias: an assignment (``section = resolved.recipe.finetune``
makes ``section.max_steps`` a read of ``finetune.max_steps``) or a call argument (``f(recipe.reward.token_ot)``
makes ``f``'s parameter a name of ``token_ot``). A ``${a.b}`` reference in a string (a default such as
``"${output_dir}/finetune"``) reads ``a.b``. Aliases are collected over the whole package, so the check can only
over-approximate what is read; a key it reports is read nowhere under any name its section goes by.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import types
import typing
from pathlib import Path

import pisces_cli
from pisces_cli.config.recipe import Recipe
from pisces_cli.config.schema import section_fields

PACKAGE = Path(pisces_cli.__file__).parent
#: the schema definitions themselves: their ``check()`` methods validate values, which is not using them.
SCHEMA_FILES = ("config/sections/", "config/schema.py")
ROOT = "recipe"
#: names that hold the whole recipe as plain data (``resolved.data``, a parsed recipe file), read by key.
ROOT_DATA = {"data"}
REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def _section_type(tp):
    """The dataclass inside ``tp`` (``Section``, ``Section | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if inner else None
    return None


def schema_keys(cls=Recipe, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf key path of the schema (sections are walked, not listed)."""
    keys = []
    for name, (_field, tp) in section_fields(cls).items():
        nested = _section_type(tp)
        if nested is not None:
            keys.extend(schema_keys(nested, (*prefix, name)))
        else:
            keys.append((*prefix, name))
    return keys


def _chain(node: ast.AST, loop_names: dict[str, list[str]]) -> list[list[str]]:
    """Dotted name chains a node reads: ``a.b.c`` → [[a, b, c]]; ``getattr(a.b, "c")`` → [[a, b, c]]."""
    if isinstance(node, ast.Name):
        return [[node.id]]
    if isinstance(node, ast.Attribute):
        return [chain + [node.attr] for chain in _chain(node.value, loop_names)]
    key = node.slice if isinstance(node, ast.Subscript) else None
    if isinstance(key, ast.Constant) and isinstance(key.value, str):
        return [chain + [key.value] for chain in _chain(node.value, loop_names)]
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) >= 2:
            receivers, name = _chain(node.args[0], loop_names), node.args[1]
        elif isinstance(func, ast.Attribute) and func.attr == "get":
            receivers, name = _chain(func.value, loop_names), node.args[0]
        else:
            return []
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            return [chain + [name.value] for chain in receivers]
        if isinstance(name, ast.Name) and name.id in loop_names:
            return [chain + [value] for chain in receivers for value in loop_names[name.id]]
    return []


def _parameters(tree: ast.AST) -> dict[str, list[str]]:
    """Function name → its positional parameter names (``self`` dropped)."""
    found: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = [a.arg for a in node.args.posonlyargs + node.args.args]
            found[node.name] = [n for n in names if n not in ("self", "cls")]
    return found


def _literal_strings(node: ast.AST) -> list[str] | None:
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts
    ):
        return [e.value for e in node.elts]
    return None


def collect_reads(sources: dict[str, str]) -> tuple[list[list[str]], dict[str, set[str]]]:
    """(every attribute chain read, alias name → the names it was assigned from) over ``sources``."""
    chains: list[list[str]] = []
    aliases: dict[str, set[str]] = {}
    trees = [ast.parse(text) for text in sources.values()]
    parameters: dict[str, list[str]] = {}
    for tree in trees:
        parameters.update(_parameters(tree))
    for tree in trees:
        loop_names: dict[str, list[str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.target, ast.Name):
                values = _literal_strings(node.iter)
                if values is not None:
                    loop_names.setdefault(node.target.id, []).extend(values)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
                chains.extend(_chain(node, loop_names))
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                sources_of = [c[-1] for c in _chain(node.value, loop_names)]
                for target in targets:
                    name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", None)
                    if name is not None and sources_of:
                        aliases.setdefault(name, set()).update(sources_of)
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                params = parameters.get(called or "", [])
                bound = list(zip(params, node.args)) + [(k.arg, k.value) for k in node.keywords if k.arg]
                for param, value in bound:
                    sources_of = [c[-1] for c in _chain(value, loop_names)]
                    if sources_of:
                        aliases.setdefault(param, set()).update(sources_of)
    return chains, aliases


def referenced_keys(sources: dict[str, str]) -> set[str]:
    """Keys named in ``${a.b}`` references inside string constants."""
    found = set()
    for text in sources.values():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.update(REFERENCE.findall(node.value))
    return found


def _names_for(section: str, aliases: dict[str, set[str]]) -> set[str]:
    """Every variable name that may hold ``section`` (transitively through aliases)."""
    names, frontier = {section}, [section]
    while frontier:
        current = frontier.pop()
        for alias, sources in aliases.items():
            if current in sources and alias not in names:
                names.add(alias)
                frontier.append(alias)
    return names


def unread_keys(
    sources: dict[str, str], keys: list[tuple[str, ...]], schema_sources: dict[str, str] | None = None
) -> list[str]:
    """The keys (dotted) no code in ``sources`` reads (``schema_sources`` only contribute ``${…}`` references)."""
    chains, aliases = collect_reads(sources)
    referenced = referenced_keys({**sources, **(schema_sources or {})})
    reads: dict[str, set[str]] = {}
    for chain in chains:
        for receiver, attribute in zip(chain[:-1], chain[1:]):
            reads.setdefault(attribute, set()).add(receiver)
    missing = []
    for key in keys:
        section = key[-2] if len(key) > 1 else ROOT
        names = _names_for(section, aliases) | (ROOT_DATA if section == ROOT else set())
        if not reads.get(key[-1], set()) & names and ".".join(key) not in referenced:
            missing.append(".".join(key))
    return missing


def package_sources(schema: bool = False) -> dict[str, str]:
    """The package's source files outside (``schema=False``) or inside the schema definitions."""
    return {
        str(path.relative_to(PACKAGE)): path.read_text(encoding="utf-8")
        for path in sorted(PACKAGE.rglob("*.py"))
        if str(path.relative_to(PACKAGE)).startswith(SCHEMA_FILES) == schema
    }


def test_every_recipe_key_is_read_by_some_code():
    assert unread_keys(package_sources(), schema_keys(), package_sources(schema=True)) == []


def test_the_check_finds_a_key_nothing_reads():
    sources = {
        "a.py": "def f(resolved):\n    section = resolved.recipe.finetune\n    return section.max_steps\n",
        "b.py": "def g(settings):\n    for k in ('eta', 'beta'):\n        getattr(settings, k)\n",
        "c.py": "def h(recipe):\n    g(recipe.finetune.grpo)\n    return '${output_dir}/x', recipe.models['encoder']\n",
    }
    keys = [("finetune", "max_steps"), ("finetune", "grpo", "eta"), ("finetune", "grpo", "beta")]
    keys += [("output_dir",), ("models", "encoder"), ("finetune", "learning_rate"), ("runtime", "dtype")]
    assert unread_keys(sources, keys) == ["finetune.learning_rate", "runtime.dtype"]
    # the same sources without the call that binds ``settings`` to the grpo section: its keys are unread
    sources["c.py"] = "def h(recipe):\n    return recipe.finetune.max_steps\n"
    assert "finetune.grpo.eta" in unread_keys(sources, keys)


def test_schema_walk_reaches_nested_sections():
    keys = {".".join(k) for k in schema_keys()}
    assert {"finetune.grpo.eta", "reward.token_ot.mass", "seed", "models.generator.dtype"} <= keys
    assert "finetune.grpo" not in keys
