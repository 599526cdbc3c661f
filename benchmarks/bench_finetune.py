"""Benchmark: one tiny backprop step with vs without VAE decoder checkpointing (CPU).

For each backbone (tiny random HunyuanVideo / Wan transformers from ``pisces_cli.backbones.tiny`` with decoders as
deep as the real ones — see :func:`save_bench_models` — and a tiny CLIP reward) and each
setting of ``finetune.vae.decode_checkpointing`` it runs the same ``BackpropAlgorithm.train_step`` (same LoRA,
batch and generator seed) and reports:

- peak activation memory of the step: each setting runs in a fresh process (glibc ``MALLOC_MMAP_THRESHOLD_``
  = 64 KiB so large frees return to the OS at once and RSS follows live memory); a thread samples the resident
  set size (``/proc/self/statm``) every 0.5 ms during one ``train_step``; reported is the peak RSS minus the RSS
  just before the step, i.e. the activations and temporaries of the step on top of weights and optimizer state;
- the step time (median of ``--repeats`` unprofiled steps, wall clock);
- the largest absolute difference between the LoRA gradients of the two settings.

The decode is sized so it dominates: ``--frames`` × ``--size``² pixels (default 17 × 48 × 48, i.e. 5 latent frames) while the
transformer and the reward (32 × 32 CLIP) stay tiny.

Usage: ``.venv/bin/python benchmarks/bench_finetune.py [--frames 17] [--size 48] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def save_bench_models(root: Path) -> None:
    """Tiny transformers and text encoders (``pisces_cli.backbones.tiny``) with decoders as deep as the real ones
    (HunyuanVideo ``layers_per_block=2``, Wan ``num_res_blocks=2``) and 16 channels, plus a tiny CLIP reward."""
    from pisces_cli.backbones.tiny import save_tiny_hunyuan, save_tiny_wan
    from pisces_cli.encoders.tiny_clip import save_tiny_clip

    save_tiny_hunyuan(root / "hunyuan", vae_width=16, vae_layers=2)
    save_tiny_wan(root / "wan", vae_width=16, vae_layers=2)
    save_tiny_clip(root / "clip")


def build(
    root: Path,
    backbone: str,
    frames: int,
    size: int,
    device: str = "cpu",
    dtype: str = "float32",
    precision: str = "no",
):
    """A Trainer set up on the models of ``root`` (``device``, generator ``dtype``, ``finetune.mixed_precision``)."""
    from pisces_cli.config import load_recipe
    from pisces_cli.training.trainer import Trainer

    prompts = root / "prompts.txt"
    prompts.write_text("a cat runs on grass\na dog jumps\n", encoding="utf-8")
    overrides = [
        f"output_dir={root / backbone}",
        f"runtime.device={device}",
        "models.encoder.backend=clip",
        f"models.encoder.path={root / 'clip'}",
        f"models.generator.backbone={backbone}",
        f"models.generator.path={root / backbone}",
        f"models.generator.dtype={dtype}",
        "reward.ot_map=null",
        "reward.token_ot.max_iter=10",
        f"finetune.data.prompts={prompts}",
        f"finetune.mixed_precision='{precision}'",
        "finetune.lora.rank=4",
        "finetune.lora.alpha=4",
        f"finetune.num_frames={frames}",
        f"finetune.height={size}",
        f"finetune.width={size}",
        f"finetune.guidance={1.0 if backbone == 'wan' else 6.0}",
        "finetune.offload_text_encoders=false",
    ]
    trainer = Trainer(load_recipe("demo", overrides), resume=False)
    trainer.setup()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in trainer.named_trainable.values():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return trainer


class RssSampler:
    """Samples this process's resident set size (``/proc/self/statm``) every ``interval`` s in a thread."""

    def __init__(self, interval: float = 0.0005) -> None:
        import os
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.start_rss = self.rss()
        self.peak = self.start_rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def worker(
    root: Path, backbone: str, checkpointing: bool, frames: int, size: int, repeats: int, out: Path
) -> None:
    """One setting in a fresh process: peak RSS growth during one step, median step time, LoRA grads."""
    import gc
    import json

    from safetensors.torch import save_file

    from pisces_cli.training.algorithm import PromptBatch

    trainer = build(root, backbone, frames, size)
    trainer.section.vae.decode_checkpointing = checkpointing
    shape = trainer.algorithm.latent_shape(1)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    batch = PromptBatch(prompts=["a cat runs on grass"], latents=latents)
    trainer.ctx.encode_prompts(batch.prompts)  # encode outside the measured step
    gc.collect()
    with RssSampler() as sampler:
        trainer.algorithm.train_step([batch], 0, torch.Generator().manual_seed(1))
    grads = {n: p.grad.clone() for n, p in trainer.named_trainable.items() if p.grad is not None}
    times = []
    for _ in range(repeats):
        trainer.optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        trainer.algorithm.train_step([batch], 0, torch.Generator().manual_seed(1))
        times.append(time.perf_counter() - start)
    save_file(grads, str(out.with_suffix(".safetensors")))
    out.write_text(
        json.dumps({"peak_growth": sampler.peak - sampler.start_rss, "seconds": statistics.median(times)})
    )


def main() -> None:
    import json
    import os
    import subprocess

    from safetensors.torch import load_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backbones", default="hunyuan,wan")
    parser.add_argument(
        "--worker", nargs=4, metavar=("ROOT", "BACKBONE", "CHECKPOINTING", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        root, backbone, flag, out = args.worker
        worker(Path(root), backbone, flag == "on", args.frames, args.size, args.repeats, Path(out))
        return
    root = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    save_bench_models(root)
    # big frees go back to the OS at once, so RSS follows live memory
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, decode {args.frames}×{args.size}×{args.size}"
    )
    print("| backbone | decoder checkpointing | peak RSS growth during the step (MiB) | step time (s) |")
    print("|---|---|---|---|")
    summary = []
    for backbone in args.backbones.split(","):
        results = {}
        for flag in ("off", "on"):
            out = root / f"{backbone}-{flag}.json"
            command = [
                sys.executable,
                __file__,
                "--frames",
                str(args.frames),
                "--size",
                str(args.size),
                "--repeats",
                str(args.repeats),
                "--worker",
                str(root),
                backbone,
                flag,
                str(out),
            ]
            subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results[flag] = json.loads(out.read_text()), load_file(str(out.with_suffix(".safetensors")))
            measured = results[flag][0]
            print(
                f"| {backbone} | {flag} | {measured['peak_growth'] / 2**20:.1f} | {measured['seconds']:.2f} |"
            )
        grads_off, grads_on = results["off"][1], results["on"][1]
        diff = max((grads_on[n] - grads_off[n]).abs().max().item() for n in grads_off)
        scale = max(g.abs().max().item() for g in grads_off.values())
        saving = 1 - results["on"][0]["peak_growth"] / results["off"][0]["peak_growth"]
        summary.append(
            f"{backbone}: activation memory -{saving:.1%} with checkpointing; "
            f"max |Δgrad| = {diff:.2e} (max |grad| {scale:.2e})"
        )
    print("\n".join(summary))


if __name__ == "__main__":
    main()
