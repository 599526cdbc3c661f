"""Output folders: writable (a probe file is created and removed), and, for ``--weights``, a rough estimate of
what the stage writes against the free space.

Estimates (bytes; rough on purpose, they only catch a disk that is obviously too small):

- ``embed``: items × 2 × D × 4 (``text_cls`` and ``video_cls`` in fp32; video tokens, when saved, not counted);
- ``fit-ot``: neural maps 40 × P (P = the map's parameters D·h + h·h + h·D + 6h + D in fp32, written as four map
  files plus the resumable state of map, potential and their AdamW moments), Gaussian 8 × (D² + 2D);
- ``score``/``eval``: videos × 2 KiB (rows in JSONL/CSV/JSON), plus 150 KiB per video for ``score --report``;
- ``finetune``: (``checkpoints_total_limit`` + 1) × 20 × P_train (the trainable parameters in fp32 in two file
  formats, plus AdamW's two moments in the training state);
- ``generate``: videos × frames × H × W × b with b = 0.05 bytes per pixel for H.264 at ``crf`` > 0 and 0.5 at
  ``crf: 0`` (lossless).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pisces_cli.preflight.paths import free_bytes, writable_problem
from pisces_cli.preflight.report import PreflightReport, Status, human_bytes, human_count

KIB = 1024


@dataclass(frozen=True)
class Output:
    """An output folder of a stage: the recipe key (or option) naming it, the folder, and the estimate of what
    the stage writes there (bytes, or None when unknown) with a note on how it was counted."""

    key: str
    folder: Path
    estimate: float | None = None
    basis: str = ""


def check_output(output: Output, report: PreflightReport, *, deep: bool) -> None:
    problem = writable_problem(output.folder)
    if problem:
        report.add("output", output.key, Status.FAIL, f"{output.folder} not writable: {problem}")
        return
    if not deep:
        report.add("output", output.key, Status.OK, f"{output.folder}: writable")
        return
    free = free_bytes(output.folder)
    if output.estimate is None:
        report.add(
            "output",
            output.key,
            Status.OK,
            f"{output.folder}: writable, {human_bytes(free)} free ({output.basis})",
        )
        return
    needed = f"≈{human_bytes(output.estimate)} to write ({output.basis}), {human_bytes(free)} free"
    if output.estimate > free:
        report.add("output", output.key, Status.FAIL, f"{output.folder}: {needed}")
        return
    report.add("output", output.key, Status.OK, f"{output.folder}: writable, {needed}")


def embed_bytes(items: int | None, embed_dim: int | None, save_tokens: bool) -> tuple[float | None, str]:
    if items is None or embed_dim is None:
        return None, "item count or embedding width unknown"
    tokens = "; video tokens not counted" if save_tokens else ""
    return items * 2 * embed_dim * 4.0, f"{items} items × 2 × {embed_dim} fp32{tokens}"


def fit_ot_bytes(method: str, embed_dim: int | None, hidden: int) -> tuple[float | None, str]:
    if embed_dim is None:
        return None, "embedding width unknown"
    if method == "neural":
        params = embed_dim * hidden + hidden * hidden + hidden * embed_dim + 6 * hidden + embed_dim
        return 40.0 * params, f"neural map of {human_count(params)} parameters, 4 files + resumable state"
    if method == "gaussian":
        return 8.0 * (embed_dim**2 + 2 * embed_dim), f"Gaussian map, {embed_dim}-d"
    return 64.0 * KIB, "identity map"


def score_bytes(videos: int | None, report_html: bool) -> tuple[float | None, str]:
    if videos is None:
        return None, "video count unknown"
    per_video = 2 * KIB + (150 * KIB if report_html else 0)
    return float(videos * per_video), f"{videos} videos × {per_video // KIB} KiB"


def finetune_bytes(trainable: int | None, keep: int | None) -> tuple[float | None, str]:
    if trainable is None:
        return None, "trainable parameters unknown"
    copies = (keep or 1) + 1
    return (
        20.0 * trainable * copies,
        f"{copies} checkpoints × 20 B × {human_count(trainable)} trainable parameters",
    )


def generate_bytes(
    videos: int | None, frames: int, height: int, width: int, crf: int
) -> tuple[float | None, str]:
    if videos is None:
        return None, "prompt count unknown"
    per_pixel = 0.5 if crf == 0 else 0.05
    return (
        videos * frames * height * width * per_pixel,
        f"{videos} videos of {frames}×{height}×{width} at crf {crf}",
    )
