"""``pisces score VIDEOS_DIR``: PISCES rewards for every video of a folder against its prompt.

Writes into ``--output`` (default ``VIDEOS_DIR/pisces-scores/``):

- ``scores.jsonl`` — one row per video, keyed by its path relative to VIDEOS_DIR: ``quality`` (with the
  OT map), ``semantic``, ``quality_no_ot``, ``total``, an ``error`` column (null when scored) and the
  video's per-video key (``prompt``, ``file_size``, ``file_mtime_ns``). Rows are appended as batches
  finish, so an interrupted run resumes.
- ``heatmaps.jsonl`` — per scored video, its top words' token-plan mass per frame and patch (what
  ``report.html`` draws), written with the rows.
- ``settings.json`` — the *run key* (:mod:`pisces_cli.stages.run_key`): every setting that changes a
  score (encoder, its preprocessing, frames, OT-map content, token-OT settings, weights).
- ``scores.csv``; ``summary.json`` — mean and 95 % bootstrap CI per column, counts, the skipped entries
  of the folder, the settings; ``failed.jsonl`` — every failed video and why; ``report.html`` with
  ``--report`` (and rebuilt on every later run once it exists).

Resume rule: a row is reused only under the same run key and the same per-video key. A folder holding
rows of another run key is refused (exit 2) before any model is loaded, naming the changed fields;
``--force`` rescores everything into it, or another ``--output`` starts a new folder. A row whose
prompt or file changed is rescored; an error row is kept until its video changes (``--retry-failed``
tries it again); rows of videos no longer in the folder leave the table. A row is published only when it
carries its video's per-video key (else an error row: its write was lost). A re-run with nothing to do
loads no model. A folder holding ``eval``'s ``settings.json`` is refused (the two stages cannot share one).

Under ``torchrun`` / ``accelerate launch`` each rank scores every W-th video still to do on its own device
and appends to ``scores.rank{r}.jsonl``; rank 0 merges everything into the same files a one-process run
writes (rows in input order). Frame sampling is deterministic (uniform indices, centre crop) unless
the recipe asks for a random crop. One bad video never stops the run: it gets an error row (a batch
whose reward fails, e.g. on a prompt with no word to align, is scored item by item). The command fails
(exit 1) only when every video failed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import PiscesRuntimeError
from pisces_cli.preflight import check_stage
from pisces_cli.runtime import cpu_threads_beside_workers

if TYPE_CHECKING:
    from pisces_cli.config import Recipe, ResolvedRecipe

SCORE_COLUMNS = ("quality", "semantic", "quality_no_ot", "semantic_no_ot", "total")
SETTINGS_SCHEMA = "pisces.score.settings"
#: part of the run key: raise it with every change in pisces that changes a value ``score`` writes for the
#: same inputs and settings (a formula, frame sampling, preprocessing), so older rows are refused, not reused
SCORE_VERSION = 1

__all__ = ["SCORE_COLUMNS", "ScoreSummary", "cpu_threads_beside_workers", "run_score"]


@dataclass
class ScoreSummary:
    """What :func:`run_score` did (on rank 0 of a multi-process run: for the whole run).

    ``scored`` / ``failed``: rows of the table; ``skipped``: rows reused from earlier runs;
    ``rescored``: videos rescored because their prompt or file changed; ``skipped_files``: entries
    of the folder that are not videos; ``nothing_to_do``: every row was reused (no model was loaded).
    """

    output: Path
    scored: int
    failed: int
    skipped: int
    stats: dict[str, dict[str, float]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    rescored: int = 0
    skipped_files: int = 0
    nothing_to_do: bool = False


def summarize(rows: list[dict[str, Any]], n_boot: int, seed: int) -> dict[str, dict[str, float]]:
    """Mean and 95 % percentile-bootstrap CI of every score column over the scored rows."""
    from pisces_cli.evaluation.stats import bootstrap_ci

    stats = {}
    for column in SCORE_COLUMNS:
        values = [
            r[column] for r in rows if r.get("error") is None and isinstance(r.get(column), (int, float))
        ]
        if not values:
            continue
        ci = bootstrap_ci(values, n_boot=n_boot, seed=seed)
        stats[column] = {"mean": ci.estimate, "ci_low": ci.low, "ci_high": ci.high, "n": ci.n}
    return stats


def _stats(rows: list[dict[str, Any]], n_boot: int, seed: int, previous: Path) -> tuple[dict, str]:
    """:func:`summarize`, or the previous ``summary.json``'s columns when made from the same values and settings."""
    values = [[r.get(c) for c in SCORE_COLUMNS] for r in rows if r.get("error") is None]
    key = hashlib.sha256(json.dumps([values, n_boot, seed]).encode()).hexdigest()
    try:
        old = json.loads(previous.read_text(encoding="utf-8"))
        if old.get("columns_inputs_sha256") == key and isinstance(old.get("columns"), dict):
            return old["columns"], key
    except (OSError, ValueError, AttributeError):
        pass
    return summarize(rows, n_boot, seed), key


