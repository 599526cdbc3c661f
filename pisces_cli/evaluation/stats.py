"""Bootstrap confidence intervals and win rates for comparing evaluation runs (numpy only).

Every function is deterministic given ``seed`` and ignores NaN entries (a NaN in either run drops the
item from paired statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pisces_cli.errors import UsageError

_CHUNK_ROWS = 256  # bootstrap replicates drawn per batch, bounding memory at 256 x n indices


@dataclass(frozen=True)
class BootstrapCI:
    """A statistic with its percentile-bootstrap interval.

    Attributes:
        estimate: the statistic on the data (mean, or mean difference B − A).
        low, high: interval bounds at level ``confidence``.
        n: number of finite items used. With n = 0 every value is NaN; with n = 1, low = high = estimate.
    """

    estimate: float
    low: float
    high: float
    n: int
    confidence: float


def _as_vector(values: object, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise UsageError(f"{name}: expected a 1-D sequence of numbers, got shape {array.shape}")
    return array


def _check_settings(n_boot: int, confidence: float) -> None:
    if n_boot < 1:
        raise UsageError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise UsageError(f"confidence must be in (0, 1), got {confidence}")


def _bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot]`` means of resamples (with replacement) of ``values`` ``[n]``."""
    rng = np.random.default_rng(seed)
    n = values.size
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, _CHUNK_ROWS):
        rows = min(_CHUNK_ROWS, n_boot - start)
        indices = rng.integers(0, n, size=(rows, n))
        means[start : start + rows] = values[indices].mean(axis=1)
    return means


def _percentile_ci(values: np.ndarray, n_boot: int, seed: int, confidence: float) -> BootstrapCI:
    n = values.size
    if n == 0:
        return BootstrapCI(float("nan"), float("nan"), float("nan"), 0, confidence)
    estimate = float(values.mean())
    if n == 1:
        return BootstrapCI(estimate, estimate, estimate, 1, confidence)
    means = _bootstrap_means(values, n_boot, seed)
    alpha = 1.0 - confidence
    low, high = np.percentile(means, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return BootstrapCI(estimate, float(low), float(high), n, confidence)


def bootstrap_ci(values: object, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95) -> BootstrapCI:
    """Mean of ``values`` with a percentile-bootstrap interval (NaNs dropped).

    Args:
        values: ``[n]`` numbers; NaN entries are ignored.
        n_boot: number of bootstrap resamples.
        seed: seed of ``numpy.random.default_rng``.
        confidence: interval level (0.95 → 2.5th and 97.5th percentiles of the resampled means).
    """
    _check_settings(n_boot, confidence)
    array = _as_vector(values, "values")
    return _percentile_ci(array[~np.isnan(array)], n_boot, seed, confidence)


def _paired(values_a: object, values_b: object) -> tuple[np.ndarray, np.ndarray]:
    a = _as_vector(values_a, "values_a")
    b = _as_vector(values_b, "values_b")
    if a.shape != b.shape:
        raise UsageError(
            f"paired statistics need matched items: got {a.size} values for A and {b.size} for B"
        )
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep]


def paired_bootstrap_ci(
    values_a: object, values_b: object, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> BootstrapCI:
    """Mean difference B − A over matched items with a paired percentile-bootstrap interval.

    Items are resampled as pairs (the per-item differences b_i − a_i are bootstrapped), so variation
    shared by both runs on the same item cancels. Items with NaN in either run are dropped.

    Args:
        values_a, values_b: ``[n]`` scores of runs A and B on the same items, in the same order.
    """
    _check_settings(n_boot, confidence)
    a, b = _paired(values_a, values_b)
    return _percentile_ci(b - a, n_boot, seed, confidence)


def win_rate(values_a: object, values_b: object) -> float:
    """Fraction of matched items where B scores higher than A; ties count ½. NaN if no finite pair.

    Args:
        values_a, values_b: ``[n]`` scores of runs A and B on the same items, in the same order.
    """
    a, b = _paired(values_a, values_b)
    if a.size == 0:
        return float("nan")
    return float((np.sum(b > a) + 0.5 * np.sum(b == a)) / a.size)
