"""Preflight of the devices: GPUs visible against the launch's world size, and finetune's memory plan per rank.

The world size is read from the launcher's variables, so ``WORLD_SIZE=8 LOCAL_WORLD_SIZE=8 pisces validate ...``
on a login node plans an 8-process launch. The memory plan is :func:`pisces_cli.training.memory.estimate_step_memory`
(the ``finetune --dry-run`` estimate), compared with the smallest visible GPU.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pisces_cli.preflight.report import PreflightReport, Status, human_bytes

if TYPE_CHECKING:
    from pisces_cli.config import Recipe
    from pisces_cli.training.memory import MemoryEstimate

DEVICE_KEY = "runtime.device"


def launch_sizes() -> tuple[int, int]:
    """(world size, processes on this node) from ``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE`` (default: the world)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))


def visible_gpus() -> list[tuple[str, int]]:
    """(name, total bytes) of every CUDA device this process sees."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [
        (torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory)
        for i in range(torch.cuda.device_count())
    ]


def check_gpus(recipe: Recipe, report: PreflightReport) -> list[tuple[str, int]]:
    """One row: enough GPUs for the processes of this node; returns the visible GPUs."""
    device = recipe.runtime.device
    if device == "cpu":
        report.add("GPUs", DEVICE_KEY, Status.SKIP, "runtime.device=cpu")
        return []
    gpus = visible_gpus()
    world, local = launch_sizes()
    launch = f"WORLD_SIZE={world}, LOCAL_WORLD_SIZE={local}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    restriction = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    if not gpus:
        status = Status.FAIL if device.startswith("cuda") else Status.WARN
        report.add(
            "GPUs",
            DEVICE_KEY,
            status,
            f"no CUDA device visible{restriction}: {device} runs on CPU ({launch})",
        )
        return []
    index = int(device.partition(":")[2]) if device.startswith("cuda:") else None
    if index is not None and index >= len(gpus):
        report.add(
            "GPUs",
            DEVICE_KEY,
            Status.FAIL,
            f"{device}: {len(gpus)} GPU(s) visible{restriction}, cuda:0 to cuda:{len(gpus) - 1}",
        )
        return gpus
    if len(gpus) < local:
        report.add(
            "GPUs",
            DEVICE_KEY,
            Status.FAIL,
            f"{len(gpus)} GPU(s) visible{restriction} for {local} processes on this node ({launch})",
        )
        return gpus
    names = sorted({name for name, _ in gpus})
    smallest = min(total for _, total in gpus)
    report.add(
        "GPUs",
        DEVICE_KEY,
        Status.OK,
        f"{len(gpus)} × {', '.join(names)} ({human_bytes(smallest)}) for {local} process(es) on this node ({launch})",
    )
    return gpus


def memory_estimate(recipe: Recipe) -> MemoryEstimate:
    """finetune's ``--dry-run`` estimate of one training step per rank at this launch's world size."""
    from pisces_cli.backbones.registry import adapter_class
    from pisces_cli.preflight.generator import FAMILY_OF_BACKBONE
    from pisces_cli.training.memory import estimate_step_memory
    from pisces_cli.training.trainer import lora_pattern

    family = FAMILY_OF_BACKBONE[recipe.models.generator.backbone]
    pattern = None
    if not recipe.finetune.full_finetune:
        patterns = object.__new__(adapter_class(family))  # the LoRA pattern methods read no instance state
        pattern = lora_pattern(patterns, recipe.finetune.lora.targets)
    return estimate_step_memory(recipe, family, pattern, world_size=launch_sizes()[0])


def check_memory_plan(
    report: PreflightReport, gpus: list[tuple[str, int]], estimate: MemoryEstimate | str
) -> None:
    """One row: finetune's estimated peak memory per rank (or why there is none) against the smallest GPU."""
    key = "finetune"
    if isinstance(estimate, str):
        report.add("memory plan", key, Status.SKIP, estimate)
        return
    if not estimate.parts:
        report.add("memory plan", key, Status.SKIP, "; ".join(estimate.notes))
        return
    world = launch_sizes()[0]
    largest = sorted(estimate.parts.items(), key=lambda item: -item[1])[:3]
    parts = ", ".join(f"{name} {human_bytes(value)}" for name, value in largest)
    plan = f"≈{human_bytes(estimate.total)} per rank at WORLD_SIZE={world} (largest: {parts})"
    if not gpus:
        report.add("memory plan", key, Status.OK, f"{plan}; no GPU visible to compare with")
        return
    capacity = min(total for _, total in gpus)
    if estimate.total > capacity:
        report.add(
            "memory plan",
            key,
            Status.FAIL,
            f"{plan} > {human_bytes(capacity)} per GPU: lower finetune.num_frames/height/width or lora.rank, "
            "or use more ranks with finetune.distributed=fsdp (see `pisces finetune --dry-run`)",
        )
        return
    report.add("memory plan", key, Status.OK, f"{plan} of {human_bytes(capacity)} per GPU")


def check_precision(recipe: Recipe, report: PreflightReport, stages: set[str]) -> None:
    """One row per dtype key the chosen stages read: it runs on the device they would use (bf16 on the GPU,
    half precision off CUDA), checked as the stages check it when they start. Nothing when the device failed
    (its own row says why)."""
    from pisces_cli.errors import UsageError
    from pisces_cli.preflight.run import ENCODER_STAGES, GENERATOR_STAGES
    from pisces_cli.runtime import check_reduced_precision, resolve_device, resolve_dtype

    try:
        device = resolve_device(recipe.runtime.device)
    except UsageError:
        return
    models, section = recipe.models, recipe.finetune
    settings = []  # (recipe key, dtype name, autocast)
    if stages & ENCODER_STAGES:
        settings.append(("models.encoder.dtype", models.encoder.dtype, False))
    if stages & GENERATOR_STAGES:
        settings.append(("models.generator.dtype", models.generator.dtype, False))
    if "finetune" in stages:
        if section.reward_dtype:
            settings.append(("finetune.reward_dtype", section.reward_dtype, False))
        autocast = {"bf16": "bfloat16", "fp16": "float16"}.get(section.mixed_precision)
        if autocast:
            settings.append(("finetune.mixed_precision", autocast, True))
    for key, name, autocast in settings:
        try:
            check_reduced_precision(resolve_dtype(name), device, key, autocast=autocast)
        except UsageError as error:
            # auto on a machine without a GPU (a login node): the run may well go to a GPU, where this works
            guessed = recipe.runtime.device == "auto" and device.type == "cpu"
            detail = f"{error} (if this run goes to a CPU: auto found no GPU here)" if guessed else str(error)
            report.add("precision", key, Status.WARN if guessed else Status.FAIL, detail)
        else:
            shown = f"{section.mixed_precision} autocast" if autocast else name
            report.add("precision", key, Status.OK, f"{shown} on {device}")
    if "finetune" in stages:
        from pisces_cli.training.precision import precision_plan

        try:  # bf16 on a GPU without it
            plan = precision_plan(recipe, device)
        except UsageError as error:
            report.add("precision", "finetune (bf16, scaler)", Status.FAIL, str(error))
            return
        if plan.scaled:
            detail = f"fp16 in the gradient path ({', '.join(plan.fp16_in_gradient_path)}): a gradient scaler"
            report.add("precision", "finetune (bf16, scaler)", Status.OK, detail)
