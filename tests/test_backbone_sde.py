"""The flow-matching SDE step (backbones.md §6.1) against hand-written references and torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch

from pisces_cli.backbones.sde import euler_step, gaussian_log_prob_mean, sde_noise_scale, sde_step
from pisces_cli.errors import UsageError

SHAPE = (3, 4, 2, 3, 5)


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(SHAPE, generator=generator, dtype=torch.float64).float()
    x = torch.randn(SHAPE, generator=generator, dtype=torch.float64).float()
    return v, x


@pytest.mark.parametrize("noise_schedule", ["constant", "flow_grpo"])
def test_backbone_sde_log_prob_matches_torch_normal(noise_schedule):
    v, x = _inputs()
    sigma, sigma_next = torch.tensor([0.9, 0.6, 0.3]), torch.tensor([0.8, 0.4, 0.1])
    x_next, mean, std, log_prob = sde_step(
        v,
        x,
        sigma,
        sigma_next,
        0.7,
        generator=torch.Generator().manual_seed(1),
        noise_schedule=noise_schedule,
    )
    reference = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x_next).flatten(1).mean(1)
    torch.testing.assert_close(log_prob, reference, atol=1e-5, rtol=1e-6)
    assert log_prob.shape == (3,) and log_prob.dtype == torch.float32
    # Re-scoring the same sample (GRPO recompute) gives the same log-prob.
    _, _, _, rescored = sde_step(
        v, x, sigma, sigma_next, 0.7, prev_sample=x_next, noise_schedule=noise_schedule
    )
    torch.testing.assert_close(rescored, log_prob, atol=0, rtol=0)


def test_backbone_sde_mean_matches_flow_grpo_and_dance_grpo_forms():
    v, x = _inputs(3)
    sigma, sigma_next, eta = 0.7, 0.55, 0.7
    delta = sigma_next - sigma
    # Flow-GRPO writes μ = x·(1 + g²Δ/(2σ)) + v·(1 + g²(1 − σ)/(2σ))·Δ with g = η·√(σ/(1−σ)).
    g = eta * math.sqrt(sigma / (1 - sigma))
    flow_mean = x * (1 + g**2 * delta / (2 * sigma)) + v * (1 + g**2 * (1 - sigma) / (2 * sigma)) * delta
    _, mean, std, _ = sde_step(
        v, x, sigma, sigma_next, eta, noise=torch.zeros(SHAPE), noise_schedule="flow_grpo"
    )
    torch.testing.assert_close(mean, flow_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std.flatten(), torch.full((3,), g * math.sqrt(-delta)))
    # DanceGRPO: Euler mean plus −½η²·score·Δ with score = −(x − (1−σ)·x̂0)/σ², std = η·√(σ − σ').
    x0_hat = x - sigma * v
    score = -(x - (1 - sigma) * x0_hat) / sigma**2
    dance_mean = x + delta * v + (-0.5 * eta**2 * score) * delta
    _, mean, std, _ = sde_step(v, x, sigma, sigma_next, eta, noise=torch.zeros(SHAPE))
    torch.testing.assert_close(mean, dance_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std.flatten(), torch.full((3,), eta * math.sqrt(sigma - sigma_next)))


def test_backbone_sde_reduces_to_euler_at_eta_zero():
    v, x = _inputs(5)
    x_next, mean, std, log_prob = sde_step(v, x, 0.5, 0.25, 0.0, generator=torch.Generator().manual_seed(0))
    expected = x + (0.25 - 0.5) * v
    torch.testing.assert_close(euler_step(v, x, 0.5, 0.25), expected)
    torch.testing.assert_close(x_next, expected)
    torch.testing.assert_close(mean, expected)
    assert bool((std == 0).all()) and bool((log_prob == 0).all())


def test_backbone_sde_sample_statistics():
    generator = torch.Generator().manual_seed(11)
    x = torch.zeros(1, 200_000)
    v = torch.ones(1, 200_000)
    x_next, mean, std, _ = sde_step(v, x, 0.8, 0.6, 0.5, generator=generator)
    # μ = x + Δ·(v + g²/(2σ)·(x + (1−σ)v)) with x = 0, v = 1: Δ·(1 + 0.25·0.2/1.6)
    assert abs(mean[0, 0].item() - (-0.2) * (1 + 0.25 * 0.2 / 1.6)) < 1e-6
    assert abs((x_next - mean).std().item() - 0.5 * math.sqrt(0.2)) < 3e-3
    assert abs((x_next - mean).mean().item()) < 3e-3


def test_backbone_flow_grpo_noise_scale_at_sigma_one_uses_next_sigma():
    g = sde_noise_scale(torch.tensor([1.0, 0.5]), torch.tensor([0.9, 0.4]), 0.7, "flow_grpo")
    torch.testing.assert_close(g, torch.tensor([0.7 * math.sqrt(1 / 0.1), 0.7]))
    with pytest.raises(UsageError, match="noise_schedule"):
        sde_noise_scale(torch.tensor([0.5]), torch.tensor([0.4]), 0.7, "cps")
    with pytest.raises(UsageError, match="sigma_next < sigma"):
        sde_step(torch.zeros(1, 2), torch.zeros(1, 2), 0.4, 0.5, 0.3)


def test_backbone_gaussian_log_prob_is_a_mean_with_constants():
    sample = torch.tensor([[0.0, 1.0]])
    value = gaussian_log_prob_mean(sample, torch.zeros(1, 2), torch.tensor([[2.0]]))
    expected = (-(0.0) / 8 - (1.0) / 8) / 2 - math.log(2.0) - 0.5 * math.log(2 * math.pi)
    assert abs(value.item() - expected) < 1e-6
