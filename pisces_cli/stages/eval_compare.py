"""``pisces eval compare RUN_A RUN_B``: compare two ``pisces eval`` outputs on the same prompts.

Items are prompts: each run's per-video metrics are averaged over the videos of a prompt (e.g. its 5
seeds), and prompts present in both runs are paired. Per metric: the mean difference B − A with a paired
bootstrap 95 % CI and B's win rate over prompts
(:func:`pisces_cli.evaluation.compare_report.compare_runs`). Writes ``compare.json`` and ``compare.html``
(bar chart of the differences with CIs, A-vs-B scatter per metric, frame strips of the largest wins and
losses on ``--metric``).

A metric means here what it means in ``eval``: a prompt's value is the mean of its videos' values, nulls
left out, so ``temporal_flickering`` is compared over the static videos only (VBench's protocol), exactly
like ``eval``'s dataset value, and ``frame_stability`` over every video. Eval outputs of version 1 (whose
per-video ``temporal_flickering`` was given for every video) are read in today's meaning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

    from pisces_cli.evaluation.compare_report import Comparison

STRIP_FRAMES = 8
# sampler settings whose difference makes two runs' videos not comparable prompt by prompt
_MATCHED_SETTINGS = ("seeds", "num_frames", "height", "width", "steps", "fps")


@dataclass
class EvalRun:
    """A loaded ``eval.json``: its path, label, document and per-video rows."""

    path: Path
    label: str
    document: dict[str, Any]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [r for r in self.document.get("videos", []) if r.get("error") is None]

    @property
    def videos_dir(self) -> Path:
        return Path(self.document.get("videos_dir", "."))


@dataclass
class CompareSummary:
    """``vbench_differences``: metric → how it differs from VBench's definition, for the compared metrics."""

    output: Path
    comparison: Comparison
    notes: list[str]
    vbench_differences: dict[str, str] = field(default_factory=dict)


def load_eval_run(spec: str | Path) -> EvalRun:
    """An ``eval.json``, or a folder holding one (an eval output, or a videos folder with ``pisces-eval/``)."""
    from pisces_cli.stages.eval import DEFAULT_OUTPUT, EVAL_FILE, EVAL_SCHEMA

    path = Path(spec)
    if path.is_dir():
        for candidate in (path / EVAL_FILE, path / DEFAULT_OUTPUT / EVAL_FILE):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise UsageError(
                f"{spec}: no {EVAL_FILE} in this folder or its {DEFAULT_OUTPUT}/ (run `pisces eval` first)"
            )
    if not path.is_file():
        raise UsageError(f"{spec}: no such eval output (an eval.json or a folder with one)")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(document, dict) or document.get("schema") != EVAL_SCHEMA:
        raise UsageError(f"{path}: not a pisces eval output (expected schema {EVAL_SCHEMA!r})")
    _check_video_rows(path, document)
    _upgrade_version_1(document)
    label = path.parent.parent.name if path.parent.name == DEFAULT_OUTPUT else path.parent.name
    return EvalRun(path, label or str(path), document)


def _check_video_rows(path: Path, document: dict[str, Any]) -> None:
    """Refuse (exit 2, naming the file and the field) ``videos`` rows the comparison would misread: not a
    list of objects, a row without a string ``video``, a video listed twice (counted twice in its prompt's
    mean), or a metric that is neither a finite number nor null (it would be dropped without a word)."""
    from pisces_cli.stages.eval import METRIC_ORDER

    rows = document.get("videos", [])
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise UsageError(f"{path}: invalid eval output: videos: expected a list of objects")
    seen: set[str] = set()
    for i, row in enumerate(rows):
        video = row.get("video")
        if not isinstance(video, str) or not isinstance(row.get("prompt", ""), str | None):
            raise UsageError(f"{path}: invalid eval output: videos[{i}]: needs a string 'video' and 'prompt'")
        if video in seen:
            raise UsageError(f"{path}: invalid eval output: videos[{i}]: {video!r} is listed twice")
        seen.add(video)
        bad = next((m for m in METRIC_ORDER if row.get(m) is not None and not _is_number(row[m])), None)
        if bad is not None:
            raise UsageError(
                f"{path}: invalid eval output: videos[{i}].{bad}: expected a finite number or null, "
                f"got {row[bad]!r}"
            )


