"""GPU acceptance: one prepared command that measures pisces on one CUDA GPU within a fixed time (``make gpu-check``).

Parts (each runs in its own process under its own time budget; the total budget stops the run cleanly, and
whatever a part measured before its budget ran out is kept and marked partial):

``gpu_tests``      the ``gpu``-marked tests (``pytest -m gpu``): counts of passed / failed / skipped;
``iv2_reward``     InternVideo2-Stage2 1B (random weights, 8 frames of 224², fp16 and bf16): seconds and peak
                   memory per video for the quality reward, the semantic reward (pisces batched vs the reference
                   one-head-at-a-time loop, ``bench_iv2_semantic``) and pixels → both rewards → backward;
``token_ot``       one reward call's token OT (5 layers × 16 heads × 40 × 2049) solved by pisces vs the reference
                   algorithm on the GPU (``bench_token_ot``), with each plan's error against a float64 solution;
``finetune_step``  one LoRA backprop step of a HunyuanVideo-width transformer (d 3072, one dual and one single
                   block) and of a Wan 14B-width transformer (d 5120, one block), both with the released VAE
                   sizes, with and without VAE-decoder checkpointing: time and peak memory (``bench_finetune``);
``fit_ot``         neural OT outer steps/s at the paper's sizes (512-d, hidden 1024, batch 128, 10 inner steps;
                   ``bench_fit_ot``);
``score``          ``pisces score`` throughput vs raw decode of the same 64 synthetic 480² clips (``bench_score``).

Writes ``benchmarks/gpu-results.json`` (machine, budgets, every measurement, each part's status) and
``benchmarks/gpu-results.md`` (the table for ``benchmarks/RESULTS.md``), rewritten after every part. ``--dry`` runs
the same plan on the CPU with tiny sizes in seconds (the test suite runs it, so the script cannot rot) and writes
``gpu-results.dry.json`` / ``.md`` unless told otherwise.

Usage::

    python benchmarks/gpu_check.py [--budget 470] [--parts iv2_reward,token_ot] [--out PATH.json]
    python benchmarks/gpu_check.py --dry
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

#: the whole run must end within 8 minutes; the rest is start-up and writing
TOTAL_BUDGET_S = 470.0
GIB = 2**30


@dataclass(frozen=True)
class Part:
    """A measured part: its own time budget (seconds, full mode) and what it measures."""

    budget: float
    title: str


PARTS: dict[str, Part] = {
    "gpu_tests": Part(90, "gpu-marked tests"),
    "iv2_reward": Part(150, "InternVideo2 1B reward, 8 frames"),
    "token_ot": Part(45, "token OT of one reward call"),
    "finetune_step": Part(130, "one LoRA backprop step"),
    "fit_ot": Part(30, "fit-ot neural outer steps"),
    "score": Part(90, "score vs raw decode, 64 clips 480²"),
}


class Recorder:
    """Measurements of one part, rewritten to ``path`` (JSON) after each, so a killed part keeps what it had."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict] = []

    def add(self, measurement: str, value: float | str | None, unit: str = "", note: str = "") -> None:
        self.rows.append({"measurement": measurement, "value": value, "unit": unit, "note": note})
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.rows, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)


# ----------------------------------------------------------------------------------------------- the parts


def device_for(dry: bool):
    import torch

    if dry:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible: run with --dry on a machine without a GPU")
    return torch.device("cuda")


