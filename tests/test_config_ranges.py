"""`validate` knows every range: declared numeric ranges, finite floats, override messages, alias bombs."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import pytest

from pisces_cli.cli.main import main
from pisces_cli.config import RecipeError, resolve_data
from pisces_cli.config.recipe import MAX_YAML_VALUES, Recipe
from pisces_cli.config.schema import numeric_range, section_fields


def _numeric_leaves(tp: Any, path: str) -> list[tuple[str, Any]]:
    """(key path, declared type) of every int/float value below ``tp``, lists and optionals included."""
    origin = get_origin(tp)
    if origin is Annotated:
        base = get_args(tp)[0]
        return [(path, tp)] if base in (int, float) else _numeric_leaves(base, path)
    if tp in (int, float):
        return [(path, tp)]
    if origin in (Union, types.UnionType):
        return [leaf for arg in get_args(tp) for leaf in _numeric_leaves(arg, path)]
    if origin in (list, tuple):
        return [leaf for arg in get_args(tp)[:1] for leaf in _numeric_leaves(arg, f"{path}[]")]
    if origin is dict:
        return _numeric_leaves(get_args(tp)[1], f"{path}.*") if get_args(tp) else []
    if dataclasses.is_dataclass(tp):
        return [
            leaf
            for name, (_field, sub) in section_fields(tp).items()
            for leaf in _numeric_leaves(sub, f"{path}.{name}" if path else name)
        ]
    return []


def test_every_numeric_key_declares_its_range():
    leaves = _numeric_leaves(Recipe, "")
    assert len(leaves) > 60  # the walk reaches every section
    undeclared = [path for path, tp in leaves if numeric_range(tp) is None]
    assert undeclared == [], f"numeric recipe keys without a declared Range: {undeclared}"


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("seed=-1", "seed", "must be in [0, 4294967295], got -1"),
        ("score.bootstrap_samples=0", "score.bootstrap_samples", "must be >= 1, got 0"),
        ("eval.bootstrap_samples=0", "eval.bootstrap_samples", "must be >= 1, got 0"),
        ("reward.weights.quality=.nan", "reward.weights.quality", "expected a finite number"),
        ("reward.weights.semantic=.inf", "reward.weights.semantic", "expected a finite number"),
        ("reward.token_ot.mass=0", "reward.token_ot.mass", "must be in (0, 1]"),
        ("fit_ot.val_fraction=1", "fit_ot.val_fraction", "must be in (0, 1)"),
        ("generate.crf=52", "generate.crf", "must be in [0, 51]"),
        ("generate.seeds=[-2]", "generate.seeds[0]", "must be in [0, 4294967295]"),
        ("data.fps=0", "data.fps", "must be > 0 or null"),
        ("runtime.num_workers=-1", "runtime.num_workers", "must be >= 0"),
        ("runtime.decode_timeout_s=0", "runtime.decode_timeout_s", "must be > 0 or null"),
        ("finetune.adam_betas=[0.9, 1.0]", "finetune.adam_betas[1]", "must be in [0, 1)"),
        ("reward.token_ot.layers=[-1]", "reward.token_ot.layers[0]", "must be >= 0"),
    ],
)
def test_out_of_range_values_are_refused_at_load_naming_the_key(override: str, key: str, words: str):
    with pytest.raises(RecipeError) as info:
        resolve_data({}, [override], "r.yaml")
    message = str(info.value)
    assert f"{key}: {words}" in message, message


def test_out_of_range_values_in_the_file_are_refused_too(tmp_path: Path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: -1\nscore: {bootstrap_samples: 0}\nreward: {weights: {quality: .nan}}\n")
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"invalid recipe in {recipe}" in err.replace("\n", "")
    for key in ("seed", "score.bootstrap_samples", "reward.weights.quality"):
        assert key in err


def test_in_range_edges_are_accepted():
    resolved = resolve_data(
        {},
        [
            "seed=0",
            "reward.weights.quality=-0.5",
            "reward.token_ot.mass=1",
            "generate.crf=0",
            "runtime.num_workers=0",
        ],
        "t",
    )
    assert resolved.recipe.reward.weights.quality == -0.5 and resolved.recipe.reward.token_ot.mass == 1.0


def test_a_typo_in_an_override_names_the_override_not_the_file(tmp_path: Path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("seed: 1\n")
    assert main(["validate", str(recipe), "score.bootstrap_sample=5"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "command-line override 'score.bootstrap_sample=5'" in err
    assert "did you mean 'bootstrap_samples'" in err
    assert f"in {recipe}" not in err
    # a bad value given on the command line, too
    assert main(["validate", str(recipe), "seed=abc"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "command-line override 'seed=abc'" in err and "expected an integer" in err


def test_a_problem_of_the_file_still_names_the_file(tmp_path: Path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("score: {bach_size: 2}\n")
    assert main(["validate", str(recipe), "seed=2"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"in {recipe}" in err and "score.bach_size" in err and "command-line override" not in err


def _bomb(depth: int, prefix: str = "") -> str:
    """A nested billion-laughs document: ``depth`` levels of 10 aliases each, below ``prefix``."""
    lines = [f"{prefix}a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, depth + 1):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"{prefix}a{level}: &a{level} [{refs}]")
    return "\n".join(lines) + "\n"


def test_nested_alias_bomb_is_refused_quickly_with_exit_2(tmp_path: Path, capsys):
    recipe = tmp_path / "bomb.yaml"
    # below the top level: inside a free-form mapping of a section (models.encoder.options)
    recipe.write_text("models:\n  encoder:\n    options:\n" + _bomb(9, prefix="      "))
    assert main(["validate", str(recipe)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "bomb.yaml" in err and f"more than {MAX_YAML_VALUES}" in err


def test_recursive_alias_and_deep_nesting_are_refused(tmp_path: Path, capsys):
    recursive = tmp_path / "rec.yaml"
    recursive.write_text("models:\n  encoder:\n    options: &x {self: *x}\n")
    assert main(["validate", str(recursive)]) == 2
    assert "recursive alias" in capsys.readouterr().err
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    assert main(["validate", str(deep)]) == 2
    assert "deep.yaml" in capsys.readouterr().err


def test_small_aliases_still_work(tmp_path: Path):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text("models:\n  encoder:\n    options: &opts {a: 1}\n" + "name: x\n")
    assert main(["validate", str(recipe)]) == 0


def test_an_alias_bomb_given_as_an_override_value_is_only_text():
    levels = ["&a0 [" + ", ".join(["lol"] * 10) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb = "[" + ", ".join(levels) + "]"
    resolved = resolve_data({}, [f"name={bomb}"], "t")
    assert resolved.recipe.name == bomb


@pytest.mark.parametrize(
    "argv",
    [
        ["score", "VIDEOS", "-r", "demo", "--limit", "-1"],
        ["score", "VIDEOS", "-r", "demo", "--limit", "0"],
        ["embed", "-r", "demo", "--limit", "-1"],
        ["eval", "run", "VIDEOS", "-r", "demo", "--limit", "0"],
        ["generate", "-r", "demo", "--limit", "-3"],
        ["finetune", "-r", "demo", "--max-steps", "0"],
        ["eval", "compare", "A", "B", "--bootstrap", "0"],
        ["eval", "compare", "A", "B", "--strips", "-1"],
        ["eval", "compare", "A", "B", "--seed", "-1"],
    ],
)
def test_command_line_options_are_range_checked_before_any_work(tmp_path: Path, argv: list[str], capsys):
    argv = [str(tmp_path) if a in ("VIDEOS", "A", "B") else a for a in argv]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    option = next(a for a in argv if a.startswith("--"))
    assert f"'{option}'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "key", ["output_dir", "reward.ot_map", "data.videos", "models.encoder.path", "embed.output"]
)
def test_an_empty_path_is_refused_not_read_as_the_root_or_the_working_folder(key: str):
    # `output_dir=$RUN` with RUN unset: every ${output_dir}/... output would land under /
    with pytest.raises(RecipeError, match=rf"{key}: an empty path"):
        resolve_data({}, [f"{key}="], "t")
    with pytest.raises(RecipeError, match=rf"{key}: an empty path"):
        resolve_data({}, [f"{key}= "], "t")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["score", "", "-r", "demo"], "an empty argument after 'score'"),
        (["score", "clips", "-r", "demo", "-o", ""], "an empty argument after '-o'"),
        (["score", "clips", "-r", "demo", "--ot-map="], "'--ot-map=' gives an empty value"),
        (["validate", ""], "an empty argument after 'validate'"),
    ],
)
def test_an_empty_command_line_argument_exits_2_before_anything_runs(capsys, argv: list[str], words: str):
    # `pisces score "$DIR"` with DIR unset scored the working folder; `-o ""` silently meant the default
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "unset shell variable" in err and "Traceback" not in err
