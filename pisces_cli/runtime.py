"""Devices, dtypes, seeds and the distributed context shared by every stage."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from pisces_cli.config.sections.common import RuntimeSection

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}

#: glibc ``mallopt`` settings made by :func:`tune_cpu_allocator`: heap blocks up to 32 MiB (glibc's largest
#: mmap threshold) and up to 1 GiB of free memory kept at the top of the heap.
MALLOC_MMAP_THRESHOLD = 32 << 20
MALLOC_TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


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


#: How long (s) a rank waits at a collective for the others in stages whose ranks do uneven amounts of work
#: (``score``, ``eval``, ``embed``, ``generate``: one rank may meet slow or timing-out videos and finish an hour
#: after another, past NCCL's 10-minute default). Training keeps torch's default, so a hung step fails fast.
UNEVEN_WORK_TIMEOUT_S = 4 * 3600.0
#: environment variable that sets the collective timeout (seconds) of every stage
TIMEOUT_VARIABLE = "PISCES_DIST_TIMEOUT_S"


def init_distributed(timeout_s: float | None = UNEVEN_WORK_TIMEOUT_S) -> DistContext:
    """Initialise torch.distributed when launched with several processes (nccl on GPU, gloo on CPU).

    ``timeout_s``: how long collectives wait (None: torch's default); ``PISCES_DIST_TIMEOUT_S`` overrides it.
    A one-process run imports nothing (a no-op re-run stays fast).
    """
    ctx = dist_context()
    if not ctx.distributed:
        return ctx
    import datetime

    import torch
    import torch.distributed as dist

    override = os.environ.get(TIMEOUT_VARIABLE)
    if override:
        try:
            timeout_s = float(override)
        except ValueError:
            timeout_s = -1.0
        if not timeout_s > 0:
            from pisces_cli.errors import UsageError

            raise UsageError(f"{TIMEOUT_VARIABLE}={override!r}: expected a positive number of seconds")
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(ctx.local_rank)
        extra = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        dist.init_process_group(backend=backend, **extra)
    return ctx


def barrier() -> None:
    """Wait for every rank when a process group is initialised; otherwise return at once."""
    if "torch.distributed" not in sys.modules:  # never imported: no process group can exist
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def resolve_device(spec: str, *, key: str = "runtime.device") -> torch.device:
    """``auto`` → this rank's CUDA device when available, else CPU; otherwise ``torch.device(spec)``.

    A device this machine cannot run on is refused (:class:`UsageError` naming ``key``) instead of failing
    inside torch or running elsewhere: a string torch does not parse, ``cuda`` without CUDA, ``cuda:N`` past
    the visible devices, ``mps`` without MPS, and any other device type (``meta`` holds no weights).
    """
    import torch

    from pisces_cli.errors import UsageError

    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_context().local_rank % max(torch.cuda.device_count(), 1))
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:  # torch's "Invalid device string" / "Expected one of cpu, cuda, ..."
        raise UsageError(f"{key} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{key}={spec!r}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            restriction = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
            raise UsageError(
                f"{key}={spec!r}: this machine shows {count} CUDA device(s){restriction}, "
                f"cuda:0 to cuda:{count - 1}"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"{key}={spec!r}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise UsageError(
            f"{key}={spec!r}: pisces runs on 'cpu' or 'cuda' ('auto' picks one), not {device.type}"
        )
    return device


def resolve_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _reduced_precision_ops(dtype: torch.dtype, device: torch.device) -> None:
    """One tiny call of each kind of op the encoders and generators run (convolutions, norms, linear, attention,
    activations, resizing), in ``dtype`` on ``device``; raises what torch raises."""
    import torch
    import torch.nn.functional as F

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=device).to(dtype)

    images = rand(1, 4, 6, 6)
    F.conv2d(images, rand(4, 4, 3, 3), rand(4), padding=1)
    F.conv3d(images[:, :, None], rand(4, 4, 1, 3, 3), padding=(0, 1, 1))
    F.group_norm(images, 2, rand(4), rand(4))
    F.interpolate(images, size=(4, 4), mode="bicubic", align_corners=False)
    F.interpolate(images, size=(4, 4), mode="bilinear", align_corners=False)
    tokens = images.flatten(2).transpose(1, 2)  # [1, 36, 4]
    tokens = F.layer_norm(tokens, (4,), rand(4), rand(4))
    tokens = F.linear(tokens, rand(8, 4), rand(8))
    F.gelu(tokens), F.silu(tokens), tokens.softmax(-1), tokens.logsumexp(-1)
    heads = tokens.reshape(1, 36, 2, 4).transpose(1, 2)
    F.scaled_dot_product_attention(heads, heads, heads)
    torch.bmm(tokens, tokens.transpose(1, 2))


def check_reduced_precision(
    dtype: torch.dtype, device: torch.device, key: str, *, autocast: bool = False
) -> None:
    """Refuse (:class:`UsageError` naming ``key``) a half-precision setting this torch cannot run on ``device``.

    CUDA runs float16 and bfloat16 everywhere (bf16 on older GPUs is :func:`~pisces_cli.training.precision`'s
    check); on other devices (CPU) torch builds differ in which ops have half-precision kernels, and a missing
    one used to surface as torch's "not implemented for 'Half'" on the first batch (every video an error row).
    ``autocast``: the setting is an autocast dtype, which torch may also switch off with only a warning (the run
    would then be fp32 under an fp16 label). Milliseconds; float32 and CUDA are not probed.
    """
    import warnings

    import torch

    from pisces_cli.errors import UsageError

    if device.type == "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return
    name = {torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if autocast:
                with torch.autocast(device.type, dtype=dtype):
                    inputs = torch.rand(2, 4, device=device)
                    ran = torch.nn.functional.linear(inputs, torch.rand(3, 4, device=device)).dtype
                if ran != dtype:
                    raise RuntimeError(f"{device.type} autocast to {name} ran in {ran}")
            else:
                _reduced_precision_ops(dtype, device)
    except RuntimeError as error:  # NotImplementedError included
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(
            f"{key}: this torch ({torch.__version__}) cannot compute in {name} on {device} ({first}); "
            f"{'set it to no' if autocast else 'use float32 there'} (or run on a GPU)"
        ) from None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def tune_cpu_allocator() -> str:
    """Keep freed CPU tensor memory in the process instead of returning it to the OS (glibc only).

    By default glibc serves large blocks with fresh ``mmap``s and trims the heap after frees, so a CPU
    forward that allocates many ~MB temporaries page-faults on every one of them: the InternVideo2 semantic
    reward spent a quarter of its time (and most of its run-to-run variance) there
    (``benchmarks/bench_iv2_semantic.py``). This raises the mmap threshold to
    :data:`MALLOC_MMAP_THRESHOLD` and the trim threshold to :data:`MALLOC_TRIM_THRESHOLD` (resident memory
    may then stay up to that much above the live size). Left alone when ``PISCES_MALLOC_TUNING=0``, when the
    user set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` themselves, or off glibc.

    Returns what was done, for ``pisces env``: "tuned", or why not.
    """
    if os.environ.get("PISCES_MALLOC_TUNING", "1") == "0":
        return "off (PISCES_MALLOC_TUNING=0)"
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return "left to the MALLOC_*_ environment variables"
    if not sys.platform.startswith("linux"):
        return f"not glibc ({sys.platform})"
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "not glibc"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD) and mallopt(
        _M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD
    ):
        return f"tuned (mmap threshold {MALLOC_MMAP_THRESHOLD >> 20} MiB, trim threshold {MALLOC_TRIM_THRESHOLD >> 20} MiB)"
    return "mallopt refused the settings"


def configure_tf32(allow: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions on (``allow``) or off; torch's own default leaves
    cuDNN's on, so a stage that never called this ran its convolutions in TF32 under ``allow_tf32: false``."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow


def stage_device(runtime: RuntimeSection) -> torch.device:
    """The device a stage runs its models on (:func:`resolve_device` of ``runtime.device``), with
    ``runtime.allow_tf32`` applied: every stage that runs a model calls this before loading it."""
    device = resolve_device(runtime.device)
    configure_tf32(runtime.allow_tf32)
    return device


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


class HeldInterrupt:
    """What :func:`hold_interrupts` saw: ``received`` is True when an interrupt came during the block."""

    received: bool = False


def _interrupt_signals() -> list[int]:
    import signal

    return [signal.SIGINT, signal.SIGTERM]


@contextlib.contextmanager
def hold_interrupts() -> Iterator[HeldInterrupt]:
    """Hold interrupts (SIGINT, and SIGTERM where a Python handler takes it) during a short block of state
    updates that must happen all or not at all.

    The signal only sets ``received`` on the yielded :class:`HeldInterrupt`; the caller raises
    ``KeyboardInterrupt`` once its state is consistent again. Signals without a Python handler (ignored, or the
    default action) are left alone, and so is everything outside the main thread.
    """
    import signal
    import threading

    held = HeldInterrupt()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous = {number: signal.getsignal(number) for number in _interrupt_signals()}
    held_signals = [number for number, handler in previous.items() if callable(handler)]

    def note(_signum: int, _frame: object) -> None:
        held.received = True

    for number in held_signals:
        signal.signal(number, note)
    try:
        yield held
    finally:
        for number in held_signals:
            signal.signal(number, previous[number])


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM (a cluster scheduler's preemption, ``torchrun`` stopping its workers) raises
    ``KeyboardInterrupt`` like Ctrl-C, so the code under it saves its work the same way. Main thread only; a
    SIGTERM handler someone else installed is kept."""
    import signal
    import threading

    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous is not signal.SIG_DFL:
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
