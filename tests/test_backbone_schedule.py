"""Noise grids: the sampling grid vs diffusers' scheduler, and the paper's training grid (method.md §5.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pisces_cli.backbones.schedule import shift_sigma, sigma_grid, training_sigma_grid
from pisces_cli.errors import UsageError


def test_backbone_training_grid_quoted_values():
    grid = training_sigma_grid(shift=17, euler_steps=50)
    assert grid.sigmas.shape == (50,) and grid.sigmas_prev.shape == (50,)
    assert abs(grid.sigmas[0].item() - 0.2576) < 1e-4
    assert abs(grid.sigmas[4].item() - 0.6538) < 1e-4
    assert abs(grid.sigmas[24].item() - 0.9444) < 1e-4
    assert grid.sigmas[49].item() == 1.0
    assert abs(grid.sigmas_prev[0].item() - 0.016732) < 1e-6
    # σprev_k = σ_{k−1} for k ≥ 1 (hand formula s(0.02k)), and 33 of 50 points have σ ≥ 0.9.
    torch.testing.assert_close(grid.sigmas_prev[1:], grid.sigmas[:-1])
    assert int((grid.sigmas >= 0.9).sum()) == 33
    k = torch.arange(1, 50, dtype=torch.float64)
    torch.testing.assert_close(
        grid.sigmas_prev[1:].double(), 17 * 0.02 * k / (1 + 16 * 0.02 * k), atol=1e-7, rtol=0
    )


def test_backbone_training_grid_matches_diffusers_scheduler_table():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=17.0)
    ascending = torch.flip(scheduler.sigmas, dims=[0])  # the 1000 training sigmas s(0.001) … s(1)
    assert ascending.shape == (1000,)
    grid = training_sigma_grid(17.0, 50)
    torch.testing.assert_close(grid.sigmas, ascending[19::20].float(), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("steps", "shift"), [(2, 7.0), (5, 3.0), (16, 5.0), (8, 1.0)])
def test_backbone_sigma_grid_matches_flow_match_scheduler(steps, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    grid = sigma_grid(steps, shift)
    assert grid.shape == (steps + 1,)
    assert grid[0].item() == 1.0 and grid[-1].item() == 0.0
    assert bool((grid[1:] < grid[:-1]).all())
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    torch.testing.assert_close(grid, scheduler.sigmas.float(), atol=1e-6, rtol=0)


def test_backbone_sigma_grid_documented_example_and_errors():
    torch.testing.assert_close(sigma_grid(2, 7.0), torch.tensor([1.0, 0.875, 0.0]))
    assert shift_sigma(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)
    with pytest.raises(UsageError, match="num_steps"):
        sigma_grid(0, 3.0)
    with pytest.raises(UsageError, match="shift"):
        sigma_grid(4, 0.0)
    with pytest.raises(UsageError, match="euler_steps"):
        training_sigma_grid(17.0, 33)