def score_key(recipe: Recipe, ot_map: str | None) -> dict[str, Any]:
    """The run key of ``score`` without its loaded-model part (cheap: no model is loaded)."""
    from pisces_cli.stages.run_key import encoder_part, frames_part, reward_parts

    return {
        "version": SCORE_VERSION,
        "encoder": encoder_part(recipe),
        "frames": frames_part(recipe, crop=recipe.reward.crop),
        **reward_parts(recipe, ot_map),
    }


def run_score(
    resolved: ResolvedRecipe,
    videos_dir: str,
    *,
    output: str | None = None,
    ot_map: str | None = None,
    force: bool | None = None,
    report: bool | None = None,
    limit: int | None = None,
    retry_failed: bool = False,
    prompts_from_names: bool | None = None,
    console: Any = None,
) -> ScoreSummary:
    """Score every video of ``videos_dir`` (see the module docstring)."""
    from pisces_cli.runtime import barrier, init_distributed, seed_everything
    from pisces_cli.stages import run_key as keys
    from pisces_cli.stages.progress import progress_bar
    from pisces_cli.stages.resume import folder_inputs, start_resume
    from pisces_cli.stages.row_store import RowStore

    stage_inputs = {"videos_dir": videos_dir, "output": output, "ot_map": ot_map}
    check_stage("score", resolved, identify=False, **stage_inputs)  # no torch: a no-op re-run stays light
    recipe = resolved.recipe
    section = recipe.score
    force = section.force if force is None else force
    ctx = init_distributed()
    console = console if ctx.is_main else None
    inputs = folder_inputs(recipe, videos_dir, output or section.output, "pisces-scores", limit=limit,
                           prompts_from_names=prompts_from_names)  # fmt: skip
    root, out_dir, listing, items = inputs.root, inputs.out_dir, inputs.listing, inputs.items

    scores = RowStore(out_dir, "scores", rank=ctx.rank, world_size=ctx.world_size)
    heatmaps = RowStore(out_dir, "heatmaps", rank=ctx.rank, world_size=ctx.world_size)
    key = score_key(recipe, ot_map)  # before any model is loaded
    stored_maps: dict[str, dict[str, Any]] = {}
    resume = start_resume(
        out_dir, [scores, heatmaps], items, key, schema=SETTINGS_SCHEMA, rows_name="score rows",
        signature=keys.encoder_file_signature(recipe), force=force, retry_failed=retry_failed,
        incomplete=lambda previous: _without_maps(previous, heatmaps, stored_maps),
    )  # fmt: skip
    needs_model = resume.needs_model()
    mine = resume.mine()
    new_rows: list[dict[str, Any]] = []
    with resume.held(), progress_bar(console if needs_model else None, "score", total=len(mine)) as advance:
        scorer = None
        model_part, info = resume.known_model, resume.stored_info()
        if needs_model:
            check_stage(
                "score", resolved, **stage_inputs
            )  # the OT map against the encoder, before loading it
            advance(0, phase="loading model")
            model_part, info, scorer = _load_scorer(resolved, ot_map, keys)
            resume.check_model(model_part)
        info["ot_map"] = _ot_map_info(info, key, recipe, ot_map)
        run_key = resume.write_settings(model_part, info)
        if scorer is not None and mine:
            advance(0, phase="scoring")
            seed_everything(recipe.seed)
            new_rows = scorer.score(mine, resume.plan, scores, heatmaps, advance)
        barrier()
        if not ctx.is_main:
            failed = sum(1 for r in new_rows if r.get("error") is not None)
            return ScoreSummary(out_dir, len(new_rows) - failed, failed, len(resume.plan.kept), {}, new_rows)
        advance(0, phase="writing tables")
        return _publish(resolved, root, listing, items, resume, scores, heatmaps, run_key, info,
                        stored_maps=None if resume.plan.todo else stored_maps, report=report,
                        console=console)  # fmt: skip


