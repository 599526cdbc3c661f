"""Run comparison (data model) and the self-contained HTML report."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from pisces_cli.errors import UsageError
from pisces_cli.evaluation.compare_report import (
    compare_runs,
    largest_changes,
    render_compare_html,
    write_compare_html,
)


def synthetic_runs(n_items: int = 40, shift: float = 0.1, seed: int = 0):
    rng = np.random.default_rng(seed)
    run_a = {
        f"prompt-{i:03d}": {"clip_score": float(rng.uniform(0.2, 0.4)), "aesthetic": float(rng.uniform(4, 6))}
        for i in range(n_items)
    }
    run_b = {
        item: {metric: value + shift for metric, value in scores.items()} for item, scores in run_a.items()
    }
    return run_a, run_b


def clip_frames(value: int, frames: int = 6) -> np.ndarray:
    clip = np.full((frames, 32, 48, 3), value, dtype=np.uint8)
    for t in range(frames):
        clip[t, 8:24, 4 + 6 * t : 12 + 6 * t] = [255, 60, 60]
    return clip


def test_eval_compare_known_shift():
    run_a, run_b = synthetic_runs(shift=0.1)
    comparison = compare_runs(run_a, run_b, label_a="base", label_b="pisces", seed=0)
    assert [m.metric for m in comparison.metrics] == ["clip_score", "aesthetic"]
    for metric in comparison.metrics:
        assert metric.n == 40
        assert metric.diff == pytest.approx(0.1)
        assert metric.ci_low == pytest.approx(0.1) and metric.ci_high == pytest.approx(0.1)
        assert metric.win_rate == 1.0
        assert metric.mean_b - metric.mean_a == pytest.approx(0.1)


def test_eval_compare_noisy_shift_and_reverse_direction():
    rng = np.random.default_rng(1)
    run_a = {f"p{i}": {"m": float(rng.normal())} for i in range(200)}
    run_b = {k: {"m": v["m"] + 0.3 + 0.2 * float(rng.normal())} for k, v in run_a.items()}
    forward = compare_runs(run_a, run_b).metric("m")
    backward = compare_runs(run_b, run_a).metric("m")
    assert forward.ci_low < 0.3 < forward.ci_high
    assert backward.diff == pytest.approx(-forward.diff)
    assert backward.win_rate == pytest.approx(1.0 - forward.win_rate)


def test_eval_compare_matches_items_by_id():
    run_a = {"x": {"m": 1.0}, "y": {"m": 2.0}, "only_a": {"m": 9.0}}
    run_b = {"y": {"m": 2.5}, "x": {"m": 0.5}, "only_b": {"m": -9.0}, "nan": {"m": 1.0}}
    run_a["nan"] = {"m": float("nan")}
    comparison = compare_runs(run_a, run_b)
    metric = comparison.metric("m")
    assert metric.n == 2  # x and y; the NaN item is dropped
    assert metric.diff == pytest.approx(((0.5 - 1.0) + (2.5 - 2.0)) / 2)
    assert metric.win_rate == 0.5
    assert comparison.only_in_a == ("only_a",) and comparison.only_in_b == ("only_b",)
    wins, losses = largest_changes(comparison, "m")
    assert wins == ["y"] and losses == ["x"]
    payload = json.loads(comparison.to_json())
    assert payload["items"]["m"]["y"] == [2.0, 2.5]


def test_eval_compare_errors():
    with pytest.raises(UsageError, match="share no item"):
        compare_runs({"a": {"m": 1.0}}, {"b": {"m": 1.0}})
    with pytest.raises(UsageError, match="share no metric"):
        compare_runs({"a": {"m": 1.0}}, {"a": {"n": 1.0}})
    with pytest.raises(UsageError, match="not scored by both"):
        compare_runs({"a": {"m": 1.0}}, {"a": {"m": 1.0}}, metrics=["n"])


def make_report(tmp_path):
    run_a, run_b = synthetic_runs(n_items=30, shift=0.0, seed=2)
    rng = np.random.default_rng(5)
    for scores in run_b.values():
        scores["clip_score"] += float(rng.normal(0.02, 0.03))
        scores["aesthetic"] += float(rng.normal(-0.1, 0.2))
    comparison = compare_runs(run_a, run_b, label_a="baseline", label_b="PISCES", seed=0)
    strips = {item: (clip_frames(40), clip_frames(90)) for item in run_a}
    path = write_compare_html(
        tmp_path / "report" / "compare.html", comparison, frame_strips=strips, strip_count=2
    )
    return path, comparison


def test_eval_compare_html_is_self_contained(tmp_path):
    path, comparison = make_report(tmp_path)
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    # no network or file references: every src is an inline data URI, no <link>/<script src>/url()
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"https?://|<link|<script|url\(", page)
    # 1 bar chart + 2 scatters + 2 wins x 2 + 2 losses x 2 strips
    assert len(sources) == 1 + 2 + 8
    for source in sources:
        import base64

        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for metric in comparison.metrics:
        assert metric.metric in page
    assert "PISCES" in page and "baseline" in page
    assert not list(path.parent.glob(".*.tmp"))  # atomic write leaves no temporary file


def test_eval_compare_html_escapes_labels():
    run_a = {"<b>x</b>": {"m&m": 1.0}}
    run_b = {"<b>x</b>": {"m&m": 2.0}}
    page = render_compare_html(compare_runs(run_a, run_b, label_a="<A>", label_b="B"))
    assert "<A>" not in page and "&lt;A&gt;" in page and "m&amp;m" in page


def test_eval_compare_html_in_headless_chromium(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium) - cannot render the page")
    path, _ = make_report(tmp_path)
    screenshot = tmp_path / "compare.png"
    profile = tmp_path / "profile"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--screenshot={screenshot}",
        "--window-size=1280,2000",
        path.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    import matplotlib.image

    image = matplotlib.image.imread(screenshot)
    assert image.shape[:2] == (2000, 1280)
    # the page rendered content: not a blank white screenshot
    assert float(np.std(image[..., :3])) > 0.05
