"""``pisces eval compare RUN_A RUN_B`` on two synthetic runs with a known difference."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pisces_cli.cli.main import main
from pisces_cli.stages import eval_fixtures as clips

PROMPTS = ["red texture", "blue texture", "green texture", "grey texture", "pink texture"]
# B flickers on the first three prompts, A on the last two: B loses 3 prompts and wins 2
B_FLICKERS = {0, 1, 2}


def make_run(folder: Path, flicker_prompts: set[int]) -> Path:
    frames = {}
    for p, _prompt in enumerate(PROMPTS):
        for index in range(2):  # two videos (seeds) per prompt, VBench names `{prompt}-{index}.mp4`
            seed = 10 * p + index
            clip = clips.flicker_clip(seed) if p in flicker_prompts else clips.static_clip(seed)
            frames[f"{PROMPTS[p]}-{index}"] = clip
    return clips.write_folder(folder, frames)


def flicker_by_hand(folder: Path, prompt: str) -> float:
    """Mean over the prompt's videos of 1 − mean_t MAE(frame_t, frame_t+1)/255 on the decoded frames."""
    from pisces_cli.io.video import read_frames

    scores = []
    for index in range(2):
        frames = read_frames(str(folder / f"{prompt}-{index}.mp4")).astype(np.float64)
        scores.append(
            1 - np.mean([np.abs(frames[t + 1] - frames[t]).mean() for t in range(len(frames) - 1)]) / 255
        )
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compare")
    recipe = root / "pixels.yaml"
    recipe.write_text("eval: {rewards: false, consistency: false}\nruntime: {num_workers: 0}\n")
    for name, flicker in (("A", set(range(5)) - B_FLICKERS), ("B", B_FLICKERS)):
        make_run(root / name, flicker)
        assert main(["eval", str(root / name), "-r", str(recipe)]) == 0
    return root


def test_known_difference(runs: Path):
    out = runs / "cmp"
    assert (
        main(
            [
                "eval",
                "compare",
                str(runs / "A"),
                str(runs / "B/pisces-eval"),
                "-o",
                str(out),
                "--bootstrap",
                "500",
            ]
        )
        == 0
    )
    document = json.loads((out / "compare.json").read_text())
    assert document["label_a"] == "A" and document["label_b"] == "B" and document["item_kind"] == "prompt"
    metrics = {m["metric"]: m for m in document["metrics"]}
    flicker = metrics["frame_stability"]
    diffs = [flicker_by_hand(runs / "B", p) - flicker_by_hand(runs / "A", p) for p in PROMPTS]
    assert flicker["n"] == 5
    assert flicker["diff"] == pytest.approx(np.mean(diffs), abs=1e-6)
    assert flicker["ci_low"] <= flicker["diff"] <= flicker["ci_high"]
    assert flicker["win_rate"] == pytest.approx(2 / 5)  # B wins the two prompts where A flickers
    # per-prompt pairs are the means over the prompt's two videos
    items = document["items"]["frame_stability"]
    for prompt, diff in zip(PROMPTS, diffs, strict=True):
        a_score, b_score = items[prompt]
        assert b_score - a_score == pytest.approx(diff, abs=1e-6)
    # temporal_flickering means what it means in `eval`: a prompt's value averages its static videos only,
    # and a prompt is compared when both runs have a static video for it
    static_prompts = []
    for run, column in (("A", 0), ("B", 1)):
        rows = json.loads((runs / run / "pisces-eval/eval.json").read_text())["videos"]
        static_prompts.append({r["prompt"] for r in rows if r["static_proxy"]})
        for prompt, pair in document["items"]["temporal_flickering"].items():
            static = [r["frame_stability"] for r in rows if r["prompt"] == prompt and r["static_proxy"]]
            assert pair[column] == pytest.approx(np.mean(static))
    assert set(document["items"]["temporal_flickering"]) == static_prompts[0] & static_prompts[1]
    assert any(note.startswith("temporal_flickering: compared on the") for note in document["notes"])
    assert "RAFT" in document["vbench_differences"]["temporal_flickering"]
    # no clip moves: dynamic degree is 0 everywhere, a tie (win rate ½) with a zero-width CI
    degree = metrics["dynamic_degree"]
    assert degree["diff"] == 0 and degree["ci_low"] == degree["ci_high"] == 0 and degree["win_rate"] == 0.5
    assert document["strip_metric"] == "temporal_flickering"  # the first metric both runs give
    assert any("manifest" in note for note in document["notes"])


