"""Devices, dtypes, seeds and the distributed context shared by every stage."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@dataclass(frozen=True)
class DistContext:
    """Rank layout of this process (``world_size == 1`` when not launched by torchrun/accelerate)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_context() -> DistContext:
    """Read the launcher's environment (RANK / WORLD_SIZE / LOCAL_RANK)."""
    return DistContext(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def init_distributed() -> DistContext:
    """Initialise torch.distributed when launched with several processes (nccl on GPU, gloo on CPU)."""
    import torch
    import torch.distributed as dist

    ctx = dist_context()
    if ctx.distributed and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend=backend)
    return ctx


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def resolve_device(spec: str) -> torch.device:
    """``auto`` → this rank's CUDA device when available, else CPU; otherwise ``torch.device(spec)``."""
    import torch

    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_context().local_rank % max(torch.cuda.device_count(), 1))
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        from pisces_cli.errors import UsageError

        raise UsageError(f"runtime.device is {spec!r} but CUDA is not available on this machine")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def configure_tf32(allow: bool) -> None:
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow


def quiet_model_loading() -> None:
    """Turn off transformers'/diffusers'/hub per-weight progress bars (pisces shows its own progress)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        diffusers_logging.set_verbosity_error()
    except ImportError:
        pass


@contextlib.contextmanager
def cpu_threads_beside_workers(device: object, num_workers: int) -> Iterator[None]:
    """Leave the decode workers their cores: on CPU with ``num_workers`` > 0, run torch with
    ``cpu_count - num_workers`` intra-op threads (at least 1) inside the block, then restore.

    Without this the main process's OpenMP threads and the workers oversubscribe the cores; on a
    2-core machine the tiny reward ran ~5-10x slower than with one thread (benchmarks/bench_score.py).
    """
    import torch

    before = torch.get_num_threads()
    if getattr(device, "type", str(device)) == "cpu" and num_workers > 0:
        torch.set_num_threads(max(1, min(before, (os.cpu_count() or 1) - num_workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
