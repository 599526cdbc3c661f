"""``report.html`` of ``pisces score --report``: one self-contained page (images inline as PNG data URIs).

Sections: the run's settings and a summary table (mean and 95 % bootstrap CI per score column, with
quality − quality_no_ot, what the OT map changed); histograms of the score columns; then for each
video (up to ``max_videos``) a strip of the frames the encoder was given (same sampling rule) with the
crop box it saw outlined and, for the caption words that the token-level partial-OT plan moves the
most mass from, the plan rows drawn as heatmaps over that crop box ("which word went where"); then a
table of every video's scores and a table of failures.

``score`` keeps each scored video's word heatmaps in ``heatmaps.jsonl`` beside ``scores.jsonl``
(:func:`encode_words`: the top words' plan mass per frame and patch, each word stored as 8-bit levels
of its own maximum — the report draws every word scaled to its maximum, so nothing visible is lost), so
the report is rebuilt complete on every run from files alone.

Sub-word tokens are merged back into words before ranking (CLIP BPE ``</w>`` ends a word, WordPiece
``##`` continues one, SentencePiece ``▁`` / GPT-2 ``Ġ`` start one); a word's heatmap is the sum of its
tokens' plan rows. The page links to nothing outside itself.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pisces_cli.atomic import atomic_write_text

SCORE_COLUMNS = ("quality", "semantic", "quality_no_ot", "semantic_no_ot", "total")
COLUMN_NOTES = {
    "quality": "cos(video, T(text)): video embedding vs the OT-mapped caption embedding",
    "semantic": "token-level partial-OT alignment of caption words and video patches",
    "quality_no_ot": "plain cos(video, text), no OT map",
    "semantic_no_ot": "semantic reward with a uniform plan (no token OT)",
    "total": "w_q · quality + w_s · semantic",
}
MAX_TABLE_ROWS = 1000
#: scored videos drawn with frames and word heatmaps (the first ones, in table order; every video is in the table)
REPORT_MAX_VIDEOS = 48
#: version of the page's layout and drawing; part of the inputs digest, so a report drawn by an older
#: layout is redrawn (raise it with every change to how the page looks)
REPORT_FORMAT = 2
#: words per video kept in heatmaps.jsonl and drawn in the report
REPORT_TOP_WORDS = 3
#: colour of the crop outline on the frame row (RGB)
CROP_OUTLINE_RGB = (0, 229, 255)
#: frames drawn under a heatmap keep this much of their colour (the rest is white)
FRAME_ALPHA = 0.45
#: heatmap colour weight over the faded frame
HEAT_ALPHA = 0.7
#: height in pixels of every image strip of the report
STRIP_HEIGHT = 96

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1180px;color:#1d2330;
line-height:1.4;padding:0 16px}
h1{margin-bottom:4px}h2{margin-top:32px;border-bottom:2px solid #e3e7ee;padding-bottom:4px}
.muted{color:#667085}.err{color:#b42318}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d0d5dd;padding:4px 10px;font-size:13px}
th{background:#f2f4f7;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.settings td:first-child{font-weight:600;background:#f9fafb}
.video{margin:22px 0;padding:12px 14px;border:1px solid #e3e7ee;border-radius:8px;background:#fcfcfd}
.video .title{font-weight:600;font-size:15px}.video .prompt{font-style:italic}
.chips span{display:inline-block;margin:6px 6px 4px 0;padding:2px 8px;border-radius:10px;background:#eef4ff;
font-size:12px;font-variant-numeric:tabular-nums}
img{max-width:100%;display:block;margin-top:6px}
.strips th{background:none;border:none;text-align:right;font-weight:400;font-size:12px;padding:2px 8px;
white-space:nowrap}.strips td{border:none;padding:2px 0}.strips img{margin:0}
.scroll{max-height:520px;overflow:auto;border:1px solid #e3e7ee}
"""


@dataclass
class WordMap:
    """One caption word's transport: ``heatmaps [T, gh, gw]`` (plan mass per patch) and its mass share."""

    word: str
    heatmaps: np.ndarray
    mass_share: float