def _ot_map_info(
    info: dict[str, Any], key: dict[str, Any], recipe: Recipe, ot_map: str | None
) -> dict[str, Any]:
    """What the summary says about the OT map: its path now, and (from the build or the earlier run) its method."""
    path = ot_map if ot_map is not None else recipe.reward.ot_map
    if key["ot_map"] is None:
        return {"ot_map": None}
    stored = info.get("ot_map") or {}
    return {**stored, "ot_map": str(path), "sha256": key["ot_map"]["sha256"]}


@dataclass
class _Scorer:
    """The loaded encoder and reward of a run, and how it decodes."""

    resolved: Any
    encoder: Any
    reward: Any
    device: Any
    num_frames: int

    def score(self, todo: list, plan: Any, scores: Any, heatmaps: Any, advance: Any) -> list[dict[str, Any]]:
        """Score ``todo``; append each batch's rows and heatmaps as it finishes; returns the new rows.

        A batch whose reward call fails is scored item by item: an item that fails alone is an error row
        (:func:`~pisces_cli.stages.batch_split.split_on_failure`)."""
        from pisces_cli.stages.batch_split import split_on_failure
        from pisces_cli.stages.inputs import encoder_loader

        recipe = self.resolved.recipe
        loader = encoder_loader(recipe, self.encoder, todo, num_frames=self.num_frames,
                                batch_size=recipe.score.batch_size, crop=recipe.reward.crop)  # fmt: skip
        new_rows: list[dict[str, Any]] = []
        with (
            scores.appender() as append_rows,
            heatmaps.appender() as append_maps,
            cpu_threads_beside_workers(self.device, loader.num_workers),
        ):
            for batch in loader:
                rows = [
                    plan.error_row(r["key"], r["prompt"], r["error"], r.get("detail")) for r in batch.errors
                ]
                maps: list[dict[str, Any]] = []
                if batch.clips is not None:
                    clips, prompts = batch.clips.to(self.device), [str(p) for p in batch.prompts]
                    for part in split_on_failure(self._reward, clips, prompts):
                        if part.error is not None:
                            rows += [plan.error_row(batch.keys[i], batch.prompts[i], part.error)
                                     for i in part.positions()]  # fmt: skip
                            continue
                        columns = {k: v.float().cpu().tolist() for k, v in part.value.columns().items()}
                        for i in part.positions():
                            row, words = _scored_row(part.value, columns, i - part.start, batch, i, plan)
                            rows.append(row)
                            maps.append({**_video_key(row), "words": words})
                append_maps(maps)  # heatmaps first: a row on disk always has its heatmaps
                append_rows(rows)
                new_rows.extend(rows)
                advance(len(rows))
        return new_rows

    def _reward(self, clips: Any, prompts: list[str]) -> Any:
        """The reward output of ``clips [B, T, 3, H, W]`` against ``prompts [B]`` (no gradients)."""
        import torch

        with torch.no_grad():
            return self.reward.from_preprocessed(clips, prompts)


def _scored_row(
    out: Any, columns: dict[str, list[float]], j: int, batch: Any, i: int, plan: Any
) -> tuple[dict[str, Any], list[dict]]:
    """Row ``j`` of the reward output ``out`` (its ``columns`` as lists), for item ``i`` of ``batch``:
    (score row, encoded top words)."""
    from pisces_cli.stages.score_report import REPORT_TOP_WORDS, encode_words, top_words

    key = batch.keys[i]
    row: dict[str, Any] = {"video": key, "prompt": batch.prompts[i]}
    row.update({k: _finite(v[j]) for k, v in columns.items()})
    row.update({"error": None, **(plan.identities.get(key) or {})})
    words = []
    if out.plan is not None:
        entry = {
            "plan": out.plan[j].float().cpu().numpy(),
            "tokens": out.token_strings[j] if out.token_strings else None,
            "lexical": out.lexical_mask[j].cpu().numpy() if out.lexical_mask is not None else None,
            "geometry": out.geometry,
        }
        words = top_words(entry, REPORT_TOP_WORDS)
    return row, encode_words(words)


