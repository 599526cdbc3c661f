"""Bootstrap intervals and win rates against known distributions and hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from pisces_cli.errors import UsageError
from pisces_cli.evaluation.stats import bootstrap_ci, paired_bootstrap_ci, win_rate


def test_eval_bootstrap_ci_covers_true_mean_at_about_nominal_rate():
    rng = np.random.default_rng(0)
    covered = 0
    trials = 200
    for trial in range(trials):
        sample = rng.normal(loc=0.3, scale=1.0, size=60)
        ci = bootstrap_ci(sample, n_boot=500, seed=trial)
        assert ci.low <= ci.estimate <= ci.high
        covered += ci.low <= 0.3 <= ci.high
    # nominal 95 %; the percentile bootstrap undercovers slightly at n = 60. Binomial sd at 200 trials ~ 1.5 %.
    assert 0.88 <= covered / trials <= 0.99


def test_eval_bootstrap_ci_width_matches_normal_theory():
    rng = np.random.default_rng(1)
    sample = rng.normal(loc=2.0, scale=3.0, size=400)
    ci = bootstrap_ci(sample, n_boot=4000, seed=0)
    half_width_theory = 1.96 * sample.std(ddof=1) / np.sqrt(sample.size)
    assert ci.estimate == pytest.approx(sample.mean())
    assert (ci.high - ci.low) / 2 == pytest.approx(half_width_theory, rel=0.1)
    assert ci.n == 400 and ci.confidence == 0.95


def test_eval_bootstrap_ci_is_deterministic_and_nan_safe():
    values = [0.1, 0.5, np.nan, 0.9, 0.4]
    a = bootstrap_ci(values, seed=7)
    b = bootstrap_ci(values, seed=7)
    assert a == b
    assert a.n == 4 and a.estimate == pytest.approx(np.mean([0.1, 0.5, 0.9, 0.4]))
    many = np.random.default_rng(4).uniform(size=200)
    assert bootstrap_ci(many, seed=8).low != bootstrap_ci(many, seed=9).low  # the seed is used
    empty = bootstrap_ci([np.nan, np.nan])
    assert empty.n == 0 and np.isnan(empty.estimate) and np.isnan(empty.low)
    single = bootstrap_ci([0.25])
    assert (single.estimate, single.low, single.high) == (0.25, 0.25, 0.25)


def test_eval_bootstrap_ci_rejects_bad_settings():
    with pytest.raises(UsageError, match="n_boot"):
        bootstrap_ci([1.0, 2.0], n_boot=0)
    with pytest.raises(UsageError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=1.5)
    with pytest.raises(UsageError, match="1-D"):
        bootstrap_ci(np.ones((2, 2)))


def test_eval_paired_diff_of_identical_runs_is_zero():
    values = np.random.default_rng(2).uniform(size=50)
    ci = paired_bootstrap_ci(values, values.copy(), seed=0)
    assert (ci.estimate, ci.low, ci.high) == (0.0, 0.0, 0.0)
    assert win_rate(values, values) == 0.5  # all ties count half


def test_eval_paired_ci_removes_shared_item_variation():
    rng = np.random.default_rng(3)
    item_difficulty = rng.normal(scale=5.0, size=80)  # large, shared by both runs
    a = item_difficulty + rng.normal(scale=0.1, size=80)
    b = item_difficulty + 0.2 + rng.normal(scale=0.1, size=80)
    paired = paired_bootstrap_ci(a, b, seed=0)
    assert paired.low > 0.1 and paired.high < 0.3
    assert paired.estimate == pytest.approx(np.mean(b - a))
    # unpaired intervals of each mean are ~ 25x wider than the paired difference interval
    assert bootstrap_ci(b).high - bootstrap_ci(b).low > 10 * (paired.high - paired.low)


def test_eval_paired_drops_items_with_nan_and_checks_lengths():
    a = [0.0, 1.0, np.nan, 3.0]
    b = [1.0, np.nan, 5.0, 4.0]
    ci = paired_bootstrap_ci(a, b, seed=0)
    assert ci.n == 2 and ci.estimate == pytest.approx(1.0)
    with pytest.raises(UsageError, match="matched items"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])


def test_eval_win_rate_counts_ties_half():
    a = [0.1, 0.5, 0.5, 0.9, np.nan]
    b = [0.2, 0.5, 0.4, 1.0, 0.3]  # win, tie, loss, win; the NaN item is dropped
    assert win_rate(a, b) == pytest.approx((2 + 0.5) / 4)
    assert np.isnan(win_rate([np.nan], [1.0]))
