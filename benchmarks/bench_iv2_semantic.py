"""InternVideo2 semantic reward (token-OT prior fused in the cross-attention), batched vs the reference loop.

Workload: a reduced-size InternVideo2 (real token geometry: 8 frames × 16×16 patches + CLS = 2049 video
tokens; 16 cross-attention heads; 5 fusion layers), a batch of 4 videos with captions of different
lengths. Compared side by side in one run (interleaved repeats, medians):

- ``reference loop``: the released structure — one video per call, the prior computed one head at a time
  in every fusion layer, log-domain unbalanced Sinkhorn with a host sync (``.item()``) every iteration
  (method.md §4.4–4.6, re-written here from the description);
- ``pisces``: one batched call per layer for all videos × heads (the backend's
  ``semantic_reward``: ``token_ot_prior_rows`` + ``fuse_rows`` on the lexical rows), the last fusion
  layer skipped (its prior cannot reach the [CLS] output, method.md §9.5);
- ``pisces, all layers``: the same with the prior in every fusion layer (same work as the reference).

Also prints the max |Δreward| between the reference loop and pisces (all layers). Target on a 2-core
CPU: pisces ≥ 5× faster than the reference loop.

``--config full --device cuda`` runs the released 1B architecture (random weights, 224 px, 8 frames by
default) instead and reports seconds and peak GPU memory per video for: the vision encoder, the semantic
reward given the video tokens (pisces batched, and the reference loop unless ``--skip-reference``), and the
whole differentiable reward path (pixels → both rewards → backward to the pixels), plus the quality reward.

    python benchmarks/bench_iv2_semantic.py [--repeats 3] [--quick] [--threads 1] [--allocator default]
    python benchmarks/bench_iv2_semantic.py --config full --device cuda [--dtype bfloat16] [--skip-reference]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from pisces_cli.encoders.internvideo2 import InternVideo2Config, InternVideo2Stage2
from pisces_cli.encoders.internvideo2.backend import InternVideo2Backend
from pisces_cli.encoders.internvideo2.tiny import build_tiny_internvideo2, randomize_weights
from pisces_cli.encoders.internvideo2.tokenizer import load_bert_tokenizer
from pisces_cli.encoders.registry import load_encoder
from pisces_cli.ot import TokenOTSettings
from pisces_cli.runtime import tune_cpu_allocator

WORDS = [
    "a",
    "red",
    "blue",
    "green",
    "circle",
    "square",
    "triangle",
    "moves",
    "slowly",
    "quickly",
    "left",
    "right",
    "up",
    "down",
    "on",
    "the",
    "gray",
    "background",
    "two",
    "small",
    "large",
]


def reduced_config(frames: int) -> InternVideo2Config:
    tiny = InternVideo2Config.tiny(num_frames=frames)
    text = dataclasses.replace(
        tiny.text, hidden_size=128, num_heads=16, intermediate_size=256, num_layers=7, fusion_layer=2
    )
    return InternVideo2Config(vision=tiny.vision, text=text, embed_dim=tiny.embed_dim)


def make_backend(frames: int, directory: str):
    model = build_tiny_internvideo2(seed=0, num_frames=frames)
    config = reduced_config(frames)
    big = InternVideo2Stage2(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in big.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(
                1.0 + 0.1 * noise
                if name.endswith(
                    ("LayerNorm.weight", "norm1.weight", "norm2.weight", "q_norm.weight", "k_norm.weight")
                )
                else 0.1 * noise
            )
    del model
    big.save_pretrained(directory)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    with open(f"{directory}/vocab.txt", "w") as handle:
        handle.write("\n".join(vocab) + "\n")
    return load_encoder("internvideo2", directory)


# ------------------------------------------------------------------ the reference algorithm, per head
def reference_prior_one_head(attn, query_full, key_full, valid, frame_index, coords, s: TokenOTSettings):
    """One head's row-normalised plan [N, M] as released: log-domain, .item() every iteration."""
    with torch.no_grad():
        a_rows = attn[valid].float()
        a_rows = a_rows / a_rows.sum(-1, keepdim=True).clamp_min(1e-6)
        y, x = query_full[valid].float(), key_full.float()
        semantic = (1 - F.normalize(y, dim=-1) @ F.normalize(x, dim=-1).T).clamp(0, 2)
        tau = a_rows @ frame_index
        temporal = (tau[:, None] - frame_index[None]).abs() / max(
            float(frame_index.max() - frame_index.min()), 1.0
        )
        pi = a_rows @ coords
        spatial = torch.cdist(pi, coords) / math.sqrt(2)
        cost = semantic + s.gamma * temporal + s.eta * spatial
        cost = (cost - cost.min()) / (cost.max() - cost.min()).clamp_min(1e-6)
        n, m = cost.shape
        rho = s.eps * s.mass / (1 - s.mass)
        lam = rho / (rho + s.eps)
        log_k = -cost / s.eps
        device = cost.device
        log_a = torch.full((n,), -math.log(n), device=device)
        log_b = torch.full((m,), -math.log(m), device=device)
        f, g = torch.zeros(n, device=device), torch.zeros(m, device=device)
        for _ in range(s.max_iter):
            f_new = lam * (log_a - torch.logsumexp(log_k + g[None], dim=1))
            g_new = lam * (log_b - torch.logsumexp(log_k + f_new[:, None], dim=0))
            change = max((f_new - f).abs().max().item(), (g_new - g).abs().max().item())
            f, g = f_new, g_new
            if change < s.tol:
                break
        plan = torch.exp(f[:, None] + log_k + g[None])
        return plan / plan.sum(-1, keepdim=True).clamp_min(1e-8)


