"""Statistics of the world experiment: Spearman ρ with bootstrap CIs (videos resampled), paired ρ differences.

Pure numpy/scipy. Every interval is a 95 % percentile bootstrap over items (videos); the same resampled index
sets serve every reward, so the difference of two rewards' ρ on the same videos is a paired comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import rankdata

from pisces_cli.errors import UsageError


@dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap interval: ``estimate`` on the data, ``[low, high]``, ``n`` items."""

    estimate: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of ``[R, n]`` arrays (NaN where a row is constant)."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    denominator = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (xc * yc).sum(axis=1) / denominator, np.nan)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman ρ of two ``[n]`` vectors (average ranks for ties; NaN when either is constant)."""
    x = np.asarray(x, dtype=np.float64)[None]
    y = np.asarray(y, dtype=np.float64)[None]
    return float(_pearson_rows(rankdata(x, axis=1), rankdata(y, axis=1))[0])


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]`` item indices drawn with replacement by ``numpy.random.default_rng(seed)``."""
    if n < 2 or n_boot < 1:
        raise UsageError(f"bootstrap: need n >= 2 items and n_boot >= 1, got n={n}, n_boot={n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _spearman_resampled(x: np.ndarray, y: np.ndarray, index: np.ndarray) -> np.ndarray:
    return _pearson_rows(rankdata(x[index], axis=1), rankdata(y[index], axis=1))


def _interval(estimate: float, draws: np.ndarray, n: int, confidence: float) -> Interval:
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return Interval(estimate, float("nan"), float("nan"), n)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return Interval(estimate, float(low), float(high), n)


def _finite_pairs(*columns: np.ndarray) -> tuple[np.ndarray, ...]:
    arrays = [np.asarray(c, dtype=np.float64) for c in columns]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
        raise UsageError(f"spearman: expected 1-D columns of one length, got {[a.shape for a in arrays]}")
    keep = np.all([np.isfinite(a) for a in arrays], axis=0)
    return tuple(a[keep] for a in arrays)


def spearman_ci(
    x: np.ndarray, y: np.ndarray, *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> Interval:
    """Spearman ρ(x, y) over the items where both are finite, with a percentile bootstrap CI."""
    x, y = _finite_pairs(x, y)
    index = bootstrap_indices(x.size, n_boot, seed)
    return _interval(spearman(x, y), _spearman_resampled(x, y, index), x.size, confidence)


def spearman_difference_ci(
    x_a: np.ndarray,
    x_b: np.ndarray,
    y: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """ρ(x_b, y) − ρ(x_a, y) on the same items, with a paired bootstrap CI (one resample for both)."""
    x_a, x_b, y = _finite_pairs(x_a, x_b, y)
    index = bootstrap_indices(y.size, n_boot, seed)
    draws = _spearman_resampled(x_b, y, index) - _spearman_resampled(x_a, y, index)
    return _interval(spearman(x_b, y) - spearman(x_a, y), draws, y.size, confidence)


def mean_ci(values: np.ndarray, *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> Interval:
    """Mean of the finite values with a percentile bootstrap CI."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    if values.size == 1:
        return Interval(float(values[0]), float(values[0]), float(values[0]), 1)
    index = bootstrap_indices(values.size, n_boot, seed)
    return _interval(float(values.mean()), values[index].mean(axis=1), values.size, confidence)


def paired_mean_difference_ci(
    a: np.ndarray, b: np.ndarray, *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> Interval:
    """mean(b − a) over items finite in both, with a paired percentile bootstrap CI."""
    a, b = _finite_pairs(a, b)
    return mean_ci(b - a, n_boot=n_boot, seed=seed, confidence=confidence)
