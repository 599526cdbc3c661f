"""The contract between the trainer and a training algorithm (``finetune.algorithm``).

The trainer owns everything shared: the model and its adapters, the optimizer and scheduler, gradient
clipping, NaN handling, checkpoints/resume, logging, distributed launch. An algorithm owns only the
maths of one optimizer step: it draws what it needs, runs forward passes, computes its losses and
calls ``backward()`` (gradient accumulation happens inside :meth:`TrainingAlgorithm.train_step`, each
micro-loss divided by the number of micro-steps). The trainer then clips, steps and zeroes.

Algorithms: ``backprop`` (direct reward backprop + consistency distillation, the paper's recipe) and
``grpo`` (group-relative policy optimisation over SDE rollouts).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from pisces_cli.backbones.base import BackboneAdapter
    from pisces_cli.config import Recipe
    from pisces_cli.config.sections.finetune import FinetuneSection
    from pisces_cli.rewards.module import PiscesReward


@dataclass
class PromptBatch:
    """One micro-batch of training data.

    Attributes:
        prompts: ``B`` caption strings (the reward reads them).
        latents: ``[B, C, F, h, w]`` clean data latents in the transformer's latent space (for
            consistency distillation), or ``None`` for prompt-only (reward-only / GRPO) training.
        keys: stable ids of the items (for logs / reproducibility).
    """

    prompts: list[str]
    latents: torch.Tensor | None = None
    keys: list[str] = field(default_factory=list)


@dataclass
class TrainContext:
    """Everything an algorithm may use. Built once by the trainer.

    Attributes:
        recipe / section: the resolved recipe and its ``finetune`` section.
        adapter: the backbone (its transformer(s) carry the trainable LoRA or full weights).
        reward: the frozen PISCES reward module (differentiable w.r.t. pixels).
        trainable: the parameters the optimizer updates.
        device: this rank's device; autocast_dtype: ``torch.bfloat16``/``float16`` or ``None`` (fp32).
        rank / world_size: the distributed layout (1 process: 0 / 1).
        encode_prompts: cached ``prompts -> PromptEmbeds`` on ``device`` (no grad).
        grad_scaler: the fp16 ``torch.amp.GradScaler`` (None without fp16 in the gradient path); algorithms
            call :meth:`TrainingAlgorithm.backward`, which scales the loss with it.
    """

    recipe: Recipe
    section: FinetuneSection
    adapter: BackboneAdapter
    reward: PiscesReward
    trainable: list[torch.nn.Parameter]
    device: torch.device
    autocast_dtype: torch.dtype | None
    rank: int = 0
    world_size: int = 1
    encode_prompts: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    grad_scaler: Any = None


@contextlib.contextmanager
def base_model(ctx: TrainContext) -> Iterator[None]:
    """Inside (under ``no_grad``): ``ctx.adapter`` runs the frozen base model — the teacher of consistency
    distillation and GRPO's reference policy. LoRA: the adapters are disabled (re-enabled on exit). Full
    fine-tuning: the trainer's frozen copies (``ctx.extra["teacher_transformers"]``, by component name) are
    swapped in and the trained modules put back on exit."""
    from pisces_cli.backbones.lora import adapters_disabled

    frozen = ctx.extra.get("teacher_transformers")
    adapter = ctx.adapter
    if frozen is None:
        with adapters_disabled(adapter.transformers()):
            yield
        return
    saved = adapter.transformers()
    try:
        for name, module in frozen.items():
            setattr(adapter, name, module)
        yield
    finally:
        for name, module in saved.items():
            setattr(adapter, name, module)


@contextlib.contextmanager
def eval_mode(adapter: BackboneAdapter) -> Iterator[None]:
    """The adapter's transformers in ``eval()`` inside (no LoRA dropout); their previous modes restored on exit."""
    modules = list(adapter.transformers().values())
    modes = [module.training for module in modules]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


class TrainingAlgorithm(ABC):
    """One optimisation paradigm over the shared trainer."""

    name: str = ""

    def __init__(self, ctx: TrainContext) -> None:
        self.ctx = ctx

    @abstractmethod
    def train_step(
        self, batches: list[PromptBatch], step: int, generator: torch.Generator
    ) -> dict[str, float]:
        """Accumulate gradients for one optimizer step over ``batches`` (the micro-batches).

        Must call :meth:`backward` on each micro-loss already divided by ``len(batches)``, never step the
        optimizer. ``generator`` is seeded by the trainer from (seed, step, rank) so a resumed run
        draws identical noise. Returns floats to log: at least ``loss``, plus per-component terms
        (e.g. ``loss_cd``, ``reward_quality_mean``, ``reward_quality_std``, ``reward_semantic_mean``...).
        A non-finite ``loss`` makes the trainer skip the step.
        """

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16/fp16 autocast for the transformer calls (a no-op in fp32)."""
        import torch

        dtype = self.ctx.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, through the run's gradient scaler when it has one (fp16 in the gradient path)."""
        scaler = self.ctx.grad_scaler
        (loss if scaler is None else scaler.scale(loss)).backward()

    def backward_unless_nonfinite(self, loss: torch.Tensor) -> bool:
        """:meth:`backward` of ``loss``; returns whether ``loss`` is finite.

        In one process a non-finite loss skips its backward (the step is skipped anyway). Under torchrun every
        rank runs backward whatever its loss: DDP's gradient all-reduce and FSDP's weight re-gathers are
        collectives every rank must join, so one rank skipping would hang them all. Its non-finite gradients
        are thrown away when the trainer, which reduces finiteness over the ranks, skips the step everywhere.
        """
        import torch

        finite = bool(torch.isfinite(loss))
        if finite or self.ctx.world_size > 1:
            self.backward(loss)
        return finite

    def state_dict(self) -> dict[str, Any]:
        """Extra algorithm state to checkpoint (JSON-able), e.g. running statistics."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def before_training(self) -> dict[str, float]:
        """Checks run once before the first update (e.g. GRPO's ratio-is-1 sanity); returns metrics."""
        return {}