def test_all_b_worse_ci_excludes_zero(runs: Path, tmp_path: Path):
    recipe = runs / "pixels.yaml"
    make_run(tmp_path / "C", set(range(5)))
    assert main(["eval", str(tmp_path / "C"), "-r", str(recipe)]) == 0
    make_run(tmp_path / "D", set())
    assert main(["eval", str(tmp_path / "D"), "-r", str(recipe)]) == 0
    assert main(["eval", "compare", str(tmp_path / "D"), str(tmp_path / "C"), "--bootstrap", "300"]) == 0
    document = json.loads((tmp_path / "C/pisces-eval/compare/compare.json").read_text())
    flicker = next(m for m in document["metrics"] if m["metric"] == "temporal_flickering")
    assert flicker["win_rate"] == 0 and flicker["ci_high"] < 0


def test_html_report(runs: Path):
    out = runs / "cmp_html"
    assert main(["eval", "compare", str(runs / "A"), str(runs / "B"), "-o", str(out), "--strips", "2"]) == 0
    html = (out / "compare.html").read_text()
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', html)
    assert "mean differences with CIs" in images
    assert {"temporal_flickering scatter", "dynamic_degree scatter"} <= set(images)
    # two largest wins and two largest losses, each as an A strip and a B strip
    strips = [alt for alt in images if alt.endswith((" A", " B"))]
    assert len(strips) == 8
    assert "B better" in html and "B worse" in html
    assert "http" not in html.split("<body>", 1)[1]  # self-contained


