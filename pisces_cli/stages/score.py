"""``pisces score VIDEOS_DIR``: PISCES rewards for every video of a folder against its prompt.

Writes into ``--output`` (default ``VIDEOS_DIR/pisces-scores/``):

- ``scores.jsonl`` — one row per video, keyed by its path relative to VIDEOS_DIR: ``quality`` (with the
  OT map), ``semantic``, ``quality_no_ot``, ``total`` and an ``error`` column (null when scored). Rows are
  appended as batches finish, so an interrupted run resumes: videos already scored are skipped unless
  ``--force``.
- ``scores.csv`` — the same table; ``summary.json`` — mean and 95 % bootstrap CI per column, counts,
  the model fingerprints and settings; ``report.html`` with ``--report``.

Frame sampling is deterministic (uniform indices, centre crop) unless the recipe asks for a random crop.
One bad video never stops the run: it gets an error row. The command fails (exit 1) only when every
video failed.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import PiscesRuntimeError, UsageError
from pisces_cli.io.jsonl import iter_jsonl
from pisces_cli.runtime import cpu_threads_beside_workers

if TYPE_CHECKING:
    from pisces_cli.config import ResolvedRecipe

SCORE_COLUMNS = ("quality", "semantic", "quality_no_ot", "semantic_no_ot", "total")


@dataclass
class ScoreSummary:
    output: Path
    scored: int
    failed: int
    skipped: int
    stats: dict[str, dict[str, float]]
    rows: list[dict[str, Any]] = field(default_factory=list)


def read_scores(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``scores.jsonl`` (a torn last line from an interrupted run is ignored)."""
    if not path.is_file():
        return []
    return [record for _, record in iter_jsonl(path, strict=False)]


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


