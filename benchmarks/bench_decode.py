"""Decode throughput (decord vs PyAV) and DataLoader throughput (0 vs N workers) of pisces_cli.io.

Run:  .venv/bin/python benchmarks/bench_decode.py [--clips 16] [--frames 64] [--side 256] [--workers 2]

Writes synthetic H.264 clips (a moving square over a noisy gradient, 8 fps) to a temporary folder,
then reports, best of ``--repeats`` runs:
- raw decode: every frame of every clip to uint8 RGB through ``read_frames(decoder=...)`` (frames/s);
- loader: ``make_loader`` with ``--num-frames`` uniformly sampled frames per clip, bicubic resize
  + centre crop to ``--size``, batch ``--batch-size``, over ``--loader-passes`` passes of the clips;
  clips/s with 0 and ``--workers`` workers, and
  the same with a simulated model step of ``--compute-ms`` per batch (sleep) to show the overlap.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pisces_cli.io.dataset import make_loader
from pisces_cli.io.preprocess import Preprocessing
from pisces_cli.io.prompts import VideoItem
from pisces_cli.io.video import available_decoders, read_frames
from pisces_cli.io.writer import write_mp4


def synthetic_clip(seed: int, num_frames: int, side: int, noise: float = 6.0) -> np.ndarray:
    """uint8 [T, side, side, 3]: a square moving over a gradient with per-frame noise (std in levels)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, side, dtype=np.float32)
    base = np.stack(
        [ramp[None, :].repeat(side, 0), ramp[:, None].repeat(side, 1), np.full((side, side), 80)], -1
    )
    frames = np.empty((num_frames, side, side, 3), np.uint8)
    square = side // 6
    for t in range(num_frames):
        image = base + (rng.normal(0, noise, base.shape) if noise else 0.0)
        x = (3 * t) % (side - square)
        image[side // 3 : side // 3 + square, x : x + square] = (240, 200, 30)
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--compute-ms", type=float, default=100.0)
    parser.add_argument(
        "--noise", type=float, default=6.0, help="per-frame noise std (0 = smooth, easy to decode)"
    )
    parser.add_argument(
        "--loader-passes", type=int, default=4, help="loader reads the clip list this many times"
    )
    parser.add_argument("--skip-loader", action="store_true", help="only the raw decode comparison")
    args = parser.parse_args()

    print(f"python {platform.python_version()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for index in range(args.clips):
            path = Path(tmp) / f"clip{index:03d}.mp4"
            write_mp4(path, synthetic_clip(index, args.frames, args.side, args.noise), 8)
            paths.append(path)
        total_frames = args.clips * args.frames
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        print(
            f"{args.clips} clips x {args.frames} frames at {args.side}x{args.side} H.264, "
            f"noise std {args.noise}, {megabytes:.1f} MB"
        )

        for decoder in available_decoders():
            seconds = best_of(args.repeats, lambda d=decoder: [read_frames(p, decoder=d) for p in paths])
            print(f"raw decode {decoder:>6}: {total_frames / seconds:8.0f} frames/s ({seconds:.3f} s)")

        if args.skip_loader:
            return
        # several passes over the clips so that worker start-up (fork + imports) is amortised
        items = [
            VideoItem(f"{n}/{p.name}", str(p), "prompt") for n in range(args.loader_passes) for p in paths
        ]
        prep = Preprocessing(size=args.size)
        for compute_ms in (0.0, args.compute_ms):
            for workers in (0, args.workers):

                def run(w=workers, c=compute_ms):
                    loader = make_loader(
                        items,
                        num_frames=args.num_frames,
                        preprocessing=prep,
                        batch_size=args.batch_size,
                        num_workers=w,
                    )
                    for batch in loader:
                        assert batch.clips is not None and not batch.errors
                        if c:
                            time.sleep(c / 1000.0)  # stands in for the model step in the main process

                seconds = best_of(args.repeats, run)
                print(
                    f"loader workers={workers} compute={compute_ms:.0f} ms/batch: "
                    f"{len(items) / seconds:7.1f} clips/s ({seconds:.3f} s for {len(items)} clips)"
                )


if __name__ == "__main__":
    main()