def _png(fig: Any, dpi: int = 90) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class FrameView:
    """How the encoder saw each video: the frame choice and the resize + crop (from the run's settings).

    Attributes:
        num_frames: frames per clip; frame_rate: resampling fps (None: ``sampling``'s rule).
        sampling: ``uniform`` or ``middle``; size: encoder input side; crop: ``center`` or ``random``.
    """

    num_frames: int
    frame_rate: float | None = None
    sampling: str = "uniform"
    size: int = 224
    crop: str = "center"

    def crop_box(self, height: int, width: int) -> tuple[float, float, float, float] | None:
        """The encoder's crop in source pixels ``(x0, y0, x1, y1)``; None for a random crop (not recorded)."""
        if self.crop != "center":
            return None
        from pisces_cli.io.preprocess import crop_window

        return crop_window(height, width, self.size, "center").source_box()


def _frames_for(
    path: Path, view: FrameView, timeout_s: float | None = None
) -> tuple[np.ndarray | None, list[int]]:
    """The frames ``[T, H, W, 3]`` uint8 the encoder was given and their indices (None, [] if unreadable).

    Decoded in a child process (:func:`~pisces_cli.io.isolation.call_isolated`): a decoder that crashes or
    passes ``timeout_s`` seconds costs this video's picture, not the run."""
    from pisces_cli.errors import PiscesError
    from pisces_cli.io.isolation import call_isolated

    try:
        frames, indices = call_isolated(_read_frames, path, view, label=str(path), timeout_s=timeout_s)
    except PiscesError:
        return None, []
    return frames, indices


def _read_frames(path: Path, view: FrameView) -> tuple[np.ndarray, list[int]]:
    from pisces_cli.io.dataset import frame_selector
    from pisces_cli.io.video import read_clip

    selector = frame_selector(view.num_frames, view.frame_rate, view.sampling)  # type: ignore[arg-type]
    frames, _info, indices = read_clip(path, selector)
    return frames, list(indices)


def drawn_rows(rows: list[dict[str, Any]], max_videos: int = REPORT_MAX_VIDEOS) -> list[dict[str, Any]]:
    """The rows the report draws with figures: the first ``max_videos`` scored ones."""
    return [r for r in rows if r.get("error") is None][:max_videos]


_DIGEST_META = "pisces-report-inputs"


def report_is_current(path: Path, inputs_digest: str) -> bool:
    """Whether ``path`` is a report written from inputs with this digest (only its head is read)."""
    try:
        with open(path, encoding="utf-8") as handle:
            head = handle.read(1024)
    except (OSError, UnicodeDecodeError):
        return False
    return f"<meta name='{_DIGEST_META}' content='{inputs_digest}'>" in head


def encode_words(words: list[WordMap]) -> list[dict[str, Any]]:
    """JSON form of a video's word heatmaps: per word its text, mass share, peak, shape and 8-bit levels.

    Each heatmap ``[T, gh, gw]`` is stored as ``round(255 · h / peak)`` (base64 of uint8 bytes) with
    ``peak = max(h)``; :func:`decode_words` inverts it to within ``peak / 510``.
    """
    out = []
    for word in words:
        maps = np.asarray(word.heatmaps, dtype=np.float64)
        peak = float(maps.max()) if maps.size else 0.0
        levels = np.zeros(maps.shape, np.uint8)
        if peak > 0:
            levels = np.clip(np.rint(maps / peak * 255.0), 0, 255).astype(np.uint8)
        out.append(
            {
                "word": word.word,
                "share": round(float(word.mass_share), 6),
                "peak": peak,
                "shape": [int(n) for n in maps.shape],
                "levels": base64.b64encode(levels.tobytes()).decode("ascii"),
            }
        )
    return out


def decode_words(records: list[dict[str, Any]]) -> list[WordMap]:
    """Inverse of :func:`encode_words` (malformed entries are dropped)."""
    words = []
    for record in records:
        try:
            shape = tuple(int(n) for n in record["shape"])
            levels = np.frombuffer(base64.b64decode(record["levels"]), dtype=np.uint8).reshape(shape)
            maps = levels.astype(np.float64) / 255.0 * float(record["peak"])
            words.append(WordMap(str(record["word"]), maps, float(record["share"])))
        except (KeyError, TypeError, ValueError):
            continue
    return words


def token_heatmaps(plan: np.ndarray, geometry: Any, rows: list[int]) -> np.ndarray:
    """Plan rows ``[len(rows), M]`` → per-frame patch heatmaps ``[len(rows), T, gh, gw]`` (CLS dropped)."""
    start = 1 if geometry.has_cls else 0
    patches = plan[rows, start:]
    return patches.reshape(len(rows), geometry.num_frames, geometry.grid_h, geometry.grid_w)


