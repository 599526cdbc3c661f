"""Shipped prompt suites (VBench, MovieGenBench subset) and local prompt files."""

from __future__ import annotations

import json

import pytest

from pisces_cli.errors import UsageError
from pisces_cli.evaluation.prompt_suites import Prompt, list_suites, load_suite

# Prompt counts per dimension from docs/vbench.md §1 (verified there by parsing VBench_full_info.json).
VBENCH_COUNTS = {
    "subject_consistency": 72,
    "background_consistency": 86,
    "temporal_flickering": 75,
    "motion_smoothness": 72,
    "dynamic_degree": 72,
    "aesthetic_quality": 93,
    "imaging_quality": 93,
    "object_class": 79,
    "multiple_objects": 82,
    "human_action": 100,
    "color": 85,
    "spatial_relationship": 84,
    "scene": 86,
    "appearance_style": 90,
    "temporal_style": 100,
    "overall_consistency": 93,
}


def test_eval_vbench_suite_sizes():
    prompts = load_suite("vbench")
    assert len(prompts) == 946
    assert len({p.text for p in prompts}) == 944
    assert sum(p.auxiliary_info is not None for p in prompts) == 506
    for dimension, count in VBENCH_COUNTS.items():
        assert len(load_suite(f"vbench:{dimension}")) == count, dimension


def test_eval_vbench_entries_carry_dimensions_and_labels():
    prompts = load_suite("vbench")
    assert prompts[0] == Prompt("In a still frame, a stop sign", ("temporal_flickering",), None)
    vase = next(p for p in prompts if p.text == "a vase and scissors")
    assert vase.dimensions == ("multiple_objects",)
    assert vase.auxiliary_info == {"multiple_objects": {"object": "vase and scissors"}}
    shared = [p for p in prompts if p.text == "The bund Shanghai, oil painting"]
    assert len(shared) == 2  # listed under appearance_style and overall_consistency
    subject = {p.text for p in load_suite("vbench:subject consistency")}
    assert subject == {p.text for p in load_suite("vbench:dynamic_degree")}  # shared prompt list


def test_eval_vbench_text_file_matches_json():
    from importlib import resources

    lines = (
        resources.files("pisces_cli.data.prompts")
        .joinpath("vbench_all_dimension.txt")
        .read_text()
        .splitlines()
    )
    assert lines == [p.text for p in load_suite("vbench")]


def test_eval_moviegenbench_subset():
    prompts = load_suite("moviegenbench")
    assert len(prompts) == 100
    assert prompts[0].text.startswith("A stylish woman walks down a Tokyo street")
    assert all(p.dimensions == () and p.auxiliary_info is None for p in prompts)


def test_eval_list_suites():
    suites = list_suites()
    assert {"vbench", "moviegenbench"} <= set(suites)
    assert len([name for name in suites if name.startswith("vbench:")]) == 16
    for name in suites:
        assert load_suite(name)


def test_eval_unknown_suite_or_dimension():
    with pytest.raises(UsageError, match="did you mean 'color'"):
        load_suite("vbench:colour")
    with pytest.raises(UsageError, match="neither a built-in suite"):
        load_suite("no-such-suite")


def test_eval_local_prompt_files(tmp_path):
    text_file = tmp_path / "mine.txt"
    text_file.write_text("# my prompts\na cat\n\n  a dog running  \n")
    assert [p.text for p in load_suite(text_file)] == ["a cat", "a dog running"]
    assert [p.text for p in load_suite(str(text_file))] == ["a cat", "a dog running"]

    jsonl_file = tmp_path / "mine.jsonl"
    jsonl_file.write_text(
        json.dumps({"prompt": "a red car", "dimension": "color", "auxiliary_info": {"color": "red"}})
        + "\n\n"
        + json.dumps({"prompt_en": "a boat", "dimensions": ["scene", "color"]})
        + "\n"
    )
    prompts = load_suite(jsonl_file)
    assert prompts[0] == Prompt("a red car", ("color",), {"color": "red"})
    assert prompts[1] == Prompt("a boat", ("scene", "color"), None)

    json_file = tmp_path / "full_info.json"
    json_file.write_text(json.dumps([{"prompt_en": "x", "dimension": ["scene"]}]))
    assert load_suite(json_file) == [Prompt("x", ("scene",), None)]


def test_eval_bad_local_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"title": "no prompt"}\n')
    with pytest.raises(UsageError, match="line 2"):
        load_suite(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    with pytest.raises(UsageError, match="no prompts"):
        load_suite(empty)
    other = tmp_path / "prompts.csv"
    other.write_text("a cat\n")
    with pytest.raises(UsageError, match=".txt, .jsonl or .json"):
        load_suite(other)
