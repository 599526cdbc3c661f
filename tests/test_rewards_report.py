"""``report.html`` of ``pisces score --report``: word grouping, heatmaps, a self-contained page, Chromium render."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from pisces_cli.encoders.base import TokenGeometry
from pisces_cli.stages.score_report import (
    FrameView,
    token_heatmaps,
    top_words,
    word_groups,
    write_score_report,
)

CLIP_TOKENS = ["<|startoftext|>", "a</w>", "re", "d</w>", "ca", "t</w>", "<|endoftext|>"]
CLIP_LEXICAL = [False, True, True, True, True, True, False]


def test_word_groups_conventions():
    assert word_groups(CLIP_TOKENS, [1, 2, 3, 4, 5]) == [("a", [1]), ("red", [2, 3]), ("cat", [4, 5])]
    wordpiece = ["[CLS]", "a", "jump", "##ing", "dog", "[SEP]"]
    assert word_groups(wordpiece, [1, 2, 3, 4]) == [("a", [1]), ("jumping", [2, 3]), ("dog", [4])]
    sentencepiece = ["▁a", "▁jump", "ing", "▁dog", "</s>"]
    assert word_groups(sentencepiece, [0, 1, 2, 3]) == [("a", [0]), ("jumping", [1, 2]), ("dog", [3])]
    # no markers: one token per word; a gap in the positions never merges
    assert word_groups(["x", "red", "cat"], [1, 2]) == [("red", [1]), ("cat", [2])]
    assert word_groups(wordpiece, [2, 4]) == [("jump", [2]), ("dog", [4])]


def test_token_heatmaps_layout_and_cls():
    geometry = TokenGeometry(num_frames=2, grid_h=2, grid_w=3, has_cls=True)
    plan = np.arange(3 * geometry.num_tokens, dtype=float).reshape(3, geometry.num_tokens)
    maps = token_heatmaps(plan, geometry, [2, 0])
    assert maps.shape == (2, 2, 2, 3)
    # row 2, frame 1, patch (row 1, col 2) = token 1 + 1*6 + 1*3 + 2 = 12 (token 0 is CLS)
    assert maps[0, 1, 1, 2] == plan[2, 12]
    assert maps[1, 0, 0, 0] == plan[0, 1]


def test_top_words_sums_subword_rows_and_ranks_by_mass():
    geometry = TokenGeometry(num_frames=2, grid_h=2, grid_w=2, has_cls=False)
    plan = np.zeros((7, 8))
    plan[1, 0] = 0.1  # "a"
    plan[2, 1], plan[3, 5] = 0.2, 0.3  # "re" + "d</w>" = "red": 0.5
    plan[4, 7], plan[5, 7] = 0.25, 0.15  # "cat": 0.4
    entry = {"plan": plan, "tokens": CLIP_TOKENS, "lexical": np.array(CLIP_LEXICAL), "geometry": geometry}
    words = top_words(entry, top_k=2)
    assert [w.word for w in words] == ["red", "cat"]
    assert words[0].mass_share == pytest.approx(0.5) and words[1].mass_share == pytest.approx(0.4)
    assert words[0].heatmaps.shape == (2, 2, 2)
    red = words[0].heatmaps
    assert red[0, 0, 1] == pytest.approx(0.2) and red[1, 0, 1] == pytest.approx(0.3)
    assert words[1].heatmaps[1, 1, 1] == pytest.approx(0.4)
    assert top_words({"plan": np.zeros((7, 8)), "tokens": CLIP_TOKENS, "lexical": np.array(CLIP_LEXICAL),
                      "geometry": geometry}, 3) == []  # fmt: skip
    assert top_words({}, 3) == []


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report over 3 world clips (one with a hostile prompt) and one failure, with hand-made plans."""
    from pisces_cli.fixtures import write_clip_folder

    root = tmp_path_factory.mktemp("report")
    records = write_clip_folder(root, 3, seed=1, frames=8, size=64, prompt_style="none")
    geometry = TokenGeometry(num_frames=4, grid_h=4, grid_w=4, has_cls=False)
    rng = np.random.default_rng(0)
    rows, plans = [], {}
    for i, record in enumerate(records):
        plan = rng.random((7, geometry.num_tokens)) * np.array(CLIP_LEXICAL, dtype=float)[:, None]
        prompt = "a red cat <script>alert(1)</script>" if i == 1 else "a red cat"
        rows.append({"video": record.file, "prompt": prompt, "error": None, "quality": 0.1 * i,
                     "quality_no_ot": 0.05 * i, "semantic": 0.2, "total": 0.1 * i + 0.2})  # fmt: skip
        plans[record.file] = top_words({"plan": plan, "tokens": CLIP_TOKENS, "lexical": np.array(CLIP_LEXICAL),
                                        "geometry": geometry}, 3)  # fmt: skip
    rows.append({"video": "broken.mp4", "prompt": "x", "error": "cannot decode video broken.mp4"})
    stats = {
        c: {"mean": 0.1, "ci_low": 0.0, "ci_high": 0.2, "n": 3}
        for c in ("quality", "semantic", "quality_no_ot", "total")
    }
    summary = {"encoder": {"backend": "clip", "model": "enc", "weights_sha256": "ab" * 32}, "ot_map": {"ot_map": None},
               "weights": {"quality": 1.0, "semantic": 0.5}, "num_frames": 4, "crop": "center"}  # fmt: skip
    return write_score_report(
        root / "out" / "report.html", root, rows, plans, stats, view=FrameView(num_frames=4, size=32),
        summary=summary,
    )  # fmt: skip


def test_report_is_self_contained_with_embedded_images(report: Path):
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    # nothing is fetched from outside the file: no URLs, scripts, stylesheets links or iframes
    without_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"(https?:|ftp:|file:|//[a-z0-9]|url\()", without_images, re.I)
    assert not re.search(r"\s(href|srcset)=", without_images, re.I)
    assert not re.search(r"<(script|link|iframe|object|embed)\b", text, re.I)
    sources = re.findall(r"<img[^>]*\ssrc='([^']*)'", text)
    # histograms + per scored video a frame strip and one strip per word (none for the failure)
    assert len(sources) == 1 + 3 * (1 + 3)
    assert text.count("<img alt='frames of") == 3 and text.count("<img alt='“red”") == 3
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        png = base64.b64decode(source.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        import matplotlib.image as mpimg

        image = mpimg.imread(io.BytesIO(png), format="png")
        assert image.shape[0] > 50 and image.shape[1] > 100 and image.std() > 0.05
    # the hostile prompt is escaped, the words are merged, failures and settings are listed
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "broken.mp4" in text and "cannot decode video broken.mp4" in text
    assert "Failed videos (1)" in text and "All scores (3)" in text
    assert (
        "quality − quality_no_ot" in text
        and "semantic 0.5" in text
        and "none (quality = quality_no_ot)" in text
    )


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path):
    import matplotlib.image as mpimg

    screenshot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--screenshot={screenshot}", "--window-size=1280,2000",
             report.resolve().as_uri()],
            check=True, capture_output=True, timeout=90,
        )  # fmt: skip
    image = mpimg.imread(str(screenshot))[..., :3]
    assert image.shape[:2] == (2000, 1280)
    non_white = (image < 0.95).any(-1)
    rows_with_content = np.flatnonzero(non_white.any(1))
    # content (text, tables, figures) reaches well down the page, in many colours
    assert non_white.mean() > 0.05 and rows_with_content.max() > 1500
    colours = np.unique((image.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 200