def _clean(token: str) -> str:
    for marker in ("</w>", "Ġ", "▁", "##"):
        token = token.replace(marker, "")
    return token


def word_groups(tokens: list[str], rows: list[int]) -> list[tuple[str, list[int]]]:
    """Merge the sub-word tokens at positions ``rows`` (ascending) into ``(word, positions)``.

    Conventions, detected from the tokens: CLIP BPE (``</w>`` ends a word), SentencePiece / GPT-2
    (``▁`` / ``Ġ`` starts a word), WordPiece (``##`` continues a word); otherwise one token = one word.
    Non-consecutive positions never merge.
    """
    chosen = [tokens[i] if i < len(tokens) else str(i) for i in rows]
    ends_mark = any(t.endswith("</w>") for t in chosen)
    starts_mark = any(t.startswith(("▁", "Ġ")) for t in chosen)
    groups: list[tuple[str, list[int]]] = []
    open_word = False
    previous = None
    for position, token in zip(rows, chosen):
        contiguous = previous is not None and position == previous + 1
        if ends_mark:
            joins = open_word and contiguous
            open_word = not token.endswith("</w>")
        elif starts_mark:
            joins = contiguous and not token.startswith(("▁", "Ġ"))
        else:
            joins = contiguous and token.startswith("##")
        if joins and groups:
            word, members = groups[-1]
            groups[-1] = (word + _clean(token), [*members, position])
        else:
            groups.append((_clean(token), [position]))
        previous = position
    return [(word or "?", members) for word, members in groups]


def top_words(entry: dict[str, Any], top_k: int) -> list[WordMap]:
    """The ``top_k`` caption words by plan mass, with their heatmaps (empty without a plan/geometry)."""
    if entry.get("geometry") is None or entry.get("plan") is None:
        return []
    plan = np.asarray(entry["plan"], dtype=np.float64)
    lexical = (
        np.asarray(entry["lexical"], dtype=bool) if entry.get("lexical") is not None else plan.sum(1) > 0
    )
    rows = [int(i) for i in np.flatnonzero(lexical[: plan.shape[0]])]
    total = float(plan.sum())
    if not rows or total <= 0:
        return []
    tokens = list(entry.get("tokens") or [])
    maps = token_heatmaps(plan, entry["geometry"], rows)
    by_row = {row: maps[j] for j, row in enumerate(rows)}
    words = []
    for word, members in word_groups(tokens, rows):
        heat = sum(by_row[m] for m in members)
        words.append(WordMap(word, heat, float(heat.sum()) / total))
    words.sort(key=lambda w: -w.mass_share)
    return [w for w in words[:top_k] if w.mass_share > 0]


