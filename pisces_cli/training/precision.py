"""Training precision: the autocast dtype, the fp16 gradient scaler and the reward model's dtype.

- ``finetune.mixed_precision``: ``bf16`` (the default) or ``fp16`` autocast around the transformer calls, or ``no``.
- ``finetune.reward_dtype``: the dtype the reward encoder runs in during training (null = ``models.encoder.dtype``,
  which ``score``/``eval`` use). With ``algorithm: backprop`` the reward is in the gradient path; the bundled recipes
  use ``bfloat16`` there (the reference ran it in fp16 with no loss scaling, where small gradients underflow).
- **fp16 anywhere in the gradient path is trained with a gradient scaler** (``torch.amp.GradScaler``): fp16
  autocast, an fp16 generator (transformer and VAE decode), or, for backprop, an fp16 reward encoder. The loss is
  multiplied by the scale before ``backward()``; the gradients are unscaled before clipping; a step whose
  gradients overflow is skipped and the scale halved (doubled again after 2000 clean steps). The trainer logs
  ``loss_scale`` and counts skipped steps.
- bf16 needs hardware support: on a CUDA GPU without it (before Ampere) a bf16 setting is refused with a message
  naming the keys to change, instead of running slowly in emulation or failing deep inside a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from pisces_cli.errors import UsageError

if TYPE_CHECKING:
    from pisces_cli.config import Recipe

AUTOCAST = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class PrecisionPlan:
    """How one training run uses reduced precision.

    Attributes:
        autocast_dtype: ``torch.bfloat16`` / ``torch.float16`` autocast for the transformer, or None (fp32).
        reward_dtype: the reward encoder's dtype name during training (``float32``/``bfloat16``/``float16``).
        fp16_in_gradient_path: the recipe keys that put fp16 into the gradient path (empty: no scaler).
    """

    autocast_dtype: torch.dtype | None
    reward_dtype: str
    fp16_in_gradient_path: list[str] = field(default_factory=list)

    @property
    def scaled(self) -> bool:
        """Whether the run needs (and gets) a gradient scaler."""
        return bool(self.fp16_in_gradient_path)

    def grad_scaler(self, device: torch.device):
        """A ``torch.amp.GradScaler`` for ``device`` when :attr:`scaled`, else None."""
        return torch.amp.GradScaler(device.type) if self.scaled else None


def bf16_supported(device: torch.device) -> bool:
    """CPU: yes; CUDA: compute capability 8.0 or newer (Ampere) on ``device`` itself (ROCm: yes).

    Not ``torch.cuda.is_bf16_supported()``: by default it also answers yes for a GPU that merely emulates
    bf16 (a V100 or T4 can hold bf16 tensors), and it asks about the current device, not ``device``.
    """
    if device.type != "cuda" or torch.version.hip:
        return True
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index) >= (8, 0)


def precision_plan(
    recipe: Recipe, device: torch.device | None, *, bf16_ok: bool | None = None
) -> PrecisionPlan:
    """The precision of a ``finetune`` run of ``recipe`` on ``device``; UsageError for bf16 on hardware without it
    and for an autocast dtype this torch cannot run there.

    ``bf16_ok`` overrides the hardware query (tests); ``device=None`` plans without any device check (the
    ``--dry-run`` plan of a launch on other machines).
    """
    section = recipe.finetune
    reward_dtype = section.reward_dtype or recipe.models.encoder.dtype
    reward_in_gradient_path = section.algorithm == "backprop"
    autocast_name = {"bf16": "bfloat16", "fp16": "float16"}.get(section.mixed_precision)
    settings = [  # (recipe key, the dtype it sets, its value as written)
        ("finetune.mixed_precision", autocast_name, section.mixed_precision),
        ("models.generator.dtype", recipe.models.generator.dtype, recipe.models.generator.dtype),
        ("finetune.reward_dtype", reward_dtype, reward_dtype),
    ]
    bf16_keys = [key for key, dtype, _ in settings if dtype == "bfloat16"]
    if device is None:
        pass
    elif bf16_keys and not (bf16_supported(device) if bf16_ok is None else bf16_ok):
        raise UsageError(
            f"{device} does not support bfloat16 (it needs an Ampere or newer GPU), set by {', '.join(bf16_keys)}; "
            "use float16 there (training then runs with a gradient scaler) or float32 / mixed_precision=no"
        )
    if device is not None:  # every dtype of the run, before any model loads
        from pisces_cli.runtime import check_reduced_precision, resolve_dtype

        reward_key = "finetune.reward_dtype" if section.reward_dtype else "models.encoder.dtype"
        check_reduced_precision(
            resolve_dtype(recipe.models.generator.dtype), device, "models.generator.dtype"
        )
        check_reduced_precision(resolve_dtype(reward_dtype), device, reward_key)
        if AUTOCAST[section.mixed_precision] is not None:
            check_reduced_precision(
                AUTOCAST[section.mixed_precision], device, "finetune.mixed_precision", autocast=True
            )
    fp16 = [
        f"{key}={shown}"
        for key, dtype, shown in settings
        if dtype == "float16" and (key != "finetune.reward_dtype" or reward_in_gradient_path)
    ]
    return PrecisionPlan(
        autocast_dtype=AUTOCAST[section.mixed_precision],
        reward_dtype=reward_dtype,
        fp16_in_gradient_path=fp16,
    )
