"""``pisces eval VIDEOS_DIR``: evaluate a folder of generated videos; ``pisces eval aggregate``.

For every video of VIDEOS_DIR (the ``generate`` output, or any folder with a prompt mapping, see
:func:`pisces_cli.io.prompts.collect_prompted_videos`) this computes, with the formulas listed in
:data:`pisces_cli.stages.eval_metrics.METRIC_FORMULAS` (also written into ``eval.json``):

- the PISCES rewards ``quality``, ``semantic``, ``total`` and the no-OT cosine ``quality_no_ot``, by the
  same reward module and frame sampling as ``pisces score``;
- ``subject_consistency`` / ``background_consistency`` from the encoder's per-frame features (VBench's
  first-frame + previous-frame cosine formula);
- ``frame_stability`` (VBench's flicker formula on every video), ``temporal_flickering`` (the same, only
  for the videos the static-filter proxy calls static, as VBench scores it) and a ``dynamic_degree`` proxy
  (Farnebäck flow with VBench's threshold rule).

With ``--vbench`` (or ``eval.vbench: true``) the installed ``vbench`` package is run too and its output
aggregated exactly (:mod:`pisces_cli.stages.eval_vbench`); when the package or a weight file is missing
the command stops before computing anything and says what to install.

Output (``--output``, default ``VIDEOS_DIR/pisces-eval/``): ``eval.json`` — the settings, the video set's
``manifest.json`` (model, adapter, seeds, sampler settings) when ``generate`` wrote one, every metric per
video and its aggregate (mean with a 95 % bootstrap CI); ``videos.jsonl`` — the per-video rows, appended
as batches finish (the resumable state); ``settings.json`` — the run key; ``failed.jsonl`` — the failures.

Resume follows ``score``'s rule (:mod:`pisces_cli.stages.resume`): rows are reused only under the same run
key (metrics switched on, encoder, frames, OT-map content, token OT, weights) and the same prompt and
file; other settings are refused with exit 2 before any model is loaded (``--force`` or another
``--output``). Under ``torchrun`` each rank evaluates every W-th video still to do and rank 0 writes
``eval.json``. The VBench part (``--vbench``) is not resumable and runs on rank 0.
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
from pisces_cli.preflight import check_stage

if TYPE_CHECKING:
    from pisces_cli.config import Recipe, ResolvedRecipe
    from pisces_cli.io.prompts import VideoItem

EVAL_FILE = "eval.json"
EVAL_SCHEMA = "pisces.eval"
#: 2: per-video ``temporal_flickering`` is null unless static, ``frame_stability`` and ``static_proxy`` added.
EVAL_VERSION = 2
SETTINGS_SCHEMA = "pisces.eval.settings"
DEFAULT_OUTPUT = "pisces-eval"
METRIC_ORDER = (
    "quality",
    "semantic",
    "quality_no_ot",
    "total",
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "frame_stability",
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
    #: every row was reused and no model loaded (``eval.json`` was left as it was when nothing else changed)
    nothing_to_do: bool = False


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
            row["temporal_flickering"] = metrics.temporal_flickering  # null unless static: VBench's protocol
            row["frame_stability"] = metrics.frame_stability
            row["static_proxy"] = metrics.static
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


def eval_key(recipe: Recipe, ot_map: str | None) -> dict[str, Any]:
    """The run key of ``eval`` without its loaded-model part: the metrics switched on and what they use."""
    from pisces_cli.stages.run_key import encoder_part, frames_part, reward_parts

    section = recipe.eval
    key: dict[str, Any] = {
        "version": EVAL_VERSION,  # what each row's metrics mean
        "metrics": {
            name: getattr(section, name) for name in ("rewards", "consistency", "flicker", "dynamic_degree")
        },
    }
    if section.rewards or section.consistency:
        key["encoder"] = encoder_part(recipe)
        key["frames"] = frames_part(recipe, crop=recipe.reward.crop)
    if section.rewards:
        key.update(reward_parts(recipe, ot_map))
    return key


@dataclass
class _Evaluator:
    """The loaded encoder (with a feature tap) and reward of a run; None parts when not needed."""

    resolved: Any
    encoder: Any = None
    tap: Any = None
    reward: Any = None
    device: Any = None
    num_frames: int = 0

    def rows(self, todo: list[VideoItem], plan: Any, append: Any, advance: Any) -> list[dict[str, Any]]:
        """One row per item of ``todo`` (rewards, consistency, pixel metrics, or ``error``), appended per batch.

        A batch whose encoder/reward call fails is computed item by item: an item that fails alone is an
        error row (:func:`~pisces_cli.stages.batch_split.split_on_failure`)."""
        section = self.resolved.recipe.eval
        if self.encoder is None:
            return self._pixel_rows(todo, plan, append, advance)
        from pisces_cli.runtime import cpu_threads_beside_workers
        from pisces_cli.stages.batch_split import split_on_failure
        from pisces_cli.stages.inputs import encoder_loader

        recipe = self.resolved.recipe
        loader = encoder_loader(recipe, self.encoder, todo, num_frames=self.num_frames,
                                batch_size=section.batch_size, crop=recipe.reward.crop)  # fmt: skip
        rows: list[dict[str, Any]] = []
        with cpu_threads_beside_workers(self.device, loader.num_workers):
            for batch in loader:
                batch_rows = [
                    plan.error_row(r["key"], r["prompt"], r["error"], r.get("detail")) for r in batch.errors
                ]
                if batch.clips is not None:
                    clips, prompts = batch.clips.to(self.device), [str(p) for p in batch.prompts]
                    for part in split_on_failure(self._features, clips, prompts):
                        batch_rows += self._part_rows(part, batch, plan)
                append(batch_rows)
                rows.extend(batch_rows)
                advance(len(batch_rows))
        return rows

    def _part_rows(self, part: Any, batch: Any, plan: Any) -> list[dict[str, Any]]:
        """The rows of the items of ``batch`` in ``part`` (a :class:`~pisces_cli.stages.batch_split.Part`
        holding :meth:`_features`' result, or the error row of each of its items)."""
        from pisces_cli.stages.eval_metrics import frame_features

        if part.error is not None:
            return [plan.error_row(batch.keys[i], batch.prompts[i], part.error) for i in part.positions()]
        recipe = self.resolved.recipe
        section = recipe.eval
        columns, features = part.value
        pooled = frame_features(features) if section.consistency and features is not None else None
        rows = []
        for i in part.positions():
            j, key = i - part.start, batch.keys[i]
            row: dict[str, Any] = {"video": key, "prompt": batch.prompts[i], "error": None}
            row.update({k: _finite(v[j]) for k, v in columns.items() if k != "semantic_no_ot"})
            if pooled is not None:
                row.update(_feature_rows(pooled, j), consistency_features=pooled.subject_source)
            _pixel_row(row, batch.sources[i], section, recipe.runtime.decode_timeout_s)
            row.update(plan.identities.get(key) or {})
            rows.append(row)
        return rows

    def _features(self, clips: Any, prompts: list[str]) -> tuple[dict[str, list[float]], Any]:
        """(reward columns as lists, encoder features) of ``clips [B, T, 3, H, W]`` against ``prompts [B]``."""
        import torch

        with torch.no_grad():
            if self.reward is None:
                return {}, self.encoder.encode_video(clips)
            out = self.reward.from_preprocessed(clips, prompts)
        return {k: v.float().cpu().tolist() for k, v in out.columns().items()}, self.tap.last

    def _pixel_rows(
        self, todo: list[VideoItem], plan: Any, append: Any, advance: Any
    ) -> list[dict[str, Any]]:
        section = self.resolved.recipe.eval
        rows = []
        for item in todo:
            row = {"video": item.key, "prompt": item.prompt, "error": None}
            _pixel_row(row, item.source, section, self.resolved.recipe.runtime.decode_timeout_s)
            row.update(plan.identities.get(item.key) or {})
            append([row])
            rows.append(row)
            advance()
        return rows


def _load_evaluator(
    resolved: ResolvedRecipe, ot_map: str | None
) -> tuple[dict[str, Any], dict[str, Any], _Evaluator]:
    """Load the encoder (and reward): (loaded-model key part, descriptive info, evaluator)."""
    from pisces_cli.rewards.build import build_reward, encoder_num_frames, load_encoder_from_recipe
    from pisces_cli.runtime import stage_device
    from pisces_cli.stages.eval_metrics import FeatureTap
    from pisces_cli.stages.run_key import encoder_model_part

    recipe = resolved.recipe
    device = stage_device(recipe.runtime)
    encoder = load_encoder_from_recipe(recipe, device)
    tap = FeatureTap(encoder)
    info: dict[str, Any] = {}
    reward = None
    if recipe.eval.rewards:
        reward, map_info = build_reward(recipe, tap, ot_map_path=ot_map)
        info.update(ot_map=map_info, reward_weights=dict(reward.weights))
    num_frames = encoder_num_frames(recipe, encoder)
    info.update(
        encoder=encoder.fingerprint(), num_frames=num_frames, crop=recipe.reward.crop, device=str(device)
    )
    evaluator = _Evaluator(resolved, encoder, tap, reward, device, num_frames)
    return encoder_model_part(encoder, num_frames), info, evaluator


def _pixel_row(row: dict[str, Any], source: str, section: Any, timeout_s: float | None) -> None:
    """Add the pixel metrics of ``source`` to ``row``, decoding in a child process (a decoder that
    crashes or passes ``timeout_s`` makes this row's error, not the run's end)."""
    from pisces_cli.errors import PiscesError
    from pisces_cli.io.isolation import call_isolated

    try:
        row.update(call_isolated(_pixel_metrics_of, source, section, label=source, timeout_s=timeout_s))
    except PiscesError as error:  # an error row: no metric of this video is reported
        row.update({name: None for name in METRIC_ORDER if name in row})
        row["error"] = str(error)
        if getattr(error, "detail", None):
            row["detail"] = error.detail


def _pixel_metrics_of(source: str, section: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    _add_pixel_metrics(values, source, section)
    return values


# --------------------------------------------------------------------------------------- aggregate


def aggregate_rows(rows: list[dict[str, Any]], n_boot: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per metric: ``mean`` with its 95 % percentile-bootstrap CI and ``n`` over the videos without error.

    A video's null counts as not having the metric: ``temporal_flickering`` is null for videos the static
    proxy calls moving, so its mean is over the static videos (VBench's protocol; ``n_not_static`` counts
    the others) and it is listed with ``n = 0`` when none is static. Other metrics no video has are left out.
    """
    from pisces_cli.evaluation.stats import bootstrap_ci

    good = [r for r in rows if r.get("error") is None]
    out: dict[str, dict[str, Any]] = {}
    for metric in METRIC_ORDER:
        values = [float(r[metric]) for r in good if isinstance(r.get(metric), int | float)]
        entry: dict[str, Any] = {}
        if metric == "temporal_flickering":
            judged = [r for r in good if isinstance(r.get("static_proxy"), bool)]
            if not judged:
                continue
            entry["n_not_static"] = sum(1 for r in judged if not r["static_proxy"])
        elif not values:
            continue
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
    force: bool = False,
    retry_failed: bool = False,
    prompts_from_names: bool | None = None,
    console: Any = None,
) -> EvalSummary:
    """Evaluate every video of ``videos_dir`` and write ``eval.json`` (see the module docstring)."""
    from pisces_cli.runtime import barrier, init_distributed, seed_everything
    from pisces_cli.stages import run_key as keys
    from pisces_cli.stages.progress import progress_bar
    from pisces_cli.stages.resume import folder_inputs, start_resume
    from pisces_cli.stages.row_store import RowStore

    stage_inputs = {"videos_dir": videos_dir, "output": output, "ot_map": ot_map}
    check_stage("eval", resolved, identify=False, **stage_inputs)  # no torch: a no-op re-run stays light
    recipe = resolved.recipe
    section = recipe.eval
    use_vbench = section.vbench if vbench is None else vbench
    ctx = init_distributed()
    console = console if ctx.is_main else None
    inputs = folder_inputs(recipe, videos_dir, output or section.output, DEFAULT_OUTPUT, limit=limit,
                           prompts_from_names=prompts_from_names)  # fmt: skip
    if not (
        section.rewards or section.consistency or section.flicker or section.dynamic_degree or use_vbench
    ):
        raise UsageError(
            "eval: every metric is switched off (eval.rewards/consistency/flicker/dynamic_degree/vbench)"
        )
    suite = section.prompts or recipe.generate.prompts
    # read and check both before any work, so a bad file fails now, not after every video is computed
    manifest = read_videos_manifest(inputs.root)
    coverage = prompt_suite_coverage(suite, [it.prompt for it in inputs.items if it.prompt])
    vbench_plan = None
    if use_vbench:  # check the package and every weight file before computing anything
        from pisces_cli.stages.eval_vbench import plan_vbench_run

        vbench_plan = plan_vbench_run(recipe, inputs.root, inputs.items, suite)
    store = RowStore(inputs.out_dir, "videos", rank=ctx.rank, world_size=ctx.world_size)
    key = eval_key(recipe, ot_map)  # before any model is loaded
    resume = start_resume(
        inputs.out_dir, [store], inputs.items, key, schema=SETTINGS_SCHEMA, rows_name="eval rows",
        signature=keys.encoder_file_signature(recipe), force=force, retry_failed=retry_failed,
    )  # fmt: skip
    needs_model = (section.rewards or section.consistency) and resume.needs_model()
    mine = resume.mine()
    new_rows: list[dict[str, Any]] = []
    with (
        resume.held(),
        progress_bar(console if mine or needs_model else None, "eval", total=len(mine)) as advance,
    ):
        evaluator = _Evaluator(resolved)
        model_part, info = resume.known_model, resume.stored_info()
        if needs_model:
            check_stage("eval", resolved, **stage_inputs)  # the OT map against the encoder, before loading it
            advance(0, phase="loading model")
            model_part, info, evaluator = _load_evaluator(resolved, ot_map)
            resume.check_model(model_part)
        run_key = resume.write_settings(model_part, info)
        if mine:
            advance(0, phase="evaluating")
            seed_everything(recipe.seed)
            with store.appender() as append:
                new_rows = evaluator.rows(mine, resume.plan, append, advance)
        barrier()
        if not ctx.is_main:
            failed = sum(1 for r in new_rows if r.get("error") is not None)
            return EvalSummary(inputs.out_dir, len(new_rows) - failed, failed, {}, new_rows)
        advance(0, phase="writing eval.json")
        return _publish_eval(resolved, inputs, resume, store, run_key, info, (manifest, coverage, suite),
                             vbench_plan, console)  # fmt: skip


def _publish_eval(
    resolved: ResolvedRecipe,
    inputs: Any,
    resume: Any,
    store: Any,
    run_key: dict[str, Any],
    info: dict[str, Any],
    videos_info: tuple[dict[str, Any] | None, dict[str, Any] | None, str | None],
    vbench_plan: Any,
    console: Any,
) -> EvalSummary:
    """Rank 0 after every rank finished: merge the rows, aggregate, run VBench, write eval.json.

    ``videos_info``: the video folder's manifest, the prompt suite's coverage and the suite's name (read
    before any work)."""
    from pisces_cli.stages import notes as tell
    from pisces_cli.stages.eval_metrics import METRIC_FORMULAS
    from pisces_cli.stages.row_store import merged_rows

    recipe = resolved.recipe
    section = recipe.eval
    root, out_dir, plan = inputs.root, inputs.out_dir, resume.plan
    rows = merged_rows(inputs.listing.items, inputs.items, plan, store.read())
    store.publish(rows)
    manifest, coverage, suite = videos_info
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
    if section.rewards and (info.get("ot_map") or {}).get("ot_map") is None:
        notes.append("no OT map (reward.ot_map is null): quality equals quality_no_ot")
    seeds = read_video_seeds(root)
    rows = [{**r, **{k: v for k, v in seeds.get(r["video"], {}).items() if k not in r}} for r in rows]
    aggregate = aggregate_rows(rows, section.bootstrap_samples, recipe.seed)
    if "temporal_flickering" in aggregate and aggregate["temporal_flickering"]["n"] == 0:
        notes.append(
            "temporal_flickering: no video passed the static-filter proxy, so it has no dataset value "
            "(frame_stability gives the same formula on every video)"
        )
    failed = sum(1 for r in rows if r.get("error") is not None)
    vbench_result = None
    if vbench_plan is not None:
        from pisces_cli.stages.eval_vbench import run_vbench

        vbench_result = run_vbench(vbench_plan, out_dir / "vbench", recipe)
    settings = dict(info)
    sources = sorted({r["consistency_features"] for r in rows if r.get("consistency_features")})
    if sources:
        settings["consistency_features"] = sources[0] if len(sources) == 1 else sources
    metrics = [m for m in METRIC_ORDER if m in aggregate]
    document = {
        "schema": EVAL_SCHEMA,
        "version": EVAL_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "videos_dir": str(root.resolve()),
        "recipe_hash": resolved.hash,
        "videos_manifest": manifest,
        "prompt_suite": coverage,
        "settings": settings,
        "run_key": run_key,
        "counts": {"videos": len(rows), "evaluated": len(rows) - failed, "failed": failed},
        "resumed": {
            "kept_from_earlier_runs": len(plan.kept),
            "reevaluated_changed": plan.changed,
            "retried_failed": plan.retried,
        },
        "world_size": resume.ctx.world_size,
        "per_rank": resume.per_rank(),
        "skipped_files": tell.skipped_summary(inputs.listing.skipped),
        "metrics": {m: METRIC_FORMULAS[m] for m in metrics},
        "aggregate": aggregate,
        "vbench": vbench_result,
        "notes": notes,
        "videos": rows,
    }
    nothing_to_do = not plan.todo and not resume.needs_model()
    _write_eval_json(out_dir / EVAL_FILE, json_safe(document))
    failed_list = tell.write_failed_list(out_dir, rows)
    if console is not None:
        if nothing_to_do:
            console.print(
                f"nothing to do: all {len(plan.kept)} videos are already evaluated with these settings",
                highlight=False,
                soft_wrap=True,
            )
        tell.tell(
            console, plan, inputs.listing.skipped, rows, failed_list, out_dir / EVAL_FILE, "re-evaluated"
        )
    if failed == len(rows):
        raise PiscesRuntimeError(
            f"eval: every one of {len(rows)} videos failed (see {failed_list or out_dir / EVAL_FILE})"
        )
    return EvalSummary(
        out_dir, len(rows) - failed, failed, aggregate, rows, notes, vbench_result, nothing_to_do
    )


def _write_eval_json(path: Path, document: dict[str, Any]) -> bool:
    """Publish ``document`` (:func:`~pisces_cli.stages.row_store.publish_json`) unless the file already holds it
    up to its ``created`` time: a re-run that changed nothing leaves the file as it was; returns whether it
    wrote."""
    import json

    from pisces_cli.stages.row_store import publish_json

    try:
        text = path.read_text(encoding="utf-8")
        created = json.loads(text).get("created")
    except (OSError, ValueError, AttributeError):
        return publish_json(path, document)
    if text == json.dumps({**document, "created": created}, indent=2, default=str) + "\n":
        return False
    return publish_json(path, document)


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