def _load_scorer(
    resolved: ResolvedRecipe, ot_map: str | None, keys: Any
) -> tuple[dict[str, Any], dict[str, Any], _Scorer]:
    """Load the encoder and build the reward: (loaded-model key part, descriptive info, scorer)."""
    from pisces_cli.rewards.build import build_reward, encoder_num_frames, load_encoder_from_recipe
    from pisces_cli.runtime import stage_device

    recipe = resolved.recipe
    device = stage_device(recipe.runtime)
    encoder = load_encoder_from_recipe(recipe, device)
    reward, map_info = build_reward(recipe, encoder, ot_map_path=ot_map)
    num_frames = encoder_num_frames(recipe, encoder)
    # the device of the run that last loaded the model (descriptive: rows are not keyed on it)
    info = {"encoder": encoder.fingerprint(), "ot_map": map_info, "device": str(device)}
    return (
        keys.encoder_model_part(encoder, num_frames),
        info,
        _Scorer(resolved, encoder, reward, device, num_frames),
    )


def _publish(
    resolved: ResolvedRecipe,
    root: Path,
    listing: Any,
    items: list,
    resume: Any,
    scores: Any,
    heatmaps: Any,
    run_key: dict[str, Any],
    info: dict[str, Any],
    *,
    stored_maps: dict[str, dict[str, Any]] | None,
    report: bool | None,
    console: Any,
) -> ScoreSummary:
    """Rank 0 after every rank finished: merge the rows into the tables, summary, failures and report
    (``stored_maps``: the heatmap records read when planning, when no rank computed anything since)."""
    from pisces_cli.stages import notes
    from pisces_cli.stages.row_store import merged_rows, publish_json, publish_text

    recipe = resolved.recipe
    section = recipe.score
    out_dir, plan = resume.out_dir, resume.plan
    all_rows = merged_rows(listing.items, items, plan, scores.read())
    scores.publish(all_rows)
    maps = _matching_maps(all_rows, heatmaps, stored_maps)
    heatmaps.publish(list(maps.values()))
    publish_text(out_dir / "scores.csv", _to_csv(all_rows))
    failed_list = notes.write_failed_list(out_dir, all_rows)
    stats, stats_key = _stats(all_rows, section.bootstrap_samples, recipe.seed, out_dir / "summary.json")
    failed = sum(1 for r in all_rows if r.get("error") is not None)
    scored = len(all_rows) - failed
    model = run_key.get("encoder_model") or {}
    summary = {
        "videos": len(all_rows),
        "scored": scored,
        "failed": failed,
        "skipped_already_scored": len(plan.kept),
        "rescored_changed": plan.changed,
        "retried_failed": plan.retried,
        "rescored_missing_heatmaps": plan.incomplete,
        "world_size": resume.ctx.world_size,
        "per_rank": resume.per_rank(),
        "skipped_files": notes.skipped_summary(listing.skipped),
        "columns": stats,
        "columns_inputs_sha256": stats_key,
        "encoder": info.get("encoder"),
        "ot_map": info.get("ot_map"),
        "device": info.get("device"),
        "recipe_hash": resolved.hash,
        "num_frames": model.get("num_frames"),
        "crop": recipe.reward.crop,
        "weights": run_key["weights"],
        "run_key": run_key,
    }
    publish_json(out_dir / "summary.json", summary)
    report = section.report if report is None else report
    built = None
    if report or (out_dir / "report.html").is_file():
        built = _write_report(root, out_dir, all_rows, maps, stats, run_key, summary,
                              recipe.runtime.decode_timeout_s)  # fmt: skip
    nothing_to_do = not plan.todo and not resume.needs_model()
    if console is not None:
        if nothing_to_do:
            rebuilt = {True: " (report rebuilt)", False: " (report up to date)", None: ""}[built]
            console.print(
                f"nothing to do: all {len(plan.kept)} videos are already scored with these settings{rebuilt}",
                highlight=False,
                soft_wrap=True,
            )
        if plan.incomplete:
            console.print(
                f"rescored {plan.incomplete} videos whose heatmaps were missing from {heatmaps.path.name}",
                highlight=False,
                soft_wrap=True,
            )
        notes.tell(
            console, plan, listing.skipped, all_rows, failed_list, out_dir / "summary.json", "rescored"
        )
    if scored == 0:
        raise PiscesRuntimeError(
            f"score: every one of {len(all_rows)} videos failed (see {failed_list or out_dir / 'scores.jsonl'})"
        )
    return ScoreSummary(
        out_dir, scored, failed, len(plan.kept), stats, all_rows, plan.changed, len(listing.skipped),
        nothing_to_do,
    )  # fmt: skip


