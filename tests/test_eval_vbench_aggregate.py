"""VBench aggregation: normalisation bounds, weights, scales, file formats, missing/unknown names."""

from __future__ import annotations

import json

import pytest

from pisces_cli.errors import UsageError
from pisces_cli.evaluation.vbench_aggregate import (
    DIMENSION_BY_KEY,
    VBENCH_DIMENSIONS,
    aggregate_vbench,
    aggregate_vbench_files,
    canonical_dimension_name,
    detect_scale,
    load_dimension_scores,
    render_vbench_table,
)

# Independent reference: docs/vbench.md §3, written out by hand here (not imported from the module).
MINMAX = {
    "subject consistency": (0.1462, 1.0),
    "background consistency": (0.2615, 1.0),
    "temporal flickering": (0.6293, 1.0),
    "motion smoothness": (0.706, 0.9975),
    "dynamic degree": (0.0, 1.0),
    "aesthetic quality": (0.0, 1.0),
    "imaging quality": (0.0, 1.0),
    "object class": (0.0, 1.0),
    "multiple objects": (0.0, 1.0),
    "human action": (0.0, 1.0),
    "color": (0.0, 1.0),
    "spatial relationship": (0.0, 1.0),
    "scene": (0.0, 0.8222),
    "appearance style": (0.0009, 0.2855),
    "temporal style": (0.0, 0.364),
    "overall consistency": (0.0, 0.364),
}
QUAL = [
    "subject consistency",
    "background consistency",
    "temporal flickering",
    "motion smoothness",
    "aesthetic quality",
    "imaging quality",
    "dynamic degree",
]
SEM = [d for d in MINMAX if d not in QUAL]


def reference_scores(raw: dict[str, float]) -> tuple[float, float, float]:
    weight = {d: (0.5 if d == "dynamic degree" else 1.0) for d in MINMAX}
    norm = {d: weight[d] * (raw.get(d, 0.0) - lo) / (hi - lo) for d, (lo, hi) in MINMAX.items()}
    q = sum(norm[d] for d in QUAL) / 6.5
    s = sum(norm[d] for d in SEM) / 9.0
    return 100 * (4 * q + s) / 5, 100 * q, 100 * s


# VideoCrafter-2.0 on the VBench leaderboard (percent, 2 decimals): Total 80.44, Quality 82.20, Semantic 73.42.
VIDEOCRAFTER2 = {
    "subject_consistency": 96.85,
    "background_consistency": 98.22,
    "temporal_flickering": 98.41,
    "motion_smoothness": 97.73,
    "dynamic_degree": 42.50,
    "aesthetic_quality": 63.13,
    "imaging_quality": 67.22,
    "object_class": 92.55,
    "multiple_objects": 40.66,
    "human_action": 95.00,
    "color": 92.92,
    "spatial_relationship": 35.86,
    "scene": 55.29,
    "appearance_style": 25.13,
    "temporal_style": 25.84,
    "overall_consistency": 28.23,
}


def test_eval_constants_table_matches_reference():
    assert len(VBENCH_DIMENSIONS) == 16
    for name, (lo, hi) in MINMAX.items():
        spec = DIMENSION_BY_KEY[name.replace(" ", "_")]
        assert (spec.min_raw, spec.max_raw) == (lo, hi)
        assert spec.group == ("quality" if name in QUAL else "semantic")
    assert sum(s.weight for s in VBENCH_DIMENSIONS if s.group == "quality") == 6.5
    assert sum(s.weight for s in VBENCH_DIMENSIONS if s.group == "semantic") == 9.0


@pytest.mark.parametrize("spec", VBENCH_DIMENSIONS, ids=lambda s: s.key)
def test_eval_normalisation_bounds_per_dimension(spec):
    full = {s.key: 0.5 for s in VBENCH_DIMENSIONS}
    at_min = aggregate_vbench({**full, spec.key: spec.min_raw}, input_scale="fraction")
    at_max = aggregate_vbench({**full, spec.key: spec.max_raw}, input_scale="fraction")
    dim_min = next(d for d in at_min.dimensions if d.name == spec.key)
    dim_max = next(d for d in at_max.dimensions if d.name == spec.key)
    assert dim_min.normalised == pytest.approx(0.0, abs=1e-12)
    assert dim_max.normalised == pytest.approx(1.0, abs=1e-12)
    assert dim_max.weighted == pytest.approx(spec.weight)


