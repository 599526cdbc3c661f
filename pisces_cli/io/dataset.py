"""Decode, sample and preprocess videos in child processes that a bad video cannot take down.

Each item is decoded in a worker process (so decoding overlaps model compute in the main process),
``num_frames`` frames are chosen, and the clip is preprocessed to ``[T, 3, size, size]``. A bad item
never raises: it comes back as an error row, and :func:`collate_video_items` batches the good clips
while passing error rows through.

Crash isolation (:class:`VideoLoader`, built by :func:`make_loader`; see :mod:`pisces_cli.io.isolation`):
workers decode one video at a time. A worker that dies while decoding (a segfault, an abort such as ``std::bad_alloc``, the kernel's
out-of-memory killer) or that takes longer than ``decode_timeout_s`` on one video (then it is killed)
turns that video, and only it, into an error row; a fresh worker takes over and every other row is
intact. ``num_workers=0`` still decodes in one child process (one video at a time, no read-ahead,
as the main process would): a crashing decoder must never take the run with it. Workers ignore
Ctrl-C (the main process stops them), so an interrupt prints no traceback from a worker.

Frame choice (``sampling``):
- ``frame_rate=None``: ``"uniform"`` (:func:`~pisces_cli.io.video.uniform_indices`, default) or
  ``"middle"`` (VBench, :func:`~pisces_cli.io.video.vbench_middle_indices`).
- ``frame_rate=R``: resample the video to R fps from frame 0 (:func:`~pisces_cli.io.video.fps_indices`),
  keep the first ``num_frames``; a shorter video is padded by repeating its last sampled frame.

Random crops are seeded per item from ``(seed, key)`` (:func:`item_seed`), so a video gets the same crop
whatever the number of workers, their scheduling, its place in the run, a resume or the number of ranks;
order is the order of ``items`` (no shuffling).
"""

from __future__ import annotations

import contextlib
import heapq
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from pisces_cli.errors import PiscesError, UsageError
from pisces_cli.io.isolation import crashed, process_context, quiet_child, timed_out
from pisces_cli.io.preprocess import Preprocessing, preprocess_clip
from pisces_cli.io.prompts import VideoItem, read_item_bytes
from pisces_cli.io.video import (
    VideoDecodeError,
    fps_indices,
    read_clip,
    uniform_indices,
    vbench_middle_indices,
)

__all__ = [
    "DEFAULT_DECODE_TIMEOUT_S",
    "ClipDataset",
    "FrameSelector",
    "VideoBatch",
    "VideoLoader",
    "collate_video_items",
    "error_detail",
    "item_seed",
    "frame_selector",
    "make_loader",
]

Sampling = Literal["uniform", "middle"]

#: Times an item is handed out again after its worker died between items, before it is blamed.
MAX_RETRIES = 2

#: Seconds one video may take to decode and preprocess before its worker is killed (``runtime.decode_timeout_s``).
DEFAULT_DECODE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class FrameSelector:
    """Picklable ``select(total, fps) -> indices`` giving exactly ``num_frames`` indices.

    Rules: see the module docstring. Build it with :func:`frame_selector` (validates arguments).
    """

    num_frames: int
    frame_rate: float | None = None
    sampling: Sampling = "uniform"

    def __call__(self, total: int, fps: float) -> list[int]:
        if self.frame_rate is not None:
            chosen = fps_indices(total, fps, self.frame_rate, max_frames=self.num_frames)
            return chosen + [chosen[-1]] * (self.num_frames - len(chosen))
        if self.sampling == "middle":
            return vbench_middle_indices(total, self.num_frames)
        return uniform_indices(total, self.num_frames)


def frame_selector(
    num_frames: int, frame_rate: float | None = None, sampling: Sampling = "uniform"
) -> FrameSelector:
    """A validated :class:`FrameSelector`."""
    if num_frames <= 0:
        raise UsageError(f"num_frames must be positive, got {num_frames}")
    if sampling not in ("uniform", "middle"):
        raise UsageError(f"unknown sampling {sampling!r}; expected 'uniform' or 'middle'")
    if frame_rate is not None and not frame_rate > 0:
        raise UsageError(f"frame_rate must be positive, got {frame_rate}")
    return FrameSelector(num_frames, frame_rate, sampling)


