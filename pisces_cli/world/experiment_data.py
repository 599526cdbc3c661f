"""Data of the world experiment: folders of world clips (clean and corrupted) with prompts and oracle labels.

Every folder holds ``NAME.mp4`` files and a ``prompts.jsonl`` (``{"file", "prompt"}``, what the stages read).
:func:`label_folder` judges every mp4 of a folder *as decoded* against its prompt with the world oracle and
writes the verdicts to a ``labels.jsonl`` outside the folder (so the stages never mistake it for input).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pisces_cli.io.jsonl import iter_jsonl
from pisces_cli.world import CORRUPTION_KINDS, corrupt, judge, make_clips

#: Oracle attributes reported per clip (True / False / None when the prompt does not state it).
ORACLE_ATTRIBUTES: tuple[str, ...] = ("color", "shape", "count", "direction")
#: Oracle scores in [0, 1] reported per clip.
ORACLE_SCORES: tuple[str, ...] = ("prompt_fidelity", "quality")


def write_folder(
    folder: Path, clips: Iterable[tuple[str, np.ndarray, str]], fps: float
) -> list[dict[str, str]]:
    """Write ``(name, uint8 [T, H, W, 3] frames, prompt)`` triples as ``name.mp4`` + ``prompts.jsonl``."""
    from pisces_cli.atomic import atomic_write_text
    from pisces_cli.io.writer import write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, frames, prompt in clips:
        # lossless (crf 0): decoded frames do not depend on the encoder's (thread-dependent) mode decisions
        write_mp4(folder / f"{name}.mp4", frames, fps, crf=0)
        rows.append({"file": f"{name}.mp4", "prompt": prompt})
    atomic_write_text(folder / "prompts.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def write_world_folder(
    folder: Path, seed: int, n: int, *, frames: int, size: int, fps: float = 8.0
) -> list[str]:
    """``n`` clean world clips of ``make_clips(seed, n)`` into ``folder``; returns their captions."""
    clips = make_clips(seed, n, frames=frames, size=size)
    write_folder(folder, ((f"clip_{i:04d}", f, text) for i, (f, text, _) in enumerate(clips)), fps)
    return [text for _, text, _ in clips]


def corruption_plan(
    kinds: Sequence[str], severities: Sequence[float], per_cell: int
) -> list[tuple[str, float]]:
    """``("clean", 0.0)`` × ``per_cell`` then every ``(kind, severity)`` × ``per_cell``, in a fixed order."""
    unknown = [k for k in kinds if k not in CORRUPTION_KINDS]
    if unknown:
        from pisces_cli.errors import UsageError

        raise UsageError(f"corruption kinds {unknown} are not among {CORRUPTION_KINDS}")
    plan = [("clean", 0.0)] * per_cell
    for kind in kinds:
        for severity in severities:
            plan.extend([(kind, float(severity))] * per_cell)
    return plan


def write_heldout_folder(
    folder: Path,
    seed: int,
    plan: Sequence[tuple[str, float]],
    *,
    frames: int,
    size: int,
    fps: float = 8.0,
) -> list[dict[str, Any]]:
    """One held-out world clip per plan entry (clip ``i`` = ``make_clips(seed, n)[i]``), corrupted as planned.

    The prompt is always the clean clip's caption, so attribute corruptions make the clip disagree with it.
    Returns ``{"file", "prompt", "kind", "severity"}`` per clip.
    """
    clips = make_clips(seed, len(plan), frames=frames, size=size)
    meta: list[dict[str, Any]] = []
    written = []
    for i, ((clean, text, spec), (kind, severity)) in enumerate(zip(clips, plan, strict=True)):
        if kind == "clean":
            pixels = clean
        else:
            pixels, _ = corrupt(spec, kind, severity, np.random.default_rng([seed, i, 7]))
        name = f"clip_{i:04d}"
        written.append((name, pixels, text))
        meta.append({"file": f"{name}.mp4", "prompt": text, "kind": kind, "severity": severity})
    write_folder(folder, written, fps)
    return meta


def judge_clip(frames: np.ndarray, prompt: str) -> dict[str, Any]:
    """The oracle's per-attribute correctness and scores for one uint8 ``[T, H, W, 3]`` clip."""
    verdict = judge(frames, prompt)
    row: dict[str, Any] = {name: getattr(verdict, name) for name in ORACLE_ATTRIBUTES}
    row.update({name: float(getattr(verdict, name)) for name in ORACLE_SCORES})
    row["all_four"] = all(bool(row[a]) for a in ORACLE_ATTRIBUTES if row[a] is not None)
    return row


def label_folder(
    folder: Path, labels_path: Path, extra: Sequence[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Judge every video listed in ``folder/prompts.jsonl`` (decoded from disk) and write ``labels_path``.

    ``extra``: per-row fields merged in (matched by ``file``). Returns the rows in ``prompts.jsonl`` order.
    """
    from pisces_cli.atomic import atomic_write_text
    from pisces_cli.io.video import read_frames

    by_file = {r["file"]: r for r in (extra or [])}
    rows = []
    for item in read_jsonl(folder / "prompts.jsonl"):
        frames = read_frames(str(folder / item["file"]))
        row = {"file": item["file"], "prompt": item["prompt"], **by_file.get(item["file"], {})}
        row.update(judge_clip(frames, item["prompt"]))
        rows.append(row)
    atomic_write_text(labels_path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file."""
    return [record for _, record in iter_jsonl(path)]
