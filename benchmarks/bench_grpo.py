"""Benchmark: one GRPO optimizer step vs one direct-backprop step, tiny HunyuanVideo + tiny CLIP reward, CPU.

Both algorithms run through the shared trainer (``Trainer.setup()`` on the bundled ``demo`` recipe with tiny
models, fp32, LoRA r=4 on ``attn_mlp``, 9 frames at 32×32, one prompt per optimizer step, the real
:class:`PiscesReward` without an OT map):

- ``grpo``: a group of 4 samples, 8 SDE steps (shift 5), ``timestep_fraction`` 0.6 → 4 trained steps per sample;
  timed as a whole and split into rollout (no grad), decode + reward (no grad) and the update
  (recompute + backward); the ratio = 1 sanity check is timed once separately.
- ``backprop`` (the paper's recipe): prompt-only data with ``prompt_x0: teacher`` (8 teacher Euler steps),
  one-step jump, differentiable decode + reward, consistency distillation; batch 1 and batch 4.

Each variant runs in its own subprocess; per variant, 1 warm-up step then ``--repeats`` timed steps (median).
Memory (CPU) is the peak resident set size reached during the steps (warm-up included) above the RSS right
after setup: ``ru_maxrss`` minus the starting RSS, so it includes allocator caching and is a rough figure.

Run: ``.venv/bin/python benchmarks/bench_grpo.py [--repeats N] [--threads N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("grpo", "backprop_b1", "backprop_b4")


def current_rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def overrides(root: Path, variant: str) -> list[str]:
    prompts = root / "prompts.txt"
    values = {
        "output_dir": str(root / f"run-{variant}"),
        "seed": 5,
        "runtime.device": "cpu",
        "models.encoder.backend": "clip",
        "models.encoder.path": str(root / "clip"),
        "models.generator.backbone": "hunyuan",
        "models.generator.path": str(root / "hunyuan"),
        "models.generator.dtype": "float32",
        "reward.ot_map": "null",
        "reward.token_ot.max_iter": 50,
        "finetune.data.prompts": str(prompts),
        "finetune.max_steps": 100,
        "finetune.gradient_accumulation_steps": 1,
        "finetune.mixed_precision": "'no'",
        "finetune.lora.rank": 4,
        "finetune.lora.alpha": 4,
        "finetune.num_frames": 9,
        "finetune.height": 32,
        "finetune.width": 32,
        "finetune.guidance": 6.0,
        "finetune.checkpointing_steps": 1000,
    }
    if variant == "grpo":
        values.update(
            {
                "finetune.algorithm": "grpo",
                "finetune.batch_size": 1,
                "finetune.grpo.num_generations": 4,
                "finetune.grpo.sampling_steps": 8,
                "finetune.grpo.shift": 5.0,
                "finetune.grpo.timestep_fraction": 0.6,
            }
        )
    else:
        values.update(
            {
                "finetune.algorithm": "backprop",
                "finetune.batch_size": 1 if variant == "backprop_b1" else 4,
                "finetune.prompt_x0": "teacher",
                "finetune.prompt_x0_steps": 8,
            }
        )
    return [f"{key}={value}" for key, value in values.items()]


def worker(root: Path, variant: str, repeats: int) -> dict:
    import torch

    from pisces_cli.config import load_recipe
    from pisces_cli.training.algorithm import PromptBatch
    from pisces_cli.training.trainer import Trainer

    trainer = Trainer(load_recipe("demo", overrides(root, variant)), resume=False)
    trainer.setup()
    result: dict = {"variant": variant}
    algorithm = trainer.algorithm
    if variant == "grpo":
        start = time.perf_counter()
        algorithm.sanity_check()
        result["sanity_s"] = time.perf_counter() - start
    rss0 = current_rss_bytes()
    trainer.train_one_step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        trainer.train_one_step()
        times.append(time.perf_counter() - start)
    result["step_s"] = statistics.median(times)
    result["peak_rss_above_start_mib"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    ) / 2**20
    if variant == "grpo":
        parts: dict[str, list[float]] = {"rollout_s": [], "reward_s": [], "update_s": []}
        batch = PromptBatch(prompts=[trainer.data.prompts[0]])
        for index in range(repeats):
            generator = torch.Generator().manual_seed(index)
            start = time.perf_counter()
            prompts, embeds, trajectory = algorithm.rollout(list(batch.prompts), generator)
            parts["rollout_s"].append(time.perf_counter() - start)
            start = time.perf_counter()
            algorithm.score(trajectory.final, prompts)
            parts["reward_s"].append(time.perf_counter() - start)
            rollout = algorithm.collect(batch, generator)
            trainer.optimizer.zero_grad(set_to_none=True)
            start = time.perf_counter()
            algorithm.update(rollout, generator, scale=1.0)
            parts["update_s"].append(time.perf_counter() - start)
        result.update({name: statistics.median(values) for name, values in parts.items()})
    return result


def build_models(root: Path) -> None:
    from pisces_cli.backbones.tiny import save_tiny_hunyuan
    from pisces_cli.encoders.tiny_clip import save_tiny_clip

    save_tiny_hunyuan(root / "hunyuan", seed=0)
    save_tiny_clip(root / "clip")
    (root / "prompts.txt").write_text(
        "a cat runs on grass\na dog jumps over the road\na red car drives\na bird flies in the sky\n",
        encoding="utf-8",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", choices=VARIANTS)
    parser.add_argument("--root")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        print("RESULT " + json.dumps(worker(Path(args.root), args.worker, args.repeats)))
        return
    with tempfile.TemporaryDirectory(prefix="pisces-bench-grpo-") as tmp:
        root = Path(tmp)
        build_models(root)
        results = []
        for variant in VARIANTS:
            command = [
                sys.executable,
                __file__,
                "--worker",
                variant,
                "--root",
                str(root),
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
            ]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            line = next(row for row in output.splitlines() if row.startswith("RESULT "))
            results.append(json.loads(line[len("RESULT ") :]))
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}, "
        f"median of {args.repeats}"
    )
    print("| variant | step (s) | peak RSS above start (MiB) | detail |")
    print("| --- | --- | --- | --- |")
    for row in results:
        detail = ""
        if row["variant"] == "grpo":
            detail = (
                f"rollout {row['rollout_s']:.3f} s, decode+reward {row['reward_s']:.3f} s, "
                f"update {row['update_s']:.3f} s; sanity check {row['sanity_s']:.3f} s"
            )
        print(
            f"| {row['variant']} | {row['step_s']:.3f} | {row['peak_rss_above_start_mib']:.0f} | {detail} |"
        )


if __name__ == "__main__":
    main()
