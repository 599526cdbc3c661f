"""``pisces embed``: cached text/video embeddings (``pisces.embeddings`` shards) for ``fit-ot``.

Items are processed in a deterministic order and grouped into shards of ``embed.shard_size`` items.
Each shard holds ``text_cls [n, D]`` and ``video_cls [n, D]`` (projected, not normalised; row i is
``keys[i]``), optionally ``video_tokens [n, M, Dv]``. Bad videos become error rows in ``errors.jsonl``.

Resume rule. The manifest's header records the *run key* (:mod:`pisces_cli.stages.run_key`: encoder,
its preprocessing, frames, crop, ``shard_size``, ``save_tokens``); a folder made under another run key
is refused with exit 2 naming the changed fields, before any model is loaded (``--force`` starts the
folder over: manifests first, then every shard, key and error file). Each shard entry, and the shard
file's own header, records a hash of its items (key, caption, file size and mtime): a finished shard is
skipped only when its file and keys file exist and its header holds this run's items; any other shard is
embedded again. ``--limit N`` never deletes the shards beyond N: their entries stay in ``manifest.json``
under ``beyond_limit_shards`` / ``beyond_limit_empty_shards`` for a later run. A re-run with nothing to
do loads no model.

Errors are state too: every shard entry (``shards`` or, when all its items failed, ``empty_shards``)
carries its error rows; ``errors.jsonl`` is rebuilt from them at the start and end of every run and
appended to as errors happen in between (``errors.rank{r}.jsonl`` per rank under torchrun), so a resumed
run reports every failure exactly once.

Under torchrun each rank takes every W-th shard still to do (the ranks first check that they planned the
same shards) and writes its own ``manifest.rank{r}.json``; rank 0 folds every manifest present (any earlier
world size) into ``manifest.json`` and removes the rank manifests and ``summary.rank{r}.json`` files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.atomic import appending
from pisces_cli.errors import PiscesRuntimeError, UsageError
from pisces_cli.preflight import check_stage

if TYPE_CHECKING:
    from pisces_cli.config import Recipe, ResolvedRecipe
    from pisces_cli.io.prompts import VideoItem

EMBEDDINGS_SCHEMA = "pisces.embeddings"
SHARD_NAME = "embeddings"
ERRORS_FILE = "errors.jsonl"
#: part of the run key: raise it with every change in pisces that changes an embedding ``embed`` writes for
#: the same inputs and settings (frame sampling, preprocessing, projection), so older shards are refused
EMBED_VERSION = 1


@dataclass
class EmbedSummary:
    output: Path
    total: int
    embedded: int
    failed: int
    skipped_shards: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    changed_shards: int = 0
    nothing_to_do: bool = False


def embed_key(recipe: Recipe) -> dict[str, Any]:
    """The run key of ``embed`` without its loaded-model part (cheap)."""
    from pisces_cli.stages.run_key import encoder_part, frames_part

    return {
        "version": EMBED_VERSION,
        "encoder": encoder_part(recipe),
        "frames": frames_part(recipe, crop=recipe.data.crop),
        "shards": {"shard_size": recipe.embed.shard_size, "save_tokens": recipe.embed.save_tokens},
    }


def shard_items_hash(items: list[VideoItem]) -> str:
    """Hash of a shard's items: key, caption and file identity of each, in order."""
    from pisces_cli.stages.run_key import video_identity

    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps([item.key, item.prompt, video_identity(item)], sort_keys=True).encode())
    return digest.hexdigest()


def _manifest_files(out_dir: Path) -> list[Path]:
    main = out_dir / "manifest.json"
    ranks = sorted(out_dir.glob("manifest.rank*.json"))
    return ([main] if main.is_file() else []) + ranks


def _read_manifests(out_dir: Path) -> list[dict[str, Any]]:
    """Every manifest of the folder (``manifest.json`` and the ranks'), type-checked on read."""
    from pisces_cli.artifacts import read_manifest_file

    manifests = []
    for path in _manifest_files(out_dir):
        try:
            manifests.append(read_manifest_file(path))
        except UsageError as exc:
            raise UsageError(f"{exc}; pass --force to start the folder over") from exc
    return manifests


#: manifest lists of finished shards and the kind of entry each holds
_ENTRY_LISTS = {
    "shards": "shards",
    "empty_shards": "empty_shards",
    "beyond_limit_shards": "shards",
    "beyond_limit_empty_shards": "empty_shards",
}