def _upgrade_version_1(document: dict[str, Any]) -> None:
    """Give a version-1 ``eval.json`` today's meanings (see the module docstring), in place."""
    if document.get("version", 1) != 1:
        return
    for row in document.get("videos", []):
        if "temporal_flickering" in row and "static" in row:
            row["frame_stability"] = row["temporal_flickering"]
            row["static_proxy"] = row.pop("static")
            if not row["static_proxy"]:
                row["temporal_flickering"] = None


def compared_metrics(run_a: EvalRun, run_b: EvalRun) -> list[str]:
    """The metrics (in ``eval``'s order) that both runs give for at least one video."""
    from pisces_cli.stages.eval import METRIC_ORDER

    def given(run: EvalRun) -> set[str]:
        return {m for row in run.rows for m in METRIC_ORDER if _is_number(row.get(m))}

    shared = given(run_a) & given(run_b)
    return [m for m in METRIC_ORDER if m in shared]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def per_prompt_scores(run: EvalRun, metrics: list[str]) -> dict[str, dict[str, float]]:
    """``{prompt: {metric: mean over the prompt's videos}}`` (non-numeric values skipped)."""
    sums: dict[str, dict[str, list[float]]] = {}
    for row in run.rows:
        prompt = row.get("prompt")
        if not isinstance(prompt, str):
            continue
        bucket = sums.setdefault(prompt, {})
        for metric in metrics:
            value = row.get(metric)
            if _is_number(value):
                bucket.setdefault(metric, []).append(float(value))
    return {p: {m: sum(v) / len(v) for m, v in by_metric.items()} for p, by_metric in sums.items()}


def _first_video(run: EvalRun, prompt: str) -> str | None:
    keys = sorted(r["video"] for r in run.rows if r.get("prompt") == prompt)
    return keys[0] if keys else None


def _strip_frames(run: EvalRun, key: str) -> np.ndarray | None:
    from pisces_cli.errors import PiscesError
    from pisces_cli.io.video import probe, read_frames, uniform_indices

    source = run.videos_dir / key
    try:
        total = probe(str(source)).num_frames
        return read_frames(str(source), uniform_indices(total, min(STRIP_FRAMES, total)))
    except PiscesError:
        return None


