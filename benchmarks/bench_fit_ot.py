"""Benchmark (d): Neural OT training throughput of ``pisces fit-ot`` on cached embeddings.

Paper setting: 512-d embeddings, batch 128, hidden 1024 (T and f), t_iters 10, i.e. 11 forward/backward
passes of ~2M-parameter MLPs per outer step. Reports outer steps/s and samples/s, where one outer step
consumes ``(t_iters + 1) · batch`` text samples plus ``batch`` video samples.

Usage::

    .venv/bin/python benchmarks/bench_fit_ot.py [--steps 20] [--warmup 3] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from pisces_cli.ot.maps import NeuralOTConfig, NeuralOTTrainer


def measure(
    dim: int = 512,
    hidden: int = 1024,
    batch: int = 128,
    t_iters: int = 10,
    steps: int = 20,
    warmup: int = 3,
    device: str = "cpu",
) -> dict:
    """Outer steps/s of :class:`NeuralOTTrainer` on random embeddings (``warmup`` untimed steps first)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8192, dim, generator=generator)
    y = torch.randn(8192, dim, generator=generator)
    config = NeuralOTConfig(
        hidden_dim=hidden,
        potential_hidden_dim=hidden,
        batch_size=batch,
        t_iters=t_iters,
        max_steps=warmup + steps,
    )
    trainer = NeuralOTTrainer(x, y, config, device=device)
    for _ in range(warmup):
        trainer.train_step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    steps_per_s = steps / seconds
    samples_per_step = (t_iters + 2) * batch
    return {
        "benchmark": "fit-ot neural",
        "device": str(trainer.device),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "dim": dim,
        "hidden": hidden,
        "batch": batch,
        "t_iters": t_iters,
        "timed_steps": steps,
        "seconds_per_outer_step": seconds / steps,
        "outer_steps_per_s": steps_per_s,
        "samples_per_s": steps_per_s * samples_per_step,
        "paper_160k_steps_hours": 160_000 / steps_per_s / 3600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--t-iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.dim, args.hidden, args.batch, args.t_iters, args.steps, args.warmup, args.device)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