@functools.lru_cache(maxsize=1)
def _magma() -> np.ndarray:
    """The ``magma`` colour map as a ``[256, 3]`` float lookup table in [0, 255]."""
    import matplotlib

    return matplotlib.colormaps["magma"](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0


def patch_index(
    box: tuple[float, float, float, float], grid: tuple[int, int], height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per source pixel, the patch row ``[H]`` and column ``[W]`` its centre falls in (-1: outside ``box``).

    ``box`` = ``(x0, y0, x1, y1)`` in source pixels (:meth:`FrameView.crop_box`), ``grid`` = ``(gh, gw)``.
    """
    x0, y0, x1, y1 = box
    gh, gw = grid
    ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
    rows = np.floor((ys - y0) / (y1 - y0) * gh).astype(int)
    cols = np.floor((xs - x0) / (x1 - x0) * gw).astype(int)
    rows[(ys < y0) | (ys >= y1)] = -1
    cols[(xs < x0) | (xs >= x1)] = -1
    return rows, cols


def heat_overlay(
    frame: np.ndarray, heat: np.ndarray, vmax: float, box: tuple[float, float, float, float]
) -> np.ndarray:
    """``frame [H, W, 3]`` uint8, faded, with the patch grid ``heat [gh, gw]`` coloured over ``box`` only."""
    height, width = frame.shape[:2]
    out = frame.astype(np.float64) * FRAME_ALPHA + 255.0 * (1.0 - FRAME_ALPHA)
    rows, cols = patch_index(box, heat.shape, height, width)
    inside = (rows[:, None] >= 0) & (cols[None, :] >= 0)
    levels = np.clip(np.rint(heat / (vmax or 1.0) * 255.0), 0, 255).astype(int)
    colour = _magma()[levels[rows.clip(0)[:, None], cols.clip(0)[None, :]]]
    out[inside] = out[inside] * (1.0 - HEAT_ALPHA) + colour[inside] * HEAT_ALPHA
    return np.rint(out).astype(np.uint8)


def heat_alone(heat: np.ndarray, vmax: float, cell: int = 12) -> np.ndarray:
    """The patch grid ``heat [gh, gw]`` as an image of ``cell``-pixel squares, uint8 ``[gh·cell, gw·cell, 3]``."""
    levels = np.clip(np.rint(heat / (vmax or 1.0) * 255.0), 0, 255).astype(int)
    image = _magma()[levels]
    return np.rint(np.repeat(np.repeat(image, cell, axis=0), cell, axis=1)).astype(np.uint8)


def outlined(frame: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """``frame`` with the crop ``box`` drawn as a rectangle in :data:`CROP_OUTLINE_RGB` (inside the box)."""
    out = frame.copy()
    height, width = frame.shape[:2]
    thick = max(1, round(min(height, width) / 120))
    x0, y0 = max(0, int(np.ceil(box[0] - 0.5))), max(0, int(np.ceil(box[1] - 0.5)))
    x1, y1 = min(width, int(np.ceil(box[2] - 0.5))), min(height, int(np.ceil(box[3] - 0.5)))
    for rows, cols in (
        (slice(y0, y0 + thick), slice(x0, x1)),
        (slice(y1 - thick, y1), slice(x0, x1)),
        (slice(y0, y1), slice(x0, x0 + thick)),
        (slice(y0, y1), slice(x1 - thick, x1)),
    ):
        out[rows, cols] = CROP_OUTLINE_RGB
    return out


def strip(images: list[np.ndarray], height: int = STRIP_HEIGHT, gap: int = 4) -> np.ndarray:
    """Images side by side, each scaled to ``height`` pixels (aspect kept), on white, ``gap`` pixels apart."""
    from PIL import Image

    scaled = []
    for image in images:
        width = max(1, round(image.shape[1] * height / image.shape[0]))
        resample = Image.Resampling.NEAREST if height >= image.shape[0] else Image.Resampling.BILINEAR
        scaled.append(np.asarray(Image.fromarray(image).resize((width, height), resample)))
    total = sum(i.shape[1] for i in scaled) + gap * (len(scaled) - 1)
    out = np.full((height, total, 3), 255, np.uint8)
    x = 0
    for image in scaled:
        out[:, x : x + image.shape[1]] = image
        x += image.shape[1] + gap
    return out


def video_rows(
    frames: np.ndarray | None, words: list[WordMap], view: FrameView
) -> list[tuple[str, np.ndarray]]:
    """``(label, image strip)`` rows of one video: its frames with the crop box outlined, then per word the
    plan mass over each frame's patches laid exactly over that box (alone when the box is unknown)."""
    rows: list[tuple[str, np.ndarray]] = []
    box = view.crop_box(*frames.shape[1:3]) if frames is not None else None
    n_frames = frames.shape[0] if frames is not None else (words[0].heatmaps.shape[0] if words else 0)
    if frames is not None:
        rows.append(("frames", strip([outlined(f, box) if box else f for f in frames])))
    for word in words:
        maps = word.heatmaps
        vmax = float(maps.max()) or 1.0
        tiles = []
        for col in range(n_frames):
            heat = maps[min(col * maps.shape[0] // max(n_frames, 1), maps.shape[0] - 1)]
            tiles.append(heat_overlay(frames[col], heat, vmax, box) if box else heat_alone(heat, vmax))
        rows.append((f"“{word.word}” {100 * word.mass_share:.0f}% of mass", strip(tiles)))
    return rows


def _png_array(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _histograms(rows: list[dict[str, Any]], columns: list[str]) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(columns), figsize=(3.3 * len(columns), 2.7), squeeze=False)
    for ax, column in zip(axes[0], columns):
        values = np.array([r[column] for r in rows if isinstance(r.get(column), (int, float))], dtype=float)
        if values.size:
            ax.hist(values, bins=min(30, max(5, values.size // 2)), color="#3b6ea8", edgecolor="white")
            ax.axvline(values.mean(), color="#d9480f", linewidth=1.5)
        mean = f", mean {values.mean():.3f}" if values.size else ""
        ax.set_title(f"{column} (n={values.size}{mean})", fontsize=10)
        ax.tick_params(labelsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def _fmt(value: Any) -> str:
    from pisces_cli.evaluation.display import fixed

    return "—" if value is None else fixed(value)


def _settings_table(summary: dict[str, Any] | None) -> str:
    if not summary:
        return ""
    encoder = summary.get("encoder") or {}
    ot_map = summary.get("ot_map") or {}
    weights = summary.get("weights") or {}
    map_text = "none (quality = quality_no_ot)"
    if ot_map.get("ot_map"):
        map_text = f"{ot_map['ot_map']} ({ot_map.get('method') or '?'})"
    items = [
        ("encoder", f"{encoder.get('backend', '?')} · {encoder.get('model', '?')} · "
                    f"sha256 {str(encoder.get('weights_sha256', ''))[:12]}"),
        ("OT map", map_text),
        ("weights", ", ".join(f"{k} {v:g}" for k, v in weights.items() if isinstance(v, (int, float)))),
        ("frames per video", f"{summary.get('num_frames', '?')} (crop: {summary.get('crop', '?')}; "
                             "the crop box is outlined on the frames)"),
    ]  # fmt: skip
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in items)
    return f"<table class='settings'>{cells}</table>"


def _summary_table(stats: dict[str, dict[str, float]], rows: list[dict[str, Any]]) -> str:
    from pisces_cli.evaluation.display import fixed, interval

    parts = ["<table><tr><th>column</th><th>mean</th><th>95% CI</th><th>n</th><th>meaning</th></tr>"]
    for column in [c for c in SCORE_COLUMNS if c in stats] + [c for c in stats if c not in SCORE_COLUMNS]:
        stat = stats[column]
        parts.append(
            f"<tr><td>{html.escape(column)}</td><td class='num'>{fixed(stat['mean'])}</td>"
            f"<td class='num'>{interval(stat['ci_low'], stat['ci_high'])}</td><td class='num'>{stat['n']}</td>"
            f"<td class='muted'>{html.escape(COLUMN_NOTES.get(column, ''))}</td></tr>"
        )
    deltas = [r["quality"] - r["quality_no_ot"] for r in rows
              if isinstance(r.get("quality"), (int, float)) and isinstance(r.get("quality_no_ot"), (int, float))]  # fmt: skip
    if deltas:
        parts.append(
            f"<tr><td>quality − quality_no_ot</td><td class='num'>{fixed(float(np.mean(deltas)), signed=True)}</td><td></td>"
            f"<td class='num'>{len(deltas)}</td><td class='muted'>what the OT map changed (mean)</td></tr>"
        )
    parts.append("</table>")
    return "".join(parts)


def _scores_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    good = [r for r in rows if r.get("error") is None][:MAX_TABLE_ROWS]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in good:
        cells = "".join(f"<td class='num'>{_fmt(r.get(c))}</td>" for c in columns)
        body.append(
            f"<tr><td>{html.escape(r['video'])}</td><td>{html.escape(str(r.get('prompt') or ''))}</td>{cells}</tr>"
        )
    more = (
        f"<p class='muted'>First {MAX_TABLE_ROWS} shown; see scores.csv.</p>"
        if len(good) == MAX_TABLE_ROWS
        else ""
    )
    return f"<div class='scroll'><table><tr><th>video</th><th>prompt</th>{head}</tr>{''.join(body)}</table></div>{more}"


def _failures_table(rows: list[dict[str, Any]]) -> str:
    failed = [r for r in rows if r.get("error") is not None]
    if not failed:
        return ""
    body = "".join(
        f"<tr><td>{html.escape(r['video'])}</td><td class='err'>{html.escape(str(r['error']))}</td></tr>"
        for r in failed[:MAX_TABLE_ROWS]
    )
    return f"<h2>Failed videos ({len(failed)})</h2><table><tr><th>video</th><th>error</th></tr>{body}</table>"


def write_score_report(
    path: Path,
    videos_root: Path,
    rows: list[dict[str, Any]],
    words: dict[str, list[WordMap]],
    stats: dict[str, dict[str, float]],
    *,
    view: FrameView,
    max_videos: int = REPORT_MAX_VIDEOS,
    top_k: int = REPORT_TOP_WORDS,
    summary: dict[str, Any] | None = None,
    inputs_digest: str | None = None,
    decode_timeout_s: float | None = None,
) -> Path:
    """Write the self-contained HTML report; returns its path.

    The page depends only on its inputs (no dates, no run-specific names), so two runs over the same
    files write byte-identical reports.

    Args:
        path: the ``report.html`` to write (atomically).
        videos_root: folder the ``rows``' ``video`` keys are relative to (frames are re-read from there).
        rows: score rows (``video``, ``prompt``, score columns, ``error``).
        words: per video key, its top words' heatmaps (:func:`top_words` / :func:`decode_words`); only the
            :func:`drawn_rows` are looked up.
        stats: per column ``mean``, ``ci_low``, ``ci_high``, ``n``.
        view: the frame choice and crop the encoder used (frames and crop box are drawn from it).
        max_videos: videos drawn with figures (every video is in the table).
        top_k: words with heatmaps per video.
        summary: the run's ``summary.json`` content; read from ``path``'s folder when None and present.
        inputs_digest: a hash of everything the page is drawn from, recorded in it
            (:func:`report_is_current` compares it to skip rebuilding an up-to-date report).
        decode_timeout_s: time limit for re-reading one video's frames (``runtime.decode_timeout_s``).
    """
    path = Path(path)
    if summary is None:
        try:
            summary = json.loads((path.parent / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            summary = None
    columns = [c for c in SCORE_COLUMNS if c in stats]
    n_good = sum(r.get("error") is None for r in rows)
    n_failed = len(rows) - n_good
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        + (f"<meta name='{_DIGEST_META}' content='{html.escape(inputs_digest)}'>" if inputs_digest else "")
        + "<title>pisces score report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>pisces score report</h1>",
        f"<p class='muted'>{n_good} videos scored, {n_failed} failed.</p>",
        _settings_table(summary),
        "<h2>Summary</h2><p class='muted'>Mean over the scored videos with a 95% percentile-bootstrap "
        "confidence interval.</p>",
        _summary_table(stats, rows),
    ]
    if columns:
        parts.append(f"<h2>Distributions</h2><img alt='histograms of {', '.join(columns)}' "
                     f"src='{_histograms(rows, columns)}'>")  # fmt: skip
    parts.append(
        "<h2>Videos</h2><p class='muted'>Top row: the frames the encoder was given, with the crop it saw "
        "outlined. Rows below: for the caption words whose tokens the token-level partial-OT plan moves the "
        "most mass from, where that mass goes over the patches of that crop, drawn over the crop itself "
        "(brighter = more mass; each row scaled to its own maximum).</p>"
    )
    shown = drawn_rows(rows, max_videos)
    for row in shown:
        key = row["video"]
        frames, indices = _frames_for(videos_root / key, view, decode_timeout_s)
        video_words = list(words.get(key) or [])[:top_k]
        chips = "".join(f"<span>{html.escape(c)} {_fmt(row.get(c))}</span>" for c in columns)
        cells = "".join(
            f"<tr><th>{html.escape(label)}</th><td><img alt='{html.escape(label)} of {html.escape(key)}' "
            f"src='{_png_array(image)}'></td></tr>"
            for label, image in video_rows(frames, video_words, view)
        )
        notes = []
        if frames is not None:
            outline = ", the outlined square is the crop the encoder saw" if view.crop == "center" else ""
            notes.append(f"Frames {', '.join(str(i) for i in indices)} of the video{outline}.")
        else:
            notes.append("The video could not be re-read for its frames.")
        if not video_words:
            notes.append("No word heatmaps: this run computed no token plan (semantic reward off) "
                         "or the plan moved no mass.")  # fmt: skip
        elif frames is not None and view.crop != "center":
            notes.append("Random crop: the box the encoder saw is not recorded; heatmaps drawn alone.")
        note = "".join(f"<p class='muted'>{html.escape(n)}</p>" for n in notes)
        parts.append(
            f"<div class='video'><div class='title'>{html.escape(key)}</div>"
            f"<div class='prompt'>“{html.escape(str(row.get('prompt') or ''))}”</div>"
            f"<div class='chips'>{chips}</div><table class='strips'>{cells}</table>{note}</div>"
        )
    if n_good > len(shown):
        parts.append(f"<p class='muted'>… {n_good - len(shown)} more scored videos: see the table below.</p>")
    parts.append(f"<h2>All scores ({n_good})</h2>")
    parts.append(_scores_table(rows, columns))
    parts.append(_failures_table(rows))
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
    return path
