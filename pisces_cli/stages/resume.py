"""The resume protocol shared by ``score`` and ``eval`` (one process or every rank of a ``torchrun`` job).

1. :func:`start_resume` (every rank, before any model is loaded): refuse an output folder whose rows
   were made under another run key (exit 2, :mod:`pisces_cli.stages.run_key`); rank 0 starts the folder
   over (``force``) or folds in the rank files an interrupted run left; then every rank plans the same
   rows to keep and to compute (:func:`~pisces_cli.stages.row_store.plan_rows`).
2. The caller loads its model only when :meth:`Resume.needs_model` says so, checks the loaded model's
   part of the key (:meth:`Resume.check_model`) and records the run key (:meth:`Resume.write_settings`).
3. Every rank computes :meth:`Resume.mine` (every W-th item still to do), appending rows as it goes;
   after :func:`~pisces_cli.runtime.barrier` rank 0 publishes the merged table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pisces_cli.io.prompts import VideoItem
    from pisces_cli.runtime import DistContext
    from pisces_cli.stages.folder_lock import FolderLock
    from pisces_cli.stages.row_store import RowPlan, RowStore


@dataclass
class Resume:
    """The state of one run over an output folder (see the module docstring)."""

    ctx: DistContext
    out_dir: Path
    schema: str
    rows_name: str
    key: dict[str, Any]
    signature: str | None
    settings: dict[str, Any] | None
    has_rows: bool
    plan: RowPlan
    known_model: dict[str, Any] | None
    lock: FolderLock | None = None

    def held(self) -> FolderLock | contextlib.nullcontext[None]:
        """The output folder's lock as a context manager: the rest of the run goes in its ``with`` (released
        at its end, however the run ends)."""
        return self.lock if self.lock is not None else contextlib.nullcontext()

    def mine(self) -> list[VideoItem]:
        """This rank's share of the items to compute: every W-th, starting at its rank."""
        return self.plan.todo[self.ctx.rank :: self.ctx.world_size]

    def per_rank(self) -> list[int]:
        """Items computed by each rank in this run."""
        todo, world = len(self.plan.todo), self.ctx.world_size
        return [len(range(rank, todo, world)) for rank in range(world)]

    def needs_model(self) -> bool:
        """Something to compute, or kept rows whose model part must be checked against the checkpoint."""
        if self.plan.todo:
            return True
        return self.known_model is None and any(r.get("error") is None for r in self.plan.kept.values())

    def stored_info(self) -> dict[str, Any]:
        """What the earlier run recorded about its models (valid while the run key is the same)."""
        info = (self.settings or {}).get("info") if self.has_rows else None
        return dict(info) if isinstance(info, dict) else {}

    def check_model(self, model_part: dict[str, Any]) -> None:
        """Refuse (exit 2) when the loaded encoder differs from the one the kept rows were made with."""
        from pisces_cli.stages import run_key as keys

        if self.has_rows:
            keys.refuse_other_key(self.out_dir, self.settings, self.key, schema=self.schema,
                                  rows=self.rows_name, ways_out=keys.folder_ways_out(),
                                  model_part=model_part)  # fmt: skip

    def write_settings(self, model_part: dict[str, Any] | None, info: dict[str, Any]) -> dict[str, Any]:
        """Rank 0 records the full run key (and descriptive ``info``) in ``settings.json``; returns the key."""
        from pisces_cli.runtime import barrier
        from pisces_cli.stages import run_key as keys
        from pisces_cli.stages.row_store import publish_json

        run_key = {**self.key, keys.MODEL_PART: model_part}
        if self.ctx.is_main:
            publish_json(
                self.out_dir / keys.SETTINGS_FILE,
                {
                    "schema": self.schema,
                    "version": 1,
                    "run_key": run_key,
                    "encoder_files": self.signature,
                    "info": info,
                },  # fmt: skip
            )
        barrier()
        return run_key