def frame_strips_for(
    comparison: Comparison, run_a: EvalRun, run_b: EvalRun, metric: str, count: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Frames (first video of the prompt, up to 8 evenly spaced) of the ``count`` largest wins and losses."""
    from pisces_cli.evaluation.compare_report import largest_changes

    wins, losses = largest_changes(comparison, metric, count=count)
    strips = {}
    for prompt in wins + losses:
        key_a, key_b = _first_video(run_a, prompt), _first_video(run_b, prompt)
        if key_a is None or key_b is None:
            continue
        frames_a, frames_b = _strip_frames(run_a, key_a), _strip_frames(run_b, key_b)
        if frames_a is not None and frames_b is not None:
            strips[prompt] = (frames_a, frames_b)
    return strips


def setting_differences(run_a: EvalRun, run_b: EvalRun) -> list[str]:
    """Notes on what differs between the two runs beyond the model (encoder, sampler settings)."""
    notes = []
    settings_a = run_a.document.get("settings", {}) or {}
    settings_b = run_b.document.get("settings", {}) or {}
    if settings_a.get("encoder") != settings_b.get("encoder"):
        notes.append(
            "the runs were scored with different encoders: reward and consistency values are not comparable"
        )
    manifest_a = (run_a.document.get("videos_manifest") or {}).get("settings") or {}
    manifest_b = (run_b.document.get("videos_manifest") or {}).get("settings") or {}
    if not manifest_a or not manifest_b:
        notes.append("a run has no generate manifest: seeds and sampler settings cannot be checked")
    for key in _MATCHED_SETTINGS:
        if manifest_a and manifest_b and manifest_a.get(key) != manifest_b.get(key):
            notes.append(
                f"sampler setting {key!r} differs: {manifest_a.get(key)!r} vs {manifest_b.get(key)!r}"
            )
    return notes


def run_compare(
    spec_a: str,
    spec_b: str,
    *,
    output: str | None = None,
    metric: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    strip_count: int = 3,
) -> CompareSummary:
    """Compare eval runs A and B; write ``compare.json`` and ``compare.html`` into ``output``
    (default: ``compare/`` next to B's ``eval.json``)."""
    from pisces_cli.atomic import atomic_write_text
    from pisces_cli.evaluation.compare_report import compare_runs, write_compare_html
    from pisces_cli.stages.eval_metrics import VBENCH_DIFFERENCES

    run_a, run_b = load_eval_run(spec_a), load_eval_run(spec_b)
    if run_a.label == run_b.label:
        run_a.label, run_b.label = f"A ({run_a.label})", f"B ({run_b.label})"
    metrics = compared_metrics(run_a, run_b)
    if not metrics:
        raise UsageError(f"{run_a.path} and {run_b.path} share no metric")
    scores_a, scores_b = per_prompt_scores(run_a, metrics), per_prompt_scores(run_b, metrics)
    shared = [p for p in scores_a if p in scores_b]
    paired = [m for m in metrics if any(m in scores_a[p] and m in scores_b[p] for p in shared)]
    if not paired:
        raise UsageError(f"{run_a.path} and {run_b.path} share no metric on a common prompt")
    comparison = compare_runs(
        scores_a,
        scores_b,
        metrics=paired,
        label_a=run_a.label,
        label_b=run_b.label,
        n_boot=n_boot,
        seed=seed,
    )
    strip_metric = metric or ("total" if "total" in metrics else comparison.metrics[0].metric)
    comparison.metric(strip_metric)  # UsageError for an unknown --metric
    notes = setting_differences(run_a, run_b)
    notes += [f"{m}: not compared, no prompt has a value in both runs" for m in metrics if m not in paired]
    if "temporal_flickering" in paired:
        count = comparison.metric("temporal_flickering").n
        notes.append(
            f"temporal_flickering: compared on the {count} prompt(s) with a static video in both runs "
            "(as in `pisces eval`); frame_stability compares every video"
        )
    differences = {m: VBENCH_DIFFERENCES[m] for m in paired if m in VBENCH_DIFFERENCES}
    if comparison.only_in_a or comparison.only_in_b:
        notes.append(
            f"{len(comparison.only_in_a)} prompts only in {run_a.label}, {len(comparison.only_in_b)} only in "
            f"{run_b.label}: left out"
        )
    out_dir = Path(output) if output else run_b.path.parent / "compare"
    strips = frame_strips_for(comparison, run_a, run_b, strip_metric, strip_count) if strip_count else {}
    document = comparison.to_dict()
    document.update(
        run_a=str(run_a.path),
        run_b=str(run_b.path),
        item_kind="prompt",
        strip_metric=strip_metric,
        notes=notes,
        vbench_differences=differences,
    )
    from pisces_cli.stages.eval import json_safe

    atomic_write_text(out_dir / "compare.json", json.dumps(json_safe(document), indent=2) + "\n")
    write_compare_html(
        out_dir / "compare.html",
        comparison,
        frame_strips=strips or None,
        strip_metric=strip_metric,
        strip_count=strip_count,
        title=f"pisces eval compare: {run_b.label} vs {run_a.label}",
    )
    return CompareSummary(out_dir, comparison, notes, differences)
