"""Group-relative advantages for GRPO (Flow-GRPO / DanceGRPO, TRL's ``scale_rewards``).

Rewards arrive as ``[N]`` tensors, ``N = P·G``: ``P`` prompts, each with a group of ``G`` consecutive samples
(sample ``n`` belongs to group ``n // G``). For one reward ``r``::

    A_n = (r_n − mean_{group(n)} r) / (s + eps)

where ``s`` is the unbiased std of the sample's group (``scale_rewards="group"``, DanceGRPO / TRL default), of the
whole batch (``"batch"``, Flow-GRPO's ``global_std``), or ``s = 1, eps = 0`` (``"none"``: only the group mean is
subtracted, Dr. GRPO). The baseline is always the group mean, so advantages are zero-mean per group.

Several reward components (PISCES: ``quality``, ``semantic``) are normalised **separately** and then combined
with the reward weights, ``A = Σ_k w_k·A_k`` (DanceGRPO's ``vq_coef``/``mq_coef`` scheme). Normalising each
component first keeps one component's scale (e.g. a cosine in [−1, 1] against a probability in [0, 1]) from
drowning the other; the weights then state the relative importance in advantage units. The alternative,
normalising the weighted total, is :func:`total_advantages`. Finally ``A`` is clipped to ``[−adv_clip, adv_clip]``.
"""

from __future__ import annotations

from typing import Literal

import torch

from pisces_cli.errors import UsageError

ScaleRewards = Literal["group", "batch", "none"]
SCALE_REWARDS = ("group", "batch", "none")
#: added to the std before dividing (Flow-GRPO's value); a zero-std group yields advantage 0, not NaN.
STD_EPS = 1e-4


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[N]`` → ``[P, G]`` (fp64 for exact means)."""
    if rewards.ndim != 1:
        raise UsageError(f"rewards must be shaped [N], got {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise UsageError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.detach().double().reshape(-1, group_size)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_rewards: ScaleRewards = "group", eps: float = STD_EPS
) -> torch.Tensor:
    """Advantages ``[N]`` (fp32) of one reward ``[N]`` with groups of ``group_size`` consecutive samples."""
    if scale_rewards not in SCALE_REWARDS:
        raise UsageError(f"scale_rewards must be one of {', '.join(SCALE_REWARDS)}, got {scale_rewards!r}")
    grouped = _grouped(rewards, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_rewards == "group":
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
        centred = centred / (std + eps)
    elif scale_rewards == "batch":
        flat = grouped.reshape(-1)
        std = flat.std() if flat.numel() > 1 else flat.new_zeros(())
        centred = centred / (std + eps)
    return centred.reshape(-1).float()


def combine_advantages(
    components: dict[str, torch.Tensor],
    weights: dict[str, float],
    group_size: int,
    scale_rewards: ScaleRewards = "group",
    adv_clip: float | None = 5.0,
) -> torch.Tensor:
    """``Σ_k w_k · group_advantages(r_k)`` over the components with a non-zero weight, clipped → ``[N]`` fp32.

    ``weights`` missing a component count it with weight 1. ``adv_clip`` None or ≤ 0 disables clipping.
    """
    if not components:
        raise UsageError("combine_advantages needs at least one reward component")
    total: torch.Tensor | None = None
    for name, rewards in components.items():
        weight = float(weights.get(name, 1.0))
        if weight == 0.0:
            continue
        part = weight * group_advantages(rewards, group_size, scale_rewards)
        total = part if total is None else total + part
    if total is None:
        first = next(iter(components.values()))
        total = torch.zeros(first.numel(), dtype=torch.float32, device=first.device)
    return clip_advantages(total, adv_clip)


def total_advantages(
    total: torch.Tensor, group_size: int, scale_rewards: ScaleRewards = "group", adv_clip: float | None = 5.0
) -> torch.Tensor:
    """The alternative scheme: normalise the already weighted total reward ``[N]``, then clip → ``[N]`` fp32."""
    return clip_advantages(group_advantages(total, group_size, scale_rewards), adv_clip)


def clip_advantages(advantages: torch.Tensor, adv_clip: float | None) -> torch.Tensor:
    if adv_clip is None or adv_clip <= 0:
        return advantages
    return advantages.clamp(-adv_clip, adv_clip)


def zero_std_group_fraction(rewards: torch.Tensor, group_size: int, atol: float = 0.0) -> float:
    """Share of groups whose rewards are all equal (std ≤ ``atol``): they carry no learning signal."""
    grouped = _grouped(rewards, group_size)
    spread = grouped.max(dim=1).values - grouped.min(dim=1).values
    return float((spread <= atol).double().mean())