def _shard_holds(out_dir: Path, entry: dict[str, Any], digest: str) -> bool:
    """Whether the shard file of ``entry`` and its keys file exist and the shard's own header records the
    items hash ``digest`` (so the file holds the rows of these very items, whatever a manifest says)."""
    from pisces_cli.artifacts import read_header

    if not entry.get("keys_file") or not (out_dir / entry["keys_file"]).is_file():
        return False
    try:
        extra = read_header(out_dir / entry["file"]).extra
    except UsageError:  # missing, truncated or not a pisces shard
        return False
    return extra.get("items_sha256") == digest and extra.get("shard_index") == int(entry["index"])


def _entries(
    out_dir: Path, manifests: list[dict[str, Any]], expected: dict[int, str]
) -> dict[int, dict[str, Any]]:
    """Per shard index, a finished entry whose items hash is ``expected[index]`` (``kind``: ``shards`` or
    ``empty_shards``); a shard entry counts only when :func:`_shard_holds` its items."""
    found: dict[int, dict[str, Any]] = {}
    for data in manifests:
        for name, kind in _ENTRY_LISTS.items():
            for entry in data.get(name, []) or []:
                index = int(entry["index"])
                digest = expected.get(index)
                if digest is None or entry.get("items_sha256") != digest:
                    continue
                if kind == "shards" and not _shard_holds(out_dir, entry, digest):
                    continue
                found[index] = {**entry, "kind": kind}
    return found


def _entry_indices(manifests: list[dict[str, Any]]) -> set[int]:
    """Every shard index any manifest lists (finished earlier, whatever its items)."""
    return {int(e["index"]) for data in manifests for name in _ENTRY_LISTS for e in data.get(name, []) or []}