def run_score(
    resolved: ResolvedRecipe,
    videos_dir: str,
    *,
    output: str | None = None,
    ot_map: str | None = None,
    force: bool | None = None,
    report: bool | None = None,
    limit: int | None = None,
    console: Any = None,
) -> ScoreSummary:
    """Score every video of ``videos_dir`` (see the module docstring)."""
    import torch

    from pisces_cli.atomic import atomic_write_json, atomic_write_text
    from pisces_cli.io.dataset import error_detail, make_loader
    from pisces_cli.io.preprocess import Preprocessing
    from pisces_cli.rewards.build import build_reward, encoder_num_frames, load_encoder_from_recipe
    from pisces_cli.runtime import resolve_device, seed_everything
    from pisces_cli.stages.inputs import items_from_recipe
    from pisces_cli.stages.progress import progress_bar

    recipe = resolved.recipe
    section = recipe.score
    force = section.force if force is None else force
    report = section.report if report is None else report
    root = Path(videos_dir)
    if not root.is_dir():
        raise UsageError(f"VIDEOS_DIR: {videos_dir} is not a folder")
    out_dir = Path(output or section.output or root / "pisces-scores")
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(recipe.seed)
    items = [it for it in items_from_recipe(recipe, str(root)) if not _inside(root / it.key, out_dir)]
    if limit is not None:
        items = items[:limit]
    if not items:
        raise UsageError(f"VIDEOS_DIR: no videos found in {videos_dir} (mp4, webm, mov, mkv, gif)")
    device = resolve_device(recipe.runtime.device)
    encoder = load_encoder_from_recipe(recipe, device)
    reward, map_info = build_reward(recipe, encoder, ot_map_path=ot_map)
    if map_info["ot_map"] is None and console is not None:
        console.print("[yellow]note:[/] no OT map (reward.ot_map is null): quality equals quality_no_ot")
    scores_path = out_dir / "scores.jsonl"
    settings = {"encoder": encoder.fingerprint(), "ot_map": map_info, "recipe_hash": resolved.hash}
    previous = [] if force else read_scores(scores_path)
    if previous and not force:
        old = _read_settings(out_dir)
        if old is not None and old.get("encoder") != settings["encoder"]:
            raise UsageError(
                f"{scores_path}: scored with another encoder; pass --force to rescore or choose another --output"
            )
    done = {r["video"] for r in previous if r.get("error") is None}
    todo = [it for it in items if it.key not in done]
    if force and scores_path.exists():
        scores_path.unlink()
    atomic_write_json(out_dir / "settings.json", settings)
    num_frames = encoder_num_frames(recipe, encoder)
    prep = encoder.preprocessing
    loader = make_loader(
        todo,
        num_frames=num_frames,
        frame_rate=recipe.data.fps,
        preprocessing=Preprocessing(
            size=prep.size, mean=prep.mean, std=prep.std, interpolation=prep.interpolation
        ),
        batch_size=section.batch_size,
        num_workers=recipe.runtime.num_workers if todo else 0,
        crop=recipe.reward.crop,
        seed=recipe.seed,
        decode_timeout_s=recipe.runtime.decode_timeout_s,
    )
    new_rows: list[dict[str, Any]] = []
    plans: dict[str, Any] = {}
    with (
        open(scores_path, "a", encoding="utf-8") as sink,
        progress_bar(console, "score", total=len(todo)) as advance,
        cpu_threads_beside_workers(device, loader.num_workers),
    ):
        for batch in loader:
            rows = [
                {"video": r["key"], "prompt": r["prompt"], "error": r["error"], **error_detail(r)}
                for r in batch.errors
            ]
            if batch.clips is not None:
                with torch.no_grad():
                    out = reward.from_preprocessed(batch.clips.to(device), [str(p) for p in batch.prompts])
                columns = {k: v.float().cpu().tolist() for k, v in out.columns().items()}
                for i, key in enumerate(batch.keys):
                    row = {"video": key, "prompt": batch.prompts[i], "error": None}
                    row.update({k: _finite(v[i]) for k, v in columns.items()})
                    rows.append(row)
                    if report and out.plan is not None:
                        plans[key] = {
                            "plan": out.plan[i].float().cpu(),
                            "tokens": out.token_strings[i] if out.token_strings else None,
                            "lexical": out.lexical_mask[i].cpu() if out.lexical_mask is not None else None,
                            "geometry": out.geometry,
                        }
            for row in rows:
                sink.write(json.dumps(row) + "\n")
            sink.flush()
            new_rows.extend(rows)
            advance(len(rows))
    # a video re-tried now replaces its old error row
    retried = {r["video"] for r in new_rows}
    all_rows = [r for r in previous if r["video"] not in retried] + new_rows
    order = {it.key: i for i, it in enumerate(items)}
    all_rows.sort(key=lambda r: order.get(r["video"], len(order)))
    atomic_write_text(scores_path, "".join(json.dumps(r) + "\n" for r in all_rows))
    atomic_write_text(out_dir / "scores.csv", _to_csv(all_rows))
    stats = summarize(all_rows, section.bootstrap_samples, recipe.seed)
    failed = sum(1 for r in all_rows if r.get("error") is not None)
    scored = len(all_rows) - failed
    summary = {
        "videos": len(all_rows),
        "scored": scored,
        "failed": failed,
        "skipped_already_scored": len(done & set(order)),
        "columns": stats,
        **settings,
        "num_frames": num_frames,
        "crop": recipe.reward.crop,
        "weights": {"quality": reward.weights["quality"], "semantic": reward.weights["semantic"]},
    }
    atomic_write_json(out_dir / "summary.json", summary)
    if report:
        from pisces_cli.stages.score_report import write_score_report

        write_score_report(out_dir / "report.html", root, all_rows, plans, stats, num_frames=num_frames)
    if scored == 0:
        raise PiscesRuntimeError(f"score: every one of {len(all_rows)} videos failed (see {scores_path})")
    return ScoreSummary(out_dir, scored, failed, len(done), stats, all_rows)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _read_settings(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / "settings.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    fields = ["video", "prompt", *[c for c in SCORE_COLUMNS if any(c in r for r in rows)], "error"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})
    return buffer.getvalue()