def test_eval_no_clipping_outside_bounds():
    # subject consistency raw 0.1 is below Min 0.1462 -> negative; scene 0.9 is above Max 0.8222 -> > 1
    result = aggregate_vbench({"subject_consistency": 0.1, "scene": 0.9}, input_scale="fraction")
    by_name = {d.name: d for d in result.dimensions}
    assert by_name["subject_consistency"].normalised == pytest.approx((0.1 - 0.1462) / 0.8538)
    assert by_name["subject_consistency"].normalised < 0
    assert by_name["scene"].normalised == pytest.approx(0.9 / 0.8222)
    assert by_name["scene"].normalised > 1


def test_eval_dynamic_degree_weight_is_half():
    base = {s.key: 0.6 for s in VBENCH_DIMENSIONS}
    low = aggregate_vbench({**base, "dynamic_degree": 0.0})
    high = aggregate_vbench({**base, "dynamic_degree": 1.0})
    # dynamic degree range is 1, weight 0.5: Quality moves by 0.5/6.5, Total by 4/5 of that (in percent)
    assert high.quality - low.quality == pytest.approx(100 * 0.5 / 6.5)
    assert high.total - low.total == pytest.approx(100 * 0.8 * 0.5 / 6.5)
    assert high.semantic == pytest.approx(low.semantic)


def test_eval_matches_independent_reference_on_random_inputs():
    import numpy as np

    rng = np.random.default_rng(3)
    for _ in range(20):
        raw_spaces = {d: float(rng.uniform(0.0, 1.0)) for d in MINMAX}
        result = aggregate_vbench(raw_spaces)
        total, quality, semantic = reference_scores(raw_spaces)
        assert (result.total, result.quality, result.semantic) == pytest.approx((total, quality, semantic))


def test_eval_published_triple_videocrafter2():
    result = aggregate_vbench(VIDEOCRAFTER2)
    assert result.input_scale == "percent"
    assert result.total == pytest.approx(80.44, abs=0.015)
    assert result.quality == pytest.approx(82.20, abs=0.015)
    assert result.semantic == pytest.approx(73.42, abs=0.015)
    assert result.total == pytest.approx((4 * result.quality + result.semantic) / 5)
    # published triple itself satisfies T = (4Q + S)/5 within rounding
    assert pytest.approx(80.44, abs=0.01) == (4 * 82.20 + 73.42) / 5


def test_eval_percent_and_fraction_give_same_scores():
    as_fraction = {k: v / 100 for k, v in VIDEOCRAFTER2.items()}
    a = aggregate_vbench(as_fraction)
    b = aggregate_vbench(VIDEOCRAFTER2)
    assert a.input_scale == "fraction" and b.input_scale == "percent"
    assert (a.total, a.quality, a.semantic) == pytest.approx((b.total, b.quality, b.semantic))


def test_eval_detect_scale_rules():
    assert detect_scale([0.2, 1.0, 0.0]) == "fraction"
    assert detect_scale([0.2, 1.5, 100.0]) == "percent"
    with pytest.raises(UsageError, match="100"):
        detect_scale([50.0, 101.0])
    with pytest.raises(UsageError, match="finite"):
        detect_scale([float("nan")])
    with pytest.raises(UsageError, match=">= 0"):  # was read as a fraction: a raw score of -500 %
        detect_scale([0.5, -5.0])


def test_eval_dimension_names_with_spaces_or_underscores():
    assert canonical_dimension_name("Subject Consistency") == "subject_consistency"
    assert canonical_dimension_name("overall-consistency") == "overall_consistency"
    a = aggregate_vbench({"human action": 0.9, "Temporal Style": 0.2})
    b = aggregate_vbench({"human_action": 0.9, "temporal_style": 0.2})
    assert a.total == pytest.approx(b.total)


def test_eval_missing_dimensions_counted_as_zero_with_warning():
    present = {k: v for k, v in VIDEOCRAFTER2.items() if k not in ("scene", "motion_smoothness")}
    result = aggregate_vbench(present)
    assert result.missing == ("motion_smoothness", "scene")
    assert len(result.warnings) == 2 and all("counted as raw 0" in w for w in result.warnings)
    assert any("scene" in w for w in result.warnings)
    reference = reference_scores(
        {k.replace("_", " "): v / 100 for k, v in {**present, "scene": 0.0, "motion_smoothness": 0.0}.items()}
    )
    assert (result.total, result.quality, result.semantic) == pytest.approx(reference)
    by_name = {d.name: d for d in result.dimensions}
    assert by_name["motion_smoothness"].missing and by_name["motion_smoothness"].raw == 0.0
    assert by_name["motion_smoothness"].normalised == pytest.approx(-0.706 / 0.2915)


