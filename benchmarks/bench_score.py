"""Benchmark: ``pisces score`` throughput vs the raw decode throughput of the same files.

Workload: ``--clips`` synthetic world clips (16 frames, 64×64, H.264 mp4) written by
:func:`pisces_cli.fixtures.write_clip_folder`, scored with the tiny random CLIP (32×32 input),
``num_frames`` = 8 frames per clip sampled uniformly, token OT on (paper settings), CPU.

Compared side by side, repeats interleaved, median reported:

(a) ``decode``: a ``DataLoader`` with the same ``num_workers`` and batch size whose dataset only opens each
    file and decodes the same 8 frames (``pisces_cli.io.video.read_clip`` with
    ``uniform_indices``) — the floor any scorer of these files pays;
(b) ``score``: :func:`pisces_cli.stages.score.run_score` end to end (recipe already resolved; encoder
    load, decode + preprocess in the loader, rewards, ``scores.jsonl``/``csv``/``summary.json`` with
    bootstrap CIs), ``--force`` so every repeat scores everything;
(c) ``score (loop)``: the same run's time spent in the batch loop only (from the progress callback),
    which isolates per-video cost from the fixed start-up cost;
(d) ``decode (no hdr)``: (a) without the container header check that ``read_clip`` runs before decoding
    (``pisces_cli.io.video._check_declared_sizes`` disabled) — its cost is (d) vs (a);
(e) ``score (DL)``/``score (DL loop)``: (b)/(c) with the crash-isolated ``VideoLoader`` replaced by the torch
    ``DataLoader`` pisces used before (same dataset and collate, no crash isolation, no header check) — the
    price of isolation is (e) vs (b)/(c).

Target: (b) ≥ 70 % of (a)'s videos/s (score should be decode-bound).

Run: ``.venv/bin/python benchmarks/bench_score.py [--quick] [--workers N] [--ot-map none|gaussian]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from pisces_cli.io.video import read_clip, uniform_indices

NUM_FRAMES = 8


class DecodeOnly(Dataset):
    """Decode ``NUM_FRAMES`` uniformly sampled frames of each file; nothing else."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        frames, _info, _ = read_clip(self.paths[index], lambda total, fps: uniform_indices(total, NUM_FRAMES))
        return frames.shape[0]


def time_decode(paths: list[Path], workers: int, batch_size: int) -> float:
    loader = DataLoader(DecodeOnly(paths), batch_size=batch_size, num_workers=workers, collate_fn=list)
    start = time.perf_counter()
    decoded = sum(len(batch) for batch in loader)
    elapsed = time.perf_counter() - start
    assert decoded == len(paths)
    return elapsed


def make_recipe(root: Path, workers: int, batch_size: int, ot_map: str | None, device: str = "cpu"):
    from pisces_cli.config import resolve_data

    data = {
        "output_dir": str(root / "run"),
        "runtime": {"num_workers": workers, "device": device},
        "models": {"encoder": {"backend": "clip", "path": str(root / "enc")}},
        "data": {"videos": str(root / "clips"), "num_frames": NUM_FRAMES},
        "score": {"batch_size": batch_size, "bootstrap_samples": 2000},
        "reward": {"ot_map": ot_map},
    }
    return resolve_data(data, [], "bench_score")


def dataloader_make_loader(items, **options):
    """What ``make_loader`` built before crash isolation: a torch ``DataLoader`` over the same dataset."""
    from pisces_cli.io.dataset import ClipDataset, collate_video_items

    workers = options.pop("num_workers")
    batch_size = options.pop("batch_size")
    options.pop("decode_timeout_s", None)
    options.pop("prefetch_factor", None)
    dataset = ClipDataset(items, **options)
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_video_items)


@contextlib.contextmanager
def previous_loader():
    """Score through :func:`dataloader_make_loader`, and decode without the header check, inside the block."""
    import pisces_cli.io.dataset as dataset_module
    import pisces_cli.io.video as video_module

    saved = dataset_module.make_loader, video_module._check_declared_sizes
    dataset_module.make_loader = dataloader_make_loader
    video_module._check_declared_sizes = lambda source, label: None
    try:
        yield
    finally:
        dataset_module.make_loader, video_module._check_declared_sizes = saved


@contextlib.contextmanager
def no_header_check():
    import pisces_cli.io.video as video_module

    saved = video_module._check_declared_sizes
    video_module._check_declared_sizes = lambda source, label: None
    try:
        yield
    finally:
        video_module._check_declared_sizes = saved


