"""``pisces eval VIDEOS_DIR``: evaluate a folder of generated videos; ``pisces eval aggregate``.

For every video of VIDEOS_DIR (the ``generate`` output, or any folder with a prompt mapping, see
:func:`pisces_cli.io.prompts.collect_prompted_videos`) this computes, with the formulas listed in
:data:`pisces_cli.stages.eval_metrics.METRIC_FORMULAS` (also written into ``eval.json``):

- the PISCES rewards ``quality``, ``semantic``, ``total`` and the no-OT cosine ``quality_no_ot``, by the
  same reward module and frame sampling as ``pisces score``;
- ``subject_consistency`` / ``background_consistency`` from the encoder's per-frame features (VBench's
  first-frame + previous-frame cosine formula);
- ``temporal_flickering`` (VBench's pixel formula; its dataset value uses static videos only) and a
  ``dynamic_degree`` proxy (Farnebäck flow with VBench's threshold rule).

With ``--vbench`` (or ``eval.vbench: true``) the installed ``vbench`` package is run too and its output
aggregated exactly (:mod:`pisces_cli.stages.eval_vbench`); when the package or a weight file is missing
the command stops before computing anything and says what to install.

Output (``--output``, default ``VIDEOS_DIR/pisces-eval/``): ``eval.json`` — the settings, the video set's
``manifest.json`` (model, adapter, seeds, sampler settings) when ``generate`` wrote one, every metric per
video and its aggregate (mean with a 95 % bootstrap CI).
"""

from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import PiscesRuntimeError, UsageError
from pisces_cli.io.jsonl import iter_jsonl

if TYPE_CHECKING:
    from pisces_cli.config import ResolvedRecipe
    from pisces_cli.io.prompts import VideoItem

EVAL_FILE = "eval.json"
EVAL_SCHEMA = "pisces.eval"
DEFAULT_OUTPUT = "pisces-eval"
METRIC_ORDER = (
    "quality",
    "semantic",
    "quality_no_ot",
    "total",
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "dynamic_degree",
)


@dataclass
class EvalSummary:
    """What :func:`run_eval` did: the output folder, per-video rows and per-metric aggregates."""

    output: Path
    evaluated: int
    failed: int
    aggregate: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    vbench: dict[str, Any] | None = None


# ------------------------------------------------------------------------------------------ inputs


def read_videos_manifest(folder: Path) -> dict[str, Any] | None:
    """``folder/manifest.json`` as written by ``pisces generate``, or ``None`` when absent.

    Raises:
        UsageError: the file exists but is not a JSON object.
    """
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_video_seeds(folder: Path) -> dict[str, dict[str, Any]]:
    """``{file: {"seed", "index"}}`` from ``folder/prompts.jsonl`` rows that carry them (``generate`` writes them)."""
    path = folder / "prompts.jsonl"
    out: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return out
    for _, record in iter_jsonl(path, strict=False):
        if isinstance(record.get("file"), str):
            extra = {k: record[k] for k in ("seed", "index") if k in record}
            if extra:
                out[record["file"]] = extra
    return out


def prompt_suite_coverage(suite: str | None, prompts: list[str]) -> dict[str, Any] | None:
    """How the videos' prompts cover the suite ``suite``: counts and (up to 20) missing / extra prompts."""
    if not suite:
        return None
    from pisces_cli.evaluation.prompt_suites import load_suite

    texts = list(dict.fromkeys(p.text for p in load_suite(suite)))
    have = set(prompts)
    missing = [t for t in texts if t not in have]
    known = set(texts)
    extra = sorted({p for p in prompts if p not in known})
    return {
        "suite": suite,
        "prompts": len(texts),
        "covered": len(texts) - len(missing),
        "missing_count": len(missing),
        "missing": missing[:20],
        "extra_count": len(extra),
        "extra": extra[:20],
    }


