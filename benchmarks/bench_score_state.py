"""Benchmark: what ``pisces score``'s resumable state costs and saves, through the CLI as a user runs it.

Workload: ``--clips`` synthetic world clips (16 frames, 64×64, H.264 mp4) with ``prompts.jsonl``, the tiny
random CLIP (32×32 input), 8 frames per clip, token OT on, a Gaussian OT map, CPU, decoding in the main
process (``runtime.num_workers: 0``), one torch thread (``OMP_NUM_THREADS=1``). Every variant is a fresh
``python -m pisces_cli score ...`` process (start-up and imports included), repeats interleaved, median:

(a) ``score --force``: score every clip into a folder that already holds them (the full cost);
(b) ``score`` again: nothing to do (settings and every video unchanged): answered from the files;
(c) ``score --report`` with ``report.html`` deleted: nothing to score, the report is drawn again from
    ``heatmaps.jsonl`` (per drawn video = (c − b) / videos drawn, at most 48);
(d) ``torchrun --nproc_per_node 2 ... score --force`` (2 gloo ranks, one thread each) vs (a).

Targets: (b) < 5 % of (a).

Run: ``.venv/bin/python benchmarks/bench_score_state.py [--clips 256] [--repeats 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPORT_FIGURES_MAX = 48


def run(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="32 clips, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.clips, args.repeats = 32, 1

    from bench_score import write_gaussian_map

    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder
    from pisces_cli.world.captions import world_vocabulary

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_clip_folder(root / "clips", args.clips, seed=0, frames=16, size=64)
        save_tiny_clip(root / "enc", "clip", seed=0, words=world_vocabulary())
        ot_map = write_gaussian_map(root)
        recipe = root / "r.yaml"
        recipe.write_text(
            f"output_dir: {root}/run\n"
            "runtime: {num_workers: 0, device: cpu}\n"
            f"models: {{encoder: {{backend: clip, path: {root}/enc}}}}\n"
            "data: {num_frames: 8}\n"
            "score: {batch_size: 8, bootstrap_samples: 2000}\n"
            f"reward: {{ot_map: {ot_map}}}\n"
        )
        base = ["score", str(root / "clips"), "-r", str(recipe), "-o", str(root / "out")]
        one = [sys.executable, "-m", "pisces_cli", *base]
        two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "pisces_cli", *base]  # fmt: skip
        run([*one, "--report"], env)  # warm-up: page cache, imports; leaves a scored folder and report
        times: dict[str, list[float]] = {"full": [], "noop": [], "report": [], "two_ranks": []}
        for _ in range(args.repeats):
            times["full"].append(run([*one, "--force"], env))
            times["noop"].append(run(one, env))
            (root / "out/report.html").unlink(missing_ok=True)
            times["report"].append(run([*one, "--report"], env))
            (root / "out/report.html").unlink(missing_ok=True)
            times["two_ranks"].append(run([*two, "--force"], env))
        shutil.rmtree(root / "out", ignore_errors=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    drawn = min(args.clips, REPORT_FIGURES_MAX)
    load = os.getloadavg()[0]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load avg {load:.1f}; OMP_NUM_THREADS=1; {args.clips} clips 16x64x64 -> 8 frames; "
          f"{args.repeats} interleaved repeats (median)")  # fmt: skip
    print(f"{'variant':<34} {'median s':>9} {'min s':>7}")
    labels = {
        "full": "(a) score --force (all clips)",
        "noop": "(b) score, nothing to do",
        "report": "(c) score --report, report redrawn",
        "two_ranks": "(d) torchrun 2 ranks, score --force",
    }
    for name, label in labels.items():
        print(f"{label:<34} {median[name]:9.3f} {min(times[name]):7.3f}")
    ratio = median["noop"] / median["full"]
    print(
        f"nothing-to-do / full = {100 * ratio:.2f} % ({'meets' if ratio < 0.05 else 'MISSES'} the < 5 % target)"
    )
    per_video = (median["report"] - median["noop"]) / drawn
    print(
        f"report redraw: {median['report'] - median['noop']:.2f} s for {drawn} drawn videos = {per_video:.3f} s/video"
    )
    print(f"2 ranks / 1 process (full score) = {median['two_ranks'] / median['full']:.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
