"""Recipe resolution, overrides, interpolation and validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pisces_cli.config import RecipeError, load_recipe, resolve_data
from pisces_cli.config.recipe import apply_overrides, list_bundled, read_yaml_mapping, resolve_recipe_path
from pisces_cli.errors import UsageError


def test_every_bundled_recipe_validates():
    names = [name for name, _, _ in list_bundled()]
    assert "hunyuan" in names
    for name in names:
        resolved = load_recipe(name)
        assert resolved.data["name"] == name


def test_bundled_by_name_with_and_without_suffix():
    assert resolve_recipe_path("hunyuan") == resolve_recipe_path("hunyuan.yaml")


def test_local_path_wins(tmp_path: Path):
    path = tmp_path / "mine.yaml"
    path.write_text("output_dir: elsewhere\n")
    resolved = load_recipe(str(path))
    assert resolved.recipe.output_dir == "elsewhere"
    assert resolved.recipe.embed.output == "elsewhere/embeddings"


def test_unknown_recipe_suggests_name():
    with pytest.raises(UsageError, match="did you mean 'hunyuan'"):
        resolve_recipe_path("hunyan")


def test_overrides_are_typed_by_schema():
    resolved = resolve_data(
        {},
        ["embed.batch_size=16", "fit_ot.neural.lr_map=3e-5", "reward.token_ot.layers=[0, 1]", "data.fps=8"],
        "t",
    )
    assert resolved.recipe.embed.batch_size == 16
    assert resolved.recipe.fit_ot.neural.lr_map == pytest.approx(3e-5)
    assert resolved.recipe.reward.token_ot.layers == [0, 1]
    assert resolved.recipe.data.fps == 8.0 and isinstance(resolved.recipe.data.fps, float)


def test_removal_override_restores_default():
    resolved = resolve_data({"embed": {"batch_size": 3}}, ["~embed.batch_size"], "t")
    assert resolved.recipe.embed.batch_size == 8


def test_unknown_key_with_suggestion():
    with pytest.raises(RecipeError) as info:
        resolve_data({"fit_ot": {"methd": "neural"}}, [], "r.yaml")
    assert "fit_ot.methd" in str(info.value) and "did you mean 'method'" in str(info.value)
    assert info.value.exit_code == 2


def test_unknown_override_key():
    with pytest.raises(RecipeError, match=r"reward.token_ot.epss.*did you mean 'eps'"):
        apply_overrides({}, ["reward.token_ot.epss=0.1"])


def test_wrong_types_name_the_key():
    with pytest.raises(RecipeError) as info:
        resolve_data({"embed": {"batch_size": "many"}, "fit_ot": {"method": "sinkhorn"}}, [], "t")
    text = str(info.value)
    assert "embed.batch_size: expected an integer" in text
    assert "fit_ot.method: expected one of" in text


def test_invalid_combination():
    with pytest.raises(RecipeError, match="give only one of videos, manifest, shards"):
        resolve_data({"data": {"videos": "a", "manifest": "b.jsonl"}}, [], "t")
    with pytest.raises(RecipeError, match=r"reward.token_ot.mass: must be in \(0, 1\]"):
        resolve_data({}, ["reward.token_ot.mass=1.5"], "t")


def test_bool_and_null_values():
    resolved = resolve_data({}, ["score.report=true", "reward.ot_map=null"], "t")
    assert resolved.recipe.score.report is True
    assert resolved.recipe.reward.ot_map is None
    with pytest.raises(RecipeError, match="expected true or false"):
        resolve_data({}, ["score.report=maybe"], "t")


def test_flag_style_argument_is_an_error():
    with pytest.raises(UsageError, match="unexpected option '--lr'"):
        apply_overrides({}, ["--lr"])
    with pytest.raises(UsageError, match="expected key.path=value"):
        apply_overrides({}, ["embed.batch_size"])
    for empty in ("=1", " =1", "~", "~ "):
        with pytest.raises(UsageError, match="no key"):
            apply_overrides({}, [empty])


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("name: a\nseed: 1\nseed: 2\n", "seed", "lines 2 and 3"),
        ("reward:\n  weights: {quality: 2}\nname: a\nreward:\n  crop: center\n", "reward", "lines 1 and 4"),
        ("embed: {batch_size: 2, batch_size: 3}\n", "batch_size", "lines 1 and 1"),
    ],
)
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(
    tmp_path: Path, text: str, key: str, lines: str
):
    recipe = tmp_path / "dup.yaml"
    recipe.write_text(text)
    with pytest.raises(UsageError, match=rf"dup.yaml: .*key '{key}' is given twice \({lines}\)"):
        load_recipe(str(recipe))


def test_merge_keys_and_repeated_aliases_are_not_duplicates(tmp_path: Path):
    recipe = tmp_path / "merge.yaml"
    recipe.write_text(
        "x-weights: &w {quality: 2.0}\nname: m\nreward:\n  weights:\n    <<: *w\n    semantic: 0.5\n"
        "  token_ot: {gamma: 0.1}\n"
    )
    data = read_yaml_mapping(recipe)
    assert data["reward"]["weights"] == {"quality": 2.0, "semantic": 0.5}


def test_interpolation_and_cycles():
    resolved = resolve_data({"output_dir": "runs/x", "fit_ot": {"output": "${output_dir}/map"}}, [], "t")
    assert resolved.recipe.fit_ot.output == "runs/x/map"
    assert resolved.recipe.fit_ot.embeddings == "runs/x/embeddings"
    with pytest.raises(RecipeError, match="unknown key"):
        resolve_data({"output_dir": "${nope.key}"}, [], "t")


def test_missing_required_value():
    from dataclasses import dataclass

    from pisces_cli.config.schema import build

    @dataclass
    class Section:
        path: str
        size: int = 3

    with pytest.raises(RecipeError, match="path: missing required value"):
        build(Section, {"size": 2})


def test_hash_changes_with_content_and_round_trips_yaml():
    a = resolve_data({}, [], "t")
    b = resolve_data({}, ["seed=1"], "t")
    assert a.hash != b.hash
    again = resolve_data(yaml.safe_load(a.to_yaml()), [], "t")
    assert again.hash == a.hash


def test_yaml_errors_are_usage_errors(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_recipe(str(bad))
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UsageError, match="must be a YAML mapping"):
        load_recipe(str(listy))


def test_removed_runtime_dtype_says_what_replaced_it():
    with pytest.raises(
        RecipeError, match=r"runtime\.dtype: runtime\.dtype was removed.*models\.generator\.dtype"
    ):
        load_recipe("demo", ["runtime.dtype=float32"])


def test_changed_fields_reports_a_section_switched_off_as_one_change():
    from pisces_cli.config.diff import changed_fields

    old = {"token_ot": {"eps": 0.05, "layers": None}, "weights": {"quality": 1}, "frames": {"crop": "center"}}
    new = {"token_ot": None, "weights": {"quality": 1.0}, "frames": {"crop": "random", "seed": 0}}
    assert changed_fields(old, new) == [
        ("frames.crop", "center", "random"),
        ("frames.seed", None, 0),
        ("token_ot", {"eps": 0.05, "layers": None}, None),
    ]
    assert changed_fields(old, old) == [] and changed_fields({"e": {}}, {"e": {}}) == []
