"""``pisces eval aggregate`` through the CLI: exit codes, --json keys, missing-dimension warnings.

The expected scores are computed here by hand from VBench's constants (docs/vbench.md §3), independently
of pisces_cli.evaluation.vbench_aggregate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pisces_cli.cli.main import main

# (min, max, weight, group) from VBench's scripts/constant.py, typed in from docs/vbench.md §3
BOUNDS = {
    "subject_consistency": (0.1462, 1.0, 1.0, "Q"),
    "background_consistency": (0.2615, 1.0, 1.0, "Q"),
    "temporal_flickering": (0.6293, 1.0, 1.0, "Q"),
    "motion_smoothness": (0.706, 0.9975, 1.0, "Q"),
    "dynamic_degree": (0.0, 1.0, 0.5, "Q"),
    "aesthetic_quality": (0.0, 1.0, 1.0, "Q"),
    "imaging_quality": (0.0, 1.0, 1.0, "Q"),
    "object_class": (0.0, 1.0, 1.0, "S"),
    "multiple_objects": (0.0, 1.0, 1.0, "S"),
    "human_action": (0.0, 1.0, 1.0, "S"),
    "color": (0.0, 1.0, 1.0, "S"),
    "spatial_relationship": (0.0, 1.0, 1.0, "S"),
    "scene": (0.0, 0.8222, 1.0, "S"),
    "appearance_style": (0.0009, 0.2855, 1.0, "S"),
    "temporal_style": (0.0, 0.364, 1.0, "S"),
    "overall_consistency": (0.0, 0.364, 1.0, "S"),
}
# a plausible model's raw fractions
RAW = {
    "subject_consistency": 0.9612,
    "background_consistency": 0.9701,
    "temporal_flickering": 0.9850,
    "motion_smoothness": 0.9810,
    "dynamic_degree": 0.6250,
    "aesthetic_quality": 0.6140,
    "imaging_quality": 0.6580,
    "object_class": 0.8720,
    "multiple_objects": 0.5510,
    "human_action": 0.9400,
    "color": 0.8630,
    "spatial_relationship": 0.5120,
    "scene": 0.5230,
    "appearance_style": 0.2410,
    "temporal_style": 0.2510,
    "overall_consistency": 0.2720,
}


def by_hand(raw: dict[str, float]) -> tuple[float, float, float]:
    """(total, quality, semantic) in percent; a missing dimension counts as raw 0."""
    sums = {"Q": [0.0, 0.0], "S": [0.0, 0.0]}
    for name, (low, high, weight, group) in BOUNDS.items():
        sums[group][0] += weight * (raw.get(name, 0.0) - low) / (high - low)
        sums[group][1] += weight
    quality = sums["Q"][0] / sums["Q"][1]
    semantic = sums["S"][0] / sums["S"][1]
    return 100 * (4 * quality + semantic) / 5, 100 * quality, 100 * semantic


def run_json(capsys, *args: str) -> tuple[int, dict, str]:
    capsys.readouterr()
    code = main(["eval", "aggregate", *args, "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else {}), captured.err


def test_plain_json_fractions_exact(tmp_path: Path, capsys):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(RAW))
    code, out, err = run_json(capsys, str(path))
    assert code == 0
    total, quality, semantic = by_hand(RAW)
    assert out["total"] == pytest.approx(total, abs=1e-9)
    assert out["quality"] == pytest.approx(quality, abs=1e-9)
    assert out["semantic"] == pytest.approx(semantic, abs=1e-9)
    assert out["input_scale"] == "fraction" and out["missing"] == []
    assert "warning" not in err
    # the normalised table: dynamic degree carries weight 0.5
    assert out["dimensions"]["dynamic_degree"]["weight"] == 0.5
    assert out["dimensions"]["scene"]["normalised"] == pytest.approx(0.5230 / 0.8222)


def test_percent_csv_is_detected_and_stated(tmp_path: Path, capsys):
    path = tmp_path / "scores.csv"
    lines = ["dimension,score"] + [
        f"{name.replace('_', ' ')},{100 * value:.2f}" for name, value in RAW.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    code, out, _ = run_json(capsys, str(path))
    assert code == 0 and out["input_scale"] == "percent"
    total, _, _ = by_hand(RAW)
    assert out["total"] == pytest.approx(total, abs=1e-6)
    # the rich table states the detected scale too
    capsys.readouterr()
    assert main(["eval", "aggregate", str(path)]) == 0
    assert "percent" in capsys.readouterr().out


def test_vbench_results_file_with_missing_dimensions(tmp_path: Path, capsys):
    present = {k: v for k, v in RAW.items() if k not in ("color", "human_action")}
    path = tmp_path / "model_eval_results.json"
    path.write_text(
        json.dumps({k: [v, [{"video_path": "x.mp4", "video_results": v}]] for k, v in present.items()})
    )
    code, out, err = run_json(capsys, str(path))
    assert code == 0
    assert sorted(out["missing"]) == ["color", "human_action"]
    assert "color" in err and "human_action" in err and "warning" in err
    total, quality, semantic = by_hand(present)  # counted as 0, as VBench's cal_final_score.py does
    assert (out["total"], out["quality"], out["semantic"]) == pytest.approx(
        (total, quality, semantic), abs=1e-9
    )
    assert out["dimensions"]["color"]["raw"] == 0.0 and out["dimensions"]["color"]["missing"] is True


def test_several_files_merge_and_output_file(tmp_path: Path, capsys):
    names = list(RAW)
    first, second = tmp_path / "a_eval_results.json", tmp_path / "b_eval_results.json"
    first.write_text(json.dumps({k: [RAW[k], []] for k in names[:8]}))
    second.write_text(json.dumps({k: [RAW[k], []] for k in names[8:]}))
    target = tmp_path / "agg.json"
    assert main(["eval", "aggregate", str(first), str(second), "-o", str(target)]) == 0
    written = json.loads(target.read_text())
    assert written["total"] == pytest.approx(by_hand(RAW)[0], abs=1e-9) and written["missing"] == []


def test_unknown_dimension_exits_2(tmp_path: Path, capsys):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({**RAW, "subject_consistancy": 0.9}))
    capsys.readouterr()
    assert main(["eval", "aggregate", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no partial JSON on stdout
    assert "subject_consistancy" in captured.err


@pytest.mark.parametrize(
    "content, name",
    [
        ("{not json", "bad.json"),
        (json.dumps({"subject_consistency": 250.0}), "over.json"),
        (json.dumps({"subject_consistency": "high"}), "text.json"),
        ("", "empty.txt"),
    ],
)
def test_bad_inputs_exit_2(tmp_path: Path, content: str, name: str):
    path = tmp_path / name
    path.write_text(content)
    assert main(["eval", "aggregate", str(path)]) == 2


def test_missing_file_exits_2(tmp_path: Path):
    assert main(["eval", "aggregate", str(tmp_path / "nope.json")]) == 2


def test_aggregate_is_not_taken_for_a_videos_dir(tmp_path: Path, capsys):
    """`pisces eval aggregate` parses as the subcommand; other first words go to `eval run`."""
    assert main(["eval", "aggregate"]) == 2  # the subcommand's own "missing argument" error
    assert "Missing argument" in capsys.readouterr().err
    # a folder name is routed to `eval run`, which then asks for its --recipe
    assert main(["eval", str(tmp_path)]) == 2
    assert "--recipe" in capsys.readouterr().err
