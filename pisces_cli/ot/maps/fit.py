"""Resumable, DDP-aware training driver for the ``neural`` map (the core of ``pisces fit-ot``).

State directory layout (all safetensors + JSON, written atomically, no pickle)::

    state_dir/
      last/state.json               step, config, optimiser groups, schedulers, best metrics, history,
                                    and the name of the tensor file below (written last = commit point)
      last/trainer-<step>.safetensors   T, f, both Adam states, torch RNG state
      last/map.safetensors, map.json    the current T as a loadable TransportMap
      best_mknn_after/map.*  + metrics.json    best T by mknn_after (higher is better)
      best_spearman/map.*    + metrics.json    best T by spearman (higher is better)

Checkpoints are written at every evaluation (every ``eval_every`` outer steps and at the last step),
so an interrupted run resumes from its last evaluation and then reproduces the uninterrupted run
exactly (batches depend only on (seed, rank, step), see :mod:`pisces_cli.ot.maps.neural`).

Distributed: if ``torch.distributed`` is initialised (torchrun, ``accelerate launch``), both nets are
wrapped in DDP, each rank draws its own batches (seed + rank), the window losses are all-reduced,
and rank 0 alone evaluates, saves and calls ``on_progress`` while the others wait at a barrier.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pisces_cli.atomic import atomic_write_json, atomic_write_safetensors
from pisces_cli.errors import PiscesRuntimeError, UsageError
from pisces_cli.ot.maps.metrics import map_metrics
from pisces_cli.ot.maps.neural import NeuralOTConfig, NeuralOTTrainer
from pisces_cli.ot.maps.state_io import read_safetensors
from pisces_cli.ot.maps.transport import NeuralMap, normalize_embeddings, save_map

DEFAULT_EVAL_EVERY = 2000
BEST_METRICS = ("mknn_after", "spearman")
"""Metrics with their own best checkpoint (both: higher is better)."""

ProgressCallback = Callable[[int, dict[str, float], "dict[str, float] | None"], None]


@dataclass
class FitResult:
    """Outcome of :func:`fit_neural_map`.

    Attributes:
        transport_map: the final T (CPU, frozen).
        step: last completed outer step; start_step: step the run resumed from (0 if fresh).
        metrics: held-out metrics at ``step`` (empty on ranks other than 0).
        best: ``{metric: {"step", "value", "path"}}`` for each of :data:`BEST_METRICS` (rank 0).
        history: one dict per evaluation: step, window-mean losses, lrs, metrics.
        state_dir: where the state lives.
    """

    transport_map: NeuralMap
    step: int
    start_step: int
    metrics: dict[str, float]
    best: dict[str, dict[str, Any]]
    history: list[dict[str, Any]]
    state_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)


def _dist_info() -> tuple[bool, int, int]:
    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def _default_device(distributed: bool, x_train: torch.Tensor) -> torch.device:
    if distributed and torch.cuda.is_available() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return x_train.device


def load_last_state(state_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Read ``state_dir/last`` (tensors, meta) or return None when there is no saved state."""
    meta_path = state_dir / "last" / "state.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        tensor_path = state_dir / "last" / meta["tensor_file"]
    except (ValueError, KeyError) as error:
        raise PiscesRuntimeError(f"{meta_path}: unreadable training state ({error})") from error
    if not tensor_path.is_file():
        raise PiscesRuntimeError(f"{tensor_path}: missing (named by {meta_path})")
    return read_safetensors(tensor_path), meta


def _save_last(state_dir: Path, trainer: NeuralOTTrainer, meta_extra: dict[str, Any]) -> None:
    last_dir = state_dir / "last"
    last_dir.mkdir(parents=True, exist_ok=True)
    tensor_name = f"trainer-{trainer.step:09d}.safetensors"
    atomic_write_safetensors(last_dir / tensor_name, trainer.state_tensors(), {"step": str(trainer.step)})
    save_map(trainer.transport_map(), last_dir)
    atomic_write_json(
        last_dir / "state.json",
        {**trainer.state_meta(), **meta_extra, "tensor_file": tensor_name},
        sort_keys=True,
    )
    for stale in last_dir.glob("trainer-*.safetensors"):
        if stale.name != tensor_name:
            stale.unlink(missing_ok=True)