def start_resume(
    out_dir: Path,
    stores: list[RowStore],
    items: list[VideoItem],
    key: dict[str, Any],
    *,
    schema: str,
    rows_name: str,
    signature: str | None,
    force: bool,
    retry_failed: bool,
    incomplete: Callable[[dict[str, dict[str, Any]]], set[str]] | None = None,
) -> Resume:
    """Step 1 of the protocol; ``stores[0]`` holds the rows, the others ride along (cleared/folded alike).

    ``incomplete`` names, given the stored rows by video, those whose state beside them (another store) is
    missing: they are computed again, never published without it.

    Raises:
        UsageError: the folder is another stage's output (even with ``force``), or holds rows of another
            run key, or rows without one (unless ``force``).
    """
    from pisces_cli.runtime import barrier, dist_context
    from pisces_cli.stages import run_key as keys
    from pisces_cli.stages.row_store import plan_rows

    ctx = dist_context()
    lock = lock_output(out_dir, ctx)  # before anything is read: no other run writes here until the end
    try:
        rows = stores[0]
        settings = keys.read_settings(out_dir)
        keys.refuse_other_stage(out_dir, settings, schema)
        has_rows = rows.exists() and not force
        if has_rows:
            keys.refuse_other_key(out_dir, settings, key, schema=schema, rows=rows_name,
                                  ways_out=keys.folder_ways_out())  # fmt: skip
        barrier()
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            for store in stores:
                store.clear() if force else store.fold_in()
        barrier()
        previous = rows.read() if has_rows else {}
        redo = incomplete(previous) if incomplete is not None and previous else set()
        plan = plan_rows(items, previous, retry_failed=retry_failed, redo=redo)
        todo = [[it.key, it.prompt, plan.identities.get(it.key)] for it in plan.todo]
        agree_across_ranks(hashlib.sha256(json.dumps(todo).encode()).hexdigest(), "the videos still to do")
    except BaseException:
        lock.release()
        raise
    known = keys.stored_model_part(settings, signature) if has_rows else None
    return Resume(ctx, out_dir, schema, rows_name, key, signature, settings, has_rows, plan, known, lock)


def lock_output(out_dir: Path, ctx: DistContext) -> FolderLock:
    """Rank 0 takes ``out_dir``'s lock (:mod:`~pisces_cli.stages.folder_lock`); every rank refuses together when
    another run holds it. Other ranks get a lock that holds nothing.

    Raises:
        UsageError: another run is writing into ``out_dir``.
    """
    from pisces_cli.errors import UsageError
    from pisces_cli.stages.folder_lock import FolderLock

    lock, refusal = FolderLock(), None
    if ctx.is_main:
        try:
            lock = FolderLock.acquire(out_dir)
        except UsageError as error:
            refusal = str(error)
    refusal = _from_main(refusal)
    if refusal is not None:
        raise UsageError(refusal)
    return lock


def _from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank of a ``torchrun`` job (one process: ``value``)."""
    if "torch.distributed" not in sys.modules:
        return value
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree_across_ranks(plan_hash: str, what: str) -> None:
    """Refuse (exit 1) when the ranks of a ``torchrun`` job planned different work.

    Each rank lists and plans the folder on its own and takes every W-th item of its plan; if the folder
    changed between the ranks' listings their plans differ and an item could be skipped or done twice. Every
    rank gathers every rank's ``plan_hash`` and all refuse together. One process: nothing to compare.

    Raises:
        PiscesRuntimeError: the hashes differ.
    """
    if "torch.distributed" not in sys.modules:  # one process: no process group can exist
        return
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    hashes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(hashes, plan_hash)
    if len(set(hashes)) > 1:
        from pisces_cli.errors import PiscesRuntimeError

        groups = sorted({h[:12] for h in hashes})
        raise PiscesRuntimeError(
            f"the ranks of this job planned different work for {what} (plans {', '.join(groups)}): the input "
            "folder changed while they listed it. Nothing was computed; run the command again once the folder "
            "no longer changes."
        )


@dataclass
class FolderInputs:
    """The video folder of a ``score`` / ``eval`` run, its output folder, listing and this run's items."""

    root: Path
    out_dir: Path
    listing: Any
    items: list[VideoItem]


def folder_inputs(
    recipe: Any,
    videos_dir: str,
    output: str | None,
    default_output: str,
    *,
    limit: int | None,
    prompts_from_names: bool | None,
) -> FolderInputs:
    """Check the folders and list the videos (the output folder left out); ``limit`` keeps the first N.

    Raises:
        UsageError: VIDEOS_DIR is not a folder or holds no video; ``--output`` is a file.
    """
    from pisces_cli.errors import UsageError
    from pisces_cli.stages.inputs import listing_from_recipe

    root = Path(videos_dir)
    if not root.is_dir():
        raise UsageError(f"VIDEOS_DIR: {videos_dir} is not a folder")
    out_dir = Path(output or root / default_output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--output: {out_dir} is a file, not a folder")
    listing = listing_from_recipe(recipe, str(root), exclude=[out_dir], prompts_from_names=prompts_from_names)
    items = listing.items[:limit] if limit is not None else listing.items
    if not items:
        raise UsageError(f"VIDEOS_DIR: no videos found in {videos_dir} (mp4, webm, mov, mkv, gif)")
    return FolderInputs(root, out_dir, listing, items)
