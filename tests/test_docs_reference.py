"""docs/recipes.md documents every recipe key with the schema's type and default; docs/vbench.md lists every
weight file `eval --vbench` checks; docs/artifacts.md names every schema pisces writes."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest

from pisces_cli.config.recipe import Recipe

ROOT = Path(__file__).parents[1]
ROW = re.compile(r"^\| `([\w.]+)` \| (.*?) \| `(.*?)` \| (.+) \|$")


def type_text(tp: Any) -> str:
    """The type as docs/recipes.md writes it (see its §1)."""
    origin = get_origin(tp)
    if tp is Any:
        return "any"
    if origin is Literal:
        return " \\| ".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        inner = " or ".join(type_text(a) for a in args)
        return inner + (" or null" if len(args) < len(get_args(tp)) else "")
    if origin in (list, tuple):
        return "list of " + type_text(get_args(tp)[0])
    if origin is dict:
        return "mapping"
    return {str: "string", int: "int", float: "float", bool: "bool"}.get(tp, getattr(tp, "__name__", str(tp)))


def default_text(value: Any) -> str:
    """The default as docs/recipes.md writes it (YAML-like)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(default_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {default_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value if value else '""'
    return repr(value)


def schema_keys(cls: type, instance: Any, prefix: str = "") -> dict[str, tuple[str, str]]:
    """Every leaf key of the recipe schema → (type, default), defaults taken from a default ``Recipe()``."""
    out = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        tp, value = hints[field.name], getattr(instance, field.name)
        if dataclasses.is_dataclass(tp):
            out.update(schema_keys(tp, value, prefix + field.name + "."))
        else:
            out[prefix + field.name] = (type_text(tp), default_text(value))
    return out


def documented_rows() -> dict[str, tuple[str, str, str]]:
    rows = {}
    for line in (ROOT / "docs" / "recipes.md").read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            key, tp, default, meaning = match.groups()
            assert key not in rows, f"docs/recipes.md documents {key} twice"
            rows[key] = (tp, default, meaning)
    return rows


def test_recipes_reference_documents_every_key_with_its_type_and_default():
    schema = schema_keys(Recipe, Recipe())
    rows = documented_rows()
    missing = sorted(set(schema) - set(rows))
    assert not missing, f"docs/recipes.md lacks rows for {missing}: add `| key | type | default | meaning |`"
    unknown = sorted(set(rows) - set(schema))
    assert not unknown, f"docs/recipes.md documents keys the schema does not have: {unknown}"
    wrong = [
        f"{key}: documented {rows[key][:2]}, schema {schema[key]}"
        for key in schema
        if (rows[key][0], rows[key][1]) != schema[key]
    ]
    assert not wrong, "docs/recipes.md disagrees with the schema:\n" + "\n".join(wrong)
    assert all(len(meaning) >= 8 for _, _, meaning in rows.values()), "every key needs a meaning"


def test_vbench_doc_lists_every_weight_file_eval_checks():
    from pisces_cli.stages.eval_vbench import WEIGHTS

    text = (ROOT / "docs" / "vbench.md").read_text(encoding="utf-8")
    for dimension, files in WEIGHTS.items():
        assert dimension in text, dimension
        for name in files:
            assert f"`{name}`" in text, name


def test_vbench_doc_states_the_aggregation_constants_of_the_code():
    from pisces_cli.evaluation.vbench_aggregate import VBENCH_DIMENSIONS

    text = (ROOT / "docs" / "vbench.md").read_text(encoding="utf-8")
    for spec in VBENCH_DIMENSIONS:
        row = f"| {spec.key} | {spec.group[0].upper()} | {spec.min_raw!r} | {spec.max_raw!r} | {spec.weight:g} |"
        assert row in text, row


def test_vbench_doc_states_every_difference_the_commands_print():
    from pisces_cli.stages.eval_metrics import VBENCH_DIFFERENCES

    section = (
        (ROOT / "docs" / "vbench.md").read_text(encoding="utf-8").split("### 2.4", 1)[1].split("\n## ", 1)[0]
    )
    for metric in VBENCH_DIFFERENCES:
        assert f"| {metric} |" in section, metric


# --------------------------------------------------------------------- commands and flags the docs name

#: flags of other tools the docs show next to pisces commands (pip, torchrun, hf, benchmark scripts).
OTHER_TOOLS_FLAGS = {"--index-url", "--nproc_per_node", "--local-dir", "--config", "--device", "--dry"}


def _cli_tree():
    import typer.main

    from pisces_cli.cli.main import app

    return typer.main.get_command(app)


def _flags(command) -> set[str]:
    return {name for param in command.params for name in (*param.opts, *param.secondary_opts)}


def pisces_command_problems(text: str) -> list[str]:
    """Every ``pisces CMD [SUB] ... --flag`` in ``text`` whose command or flag the CLI does not have."""
    root = _cli_tree()
    problems = []
    for match in re.finditer(r"(?<![\w/.-])pisces((?:[ \t]+[^\s;|&)`'\"#]+)+)", text):
        tokens = match.group(1).split()
        command, path = root, []
        while tokens and tokens[0] in getattr(command, "commands", {}):
            command = command.commands[tokens.pop(0)]
            path.append(command.name)
        if path == ["eval"] and tokens and tokens[0] not in command.commands:
            command = command.commands["run"]  # `pisces eval VIDEOS ...` is `pisces eval run VIDEOS ...`
        known = _flags(command) | ({"--version", "-V"} if command is root else set()) | {"--help", "-h"}
        if not path and tokens and not tokens[0].startswith("-"):
            if re.fullmatch(r"[a-z]+(?:-[a-z]+)*", tokens[0]) and any(t.startswith("-") for t in tokens):
                problems.append(f"`pisces {tokens[0]}`: no such command")
            continue  # prose ("a pisces checkpoint") or a placeholder (`pisces <stage> --recipe R`)
        for token in tokens:
            flag = token.split("=")[0].rstrip(".,:")
            if re.fullmatch(r"--[a-z][\w-]*", flag) and flag not in known:
                problems.append(f"`pisces {' '.join(path)} {flag}`: no such option")
    return problems


def test_every_command_and_flag_the_docs_and_messages_name_exists():
    all_flags: set[str] = set()

    def walk(command) -> None:
        all_flags.update(_flags(command))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(_cli_tree())
    files = [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "recipes").glob("*.yaml")),
    ]
    files += sorted((ROOT / "pisces_cli").rglob("*.py"))
    problems = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        problems += [f"{path.relative_to(ROOT)}: {p}" for p in pisces_command_problems(text)]
        for flag in set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_]*(?:-[a-z0-9_]+)*(?![\w-])", text)):
            if flag not in all_flags | OTHER_TOOLS_FLAGS | {"--version", "--help"}:
                problems.append(f"{path.relative_to(ROOT)}: {flag} is an option of no pisces command")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("run `pisces score VIDEOS -r wan --limit 3`", []),
        ("run `pisces eval runs/videos -r wan --vbench`", []),
        ("run `pisces score VIDEOS --lmit 3`", ["`pisces score --lmit`: no such option"]),
        ("then `pisces fit-ott -r wan`", ["`pisces fit-ott`: no such command"]),
        ("`pisces eval compare A B --strips 2 --json`", ["`pisces eval compare --json`: no such option"]),
    ],
)
def test_the_command_checker_catches_what_it_should(text, expected):
    assert pisces_command_problems(text) == expected
