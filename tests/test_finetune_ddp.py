"""Two CPU processes (gloo): gradient averaging and a real ``torchrun ... pisces_cli finetune`` run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from test_finetune_support import tiny_overrides


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _average_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from pisces_cli.training.trainer import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        trainer = Trainer.__new__(Trainer)
        trainer.dist = SimpleNamespace(distributed=True, world_size=2, rank=rank)
        trainer.device = torch.device("cpu")
        first = torch.nn.Parameter(torch.zeros(3))
        second = torch.nn.Parameter(torch.zeros(2, 2))
        first.grad = torch.full((3,), float(rank + 1))
        second.grad = None if rank == 0 else torch.ones(2, 2) * 4  # rank 0 got no gradient for it
        trainer.named_trainable = {"a": first, "b": second}
        other = torch.nn.Parameter(torch.full((2,), float(rank + 7)))
        broadcaster = Trainer.__new__(Trainer)
        broadcaster.dist, broadcaster.device, broadcaster.named_trainable = (
            trainer.dist,
            trainer.device,
            {"c": other},
        )
        broadcaster._broadcast_parameters()
        trainer._average_gradients()
        finite = trainer._all_finite(rank == 0)  # rank 1 reports a non-finite loss
        metrics = trainer._average_metrics({"loss": float(rank), "x": 2.0})
        result = {
            "a": first.grad.tolist(),
            "b": second.grad.tolist(),
            "finite": finite,
            "metrics": metrics,
            "broadcast": other.tolist(),
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_process_broadcast_gradient_and_flag_averaging(tmp_path):
    mp.spawn(_average_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for result in results:
        assert result["a"] == [1.5, 1.5, 1.5]
        assert result["b"] == [[2.0, 2.0], [2.0, 2.0]]
        assert result["finite"] is False
        assert result["metrics"] == {"loss": 0.5, "x": 2.0}
        assert result["broadcast"] == [7.0, 7.0]  # rank 0's values


@pytest.mark.slow
def test_torchrun_two_process_backprop_run(tmp_path):
    """``torchrun --nproc_per_node 2 -m pisces_cli finetune`` trains two steps and checkpoints once."""
    from safetensors.torch import load_file

    overrides = tiny_overrides(tmp_path, max_steps=2, checkpointing_steps=2)
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "pisces_cli",
        "finetune",
        "--recipe",
        "demo",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    output = tmp_path / "run" / "finetune"
    state = json.loads((output / "checkpoint-2" / "training_state" / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 2
    trained = load_file(str(output / "checkpoint-2" / "training_state" / "trainable.safetensors"))
    assert any(
        name.endswith("lora_B.default.weight") and value.abs().sum() > 0 for name, value in trained.items()
    )
    rows = [json.loads(line) for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2]


def _fsdp_worker(rank: int, port: int, tmp: str) -> None:
    import torch.distributed as dist
    from test_finetune_support import PROMPTS, resolve

    from pisces_cli.training.algorithm import PromptBatch
    from pisces_cli.training.trainer import Trainer

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    try:
        grads = {}
        for mode in ("fsdp", "ddp"):
            trainer = Trainer(resolve(Path(tmp) / f"{mode}{rank}", distributed=mode), resume=False)
            trainer.setup()
            generator = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for parameter in trainer.named_trainable.values():
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
            latents = torch.randn(
                trainer.algorithm.latent_shape(2), generator=torch.Generator().manual_seed(1)
            )
            batch = PromptBatch(prompts=PROMPTS[:2], latents=latents)
            trainer.algorithm.train_step([batch], 0, torch.Generator().manual_seed(2))
            grads[mode] = {n: p.grad.clone() for n, p in trainer.named_trainable.items()}
            sharded = [
                n for n, p in trainer.adapter.transformer.named_parameters() if type(p).__name__ == "DTensor"
            ]
            grads[f"{mode}_sharded"] = len(sharded)
        diff = max((grads["fsdp"][n] - grads["ddp"][n]).abs().max().item() for n in grads["ddp"])
        scale = max(g.abs().max().item() for g in grads["ddp"].values())
        result = {
            "diff": diff,
            "scale": scale,
            "sharded": grads["fsdp_sharded"],
            "plain": grads["ddp_sharded"],
        }
        Path(tmp, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_fsdp_sharded_base_weights_give_the_same_lora_gradients(tmp_path):
    from test_finetune_support import model_root

    model_root()  # build the tiny models once, in this process; the workers reuse them
    mp.spawn(_fsdp_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["sharded"] > 0 and result["plain"] == 0
        assert result["scale"] > 0
        assert result["diff"] <= 1e-6 * max(1.0, result["scale"])


def _make_videos(folder: Path, captions: list[str]) -> None:
    from pisces_cli.io.writer import write_mp4

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    lines = []
    for index, caption in enumerate(captions):
        write_mp4(folder / f"clip{index}.mp4", torch.rand(6, 3, 16, 16, generator=generator), 8)
        lines.append(json.dumps({"file": f"clip{index}.mp4", "prompt": caption}))
    (folder / "prompts.jsonl").write_text("\n".join(lines) + "\n")


def _encode_worker(rank: int, port: int, tmp: str) -> None:
    import torch.distributed as dist
    from test_finetune_support import resolve

    from pisces_cli.backbones.registry import load_backbone
    from pisces_cli.training.data import encode_latent_cache

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        extra = [
            "finetune.data.prompts=null",
            f"finetune.data.videos={tmp}/videos",
            f"finetune.output={tmp}/out",
        ]
        resolved = resolve(Path(tmp) / f"r{rank}", extra=extra)
        adapter = load_backbone(resolved.recipe.models.generator.path, family="hunyuan_video")
        encode_latent_cache(resolved, adapter, rank=rank, world_size=2, shard_size=1)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_encode_the_latent_cache_together(tmp_path):
    from test_finetune_support import PROMPTS, model_root

    from pisces_cli.backbones.registry import load_backbone
    from pisces_cli.training.data import load_latent_cache, read_training_clip

    _make_videos(tmp_path / "videos", PROMPTS[:3])
    model_root()  # build the tiny models once, in this process; the workers reuse them
    mp.spawn(_encode_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    latents, captions, keys = load_latent_cache(tmp_path / "out" / "latents")
    assert captions == PROMPTS[:3] and keys == ["clip0.mp4", "clip1.mp4", "clip2.mp4"]
    assert {p.name for p in (tmp_path / "out" / "latents").glob("manifest-rank*.json")} == {
        "manifest-rank0.json",
        "manifest-rank1.json",
    }
    adapter = load_backbone(str(model_root() / "hunyuan"), family="hunyuan_video")
    for index in range(3):
        pixels = read_training_clip(str(tmp_path / "videos" / f"clip{index}.mp4"), 5, 16, 16)
        torch.testing.assert_close(latents[index], adapter.encode_video(pixels[None])[0])