def test_compare_usage_errors(runs: Path, tmp_path: Path):
    assert main(["eval", "compare", str(runs / "A"), str(tmp_path / "nothing")]) == 2
    (tmp_path / "eval.json").write_text(json.dumps({"schema": "other"}))
    assert main(["eval", "compare", str(runs / "A"), str(tmp_path)]) == 2
    assert (
        main(
            [
                "eval",
                "compare",
                str(runs / "A"),
                str(runs / "B"),
                "--metric",
                "nope",
                "-o",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda doc: doc.update(videos="all"), "videos: expected a list of objects"),
        (lambda doc: doc["videos"][0].update(quality="high"), "videos[0].quality: expected a finite number"),
        (lambda doc: doc["videos"][0].update(quality=float("nan")), "videos[0].quality: expected a finite"),
        (lambda doc: doc["videos"].append(dict(doc["videos"][0])), "is listed twice"),
    ],
)
def test_a_wrong_typed_eval_output_exits_2_naming_the_field(runs: Path, tmp_path: Path, capsys, edit, words):
    # a string or NaN metric was dropped without a word, a row listed twice counted twice in its prompt's mean
    document = json.loads((runs / "A" / "pisces-eval/eval.json").read_text())
    edit(document)
    (tmp_path / "eval.json").write_text(json.dumps(document))
    capsys.readouterr()
    assert main(["eval", "compare", str(tmp_path), str(runs / "B"), "-o", str(tmp_path / "o")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "invalid eval output" in err and words in err and "Traceback" not in err


def test_disjoint_prompts_exit_2(runs: Path, tmp_path: Path):
    folder = tmp_path / "E"
    clips.write_folder(folder, {"another prompt-0": clips.static_clip(3)})
    assert main(["eval", str(folder), "-r", str(runs / "pixels.yaml")]) == 0
    assert main(["eval", "compare", str(runs / "A"), str(folder)]) == 2


def test_no_static_video_means_no_flickering_value_in_eval_and_in_compare(tmp_path: Path, capsys):
    """The case of one name with two meanings: eval found no static video, so compare reports no flickering."""
    recipe = tmp_path / "pixels.yaml"
    recipe.write_text("eval: {rewards: false, consistency: false}\nruntime: {num_workers: 0}\n")
    for name, seed in (("M1", 0), ("M2", 50)):
        frames = {f"{prompt}-0": clips.moving_clip(seed + p) for p, prompt in enumerate(PROMPTS[:3])}
        clips.write_folder(tmp_path / name, frames)
        assert main(["eval", str(tmp_path / name), "-r", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "no video passed the static-filter proxy" in out
    assert "vs VBench, temporal_flickering:" in out and "RAFT" in out
    aggregate = json.loads((tmp_path / "M1/pisces-eval/eval.json").read_text())["aggregate"]
    assert aggregate["temporal_flickering"]["n"] == 0 and aggregate["temporal_flickering"]["mean"] is None
    assert aggregate["frame_stability"]["n"] == 3
    assert main(["eval", "compare", str(tmp_path / "M1"), str(tmp_path / "M2"), "--bootstrap", "50"]) == 0
    document = json.loads((tmp_path / "M2/pisces-eval/compare/compare.json").read_text())
    names = {m["metric"] for m in document["metrics"]}
    assert "temporal_flickering" not in names and "frame_stability" in names


def test_version_1_eval_outputs_are_read_in_todays_meaning(runs: Path, tmp_path: Path):
    """An eval.json written before frame_stability existed gave temporal_flickering for every video."""
    for name in ("A", "B"):
        document = json.loads((runs / name / "pisces-eval/eval.json").read_text())
        document["version"] = 1
        for row in document["videos"]:
            row["temporal_flickering"] = row.pop("frame_stability")
            row["static"] = row.pop("static_proxy")
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps(document))
    old, new = tmp_path / "old", tmp_path / "new"
    assert (
        main(["eval", "compare", str(tmp_path / "A"), str(tmp_path / "B"), "-o", str(old), "--strips", "0"])
        == 0
    )
    assert main(["eval", "compare", str(runs / "A"), str(runs / "B"), "-o", str(new), "--strips", "0"]) == 0
    read = [json.loads((folder / "compare.json").read_text()) for folder in (old, new)]
    assert read[0]["metrics"] == read[1]["metrics"] and read[0]["items"] == read[1]["items"]


def test_a_small_difference_is_never_printed_as_a_signed_zero(runs: Path, tmp_path: Path, capsys):
    """B − A of −3e-5 read "-0.0000" in the table and the page: a zero with a sign. It is written with its size."""
    document = json.loads((runs / "A" / "pisces-eval/eval.json").read_text())
    for name, shift in (("A", 0.0), ("B", -3e-5)):
        edited = json.loads(json.dumps(document))
        for row in edited["videos"]:
            if row.get("frame_stability") is not None:
                row["frame_stability"] = 0.9 + shift
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps(edited))
    capsys.readouterr()
    out = tmp_path / "cmp"
    args = ["eval", "compare", str(tmp_path / "A"), str(tmp_path / "B"), "-o", str(out), "--strips", "0"]
    assert main([*args, "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if "frame_stability" in line)
    assert "-3.0e-05" in line and "0.0000" not in line.replace("0.9000", "")
    page = (out / "compare.html").read_text()
    assert "-3.0e-05" in page and "-0.0000" not in page
    metrics = {m["metric"]: m for m in json.loads((out / "compare.json").read_text())["metrics"]}
    assert metrics["frame_stability"]["diff"] == pytest.approx(-3e-5)


def test_fixed_keeps_the_size_and_sign_of_small_values():
    from pisces_cli.evaluation.display import fixed, interval

    assert fixed(-3e-5) == "-3.0e-05" and fixed(4e-5, signed=True) == "+4.0e-05"
    assert (
        fixed(0.0, signed=True) == "0.0000"
        and fixed(0.12344) == "0.1234"
        and fixed(1, signed=True) == "+1.0000"
    )
    assert fixed(float("nan")) == fixed(float("inf")) == fixed(None) == fixed(True) == "n/a"
    assert interval(-1e-6, 0.25, signed=True) == "[-1.0e-06, +0.2500]"