def reference_semantic(backend, text, video, s: TokenOTSettings):
    """One video per call, one head at a time, prior in every fusion layer (the released structure)."""
    from pisces_cli.ot import video_token_geometry

    rewards = []
    geo = video.geometry
    frame_index, coords = video_token_geometry(
        geo.num_frames, geo.grid_h, geo.grid_w, geo.has_cls, device=video.tokens.device
    )
    for b in range(video.tokens.shape[0]):
        length = int(text.attention_mask[b].sum())
        mask = text.attention_mask[b : b + 1, :length].long()
        embeds = text.extra["text_embeds"][b : b + 1, :length]
        valid = text.lexical_mask[b, :length].nonzero().flatten()

        def hook(layer, probs, query_full, key_full, valid=valid):
            fused = probs.clone()
            for h in range(probs.shape[1]):
                plan = reference_prior_one_head(
                    probs[0, h], query_full[0], key_full[0], valid, frame_index.float(), coords.float(), s
                )
                rows = probs[0, h, valid].float()
                new_rows = torch.softmax(
                    torch.log(rows.clamp_min(1e-6)) + torch.log(plan.clamp_min(1e-6)), dim=-1
                )
                fused[0, h, valid] = new_rows.to(probs.dtype)
            return fused

        out = backend.model.fusion(embeds, mask, video.tokens[b : b + 1], cross_attn_hook=hook)
        rewards.append(backend.model.vtm_probability(out[:, 0]))
    return torch.cat(rewards)


CAPTIONS = [
    "a red circle moves left",
    "two small blue squares move up on the gray background",
    "a green triangle moves right slowly",
    "a large square moves down quickly",
]


def full_backend(
    frames: int, device: str, dtype: torch.dtype, directory: str, config: InternVideo2Config | None = None
) -> InternVideo2Backend:
    """The released 1B architecture (or ``config``) with seeded random weights (BERT-style scale 0.02) on ``device``."""
    config = (config or InternVideo2Config.stage2_1b()).with_num_frames(frames)
    model = randomize_weights(InternVideo2Stage2(config), scale=0.02)
    model.to(device=device, dtype=dtype)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    with open(f"{directory}/vocab.txt", "w") as handle:
        handle.write("\n".join(vocab) + "\n")
    return InternVideo2Backend(model, load_bert_tokenizer(directory), "internvideo2-1b-random", "random")


