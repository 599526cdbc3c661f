"""Benchmark: one GRPO optimizer step vs one direct-backprop step, tiny HunyuanVideo + tiny CLIP reward, CPU.

Both algorithms run through the shared trainer (``Trainer.setup()`` on the bundled ``demo`` recipe with tiny
models, fp32, LoRA r=4 on ``attn_mlp``, 9 frames at 32×32, one prompt per optimizer step, the real
:class:`PiscesReward` without an OT map):

- ``grpo``: a group of 4 samples, 8 SDE steps (shift 5), ``timestep_fraction`` 0.6 → 4 trained steps per sample;
  timed as a whole and split into rollout (no grad), decode + reward (no grad) and the update
  (recompute + backward); the ratio = 1 sanity check is timed once separately.
- ``backprop`` (the paper's recipe): prompt-only data with ``prompt_x0: teacher`` (8 teacher Euler steps),
  one-step jump, differentiable decode + reward, consistency distillation; batch 1 and batch 4.

- ``validation`` (this tree only): the cost of one in-training validation call (``Trainer.validate``: 2 prompts
  sampled with fixed seeds in 8 scheduler steps at the training geometry, scored, written, logged).

Each variant runs in its own subprocess; per variant, 1 warm-up step then ``--repeats`` timed steps (median).
Memory (CPU): the peak live heap bytes of one step above the start (``cpu_peak_bytes``: glibc's in-use bytes
sampled after every tensor operation, precise), and the peak resident set size reached during the steps
(warm-up included) above the RSS right after setup (``ru_maxrss`` minus the starting RSS: includes allocator
caching, rough). With ``--baseline`` the baseline tree has no ``cpu_peak_bytes``; this tree's is used on both.

``--baseline DIR``: also run every variant on another checkout of pisces (its package on ``PYTHONPATH``), the
two trees alternating variant by variant, and print before / after / ratio side by side.

Run: ``.venv/bin/python benchmarks/bench_grpo.py [--repeats N] [--threads N] [--baseline DIR]``.
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
THIS_TREE = Path(__file__).resolve().parents[1]


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
    if variant == "validation":
        values.update(
            {
                "finetune.validation.every": 1,
                "finetune.validation.num_prompts": 2,
                "finetune.validation.steps": 8,
                "generate.fps": 8,
            }
        )
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


def this_tree_memory():
    """This tree's ``pisces_cli.training.memory`` loaded from its file (a ``--baseline`` worker imports the other
    tree's package, which may not have the measurement)."""
    import importlib.util

    path = THIS_TREE / "pisces_cli" / "training" / "memory.py"
    spec = importlib.util.spec_from_file_location("pisces_bench_memory", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def median_seconds(call, repeats: int, *, warm_up: bool = True) -> float:
    """Median wall time of ``repeats`` calls (after one untimed call when ``warm_up``)."""
    if warm_up:
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker(root: Path, variant: str, repeats: int) -> dict:
    import torch

    import pisces_cli
    from pisces_cli.config import load_recipe
    from pisces_cli.training.algorithm import PromptBatch
    from pisces_cli.training.trainer import Trainer

    trainer = Trainer(load_recipe("demo", overrides(root, variant)), resume=False)
    trainer.setup()
    result: dict = {"variant": variant, "package": str(Path(pisces_cli.__file__).parent)}
    if variant == "validation":
        result["validate_s"] = median_seconds(trainer.validate, repeats)
        result["step_s"] = median_seconds(trainer.train_one_step, repeats)
        return result
    algorithm = trainer.algorithm
    if variant == "grpo":
        start = time.perf_counter()
        algorithm.sanity_check()
        result["sanity_s"] = time.perf_counter() - start
    rss0 = current_rss_bytes()
    trainer.train_one_step()  # warm-up
    result["peak_heap_mib"] = this_tree_memory().cpu_peak_bytes(trainer.train_one_step) / 2**20
    result["step_s"] = median_seconds(trainer.train_one_step, repeats, warm_up=False)
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


def run_worker(root: Path, variant: str, tree: Path, repeats: int, threads: int) -> dict:
    """One variant in a fresh process importing pisces from ``tree``."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        "--root",
        str(root),
        "--repeats",
        str(repeats),
        "--threads",
        str(threads),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    line = next(row for row in output.splitlines() if row.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    if Path(result["package"]).resolve() != (tree / "pisces_cli").resolve():
        raise SystemExit(f"the worker imported {result['package']}, not {tree}/pisces_cli")
    return result


def detail(row: dict) -> str:
    if row["variant"] != "grpo":
        return ""
    return (
        f"rollout {row['rollout_s']:.3f} s, decode+reward {row['reward_s']:.3f} s, "
        f"update {row['update_s']:.3f} s; sanity check {row['sanity_s']:.3f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline", help="another pisces checkout to compare with (run side by side)")
    parser.add_argument("--worker", choices=(*VARIANTS, "validation"))
    parser.add_argument("--root")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        print("RESULT " + json.dumps(worker(Path(args.root), args.worker, args.repeats)))
        return
    baseline = Path(args.baseline).resolve() if args.baseline else None
    with tempfile.TemporaryDirectory(prefix="pisces-bench-grpo-") as tmp:
        root = Path(tmp)
        build_models(root)
        results, before = [], {}
        for variant in VARIANTS:
            if baseline is not None:
                before[variant] = run_worker(root, variant, baseline, args.repeats, args.threads)
            results.append(run_worker(root, variant, THIS_TREE, args.repeats, args.threads))
        validation = run_worker(root, "validation", THIS_TREE, args.repeats, args.threads)
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}, "
        f"median of {args.repeats}"
    )
    if baseline is None:
        print("| variant | step (s) | peak heap (MiB) | peak RSS above start (MiB) | detail |")
        print("| --- | --- | --- | --- | --- |")
        for row in results:
            print(
                f"| {row['variant']} | {row['step_s']:.3f} | {row['peak_heap_mib']:.2f} "
                f"| {row['peak_rss_above_start_mib']:.0f} | {detail(row)} |"
            )
    else:
        print(f"# before: {baseline}; after: {THIS_TREE}")
        print(
            "| variant | step before (s) | step after (s) | after / before | peak heap before (MiB) "
            "| peak heap after (MiB) | after / before | RSS before / after (MiB) |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for row in results:
            old = before[row["variant"]]
            print(
                f"| {row['variant']} | {old['step_s']:.3f} | {row['step_s']:.3f} | {row['step_s'] / old['step_s']:.2f} "
                f"| {old['peak_heap_mib']:.2f} | {row['peak_heap_mib']:.2f} "
                f"| {row['peak_heap_mib'] / old['peak_heap_mib']:.2f} "
                f"| {old['peak_rss_above_start_mib']:.0f} / {row['peak_rss_above_start_mib']:.0f} |"
            )
        for row in results:
            if row["variant"] == "grpo":
                print(f"# grpo before: {detail(before['grpo'])}")
                print(f"# grpo after:  {detail(row)}")
    print(
        f"# validation call (2 prompts × 8 steps, 9 frames 32×32, scored + written): {validation['validate_s']:.3f} s "
        f"= {validation['validate_s'] / validation['step_s']:.2f} × a backprop step ({validation['step_s']:.3f} s)"
    )


if __name__ == "__main__":
    main()
