"""Statistics of the world experiment against scipy and hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from pisces_cli.errors import UsageError
from pisces_cli.world.experiment_stats import (
    bootstrap_indices,
    mean_ci,
    paired_mean_difference_ci,
    spearman,
    spearman_ci,
    spearman_difference_ci,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, size=40).astype(float)  # many ties
    y = x + rng.normal(size=40)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_of_a_constant_is_nan_and_of_a_monotone_map_is_one() -> None:
    x = np.arange(10.0)
    assert np.isnan(spearman(x, np.ones(10)))
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -(x**3)) == pytest.approx(-1.0)


def test_spearman_ci_brackets_the_estimate_and_matches_a_loop_over_resamples() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    y = 0.5 * x + rng.normal(size=30)
    ci = spearman_ci(x, y, n_boot=200, seed=7)
    assert ci.n == 30
    assert ci.estimate == pytest.approx(spearmanr(x, y).statistic)
    index = bootstrap_indices(30, 200, 7)
    loop = np.array([spearmanr(x[i], y[i]).statistic for i in index])
    low, high = np.quantile(loop[np.isfinite(loop)], [0.025, 0.975])
    assert (ci.low, ci.high) == pytest.approx((low, high), abs=1e-12)
    assert ci.low <= ci.estimate <= ci.high


def test_spearman_ci_drops_non_finite_pairs() -> None:
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    y = np.array([1.0, 3.0, 2.0, np.inf, 5.0, 7.0])
    assert spearman_ci(x, y, n_boot=10).n == 4


def test_difference_ci_is_paired_and_zero_for_identical_rewards() -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(size=50)
    good = y + 0.1 * rng.normal(size=50)
    bad = rng.normal(size=50)
    same = spearman_difference_ci(good, good, y, n_boot=100)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    gain = spearman_difference_ci(bad, good, y, n_boot=300, seed=1)
    assert gain.estimate == pytest.approx(spearman(good, y) - spearman(bad, y))
    assert gain.low > 0


def test_mean_and_paired_difference_cis() -> None:
    values = np.array([0.0, 1.0, 1.0, 0.0, 1.0, np.nan])
    ci = mean_ci(values, n_boot=500, seed=0)
    assert ci.n == 5 and ci.estimate == pytest.approx(0.6)
    assert 0.0 <= ci.low <= 0.6 <= ci.high <= 1.0
    diff = paired_mean_difference_ci(np.zeros(4), np.array([1.0, 1.0, 1.0, 1.0]), n_boot=50)
    assert (diff.estimate, diff.low, diff.high) == (1.0, 1.0, 1.0)
    assert np.isnan(mean_ci(np.array([np.nan]), n_boot=5).estimate)


def test_bad_inputs_raise_usage_errors() -> None:
    with pytest.raises(UsageError):
        bootstrap_indices(1, 10, 0)
    with pytest.raises(UsageError):
        spearman_ci(np.arange(3.0), np.arange(4.0))