@dataclass
class _ShardPlan:
    """The shards of a run: ``shards[i]`` (``embed.shard_size`` items each) with items hash ``digests[i]``;
    ``expected`` maps every shard index of the whole listing to its items hash — this run's shards, and
    beyond ``--limit`` the shards of the full listing (kept for a later run, never deleted)."""

    items: list[VideoItem]
    shards: list[list[VideoItem]]
    digests: list[str]
    expected: dict[int, str]

    @classmethod
    def of(cls, listed: list[VideoItem], limit: int | None, shard_size: int) -> _ShardPlan:
        items = listed[:limit] if limit is not None else listed
        shards = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
        digests = [shard_items_hash(shard) for shard in shards]
        expected = dict(enumerate(digests))
        for start in range(len(shards) * shard_size, len(listed), shard_size):
            expected[start // shard_size] = shard_items_hash(listed[start : start + shard_size])
        return cls(items, shards, digests, expected)

    def todo_hash(self, todo: list[int]) -> str:
        """Hash of the shards still to do (index and items hash): equal on every rank planning the same work."""
        return hashlib.sha256(json.dumps([[i, self.digests[i]] for i in todo]).encode()).hexdigest()


def _stored_key(manifests: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str | None]:
    """(run key, encoder file signature) recorded in the manifests' header, if any."""
    for data in manifests:
        extra = (data.get("header") or {}).get("extra") or {}
        if isinstance(extra.get("run_key"), dict):
            return extra["run_key"], extra.get("encoder_files")
    return None, None


def start_over(out_dir: Path) -> None:
    """``--force``: remove the manifests first (nothing listed stays), then shards, keys, errors, summaries."""
    for path in _manifest_files(out_dir):
        path.unlink(missing_ok=True)
    patterns = (f"{SHARD_NAME}-*.safetensors", f"{SHARD_NAME}-*.keys.json", "errors*.jsonl", "summary*.json")
    for pattern in patterns:
        for path in out_dir.glob(pattern):
            path.unlink(missing_ok=True)


def run_embed(
    resolved: ResolvedRecipe,
    *,
    output: str | None = None,
    limit: int | None = None,
    force: bool = False,
    console: Any = None,
) -> EmbedSummary:
    """Embed every (video, caption) of the recipe's data; returns counts and error rows."""
    from pisces_cli.runtime import barrier, init_distributed, seed_everything
    from pisces_cli.stages import run_key as keys
    from pisces_cli.stages.inputs import listing_from_recipe
    from pisces_cli.stages.progress import progress_bar
    from pisces_cli.stages.resume import agree_across_ranks, lock_output

    check_stage("embed", resolved, identify=False, output=output)  # no torch: a no-op re-run stays light
    recipe = resolved.recipe
    ctx = init_distributed()
    console = console if ctx.is_main else None
    out_dir = Path(output or recipe.embed.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"embed output {out_dir} is a file, not a folder")
    listing = listing_from_recipe(recipe, exclude=[out_dir])
    limit = limit if limit is not None else recipe.embed.limit
    plan = _ShardPlan.of(listing.items, limit, recipe.embed.shard_size)
    items, shards, digests = plan.items, plan.shards, plan.digests

    lock = lock_output(out_dir, ctx)  # before anything is read: no other run writes here until the end
    try:
        key = embed_key(recipe)  # before any model is loaded
        signature = keys.encoder_file_signature(recipe)
        manifests = [] if force else _read_manifests(out_dir)
        stored_key, stored_signature = _stored_key(manifests)
        ways_out = "Pass --force to start this folder over, or choose another folder with --output DIR."
        if manifests:
            keys.refuse_other_key(out_dir, {"schema": EMBEDDINGS_SCHEMA, "run_key": stored_key}, key,
                                  schema=EMBEDDINGS_SCHEMA, rows="embedding shards", ways_out=ways_out)  # fmt: skip
        found = _entries(out_dir, manifests, plan.expected)  # every rank, before rank 0 changes anything
        done = {i: e for i, e in found.items() if i < len(shards)}
        todo = [i for i in range(len(shards)) if i not in done]
        barrier()
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            if force:
                start_over(out_dir)
            elif manifests and (todo or len(manifests) > 1):  # fold rank manifests in; mark it incomplete
                _merge_manifests(out_dir, manifests, found, len(shards), len(items))
            _rebuild_errors(out_dir, done)
        barrier()
        agree_across_ranks(plan.todo_hash(todo), "the shards still to do")
        changed = sum(1 for i in todo if i in _entry_indices(manifests))
        mine = todo[ctx.rank :: ctx.world_size]
        known_model = None
        if stored_key is not None and stored_signature is not None and stored_signature == signature:
            known_model = stored_key.get(keys.MODEL_PART)
        needs_model = bool(todo) or (known_model is None and bool(done))
        embedded = failed_now = 0
        errors_path = out_dir / (ERRORS_FILE if not ctx.distributed else f"errors.rank{ctx.rank}.jsonl")
    except BaseException:
        lock.release()
        raise
    with (
        lock,
        progress_bar(
            console if needs_model else None, "embed", total=sum(len(shards[i]) for i in mine)
        ) as advance,
    ):
        if needs_model:
            check_stage("embed", resolved, output=output)  # the encoder's config, before loading it
            advance(0, phase="loading model")
            embedder = _Embedder.load(resolved, key, signature)
            if manifests:
                keys.refuse_other_key(out_dir, {"schema": EMBEDDINGS_SCHEMA, "run_key": stored_key}, key,
                                      schema=EMBEDDINGS_SCHEMA, rows="embedding shards", ways_out=ways_out,
                                      model_part=embedder.model_part)  # fmt: skip
            writer = embedder.writer(out_dir, resolved, ctx)
            seed_everything(recipe.seed)
            advance(0, phase="embedding")
            for index in mine:
                rows, failures = embedder.embed_shard(
                    index, shards[index], digests[index], writer, errors_path, advance
                )
                embedded += rows
                failed_now += failures
        barrier()
        counts = {"embedded_now": embedded, "failed_now": failed_now}
        if ctx.distributed:
            from pisces_cli.atomic import atomic_write_json

            atomic_write_json(out_dir / f"summary.rank{ctx.rank}.json", counts)
        barrier()
        if not ctx.is_main:
            return EmbedSummary(out_dir, len(items), embedded, failed_now, len(done), changed_shards=changed)
        advance(0, phase="merging")
        return _publish(out_dir, plan, done, changed, ctx, listing, console, needs_model, counts)


@dataclass
class _Embedder:
    """The loaded encoder of a run and what its header records."""

    resolved: Any
    encoder: Any
    device: Any
    num_frames: int
    model_part: dict[str, Any]
    run_key: dict[str, Any]
    signature: str | None

    @classmethod
    def load(cls, resolved: ResolvedRecipe, key: dict[str, Any], signature: str | None) -> _Embedder:
        from pisces_cli.rewards.build import encoder_num_frames, load_encoder_from_recipe
        from pisces_cli.runtime import stage_device
        from pisces_cli.stages.run_key import MODEL_PART, encoder_model_part

        recipe = resolved.recipe
        device = stage_device(recipe.runtime)
        encoder = load_encoder_from_recipe(recipe, device)
        num_frames = encoder_num_frames(recipe, encoder)
        model_part = encoder_model_part(encoder, num_frames)
        return cls(
            resolved, encoder, device, num_frames, model_part, {**key, MODEL_PART: model_part}, signature
        )

    def writer(self, out_dir: Path, resolved: ResolvedRecipe, ctx: Any) -> Any:
        from pisces_cli.artifacts import ArtifactHeader, ShardedArtifactWriter

        recipe = resolved.recipe
        key_hash = hashlib.sha256(json.dumps(self.run_key, sort_keys=True).encode()).hexdigest()[:16]
        header = ArtifactHeader(
            schema=EMBEDDINGS_SCHEMA,
            stage="embed",
            recipe_hash=resolved.hash,
            recipe=resolved.data,
            fingerprints={"encoder": self.encoder.fingerprint()},
            tensors={
                "text_cls": "[n, D] projected caption embeddings (not normalised); row i = keys[i]",
                "video_cls": "[n, D] projected video embeddings (not normalised); row i = keys[i]",
                **({"video_tokens": "[n, M, Dv] video token features"} if recipe.embed.save_tokens else {}),
            },
            extra={
                "recipe_fingerprint": key_hash,
                "run_key": self.run_key,
                "encoder_files": self.signature,
                "num_frames": self.num_frames,
                "embed_dim": self.encoder.embed_dim,
            },
        )
        manifest_name = "manifest.json" if not ctx.distributed else f"manifest.rank{ctx.rank}.json"
        return ShardedArtifactWriter(out_dir, SHARD_NAME, header, manifest_name=manifest_name)

    def embed_shard(
        self, index: int, items: list[VideoItem], digest: str, writer: Any, errors_path: Path, advance: Any
    ) -> tuple[int, int]:
        """Embed one shard, appending its error rows as they happen; returns (rows written, failures)."""
        import torch

        from pisces_cli.io.dataset import error_detail
        from pisces_cli.runtime import cpu_threads_beside_workers
        from pisces_cli.stages.inputs import encoder_loader

        recipe = self.resolved.recipe
        loader = encoder_loader(recipe, self.encoder, items, num_frames=self.num_frames,
                                batch_size=recipe.embed.batch_size, crop=recipe.data.crop)  # fmt: skip
        text_rows, video_rows, token_rows, keys, errors = [], [], [], [], []
        with (
            cpu_threads_beside_workers(self.device, loader.num_workers),
            appending(errors_path) as write_errors,
        ):
            for batch in loader:
                batch_errors = [{"key": r["key"], "source": r["source"], "error": r["error"], "shard": index,
                                 **error_detail(r)} for r in batch.errors]  # fmt: skip
                write_errors("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in batch_errors))
                errors.extend(batch_errors)
                if batch.clips is not None:
                    with torch.no_grad():
                        text = self.encoder.encode_text([str(p) for p in batch.prompts])
                        video = self.encoder.encode_video(batch.clips.to(self.device))
                    text_rows.append(text.global_embedding.float().cpu())
                    video_rows.append(video.global_embedding.float().cpu())
                    if recipe.embed.save_tokens:
                        token_rows.append(video.tokens.float().cpu())
                    keys.extend(batch.keys)
                advance(len(batch.keys) + len(batch.errors))
        if keys:
            tensors = {"text_cls": torch.cat(text_rows), "video_cls": torch.cat(video_rows)}
            if token_rows:
                tensors["video_tokens"] = torch.cat(token_rows)
            writer.write_shard(
                index,
                tensors,
                keys,
                header_extra={"items_sha256": digest},
                errors=errors,
                items_sha256=digest,
            )
        else:
            writer.record_empty_shard(index, errors=errors, items_sha256=digest)
        return len(keys), len(errors)


def _rebuild_errors(out_dir: Path, entries: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """``errors.jsonl`` = the error rows of every finished shard, in shard order; rank error files removed."""
    from pisces_cli.stages.row_store import publish_text

    rows = [
        {**row, "shard": index} for index in sorted(entries) for row in entries[index].get("errors") or []
    ]
    publish_text(out_dir / ERRORS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    for path in out_dir.glob("errors.rank*.jsonl"):
        path.unlink(missing_ok=True)
    return rows


def _merge_manifests(
    out_dir: Path,
    manifests: list[dict[str, Any]],
    found: dict[int, dict[str, Any]],
    n_shards: int,
    n_items: int,
) -> dict[int, dict[str, Any]]:
    """Rank 0: write ``manifest.json`` from the finished entries ``found`` (:func:`_entries`), remove shard files
    no entry lists, then the rank manifests (folded in); returns the entries of this run's ``n_shards``.

    Entries past ``n_shards`` (shards beyond ``--limit``) are kept under ``beyond_limit_*`` with their files.
    """
    from pisces_cli.stages.row_store import publish_json

    base = next((m for m in manifests if (m.get("header") or {}).get("extra", {}).get("run_key")), None)
    if base is None:  # nothing was ever written (no items)
        base = {"schema": EMBEDDINGS_SCHEMA, "name": SHARD_NAME, "header": {}}
    merged = {k: v for k, v in base.items() if k not in (*_ENTRY_LISTS, "complete")}
    mine = {i: e for i, e in found.items() if i < n_shards}
    beyond = {i: e for i, e in found.items() if i >= n_shards}
    for prefix, entries in (("", mine), ("beyond_limit_", beyond)):
        for kind in ("shards", "empty_shards"):
            listed = [{k: v for k, v in entries[i].items() if k != "kind"}
                      for i in sorted(entries) if entries[i]["kind"] == kind]  # fmt: skip
            if listed or not prefix:
                merged[prefix + kind] = listed
    merged["complete"] = len(mine) == n_shards
    merged.update(num_items=n_items, num_shards=n_shards)
    publish_json(out_dir / "manifest.json", merged)
    kept = {e["file"] for e in found.values() if e["kind"] == "shards"}
    for path in out_dir.glob(f"{SHARD_NAME}-*.safetensors"):  # shards of items no longer in the data
        if path.name not in kept:
            path.unlink(missing_ok=True)
            path.with_name(path.name.replace(".safetensors", ".keys.json")).unlink(missing_ok=True)
    for path in out_dir.glob("manifest.rank*.json"):
        path.unlink(missing_ok=True)
    return mine


def _publish(
    out_dir: Path,
    plan: _ShardPlan,
    done_before: dict[int, dict[str, Any]],
    changed: int,
    ctx: Any,
    listing: Any,
    console: Any,
    ran: bool,
    counts: dict[str, int],
) -> EmbedSummary:
    """Rank 0: merge every manifest into ``manifest.json``, rebuild ``errors.jsonl``, write ``summary.json``."""
    from pisces_cli.stages import notes
    from pisces_cli.stages.row_store import publish_json

    items, shards = plan.items, plan.shards
    manifests = _read_manifests(out_dir)
    entries = _merge_manifests(out_dir, manifests, _entries(out_dir, manifests, plan.expected), len(shards),
                               len(items))  # fmt: skip
    errors = _rebuild_errors(out_dir, entries)
    if ctx.distributed:  # this run's counts of every rank
        ranks = [json.loads((out_dir / f"summary.rank{r}.json").read_text()) for r in range(ctx.world_size)]
        counts = {name: sum(int(data.get(name, 0)) for data in ranks) for name in counts}
        for path in out_dir.glob("summary.rank*.json"):
            path.unlink(missing_ok=True)
    embedded_total = sum(int(e.get("rows", 0)) for e in entries.values() if e["kind"] == "shards")
    summary = {
        "items": len(items),
        **counts,
        "skipped_shards": len(done_before),
        "changed_shards": changed,
        "embedded": embedded_total,
        "failed": len(errors),
        "world_size": ctx.world_size,
        "skipped_files": notes.skipped_summary(listing.skipped),
    }
    publish_json(out_dir / "summary.json", summary)
    nothing_to_do = not ran
    if console is not None:
        if nothing_to_do:
            console.print(
                f"nothing to do: all {len(shards)} shards ({len(items)} items) are already embedded "
                "with these settings",
                highlight=False,
                soft_wrap=True,
            )
        if changed:
            console.print(
                f"embedded {changed} shards again whose items changed (videos, captions, or where --limit "
                "ends)",
                highlight=False,
                soft_wrap=True,
            )
        notes.note_skipped(console, listing.skipped, out_dir / "summary.json")
    if items and embedded_total == 0:
        raise PiscesRuntimeError(
            f"embed: every one of {len(items)} videos failed (see {out_dir / ERRORS_FILE})"
        )
    return EmbedSummary(
        out_dir,
        len(items),
        counts["embedded_now"],
        len(errors),
        len(done_before),
        errors,
        changed,
        nothing_to_do,
    )