class ClipDataset(Dataset):
    """Decoded, sampled, preprocessed clips of :class:`VideoItem` records.

    ``dataset[i]`` returns a dict with ``index``, ``key``, ``source``, ``prompt``, ``error``
    and ``clip``: float32 ``[num_frames, 3, size, size]`` (normalised), or ``None`` with
    ``error`` set when the item could not be used. Never raises for a bad video.
    """

    def __init__(
        self,
        items: Sequence[VideoItem],
        *,
        num_frames: int,
        preprocessing: Preprocessing,
        frame_rate: float | None = None,
        sampling: Sampling = "uniform",
        crop: Literal["center", "random"] = "center",
        seed: int = 0,
        decoder: str = "auto",
    ) -> None:
        self.items = list(items)
        self.num_frames = num_frames
        self.preprocessing = preprocessing
        self.crop = crop
        self.seed = seed
        self.decoder = decoder
        self._select = frame_selector(num_frames, frame_rate, sampling)
        if crop not in ("center", "random"):
            raise UsageError(f"unknown crop {crop!r}; expected 'center' or 'random'")

    def __len__(self) -> int:
        return len(self.items)

    def _row(
        self,
        index: int,
        item: VideoItem,
        clip: torch.Tensor | None,
        error: str | None,
        detail: str | None = None,
    ) -> dict[str, Any]:
        return {
            "index": index,
            "key": item.key,
            "source": item.source,
            "prompt": item.prompt,
            "clip": clip,
            "error": error,
            "detail": detail,
        }

    def error_row(self, index: int, error: str, detail: str | None = None) -> dict[str, Any]:
        """The error row of item ``index`` (used by the loader when a worker crashed or timed out)."""
        return self._row(index, self.items[index], None, error, detail)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        if item.error is not None:
            return self._row(index, item, None, item.error)
        try:
            source = read_item_bytes(item) if item.member is not None else item.source
            frames, _info, _indices = read_clip(source, self._select, decoder=self.decoder, name=item.source)
            generator = torch.Generator().manual_seed(item_seed(self.seed, item.key))
            prep = self.preprocessing
            clip = preprocess_clip(
                frames,
                size=prep.size,
                mean=prep.mean,
                std=prep.std,
                interpolation=prep.interpolation,
                antialias=prep.antialias,
                crop=self.crop,
                generator=generator,
            )
        except VideoDecodeError as exc:
            return self._row(index, item, None, str(exc), exc.detail)
        except PiscesError as exc:
            return self._row(index, item, None, str(exc))
        except Exception as exc:  # an unexpected failure must not kill the worker
            detail = f"{type(exc).__name__}: {exc}"
            return self._row(index, item, None, f"cannot use video {item.source}: {detail}", detail)
        return self._row(index, item, clip, None)