def test_eval_unknown_dimension_is_usage_error_with_suggestion():
    with pytest.raises(UsageError) as info:
        aggregate_vbench({"subject_consistancy": 0.9, "colour": 0.5, "zzz": 0.1})
    message = str(info.value)
    assert "subject_consistancy" in message and "did you mean 'subject_consistency'" in message
    assert "colour" in message and "did you mean 'color'" in message
    assert "zzz" in message
    assert info.value.exit_code == 2


def test_eval_reads_vbench_results_file(tmp_path):
    results = {
        key: [value / 100, [{"video_path": "a-0.mp4", "video_results": value / 100}]]
        for key, value in VIDEOCRAFTER2.items()
    }
    path = tmp_path / "vc2_eval_results.json"
    path.write_text(json.dumps(results))
    result = aggregate_vbench_files(path)
    assert result.input_scale == "fraction"
    assert result.total == pytest.approx(80.44, abs=0.015)
    assert result.sources == (str(path),)
    payload = json.loads(result.to_json())
    assert payload["total"] == pytest.approx(result.total)
    assert payload["dimensions"]["dynamic_degree"]["weight"] == 0.5


def test_eval_reads_several_results_files_and_rejects_duplicates(tmp_path):
    keys = list(VIDEOCRAFTER2)
    first, second = tmp_path / "a_eval_results.json", tmp_path / "b_eval_results.json"
    first.write_text(json.dumps({k: [VIDEOCRAFTER2[k] / 100, []] for k in keys[:8]}))
    second.write_text(json.dumps({k: [VIDEOCRAFTER2[k] / 100, []] for k in keys[8:]}))
    assert aggregate_vbench_files([first, second]).total == pytest.approx(80.44, abs=0.015)
    with pytest.raises(UsageError, match="also given"):
        load_dimension_scores([first, first])


def test_eval_reads_plain_json_and_csv(tmp_path):
    plain = tmp_path / "scores.json"
    plain.write_text(json.dumps({k.replace("_", " "): v for k, v in VIDEOCRAFTER2.items()}))
    table = tmp_path / "scores.csv"
    table.write_text("dimension,score\n" + "".join(f"{k},{v}\n" for k, v in VIDEOCRAFTER2.items()))
    from_json = aggregate_vbench_files(plain)
    from_csv = aggregate_vbench_files(table)
    assert from_json.input_scale == from_csv.input_scale == "percent"
    assert from_json.total == pytest.approx(from_csv.total) == pytest.approx(80.44, abs=0.015)


def test_eval_bad_files_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_dimension_scores(tmp_path / "nope.json")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("scene,0.5\ncolor,abc\n")
    with pytest.raises(UsageError, match="row 2"):
        load_dimension_scores(bad_csv)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"sceen": 0.5}))
    with pytest.raises(UsageError, match="did you mean 'scene'"):
        load_dimension_scores(unknown)
    other = tmp_path / "scores.yaml"
    other.write_text("scene: 0.5\n")
    with pytest.raises(UsageError, match=".json or .csv"):
        load_dimension_scores(other)
    twice = tmp_path / "twice.json"  # JSON itself keeps the last value without a word; CSV refuses it too
    twice.write_text('{"scene": 0.5, "color": 0.4, "scene": 0.9}')
    with pytest.raises(UsageError, match="twice.json: dimension 'scene' is given twice"):
        load_dimension_scores(twice)


def test_eval_rich_table_lists_every_dimension_and_scores():
    from rich.console import Console

    result = aggregate_vbench({k: v for k, v in VIDEOCRAFTER2.items() if k != "color"})
    console = Console(width=120, record=True)
    console.print(render_vbench_table(result))
    text = console.export_text()
    for spec in VBENCH_DIMENSIONS:
        assert spec.key.replace("_", " ") in text
    assert "missing (0)" in text
    assert f"{result.total:.2f}" in text and "Total score" in text