def measure(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """(median seconds, peak allocated GiB over the runs; nan off CUDA) of ``fn()`` after one warm-up."""
    cuda = device.type == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
    return statistics.median(times), peak


def reward_variants(backend, pixels, captions, settings: TokenOTSettings, *, reference: bool = True) -> dict:
    """Name → call of the timed variants on ``pixels`` [B, T, 3, S, S]: the vision encoder, the quality reward
    (global cosine through a random paper-size OT map), the semantic reward given the video tokens (pisces batched,
    and the reference loop when ``reference``), and pixels → quality + semantic → backward to the pixels."""
    from pisces_cli.ot.maps import NeuralMap, OTMapNet
    from pisces_cli.rewards.module import PiscesReward

    ot_map = NeuralMap(OTMapNet(backend.embed_dim), "l2")
    quality = PiscesReward(backend, ot_map=ot_map, weights={"semantic": 0.0})
    both = PiscesReward(backend, ot_map=ot_map, token_ot=settings)
    with torch.no_grad():
        text = backend.encode_text(captions)
        video = backend.encode_video(pixels)

    def encode_only() -> None:
        with torch.no_grad():
            backend.encode_video(pixels)

    def quality_only() -> None:
        with torch.no_grad():
            quality.from_preprocessed(pixels, captions)

    def pisces_reward() -> None:
        with torch.no_grad():
            backend.semantic_reward(text, video, settings)

    def reference_reward() -> None:
        with torch.no_grad():
            reference_semantic(backend, text, video, settings)

    def with_gradients() -> None:
        clips = pixels.clone().requires_grad_(True)
        both.from_preprocessed(clips, captions).total.sum().backward()

    variants = {
        "vision encoder (no grad)": encode_only,
        "quality reward": quality_only,
        "semantic reward, pisces batched": pisces_reward,
    }
    if reference:
        variants["semantic reward, reference loop"] = reference_reward
    variants["pixels → quality + semantic → backward"] = with_gradients
    return variants


def run_full(args: argparse.Namespace) -> None:
    """The 1B config: seconds and peak memory per video (see the module docstring)."""
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    batch = args.videos
    with tempfile.TemporaryDirectory() as directory:
        backend = full_backend(args.frames, args.device, dtype, directory)
    captions = (CAPTIONS * batch)[:batch]
    size = backend.model.config.vision.img_size
    pixels = torch.randn(batch, args.frames, 3, size, size, generator=torch.Generator().manual_seed(0)).to(
        device, dtype
    )
    variants = reward_variants(
        backend, pixels, captions, TokenOTSettings(), reference=not args.skip_reference
    )
    print(
        f"InternVideo2-1B (random weights), {batch} videos × {args.frames} frames at {size} px, "
        f"{args.dtype}, {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'})"
    )
    print(f"{'variant':40s} {'s / video':>10s} {'peak GiB / video':>17s}")
    for name, fn in variants.items():
        seconds, peak = measure(fn, device, args.repeats)
        print(f"{name:40s} {seconds / batch:10.4f} {peak / batch:17.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 frames instead of 8")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--allocator",
        choices=("pisces", "default"),
        default="pisces",
        help="pisces: glibc tuned as the `pisces` command does (runtime.tune_cpu_allocator); default: untouched",
    )
    parser.add_argument("--config", choices=("reduced", "full"), default="reduced")
    parser.add_argument("--device", default="cpu", help="full config: where to run (e.g. cuda)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16")
    parser.add_argument("--videos", type=int, default=4, help="full config: batch size")
    parser.add_argument("--frames", type=int, default=8, help="full config: frames per video")
    parser.add_argument("--skip-reference", action="store_true", help="full config: no reference loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    allocator = tune_cpu_allocator() if args.allocator == "pisces" else "glibc defaults"
    if args.config == "full":
        run_full(args)
        return
    frames = 4 if args.quick else 8
    with tempfile.TemporaryDirectory() as directory:
        backend = make_backend(frames, directory)
        captions = CAPTIONS
        torch.manual_seed(0)
        pixels = torch.randn(4, frames, 3, 32, 32)
        with torch.no_grad():
            text = backend.encode_text(captions)
            video = backend.encode_video(pixels)
            n_fusion = backend.model.config.text.num_layers - backend.model.config.text.fusion_layer
            settings = TokenOTSettings()
            all_layers = dataclasses.replace(
                settings,
                layers=tuple(
                    range(backend.model.config.text.fusion_layer, backend.model.config.text.num_layers)
                ),
            )
            variants = {
                "reference loop (per video, per head)": lambda: reference_semantic(
                    backend, text, video, settings
                ),
                "pisces batched (all layers)": lambda: (
                    backend.semantic_reward(text, video, all_layers).reward
                ),
                "pisces batched (default: last layer skipped)": lambda: (
                    backend.semantic_reward(text, video, settings).reward
                ),
            }
            outputs = {name: fn() for name, fn in variants.items()}  # warm-up + values
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.repeats):
                for name, fn in variants.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
    base = statistics.median(times["reference loop (per video, per head)"])
    print(
        f"batch 4 videos × {frames} frames, {1 + frames * 256} video tokens, 16 heads, {n_fusion} fusion layers, "
        f"threads={args.threads}, cpu allocator: {allocator}"
    )
    print(f"{'variant':48s} {'median s':>9s} {'speed-up':>9s}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:48s} {med:9.3f} {base / med:8.1f}x")
    ref = outputs["reference loop (per video, per head)"]
    print(
        f"max |Δreward| reference vs pisces (all layers): {(ref - outputs['pisces batched (all layers)']).abs().max():.2e}"
    )
    print(
        f"max |Δreward| all layers vs last skipped:       "
        f"{(outputs['pisces batched (all layers)'] - outputs['pisces batched (default: last layer skipped)']).abs().max():.2e}"
    )


if __name__ == "__main__":
    main()
