"""Per-video rows of ``score`` / ``eval`` kept as resumable JSON-lines files, also under ``torchrun``.

A store named ``NAME`` in a folder is ``NAME.jsonl`` (the published table, rows in input order) plus,
while a multi-process run is going, one ``NAME.rank{r}.jsonl`` per rank. Rows are keyed by their
``video`` field; reading takes ``NAME.jsonl`` then the rank files in rank order, and a later line for the
same video wins. Rows are appended (and flushed) as batches finish, so an interrupted run keeps every
finished row; a torn last line is ignored, and the next append starts on a fresh line after it.
:meth:`RowStore.publish` rewrites ``NAME.jsonl`` atomically and removes the rank files, and is called by
rank 0 at the start of a run (so leftovers of an interrupted run of any world size are folded in before
anything is appended) and at its end.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.atomic import appending
from pisces_cli.io.jsonl import iter_jsonl

if TYPE_CHECKING:
    from pisces_cli.io.prompts import VideoItem


def publish_text(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` atomically unless the file already holds exactly it; returns whether it wrote.

    A re-run that changes nothing then rewrites (and fsyncs) nothing.
    """
    from pisces_cli.atomic import atomic_write_text

    data = text.encode("utf-8")
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except OSError:
        pass
    atomic_write_text(path, text)
    return True


def publish_json(path: Path, obj: Any) -> bool:
    """:func:`publish_text` of ``obj`` as indented JSON (the layout of ``atomic_write_json``)."""
    return publish_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def _ends_mid_line(path: Path) -> bool:
    """Whether ``path`` is a non-empty file whose last byte is not a newline."""
    try:
        with open(path, "rb") as handle:
            if handle.seek(0, 2) == 0:
                return False
            handle.seek(-1, 2)
            return handle.read(1) != b"\n"
    except OSError:
        return False