def _write_report(
    root: Path,
    out_dir: Path,
    rows: list[dict[str, Any]],
    heatmaps: dict[str, dict[str, Any]],
    stats: dict,
    run_key: dict,
    summary: dict[str, Any],
    decode_timeout_s: float | None,
) -> bool:
    """Write ``report.html`` unless it is already the report of exactly these inputs; returns whether it wrote.

    Only the drawn videos' heatmaps are decoded. The inputs digest is hashed row by row (every row: the
    tables and histograms show them) plus the drawn videos' heatmap records, never one giant string."""
    from pisces_cli import __version__
    from pisces_cli.stages.score_report import (
        REPORT_FORMAT,
        REPORT_MAX_VIDEOS,
        FrameView,
        decode_words,
        drawn_rows,
        report_is_current,
        write_score_report,
    )

    model = run_key.get("encoder_model") or {}
    view = FrameView(
        num_frames=int(model.get("num_frames") or 8),
        frame_rate=run_key["frames"]["fps"],
        sampling=run_key["frames"]["sampling"],
        size=int(model.get("size") or 224),
        crop=run_key["frames"]["crop"],
    )
    shown = {k: summary.get(k) for k in ("encoder", "ot_map", "weights", "num_frames", "crop")}
    drawn = [r["video"] for r in drawn_rows(rows, REPORT_MAX_VIDEOS)]
    digest = hashlib.sha256()
    for part in ([REPORT_FORMAT, __version__, vars(view), shown, stats, len(rows)], *rows,
                 *(heatmaps.get(key) for key in drawn)):  # fmt: skip
        digest.update(json.dumps(part, sort_keys=True, default=str).encode() + b"\n")
    path = out_dir / "report.html"
    if report_is_current(path, digest.hexdigest()):
        return False
    words = {key: decode_words((heatmaps.get(key) or {}).get("words") or []) for key in drawn}
    write_score_report(path, root, rows, words, stats, view=view, max_videos=REPORT_MAX_VIDEOS, summary=shown,
                       inputs_digest=digest.hexdigest(), decode_timeout_s=decode_timeout_s)  # fmt: skip
    return True


def _video_key(row: dict[str, Any]) -> dict[str, Any]:
    """The ``video`` and per-video key (prompt, file fields) of a row: what a heatmap record carries."""
    from pisces_cli.stages.run_key import IDENTITY_FIELDS

    return {name: row.get(name) for name in ("video", "prompt", *IDENTITY_FIELDS)}


def _matching_maps(
    rows: list[dict[str, Any]], heatmaps: Any, known: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """The heatmap record of each scored row, in row order: the last one carrying the row's per-video key
    (a record of another prompt or file, left by an interrupted run, is never drawn for this row).

    ``known``: records already read from ``heatmaps`` (nothing appended since); else the store is read."""
    wanted = {r["video"]: _video_key(r) for r in rows if r.get("error") is None}
    if known is not None:
        found = {video: record for video, record in known.items() if wanted.get(video) == _video_key(record)}
    else:
        found = heatmaps.read(accept=lambda record: wanted.get(record["video"]) == _video_key(record))
    return {video: found[video] for video in wanted if video in found}


def _without_maps(
    previous: dict[str, dict[str, Any]], heatmaps: Any, found: dict[str, dict[str, Any]]
) -> set[str]:
    """The stored scored rows whose heatmap record is missing (``heatmaps.jsonl`` deleted or damaged): they
    are scored again, so the report never draws a scored video without its heatmaps. ``found`` receives
    the records that match."""
    found.update(_matching_maps(list(previous.values()), heatmaps))
    return {video for video, row in previous.items() if row.get("error") is None and video not in found}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    fields = ["video", "prompt", *[c for c in SCORE_COLUMNS if any(c in r for r in rows)], "error"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})
    return buffer.getvalue()
