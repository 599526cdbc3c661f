"""Group-relative advantages (pisces_cli/training/advantages.py) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from pisces_cli.errors import UsageError
from pisces_cli.training.advantages import (
    STD_EPS,
    combine_advantages,
    group_advantages,
    total_advantages,
    zero_std_group_fraction,
)


def test_group_scaling_matches_hand_computation():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 16.0])
    advantages = group_advantages(rewards, 3, "group")
    # group 1: mean 2, unbiased std 1; group 2: mean 12, unbiased std sqrt(12)
    expected = [-1 / (1 + STD_EPS), 0.0, 1 / (1 + STD_EPS)]
    expected += [v / (math.sqrt(12) + STD_EPS) for v in (-2.0, -2.0, 4.0)]
    assert advantages.tolist() == pytest.approx(expected, rel=1e-6)


def test_batch_scaling_uses_one_std_and_none_only_centres():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 16.0])
    batch_std = float(rewards.double().std())
    batch = group_advantages(rewards, 3, "batch")
    assert batch.tolist() == pytest.approx(
        [v / (batch_std + STD_EPS) for v in (-1, 0, 1, -2, -2, 4)], rel=1e-6
    )
    assert group_advantages(rewards, 3, "none").tolist() == pytest.approx([-1, 0, 1, -2, -2, 4])


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_are_zero_mean_per_group(scale):
    rewards = torch.randn(24, generator=torch.Generator().manual_seed(0)) * 3 + 1
    advantages = group_advantages(rewards, 6, scale).reshape(4, 6)
    assert advantages.mean(dim=1).abs().max().item() < 1e-6
    assert advantages.std(dim=1).min().item() > 0.1


def test_zero_std_group_gets_zero_advantage_and_is_counted():
    rewards = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.1, 0.9, 0.3, 0.7])
    advantages = group_advantages(rewards, 4, "group")
    assert torch.equal(advantages[:4], torch.zeros(4))
    assert torch.isfinite(advantages).all()
    assert zero_std_group_fraction(rewards, 4) == 0.5
    assert zero_std_group_fraction(torch.tensor([1.0, 2.0, 3.0, 4.0]), 2) == 0.0


def test_components_are_normalised_separately_then_weighted():
    quality = torch.tensor([0.0, 1.0, 0.0, 1.0])
    semantic = torch.tensor([0.0, 100.0, 50.0, 50.0])  # a much larger scale does not dominate
    combined = combine_advantages(
        {"quality": quality, "semantic": semantic},
        {"quality": 2.0, "semantic": 0.5},
        2,
        "group",
        adv_clip=None,
    )
    expected = 2.0 * group_advantages(quality, 2) + 0.5 * group_advantages(semantic, 2)
    assert torch.allclose(combined, expected)
    # sample 1: both components say "better" → positive; group 2: semantic ties, quality decides
    assert combined[1] > 0 > combined[0]
    assert combined[3] > 0 > combined[2]
    # zero weight skips a component entirely
    only_quality = combine_advantages(
        {"quality": quality, "semantic": semantic}, {"semantic": 0.0}, 2, adv_clip=None
    )
    assert torch.allclose(only_quality, group_advantages(quality, 2))


def test_total_scheme_normalises_the_weighted_sum():
    total = torch.tensor([1.0, 3.0, 5.0, 5.0])
    assert total_advantages(total, 2, "group", adv_clip=None).tolist() == pytest.approx(
        [-1 / (math.sqrt(2) + STD_EPS), 1 / (math.sqrt(2) + STD_EPS), 0.0, 0.0], rel=1e-6
    )


def test_advantage_clipping():
    rewards = torch.tensor([0.0] * 15 + [1.0])  # the outlier's z-score is 3.75
    clipped = combine_advantages({"r": rewards}, {}, 16, "group", adv_clip=2.0)
    assert clipped.max().item() == pytest.approx(2.0)
    assert combine_advantages({"r": rewards}, {}, 16, "group", adv_clip=5.0).max().item() == pytest.approx(
        3.75, rel=1e-3
    )


def test_bad_inputs_raise_usage_errors():
    with pytest.raises(UsageError):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(UsageError):
        group_advantages(torch.zeros(4), 2, "global")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        combine_advantages({}, {}, 2)