def _evaluate(
    trainer: NeuralOTTrainer, x_val: torch.Tensor, y_val: torch.Tensor
) -> tuple[dict[str, float], NeuralMap]:
    transport_map = trainer.transport_map()
    x_norm = normalize_embeddings(x_val.detach().float().cpu(), trainer.config.normalization)
    y_norm = normalize_embeddings(y_val.detach().float().cpu(), trainer.config.normalization)
    return map_metrics(x_norm, y_norm, transport_map(x_norm), trainer.config.knn_k), transport_map


def fit_neural_map(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    config: NeuralOTConfig,
    state_dir: str | Path,
    *,
    resume: bool = True,
    on_progress: ProgressCallback | None = None,
    eval_every: int = DEFAULT_EVAL_EVERY,
    device: torch.device | str | None = None,
    data_key: dict[str, Any] | None = None,
) -> FitResult:
    """Train a Neural OT map from cached embeddings to ``config.max_steps`` outer steps.

    Args:
        x_train: text embeddings ``[N, D]``; y_train: video embeddings ``[M, D]`` (unpaired).
        x_val, y_val: paired held-out embeddings ``[V, D]`` (row i of each from the same clip).
        config: :class:`NeuralOTConfig` (its ``normalization`` is applied to all four clouds).
        state_dir: directory of the resumable state (created).
        resume: continue from ``state_dir/last`` if present (config must match); False starts afresh
            (existing state there is overwritten as training proceeds).
        on_progress: ``on_progress(step, losses, metrics_or_None)`` after every outer step (rank 0);
            ``metrics`` is given at evaluation steps.
        eval_every: outer steps between evaluations + checkpoints (also at the final step).
        device: training device (default: current CUDA device under NCCL, else ``x_train.device``).
        data_key: what identifies the data (e.g. the encoder and digests of the rows of ``x_train`` and
            ``x_val``); saved with the state, and a resume whose key differs is refused, since the saved
            weights, history and best checkpoints belong to other data.

    Returns:
        :class:`FitResult`. History entries hold window means of the per-step losses.
    """
    if eval_every < 1:
        raise UsageError(f"eval_every must be a positive integer, got {eval_every!r}")
    if x_val.ndim != 2 or y_val.shape != x_val.shape or x_val.shape[1] != x_train.shape[1]:
        raise UsageError(
            f"validation needs paired x_val, y_val [V, D] with D = {x_train.shape[1]}; "
            f"got {tuple(x_val.shape)}, {tuple(y_val.shape)}"
        )
    state_dir = Path(state_dir)
    distributed, rank, world_size = _dist_info()
    trainer = NeuralOTTrainer(
        x_train,
        y_train,
        config,
        device=device if device is not None else _default_device(distributed, x_train),
        rank=rank,
        distributed=distributed,
    )
    history: list[dict[str, Any]] = []
    best: dict[str, dict[str, Any]] = {}
    saved = load_last_state(state_dir) if resume else None
    if saved is not None:
        tensors, meta = saved
        _check_data_key(state_dir, meta.get("data"), data_key)
        trainer.load_state(tensors, meta)
        _check_world_size(state_dir, meta.get("world_size"), world_size, trainer.step, config)
        history = list(meta.get("history", []))
        best = dict(meta.get("best", {}))
    start_step = trainer.step
    metrics: dict[str, float] = dict(history[-1]["metrics"]) if history else {}

    window_sums: dict[str, float] = {}
    window_count = 0
    while trainer.step < config.max_steps:
        losses = trainer.train_step()
        for name in ("loss_map", "transport_cost", "loss_potential"):
            window_sums[name] = window_sums.get(name, 0.0) + losses[name]
        window_count += 1
        if not all(math.isfinite(losses[name]) for name in ("loss_map", "loss_potential")):
            raise PiscesRuntimeError(f"neural OT diverged at step {trainer.step}: losses {losses}")
        step = trainer.step
        is_eval = step % eval_every == 0 or step == config.max_steps
        step_metrics = None
        if is_eval:
            window = _reduce_window(window_sums, window_count, distributed, trainer.device)
            window_sums, window_count = {}, 0
            if rank == 0:
                step_metrics, current_map = _evaluate(trainer, x_val, y_val)
                metrics = step_metrics
                history.append(
                    {
                        "step": step,
                        **window,
                        "lr_map": losses["lr_map"],
                        "lr_potential": losses["lr_potential"],
                        "metrics": step_metrics,
                    }
                )
                _update_best(state_dir, best, step, step_metrics, current_map)
                _save_last(
                    state_dir,
                    trainer,
                    {"history": history, "best": best, "world_size": world_size, "data": data_key},
                )
            if distributed:
                dist.barrier()
        if rank == 0 and on_progress is not None:
            on_progress(step, losses, step_metrics)

    return FitResult(
        transport_map=trainer.transport_map(),
        step=trainer.step,
        start_step=start_step,
        metrics=metrics if rank == 0 else {},
        best=best if rank == 0 else {},
        history=history if rank == 0 else [],
        state_dir=state_dir,
    )