def item_seed(seed: int, key: str) -> int:
    """The random-crop seed of the item ``key`` under the run seed ``seed`` (63 bits of SHA-256 of both)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}\x00{key}".encode()).digest()[:8], "little") >> 1


@dataclass
class VideoBatch:
    """A collated batch.

    Attributes:
        clips: float32 ``[B, T, 3, size, size]`` of the good items, or ``None`` if none was good.
        indices, keys, prompts, sources: per good item, aligned with ``clips``.
        errors: error rows ``{"index", "key", "source", "prompt", "error", "detail"}`` of the bad items:
            ``error`` one readable sentence naming the file, ``detail`` what the decoders said (or None).
    """

    clips: torch.Tensor | None
    indices: list[int]
    keys: list[str]
    prompts: list[str | None]
    sources: list[str]
    errors: list[dict[str, Any]] = field(default_factory=list)


def collate_video_items(rows: Sequence[dict[str, Any]]) -> VideoBatch:
    """Stack the clips of good rows; pass error rows through unchanged (minus ``clip``)."""
    good = [row for row in rows if row["error"] is None]
    errors = [{k: v for k, v in row.items() if k != "clip"} for row in rows if row["error"] is not None]
    clips = torch.stack([row["clip"] for row in good]) if good else None
    return VideoBatch(
        clips=clips,
        indices=[row["index"] for row in good],
        keys=[row["key"] for row in good],
        prompts=[row["prompt"] for row in good],
        sources=[row["source"] for row in good],
        errors=errors,
    )


def _worker_main(conn: Any, dataset: ClipDataset, progress: Any) -> None:
    """A decode worker: decode the indices it receives, in order, until told to stop (``None``) or orphaned.

    ``progress`` (shared memory the main process reads even after this process died) holds
    ``[index being decoded or -1, time.monotonic() when it started]``. Rows go back through a sender thread,
    so decoding continues while the main process is busy; a row's clip travels as a NumPy array (plain
    pickling: no shared-memory file descriptors to leak when a worker dies).
    """
    quiet_child()
    torch.set_num_threads(1)
    outbox: queue.SimpleQueue = queue.SimpleQueue()

    def send_rows() -> None:
        while (row := outbox.get()) is not None:
            try:
                conn.send(row)
            except OSError:  # the main process is gone
                return
            except Exception as exc:  # a row that cannot be pickled: send its error row instead
                source = dataset.items[row["index"]].source
                with contextlib.suppress(Exception):
                    conn.send(dataset.error_row(row["index"], f"cannot use video {source}: {exc!r}"))

    sender = threading.Thread(target=send_rows, daemon=True)
    sender.start()
    while True:
        try:
            index = conn.recv()
        except (EOFError, OSError):  # the main process is gone
            break
        if index is None:
            break
        progress[1] = time.monotonic()
        progress[0] = index
        row = dataset[index]
        progress[0] = -1
        if row["clip"] is not None:
            row["clip"] = row["clip"].numpy()
        outbox.put(row)
    outbox.put(None)
    sender.join()


class _Worker:
    """One decode process, its pipe, its shared ``progress`` and the items it holds, in order."""

    def __init__(self, context: Any, dataset: ClipDataset) -> None:
        self.conn, child = context.Pipe(duplex=True)
        self.progress = context.RawArray("d", [-1.0, 0.0])
        self.process = context.Process(target=_worker_main, args=(child, dataset, self.progress), daemon=True)
        self.process.start()
        child.close()
        self.assigned: list[int] = []

    def decoding(self) -> tuple[int, float] | None:
        """(index, monotonic start) of the item being decoded now, if it is one of ours."""
        index, started = int(self.progress[0]), float(self.progress[1])
        return (index, started) if index >= 0 and index in self.assigned else None

    def stop(self) -> None:
        """End the process now (it may be mid-decode): close the pipe, kill, reap."""
        with contextlib.suppress(OSError):
            self.conn.close()
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)


class VideoLoader:
    """Iterable of :class:`VideoBatch` over a :class:`ClipDataset`, in item order, crash-isolated.

    ``num_workers`` decode processes (``0``: one, without read-ahead; see the module docstring) each
    decode the items given to them in order; at most ``window`` items past the start of the batch being
    yielded are handed out. A worker that dies, or passes ``decode_timeout_s`` on one item, makes that
    item an error row; the items it held but had not finished go to the others, and a fresh worker takes
    its place. ``num_workers`` is the parallelism the caller asked for (stages size their torch thread
    pool by it); ``processes`` the number of child processes actually used.
    """

    def __init__(
        self,
        dataset: ClipDataset,
        *,
        batch_size: int,
        num_workers: int,
        prefetch_factor: int | None = None,
        decode_timeout_s: float | None = DEFAULT_DECODE_TIMEOUT_S,
    ) -> None:
        if decode_timeout_s is not None and not decode_timeout_s > 0:
            raise UsageError(f"decode_timeout_s must be positive or None, got {decode_timeout_s}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.processes = max(1, num_workers)
        self.window = max(batch_size, batch_size * num_workers * (prefetch_factor or 2))
        self.per_worker = -(-self.window // self.processes)
        self.decode_timeout_s = decode_timeout_s
        self._context = process_context()

    def __len__(self) -> int:
        return (len(self.dataset) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[VideoBatch]:
        total = len(self.dataset)
        if total == 0:
            return
        workers = [_Worker(self._context, self.dataset) for _ in range(min(self.processes, total))]
        try:
            yield from self._batches(workers, total)
        finally:
            for worker in workers:
                worker.stop()

    def _batches(self, workers: list[_Worker], total: int) -> Iterator[VideoBatch]:
        done: dict[int, dict[str, Any]] = {}
        pending = list(range(total))  # a heap: items not handed out, lowest first
        self._retries: dict[int, int] = {}
        batch_start = 0
        while batch_start < total:
            batch_end = min(total, batch_start + self.batch_size)
            self._dispatch(workers, done, pending, batch_start + self.window)
            if all(i in done for i in range(batch_start, batch_end)):
                rows = [done.pop(i) for i in range(batch_start, batch_end)]
                yield collate_video_items(rows)
                batch_start = batch_end
                continue
            self._collect(workers, done, pending)

    def _dispatch(
        self, workers: list[_Worker], done: dict[int, dict[str, Any]], pending: list[int], limit: int
    ) -> None:
        """Hand out pending items below ``limit``, lowest first, to workers holding fewer than ``per_worker``.

        Items that are errors before any decoding (no prompt, missing file) get their row here."""
        while pending and pending[0] < limit:
            index = pending[0]
            if self.dataset.items[index].error is not None:
                done[heapq.heappop(pending)] = self.dataset[index]
                continue
            slot = min(range(len(workers)), key=lambda k: len(workers[k].assigned))
            if len(workers[slot].assigned) >= self.per_worker:
                return
            try:
                workers[slot].conn.send(index)
            except OSError:  # died while idle: replace it, hand its items out again
                self._replace(workers, slot, pending, None, done)
                continue
            workers[slot].assigned.append(heapq.heappop(pending))

    def _collect(self, workers: list[_Worker], done: dict[int, dict[str, Any]], pending: list[int]) -> None:
        """Wait for rows, a dead worker or a deadline; record rows, and error rows for crashes and hangs."""
        busy = [w for w in workers if w.assigned]
        if not busy:
            return
        timeout = None
        if self.decode_timeout_s is not None:
            starts = [now[1] for w in busy if (now := w.decoding()) is not None]
            if starts:
                timeout = max(0.0, min(starts) + self.decode_timeout_s - time.monotonic())
            else:
                timeout = self.decode_timeout_s  # nothing started yet: look again after a while
        wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout)
        for slot, worker in enumerate(workers):
            if not worker.assigned:
                continue
            if self._receive(worker, done):  # the pipe closed: the process is gone
                now = worker.decoding()
                worker.process.join(timeout=5)
                culprit = None if now is None else self._crash_row(now[0], worker)
                self._replace(workers, slot, pending, culprit, done)
                continue
            now = worker.decoding()
            if (
                now is not None
                and self.decode_timeout_s is not None
                and time.monotonic() - now[1] >= self.decode_timeout_s
            ):
                self._replace(workers, slot, pending, self._timeout_row(now[0]), done)

    @staticmethod
    def _receive(worker: _Worker, done: dict[int, dict[str, Any]]) -> bool:
        """Take every row waiting in ``worker``'s pipe; ``True`` when the pipe is closed (worker dead)."""
        try:
            while worker.assigned and worker.conn.poll():
                row = worker.conn.recv()
                if row["clip"] is not None:
                    row["clip"] = torch.from_numpy(row["clip"])
                worker.assigned.remove(row["index"])
                done[row["index"]] = row
        except (EOFError, OSError):
            return True
        return bool(worker.assigned) and not worker.process.is_alive() and not worker.conn.poll()

    def _replace(
        self,
        workers: list[_Worker],
        slot: int,
        pending: list[int],
        culprit: dict[str, Any] | None,
        done: dict[int, dict[str, Any]],
    ) -> None:
        """Stop worker ``slot``, record ``culprit``'s error row, hand its other items out again, start a fresh one."""
        worker = workers[slot]
        worker.stop()
        if culprit is None and worker.assigned:
            # it died between items: retry them; the oldest one is blamed if that keeps happening
            first = worker.assigned[0]
            self._retries[first] = self._retries.get(first, 0) + 1
            if self._retries[first] > MAX_RETRIES:
                culprit = self._crash_row(first, worker)
        if culprit is not None:
            done[culprit["index"]] = culprit
        for index in worker.assigned:
            if culprit is None or index != culprit["index"]:
                heapq.heappush(pending, index)
        workers[slot] = _Worker(self._context, self.dataset)

    def _crash_row(self, index: int, worker: _Worker) -> dict[str, Any]:
        error = crashed(self.dataset.items[index].source, worker.process.exitcode, worker.process.pid)
        return self.dataset.error_row(index, str(error), error.detail)

    def _timeout_row(self, index: int) -> dict[str, Any]:
        error = timed_out(self.dataset.items[index].source, float(self.decode_timeout_s or 0))
        return self.dataset.error_row(index, str(error), error.detail)