class RowStore:
    """Rows keyed by ``video`` in ``folder/NAME.jsonl`` (+ ``NAME.rank{r}.jsonl`` per rank).

    Args:
        folder: the output folder.
        name: file stem (``"scores"``, ``"heatmaps"``, ``"videos"``).
        rank, world_size: this process's place; with ``world_size > 1`` it appends to its rank file.
    """

    def __init__(self, folder: Path, name: str, *, rank: int = 0, world_size: int = 1) -> None:
        self.folder = Path(folder)
        self.name = name
        self.rank = rank
        self.world_size = world_size
        self.path = self.folder / f"{name}.jsonl"

    def rank_files(self) -> list[Path]:
        """Existing ``NAME.rank{r}.jsonl`` files, by rank."""
        pattern = re.compile(rf"{re.escape(self.name)}\.rank(\d+)\.jsonl")
        found = []
        for path in self.folder.glob(f"{self.name}.rank*.jsonl"):
            match = pattern.fullmatch(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def own_path(self) -> Path:
        """Where this process appends."""
        return self.path if self.world_size == 1 else self.folder / f"{self.name}.rank{self.rank}.jsonl"

    def read(self, accept: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, dict[str, Any]]:
        """Every row by video (later lines win), from the table and the rank files; with ``accept``, only
        the rows it accepts (a later line it refuses does not hide an earlier one)."""
        rows: dict[str, dict[str, Any]] = {}
        for path in [self.path, *self.rank_files()]:
            if path.is_file():
                for _, record in iter_jsonl(path, strict=False):
                    if isinstance(record.get("video"), str) and (accept is None or accept(record)):
                        rows[record["video"]] = record
        return rows

    def exists(self) -> bool:
        return self.path.is_file() or bool(self.rank_files())

    @contextlib.contextmanager
    def appender(self) -> Iterator[Callable[[Iterable[dict[str, Any]]], None]]:
        """Yield ``append(rows)``: writes one line per row to this process's file and flushes."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.own_path()
        with appending(path) as write:
            if _ends_mid_line(path):  # a torn last line (disk full, killed run): never glue a row onto it
                write("\n")

            def append(rows: Iterable[dict[str, Any]]) -> None:
                write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

            yield append

    def publish(self, rows: Iterable[dict[str, Any]]) -> None:
        """Atomically make ``NAME.jsonl`` exactly ``rows``, then drop the rank files (folded in)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        publish_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        for path in self.rank_files():
            path.unlink(missing_ok=True)

    def fold_in(self) -> None:
        """Publish what the table and any rank files hold (rank 0, before a run appends)."""
        if self.rank_files():
            self.publish(self.read().values())

    def clear(self) -> None:
        """Remove the table and every rank file."""
        for path in [*self.rank_files(), self.path]:
            path.unlink(missing_ok=True)


@dataclass
class RowPlan:
    """What a run must compute, given the rows an output folder already holds.

    Attributes:
        kept: rows reused as they are (same prompt and file; error rows too unless retried), by video.
        todo: items to compute (new, changed, or failed earlier and retried).
        item_errors: rows of items that fail before any decoding (no prompt, missing file), made now.
        changed: videos in ``todo`` that had a row made from another prompt or another file.
        retried: videos in ``todo`` whose earlier row was an error (``retry_failed``).
        incomplete: videos in ``todo`` whose row matched but lacked state kept beside it (``redo``).
        identities: per video, its file identity (:func:`~pisces_cli.stages.run_key.video_identity`).
    """

    kept: dict[str, dict[str, Any]]
    todo: list[VideoItem]
    item_errors: list[dict[str, Any]]
    changed: int
    retried: int
    identities: dict[str, dict[str, int] | None]
    incomplete: int = 0

    def error_row(
        self, key: str, prompt: str | None, error: str, detail: str | None = None
    ) -> dict[str, Any]:
        """An error row for ``key`` carrying its per-video key (``detail``: what the decoders said)."""
        row = {"video": key, "prompt": prompt, "error": error, **(self.identities.get(key) or {})}
        if detail:
            row["detail"] = detail
        return row

    def lost_row(self, item: VideoItem) -> dict[str, Any]:
        """The error row of an item of this run whose row is not on disk (or is another prompt's or file's).

        It carries no file fields, so the next run computes the video again instead of keeping the failure.
        """
        return {
            "video": item.key,
            "prompt": item.prompt,
            "error": "no row was recorded for this video in this run (a write was lost: disk full, a killed "
            "process?); the next run computes it again",
        }


def plan_rows(
    items: list[VideoItem],
    previous: dict[str, dict[str, Any]],
    *,
    retry_failed: bool = False,
    redo: frozenset[str] | set[str] = frozenset(),
) -> RowPlan:
    """Sort ``items`` into kept rows, rows to compute and item errors (see :class:`RowPlan`); a video in
    ``redo`` is computed again even when its row matches (its row lacks state kept beside it)."""
    from pisces_cli.stages.run_key import has_identity, row_matches, video_identity

    kept: dict[str, dict[str, Any]] = {}
    todo: list[VideoItem] = []
    item_errors: list[dict[str, Any]] = []
    identities: dict[str, dict[str, int] | None] = {}
    changed = retried = incomplete = 0
    for item in items:
        identity = video_identity(item)
        identities[item.key] = identity
        if item.error is not None:
            item_errors.append(
                {"video": item.key, "prompt": item.prompt, "error": item.error, **(identity or {})}
            )
            continue
        row = previous.get(item.key)
        if row is not None and row_matches(row, item, identity):
            if item.key in redo:
                incomplete += 1
            elif row.get("error") is None or not retry_failed:
                kept[item.key] = row
                continue
            else:
                retried += 1
        elif row is not None and has_identity(row):  # a row of an unreadable file or a lost row: redone
            changed += 1
        todo.append(item)
    return RowPlan(kept, todo, item_errors, changed, retried, identities, incomplete)


def ordered_rows(items: list[VideoItem], rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``items`` (those that have one) in the items' order."""
    return [rows[item.key] for item in items if item.key in rows]


def merged_rows(
    listed: list[VideoItem], items: list[VideoItem], plan: RowPlan, stored: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The table to publish, in listing order: a row for every one of this run's ``items``, plus stored rows
    of listed videos beyond the run's items (``--limit``) that still match their prompt and file.

    A stored row is taken only when it carries the video's per-video key (as planned, for the run's
    items); an item of the run without such a row gets :meth:`RowPlan.lost_row` — never an older row of
    another prompt or file, and never nothing.
    """
    from pisces_cli.stages.run_key import row_matches, same_video_key, video_identity

    rows = {r["video"]: r for r in plan.item_errors}
    in_run = {it.key for it in items}
    for item in listed:
        if item.key in rows:
            continue
        row = stored.get(item.key)
        if item.key in in_run:
            if row is not None and same_video_key(row, item.prompt, plan.identities.get(item.key)):
                rows[item.key] = row
            else:
                rows[item.key] = plan.lost_row(item)
        elif row is not None and item.error is None and row_matches(row, item, video_identity(item)):
            rows[item.key] = row
    return ordered_rows(listed, rows)