def time_score(resolved, clips: Path, out: Path) -> tuple[float, float]:
    """(end-to-end seconds, loop seconds from the first batch's start to the last batch's end)."""
    import pisces_cli.stages.progress as progress
    from pisces_cli.stages import score as score_module

    marks: list[float] = []

    real = progress.progress_bar

    def timed_bar(console, name, total):
        bar = real(console, name, total=total)

        class Wrapper:
            def __enter__(self):
                advance = bar.__enter__()

                def timed_advance(n=1, **fields):
                    # the loop starts at the "scoring" phase (after the model load) and ends at the last batch
                    if fields.get("phase") == "scoring" or n > 0:
                        marks.append(time.perf_counter())
                    return advance(n, **fields)

                return timed_advance

            def __exit__(self, *exc):
                return bar.__exit__(*exc)

        return Wrapper()

    progress.progress_bar = timed_bar
    try:
        start = time.perf_counter()
        summary = score_module.run_score(resolved, str(clips), output=str(out), force=True, report=False)
        elapsed = time.perf_counter() - start
    finally:
        progress.progress_bar = real
    assert summary.failed == 0, summary
    return elapsed, marks[-1] - marks[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 clips, 3 repeats")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for both (a) and (b)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads of the main process (0: default)"
    )
    parser.add_argument(
        "--no-thread-guard",
        action="store_true",
        help="disable score's cpu_threads_beside_workers (the behaviour before the fix), for comparison",
    )
    parser.add_argument("--ot-map", choices=("none", "gaussian"), default="gaussian")
    args = parser.parse_args()
    if args.quick:
        args.clips, args.repeats = 16, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_thread_guard:
        from pisces_cli.stages import score as score_module

        score_module.cpu_threads_beside_workers = lambda device, workers: contextlib.nullcontext()

    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder
    from pisces_cli.world.captions import world_vocabulary

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_clip_folder(root / "clips", args.clips, seed=0, frames=16, size=64)
        save_tiny_clip(root / "enc", "clip", seed=0, words=world_vocabulary())
        ot_map = None
        if args.ot_map == "gaussian":
            ot_map = str(write_gaussian_map(root))
        resolved = make_recipe(root, args.workers, args.batch_size, ot_map)
        paths = sorted((root / "clips").glob("*.mp4"))
        # warm-up (imports, codec init, page cache) of both, untimed
        time_decode(paths, args.workers, args.batch_size)
        time_score(resolved, root / "clips", root / "out")
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(args.repeats):
            times["decode"].append(time_decode(paths, args.workers, args.batch_size))
            with no_header_check():
                times["decode (no hdr)"].append(time_decode(paths, args.workers, args.batch_size))
            total, in_loop = time_score(resolved, root / "clips", root / "out")
            times["score"].append(total)
            times["score (loop)"].append(in_loop)
            with previous_loader():
                total, in_loop = time_score(resolved, root / "clips", root / "out")
            times["score (DL)"].append(total)
            times["score (DL loop)"].append(in_loop)
    n = len(paths)
    rates = {name: n / statistics.median(values) for name, values in times.items()}
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load avg {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{n} clips 16x64x64 -> {NUM_FRAMES} frames, batch {args.batch_size}, workers {args.workers}, "
          f"ot_map {args.ot_map}, torch threads {torch.get_num_threads()}, "
          f"thread guard {'off' if args.no_thread_guard else 'on'}, {args.repeats} interleaved repeats (median)")  # fmt: skip
    print(f"{'variant':<16} {'median s':>9} {'min s':>7} {'videos/s':>9} {'x decode':>9}")
    for name, values in times.items():
        print(f"{name:<16} {statistics.median(values):9.3f} {min(values):7.3f} {rates[name]:9.1f} "
              f"{rates[name] / rates['decode']:9.2f}")  # fmt: skip
    verdict = "meets" if rates["score (loop)"] >= 0.7 * rates["decode"] else "MISSES"
    print(
        f"throughput (batch loop) / decode = {rates['score (loop)'] / rates['decode']:.2f} ({verdict} the >= 0.70 target)"
    )
    print(f"end to end incl. model load and summary / decode = {rates['score'] / rates['decode']:.2f}")
    print(f"header check: decode / decode (no hdr) = {rates['decode'] / rates['decode (no hdr)']:.2f}")
    print(
        f"crash isolation: score (loop) / score (DL loop) = {rates['score (loop)'] / rates['score (DL loop)']:.2f}, "
        f"end to end {rates['score'] / rates['score (DL)']:.2f}"
    )


VARIANTS = ("decode", "decode (no hdr)", "score", "score (loop)", "score (DL)", "score (DL loop)")


def write_gaussian_map(root: Path) -> Path:
    """A Gaussian map fit on random embeddings of the tiny encoder's width, with its fingerprint."""
    from pisces_cli.artifacts import ArtifactHeader
    from pisces_cli.encoders.registry import load_encoder
    from pisces_cli.ot.maps import fit_gaussian_map
    from pisces_cli.rewards import save_ot_map_artifact

    encoder = load_encoder("clip", str(root / "enc"))
    gen = torch.Generator().manual_seed(0)
    dim = encoder.embed_dim
    tmap = fit_gaussian_map(torch.randn(256, dim, generator=gen), torch.randn(256, dim, generator=gen) + 0.5)
    header = ArtifactHeader(schema="", stage="bench", fingerprints={"encoder": encoder.fingerprint()})
    return save_ot_map_artifact(root / "ot_map.safetensors", tmap, dim, header)


if __name__ == "__main__":
    main()