def error_detail(error_row: dict[str, Any]) -> dict[str, str]:
    """``{"detail": ...}`` for an error row of :attr:`VideoBatch.errors` that has one, else ``{}``: what
    the decoders said, kept beside the readable ``error`` in the rows a stage writes."""
    return {"detail": error_row["detail"]} if error_row.get("detail") else {}


def make_loader(
    items: Sequence[VideoItem],
    *,
    num_frames: int,
    frame_rate: float | None = None,
    preprocessing: Preprocessing,
    batch_size: int,
    num_workers: int,
    crop: Literal["center", "random"] = "center",
    seed: int = 0,
    sampling: Sampling = "uniform",
    decoder: str = "auto",
    prefetch_factor: int | None = None,
    decode_timeout_s: float | None = DEFAULT_DECODE_TIMEOUT_S,
) -> VideoLoader:
    """A deterministic-order, crash-isolated :class:`VideoLoader` of :class:`VideoBatch` over ``items``.

    Decoding and preprocessing run in ``num_workers`` worker processes (0 = one child process, no
    read-ahead); a video whose decoder crashes, or takes longer than ``decode_timeout_s`` seconds
    (``None``: no limit), becomes an error row.
    """
    if batch_size <= 0:
        raise UsageError(f"batch_size must be positive, got {batch_size}")
    if num_workers < 0:
        raise UsageError(f"num_workers must be >= 0, got {num_workers}")
    dataset = ClipDataset(
        items,
        num_frames=num_frames,
        preprocessing=preprocessing,
        frame_rate=frame_rate,
        sampling=sampling,
        crop=crop,
        seed=seed,
        decoder=decoder,
    )
    return VideoLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor,
        decode_timeout_s=decode_timeout_s,
    )