def peak_gib(device) -> float | None:
    """Peak allocated GiB since the last reset (CUDA only; None on CPU, where it is not measured)."""
    import torch

    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def part_gpu_tests(dry: bool, rec: Recorder) -> None:
    """``pytest -m gpu``; on a machine without CUDA (``--dry``) they are collected and skip."""
    import xml.etree.ElementTree as ElementTree

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        target = "tests/test_gpu_paths.py" if dry else "tests"
        command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
        start = time.perf_counter()
        done = subprocess.run(
            [*command, f"--junitxml={report}", target], cwd=ROOT, capture_output=True, text=True, check=False
        )
        seconds = time.perf_counter() - start
        if not report.is_file():
            raise RuntimeError(f"pytest wrote no report (rc {done.returncode}): {done.stdout[-500:]}")
        suite = ElementTree.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {name: int(suite.get(name, 0)) for name in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    rec.add("gpu tests passed", passed, "tests", f"of {counts['tests']}, {seconds:.0f} s")
    rec.add("gpu tests failed or errored", counts["failures"] + counts["errors"], "tests")
    rec.add("gpu tests skipped", counts["skipped"], "tests", "no CUDA" if dry else "")


def part_iv2_reward(dry: bool, rec: Recorder) -> None:
    """Seconds and peak memory per video of the InternVideo2 rewards (1B, random weights; tiny with ``--dry``)."""
    import torch

    from pisces_cli.encoders.internvideo2 import InternVideo2Config

    config = InternVideo2Config.tiny() if dry else InternVideo2Config.stage2_1b()
    for label, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        _iv2_reward_in(dtype, label, config, dry, rec)
        if not dry:
            torch.cuda.empty_cache()


def _iv2_reward_in(dtype, label: str, config, dry: bool, rec: Recorder) -> None:
    import torch
    from bench_iv2_semantic import CAPTIONS, full_backend, measure, reward_variants

    from pisces_cli.ot import TokenOTSettings

    device = device_for(dry)
    frames, videos, repeats = (2, 2, 1) if dry else (8, 2, 3)
    settings = TokenOTSettings(max_iter=20) if dry else TokenOTSettings()
    with tempfile.TemporaryDirectory() as directory:
        backend = full_backend(frames, str(device), dtype, directory, config=config)
    size = config.vision.img_size
    pixels = torch.randn(videos, frames, 3, size, size, generator=torch.Generator().manual_seed(0)).to(
        device, dtype
    )
    note = f"{videos} videos × {frames} frames, {size}², {label}"
    for name, fn in reward_variants(backend, pixels, (CAPTIONS * videos)[:videos], settings).items():
        seconds, peak = measure(fn, device, repeats)
        rec.add(f"{name}, {label}", seconds / videos, "s / video", note)
        if device.type == "cuda":
            rec.add(f"{name}, {label}: peak memory", peak / videos, "GiB / video", note)


def part_token_ot(dry: bool, rec: Recorder) -> None:
    """One reward call's token OT, pisces (batched) vs the reference (per problem, host sync per iteration)."""
    import torch
    from bench_token_ot import EPS, MASS, relative_error, run_pisces, run_reference, workload

    from pisces_cli.ot import sinkhorn

    device = device_for(dry)
    layers, heads, frames = (1, 2, 1) if dry else (5, 16, 8)
    costs = workload(layers, heads=heads, frames=frames).to(device)
    exact, _ = sinkhorn(costs.double(), eps=EPS, mode="unbalanced", mass=MASS, tol=1e-13, max_iter=5000)
    shape = f"{layers * heads} problems of {costs.shape[-2]} × {costs.shape[-1]}"
    tol = 1e-3  # the reward's default tolerance
    for name, solve in (
        ("pisces batched", lambda: run_pisces(costs, tol)),
        ("reference, per problem", lambda: run_reference(costs, tol)),
    ):
        plan = solve()  # warm-up and the error
        times = []
        for _ in range(1 if dry else 3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            solve()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        error = relative_error(plan.double().cpu(), exact.cpu())
        rec.add(
            f"token OT, {name}",
            statistics.median(times),
            "s",
            f"{shape}, tol {tol:g}, rel. error {error:.1e}",
        )


def save_wide_models(root: Path) -> None:
    """Released-width transformers at reduced depth with the released VAE sizes, tiny text encoders, tiny CLIP."""
    import torch
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        AutoencoderKLWan,
        HunyuanVideoTransformer3DModel,
        WanTransformer3DModel,
    )

    from pisces_cli.backbones.tiny import save_tiny_hunyuan, save_tiny_wan
    from pisces_cli.encoders.tiny_clip import save_tiny_clip

    save_tiny_hunyuan(root / "hunyuan")
    save_tiny_wan(root / "wan")
    save_tiny_clip(root / "clip")
    torch.manual_seed(0)
    hunyuan = HunyuanVideoTransformer3DModel(
        in_channels=16, out_channels=16, num_layers=1, num_single_layers=1, num_refiner_layers=1,
        text_embed_dim=16, pooled_projection_dim=8,
    )  # fmt: skip
    wan = WanTransformer3DModel(num_attention_heads=40, ffn_dim=13824, num_layers=1, text_dim=32)
    for folder, model, vae in (
        (root / "hunyuan", hunyuan, AutoencoderKLHunyuanVideo()),
        (root / "wan", wan, AutoencoderKLWan()),
    ):
        model.to(torch.bfloat16).save_pretrained(folder / "transformer", safe_serialization=True)
        vae.save_pretrained(folder / "vae", safe_serialization=True)


def part_finetune_step(dry: bool, rec: Recorder) -> None:
    """One LoRA backprop step with and without VAE-decoder checkpointing, per backbone."""
    import torch
    from bench_finetune import build, save_bench_models

    from pisces_cli.training.algorithm import PromptBatch

    device = device_for(dry)
    frames, size = (5, 32) if dry else (9, 256)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (save_bench_models if dry else save_wide_models)(root)
        dtype, precision = ("float32", "no") if dry else ("bfloat16", "bf16")
        for backbone in ("hunyuan", "wan"):
            trainer = build(root, backbone, frames, size, str(device), dtype, precision)
            shape = trainer.algorithm.latent_shape(1)
            latents = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(device)
            batch = PromptBatch(prompts=["a cat runs on grass"], latents=latents)
            trainer.ctx.encode_prompts(batch.prompts)
            transformer = trainer.ctx.adapter.transformer
            params = sum(p.numel() for p in transformer.parameters())
            note = f"{frames}×{size}², transformer {params / 1e6:.1f} M parameters, {dtype}"
            for checkpointing in (True, False):
                trainer.section.vae.decode_checkpointing = checkpointing
                label = f"{backbone}, decoder checkpointing {'on' if checkpointing else 'off'}"
                try:
                    trainer.optimizer.zero_grad(set_to_none=True)
                    trainer.algorithm.train_step([batch], 0, torch.Generator().manual_seed(1))  # warm-up
                    trainer.optimizer.zero_grad(set_to_none=True)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats(device)
                    start = time.perf_counter()
                    trainer.algorithm.train_step([batch], 0, torch.Generator().manual_seed(1))
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    rec.add(f"LoRA step, {label}", time.perf_counter() - start, "s", note)
                    if device.type == "cuda":
                        rec.add(f"LoRA step, {label}: peak memory", peak_gib(device), "GiB", note)
                except torch.cuda.OutOfMemoryError:
                    rec.add(f"LoRA step, {label}", "out of memory", "", note)
                    torch.cuda.empty_cache()
            trainer.cleanup()
            del trainer
            if device.type == "cuda":
                torch.cuda.empty_cache()


def part_fit_ot(dry: bool, rec: Recorder) -> None:
    from bench_fit_ot import measure

    device = device_for(dry)
    sizes = {"dim": 16, "hidden": 32, "batch": 8, "t_iters": 2, "steps": 2, "warmup": 1} if dry else {}
    result = measure(device=str(device), **sizes)
    note = f"dim {result['dim']}, hidden {result['hidden']}, batch {result['batch']}, t_iters {result['t_iters']}"
    rec.add("fit-ot neural outer steps", result["outer_steps_per_s"], "steps / s", note)
    rec.add("fit-ot paper schedule (160k steps)", result["paper_160k_steps_hours"], "h", note)


def part_score(dry: bool, rec: Recorder) -> None:
    """``pisces score`` vs decode-only of the same clips (tiny CLIP reward; the decode and data path dominate)."""
    from bench_score import make_recipe, time_decode, time_score, write_gaussian_map

    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder
    from pisces_cli.world.captions import world_vocabulary

    device = device_for(dry)
    clips, side, workers, repeats = (4, 64, 1, 1) if dry else (64, 480, min(8, os.cpu_count() or 1), 3)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_clip_folder(root / "clips", clips, seed=0, frames=16, size=side)
        save_tiny_clip(root / "enc", "clip", seed=0, words=world_vocabulary())
        resolved = make_recipe(root, workers, 8, str(write_gaussian_map(root)), device=str(device))
        paths = sorted((root / "clips").glob("*.mp4"))
        time_decode(paths, workers, 8)
        time_score(resolved, root / "clips", root / "out")
        decode, score = [], []
        for _ in range(repeats):
            decode.append(time_decode(paths, workers, 8))
            score.append(time_score(resolved, root / "clips", root / "out")[1])
    note = f"{clips} clips of 16 × {side}², {workers} workers, batch 8"
    rate_decode = clips / statistics.median(decode)
    rate_score = clips / statistics.median(score)
    rec.add("raw decode", rate_decode, "videos / s", note)
    rec.add("score (batch loop)", rate_score, "videos / s", note)
    rec.add("score / decode", rate_score / rate_decode, "ratio", "≥ 0.70 means decode-bound")


RUNNERS: dict[str, Callable[[bool, Recorder], None]] = {
    "gpu_tests": part_gpu_tests,
    "iv2_reward": part_iv2_reward,
    "token_ot": part_token_ot,
    "finetune_step": part_finetune_step,
    "fit_ot": part_fit_ot,
    "score": part_score,
}


# ----------------------------------------------------------------------------------------------- the driver


def machine(dry: bool) -> dict:
    import torch

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "dry (CPU, tiny sizes)" if dry else "full",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_cores": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1))
    return info


def run_part(name: str, dry: bool, timeout: float, scratch: Path) -> dict:
    """Run one part in a fresh process; returns its status, seconds and measurements (partial on timeout)."""
    result_path = scratch / f"{name}.json"
    command = [sys.executable, __file__, "--part", name, "--result", str(result_path)] + (
        ["--dry"] if dry else []
    )
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        status = (
            "ok" if done.returncode == 0 else f"failed (exit {done.returncode}): {_last_line(done.stderr)}"
        )
    except subprocess.TimeoutExpired:
        status = f"stopped at its budget of {timeout:.0f} s (partial)"
    rows = json.loads(result_path.read_text(encoding="utf-8")) if result_path.is_file() else []
    return {"status": status, "seconds": round(time.perf_counter() - start, 1), "measurements": rows}


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def markdown(document: dict) -> str:
    info = document["machine"]
    where = info.get("gpu", "CPU") + (f" ({info['gpu_memory_gib']} GiB)" if "gpu" in info else "")
    lines = [
        f"GPU acceptance ({info['mode']}): {where}, torch {info['torch']} (CUDA {info['cuda']}), "
        f"{info['cpu_cores']} cores, load {info['load_average']:.1f}, {info['date']}; "
        f"total {document['seconds']:.0f} s of a {document['budget_s']:.0f} s budget.",
        "",
        "| part | measurement | value | unit | notes |",
        "|---|---|---|---|---|",
    ]
    for name, part in document["parts"].items():
        status = "" if part["status"] == "ok" else f" **{part['status']}**"
        if not part["measurements"]:
            lines.append(f"| {name} | — | — | — |{status} |")
        for row in part["measurements"]:
            value = row["value"]
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(
                f"| {name} | {row['measurement']} | {shown} | {row['unit']} | {row['note']}{status} |"
            )
    return "\n".join(lines) + "\n"


def write_outputs(document: dict, out: Path) -> None:
    for path, text in ((out, json.dumps(document, indent=2)), (out.with_suffix(".md"), markdown(document))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="the same plan on the CPU with tiny sizes")
    parser.add_argument("--budget", type=float, default=TOTAL_BUDGET_S, help="total seconds for every part")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated subset of " + ", ".join(PARTS)
    )
    parser.add_argument("--out", type=Path, default=None, help="results JSON (the markdown goes next to it)")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        import torch

        torch.manual_seed(0)
        RUNNERS[args.part](args.dry, Recorder(args.result))
        return
    chosen = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; known: {', '.join(PARTS)}")
    out = args.out or HERE / ("gpu-results.dry.json" if args.dry else "gpu-results.json")
    document = {"machine": machine(args.dry), "budget_s": args.budget, "seconds": 0.0, "parts": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        for name in chosen:
            remaining = args.budget - (time.perf_counter() - start)
            if remaining < 5:
                document["parts"][name] = {
                    "status": "not run: total budget spent",
                    "seconds": 0,
                    "measurements": [],
                }
            else:
                print(
                    f"[gpu-check] {name}: {PARTS[name].title} (budget {min(PARTS[name].budget, remaining):.0f} s)"
                )
                document["parts"][name] = run_part(
                    name, args.dry, min(PARTS[name].budget, remaining), Path(scratch)
                )
                print(f"[gpu-check] {name}: {document['parts'][name]['status']}")
            document["seconds"] = round(time.perf_counter() - start, 1)
            write_outputs(document, out)
    print(markdown(document))
    print(f"[gpu-check] wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