def eval_items(resolved: ResolvedRecipe, root: Path, out_dir: Path, limit: int | None) -> list[VideoItem]:
    """The folder's (video, prompt) items, minus anything inside the output folder."""
    from pisces_cli.stages.inputs import items_from_recipe
    from pisces_cli.stages.score import _inside

    items = [
        it for it in items_from_recipe(resolved.recipe, str(root)) if not _inside(root / it.key, out_dir)
    ]
    if limit is not None:
        items = items[:limit]
    if not items:
        raise UsageError(f"VIDEOS_DIR: no videos found in {root} (mp4, webm, mov, mkv, gif)")
    return items


# ----------------------------------------------------------------------------------------- compute


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_safe(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return value
    return _finite(value)


def _add_pixel_metrics(row: dict[str, Any], source: str, section: Any) -> None:
    """Decode every native frame of ``source`` and add the pixel metrics and stream facts to ``row``."""
    from pisces_cli.io.video import read_clip
    from pisces_cli.stages.eval_metrics import pixel_metrics

    frames, info, _ = read_clip(source, None, name=source)
    row.update(
        frames=info.num_frames,
        fps=info.fps,
        width=info.width,
        height=info.height,
        duration_s=round(info.duration_s, 4),
    )
    if section.flicker or section.dynamic_degree:
        metrics = pixel_metrics(frames, info.fps, flicker=section.flicker, dynamic=section.dynamic_degree)
        if section.flicker:
            row["temporal_flickering"] = metrics.temporal_flickering
            row["static"] = metrics.static
        if section.dynamic_degree:
            row["dynamic_degree"] = metrics.dynamic_degree
            row["flow_top5_px"] = metrics.flow_top5_px
            row["flow_threshold_px"] = metrics.flow_threshold_px


def _feature_rows(features: Any, index: int) -> dict[str, float | None]:
    from pisces_cli.evaluation.temporal import consistency_score

    out: dict[str, float | None] = {}
    for name, array in (
        ("subject_consistency", features.subject),
        ("background_consistency", features.background),
    ):
        out[name] = None if array is None else consistency_score(array[index])
    return out


def _compute_rows(
    resolved: ResolvedRecipe,
    items: list[VideoItem],
    *,
    ot_map: str | None,
    console: Any,
    settings: dict[str, Any],
) -> list[dict[str, Any]]:
    """One row per item: rewards, consistency, pixel metrics, or ``error``."""
    from pisces_cli.stages.progress import progress_bar

    recipe = resolved.recipe
    section = recipe.eval
    rows: list[dict[str, Any]] = []
    needs_encoder = section.rewards or section.consistency
    if not needs_encoder:
        with progress_bar(console, "eval", total=len(items)) as advance:
            for item in items:
                row = {"video": item.key, "prompt": item.prompt, "error": item.error}
                if item.error is None:
                    _pixel_row(row, item.source, section, recipe.runtime.decode_timeout_s)
                rows.append(row)
                advance()
        return rows

    import torch

    from pisces_cli.io.dataset import error_detail, make_loader
    from pisces_cli.io.preprocess import Preprocessing
    from pisces_cli.rewards.build import build_reward, encoder_num_frames, load_encoder_from_recipe
    from pisces_cli.runtime import cpu_threads_beside_workers, resolve_device
    from pisces_cli.stages.eval_metrics import FeatureTap, frame_features

    device = resolve_device(recipe.runtime.device)
    encoder = load_encoder_from_recipe(recipe, device)
    tap = FeatureTap(encoder)
    reward = None
    if section.rewards:
        reward, map_info = build_reward(recipe, tap, ot_map_path=ot_map)
        settings["ot_map"] = map_info
        settings["reward_weights"] = dict(reward.weights)
        if map_info["ot_map"] is None:
            settings["notes"].append("no OT map (reward.ot_map is null): quality equals quality_no_ot")
    num_frames = encoder_num_frames(recipe, encoder)
    settings.update(encoder=encoder.fingerprint(), num_frames=num_frames, crop=recipe.reward.crop)
    prep = encoder.preprocessing
    loader = make_loader(
        items,
        num_frames=num_frames,
        frame_rate=recipe.data.fps,
        preprocessing=Preprocessing(
            size=prep.size, mean=prep.mean, std=prep.std, interpolation=prep.interpolation
        ),
        batch_size=section.batch_size,
        num_workers=recipe.runtime.num_workers,
        crop=recipe.reward.crop,
        seed=recipe.seed,
        decode_timeout_s=recipe.runtime.decode_timeout_s,
    )
    with (
        progress_bar(console, "eval", total=len(items)) as advance,
        cpu_threads_beside_workers(device, loader.num_workers),
    ):
        for batch in loader:
            batch_rows = [
                {"video": r["key"], "prompt": r["prompt"], "error": r["error"], **error_detail(r)}
                for r in batch.errors
            ]
            if batch.clips is not None:
                clips = batch.clips.to(device)
                with torch.no_grad():
                    if reward is not None:
                        out = reward.from_preprocessed(clips, [str(p) for p in batch.prompts])
                        columns = {k: v.float().cpu().tolist() for k, v in out.columns().items()}
                        features = tap.last
                    else:
                        columns, features = {}, encoder.encode_video(clips)
                pooled = frame_features(features) if section.consistency and features is not None else None
                if pooled is not None:
                    settings["consistency_features"] = pooled.subject_source
                for i, key in enumerate(batch.keys):
                    row: dict[str, Any] = {"video": key, "prompt": batch.prompts[i], "error": None}
                    row.update({k: _finite(v[i]) for k, v in columns.items() if k != "semantic_no_ot"})
                    if pooled is not None:
                        row.update(_feature_rows(pooled, i))
                    _pixel_row(row, batch.sources[i], section, recipe.runtime.decode_timeout_s)
                    batch_rows.append(row)
            rows.extend(batch_rows)
            advance(len(batch_rows))
    order = {it.key: i for i, it in enumerate(items)}
    rows.sort(key=lambda r: order.get(r["video"], len(order)))
    return rows


def _pixel_row(row: dict[str, Any], source: str, section: Any, timeout_s: float | None) -> None:
    """Add the pixel metrics of ``source`` to ``row``, decoding in a child process (a decoder that
    crashes or passes ``timeout_s`` makes this row's error, not the run's end)."""
    from pisces_cli.errors import PiscesError
    from pisces_cli.io.isolation import call_isolated

    try:
        row.update(call_isolated(_pixel_metrics_of, source, section, label=source, timeout_s=timeout_s))
    except PiscesError as error:
        row["error"] = str(error)


def _pixel_metrics_of(source: str, section: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    _add_pixel_metrics(values, source, section)
    return values


# --------------------------------------------------------------------------------------- aggregate


def aggregate_rows(rows: list[dict[str, Any]], n_boot: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per metric: ``mean`` with its 95 % percentile-bootstrap CI and ``n`` over the videos without error.

    ``temporal_flickering`` is averaged over the static videos only (VBench's protocol); its entry also
    gives ``mean_all_videos``. Metrics no video has are left out.
    """
    from pisces_cli.evaluation.stats import bootstrap_ci

    good = [r for r in rows if r.get("error") is None]
    out: dict[str, dict[str, Any]] = {}
    for metric in METRIC_ORDER:
        values = [float(r[metric]) for r in good if isinstance(r.get(metric), int | float)]
        if not values:
            continue
        entry: dict[str, Any] = {}
        if metric == "temporal_flickering":
            static = [
                float(r[metric]) for r in good if isinstance(r.get(metric), int | float) and r.get("static")
            ]
            entry.update(
                mean_all_videos=sum(values) / len(values), n_all_videos=len(values), n_static=len(static)
            )
            values = static
        if values:
            ci = bootstrap_ci(values, n_boot=n_boot, seed=seed)
            entry.update(mean=ci.estimate, ci_low=ci.low, ci_high=ci.high, n=ci.n)
        else:
            entry.update(mean=None, ci_low=None, ci_high=None, n=0)
        out[metric] = entry
    return out


def run_eval(
    resolved: ResolvedRecipe,
    videos_dir: str,
    *,
    output: str | None = None,
    ot_map: str | None = None,
    vbench: bool | None = None,
    limit: int | None = None,
    console: Any = None,
) -> EvalSummary:
    """Evaluate every video of ``videos_dir`` and write ``eval.json`` (see the module docstring)."""
    from pisces_cli.atomic import atomic_write_json
    from pisces_cli.runtime import seed_everything
    from pisces_cli.stages.eval_metrics import METRIC_FORMULAS

    recipe = resolved.recipe
    section = recipe.eval
    use_vbench = section.vbench if vbench is None else vbench
    root = Path(videos_dir)
    if not root.is_dir():
        raise UsageError(f"VIDEOS_DIR: {videos_dir} is not a folder")
    out_dir = Path(output or section.output or root / DEFAULT_OUTPUT)
    items = eval_items(resolved, root, out_dir, limit)
    if not (
        section.rewards or section.consistency or section.flicker or section.dynamic_degree or use_vbench
    ):
        raise UsageError(
            "eval: every metric is switched off (eval.rewards/consistency/flicker/dynamic_degree/vbench)"
        )
    manifest = read_videos_manifest(root)
    suite = section.prompts or recipe.generate.prompts
    coverage = prompt_suite_coverage(suite, [it.prompt for it in items if it.prompt])
    vbench_plan = None
    if use_vbench:  # check the package and every weight file before computing anything
        from pisces_cli.stages.eval_vbench import plan_vbench_run

        vbench_plan = plan_vbench_run(recipe, root, items, suite)
    seed_everything(recipe.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if manifest is None:
        notes.append(
            f"{root}/manifest.json not found: the model, seeds and sampler settings of these videos are unknown; "
            "make them with `pisces generate` to have them recorded"
        )
    if coverage and coverage["missing_count"]:
        notes.append(
            f"{coverage['missing_count']} of {coverage['prompts']} prompts of suite {suite!r} have no video"
        )
    settings: dict[str, Any] = {"notes": notes}
    rows = _compute_rows(resolved, items, ot_map=ot_map, console=console, settings=settings)
    seeds = read_video_seeds(root)
    for row in rows:
        row.update({k: v for k, v in seeds.get(row["video"], {}).items() if k not in row})
    aggregate = aggregate_rows(rows, section.bootstrap_samples, recipe.seed)
    if "temporal_flickering" in aggregate and aggregate["temporal_flickering"]["n"] == 0:
        notes.append("no video passed the static filter proxy: temporal_flickering has no dataset value")
    failed = sum(1 for r in rows if r.get("error") is not None)
    vbench_result = None
    if vbench_plan is not None:
        from pisces_cli.stages.eval_vbench import run_vbench

        vbench_result = run_vbench(vbench_plan, out_dir / "vbench", recipe)
    settings.pop("notes")
    metrics = [m for m in METRIC_ORDER if m in aggregate]
    document = {
        "schema": EVAL_SCHEMA,
        "version": 1,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "videos_dir": str(root.resolve()),
        "recipe_hash": resolved.hash,
        "videos_manifest": manifest,
        "prompt_suite": coverage,
        "settings": settings,
        "counts": {"videos": len(rows), "evaluated": len(rows) - failed, "failed": failed},
        "metrics": {m: METRIC_FORMULAS[m] for m in metrics},
        "aggregate": aggregate,
        "vbench": vbench_result,
        "notes": notes,
        "videos": rows,
    }
    atomic_write_json(out_dir / EVAL_FILE, json_safe(document))
    if failed == len(rows):
        raise PiscesRuntimeError(f"eval: every one of {len(rows)} videos failed (see {out_dir / EVAL_FILE})")
    return EvalSummary(out_dir, len(rows) - failed, failed, aggregate, rows, notes, vbench_result)


# ---------------------------------------------------------------------------------- eval aggregate


def run_aggregate(paths: list[str], output: str | None = None) -> Any:
    """VBench Total / Quality / Semantic of results files; writes the JSON to ``output`` when given.

    Returns the :class:`~pisces_cli.evaluation.vbench_aggregate.VBenchAggregate` (unknown dimension
    names raise UsageError, exit 2).
    """
    from pisces_cli.evaluation.vbench_aggregate import aggregate_vbench_files

    result = aggregate_vbench_files(paths)
    if output:
        from pisces_cli.atomic import atomic_write_json

        atomic_write_json(output, result.to_dict())
    return result