def _check_data_key(state_dir: Path, saved: dict[str, Any] | None, current: dict[str, Any] | None) -> None:
    """Refuse to resume ``state_dir`` when it was trained on other data than ``current`` describes."""
    if current is None or saved == current:
        return
    if saved is None:
        differing = "the saved state does not record its data (written by an older pisces)"
    else:
        names = sorted(k for k in {*saved, *current} if saved.get(k) != current.get(k))
        differing = "it differs in " + ", ".join(names)
    raise UsageError(
        f"cannot resume {state_dir}: it was trained on other data or splits ({differing}); "
        "re-run with --fresh to start the fit over"
    )


def _check_world_size(state_dir: Path, saved: Any, current: int, step: int, config: NeuralOTConfig) -> None:
    """Refuse to train a saved state on with another number of processes: every process draws
    ``config.batch_size`` pairs per step, so the steps to come would average over another batch than the steps
    done (a finished state, with no step left, is only written out)."""
    if not isinstance(saved, int) or saved == current or step >= config.max_steps:
        return
    raise UsageError(
        f"cannot resume {state_dir}: its {step} steps were trained by {saved} process(es) of "
        f"{config.batch_size} pairs each ({saved * config.batch_size} per step), this run has {current} "
        f"({current * config.batch_size} per step); launch it with {saved} process(es) (torchrun "
        "--nproc_per_node) to continue, or re-run with --fresh to start the fit over"
    )


def _reduce_window(
    sums: dict[str, float], count: int, distributed: bool, device: torch.device
) -> dict[str, float]:
    names = sorted(sums)
    values = torch.tensor([sums[name] for name in names] + [float(count)], dtype=torch.float64, device=device)
    if distributed:
        dist.all_reduce(values)
    totals = values.cpu().tolist()
    return {name: totals[index] / max(totals[-1], 1.0) for index, name in enumerate(names)}


def _update_best(
    state_dir: Path,
    best: dict[str, dict[str, Any]],
    step: int,
    metrics: dict[str, float],
    transport_map: NeuralMap,
) -> None:
    for name in BEST_METRICS:
        value = metrics.get(name, float("nan"))
        if not math.isfinite(value):
            continue
        if name in best and value <= best[name]["value"]:
            continue
        directory = state_dir / f"best_{name}"
        save_map(transport_map, directory)
        atomic_write_json(directory / "metrics.json", {"step": step, **metrics}, sort_keys=True)
        best[name] = {"step": step, "value": value, "path": str(directory)}
