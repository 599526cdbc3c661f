"""Closed-form Monge map between Gaussian fits of two point clouds (the ``gaussian`` method).

For μ_x, Σ_x and μ_y, Σ_y fitted to x ``[N, D]`` and y ``[M, D]`` (sample mean, unbiased covariance),
the quadratic-cost optimal map between N(μ_x, Σ_x) and N(μ_y, Σ_y) is affine:

    T(x) = μ_y + A (x − μ_x),
    A = Σ_x^{-1/2} (Σ_x^{1/2} Σ_y Σ_x^{1/2})^{1/2} Σ_x^{-1/2}          (symmetric PSD).

**Ridge.** Both covariances are regularised as ``Σ + ridge · (tr Σ / D) · I`` before the formula, i.e.
``ridge`` is relative to the mean eigenvalue (default 1e-6). This keeps Σ_x^{-1/2} finite when the cloud
is rank-deficient (N ≤ D, or embeddings confined to a subspace) and costs a bias of order ``ridge`` in A.
All linear algebra runs in float64 through symmetric eigendecompositions.
"""

from __future__ import annotations

import torch

from pisces_cli.errors import UsageError
from pisces_cli.ot.maps.transport import GaussianMap, normalize_embeddings

DEFAULT_RIDGE = 1e-6


def _symmetric_power(matrix: torch.Tensor, power: float) -> torch.Tensor:
    """``matrix^power`` for a symmetric PSD ``[D, D]`` matrix (eigenvalues clamped at 0 first)."""
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    eigenvalues = eigenvalues.clamp_min(0.0)
    if power < 0:
        eigenvalues = eigenvalues.clamp_min(torch.finfo(matrix.dtype).tiny)
    return (eigenvectors * eigenvalues.pow(power)) @ eigenvectors.T


def _regularised_covariance(points: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean = points.mean(dim=0)
    centred = points - mean
    covariance = centred.T @ centred / max(points.shape[0] - 1, 1)
    dim = points.shape[1]
    scale = covariance.diagonal().sum() / dim
    return mean, covariance + ridge * scale * torch.eye(dim, dtype=points.dtype, device=points.device)


def gaussian_monge_matrix(cov_x: torch.Tensor, cov_y: torch.Tensor) -> torch.Tensor:
    """A = Σx^{-1/2}(Σx^{1/2} Σy Σx^{1/2})^{1/2}Σx^{-1/2} for SPD ``[D, D]`` inputs (no extra ridge)."""
    sqrt_x = _symmetric_power(cov_x, 0.5)
    inv_sqrt_x = _symmetric_power(cov_x, -0.5)
    middle = _symmetric_power(sqrt_x @ cov_y @ sqrt_x, 0.5)
    matrix = inv_sqrt_x @ middle @ inv_sqrt_x
    return (matrix + matrix.T) / 2


def fit_gaussian_map(
    x: torch.Tensor, y: torch.Tensor, normalization: str = "l2", ridge: float = DEFAULT_RIDGE
) -> GaussianMap:
    """Fit the Gaussian Monge map from source ``x [N, D]`` to target ``y [M, D]``.

    Both clouds are first normalised per ``normalization`` (the convention recorded with the map).
    Returns a :class:`GaussianMap` holding float32 ``mean_x [D]``, ``mean_y [D]``, ``matrix [D, D]``.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise UsageError(
            f"gaussian map needs x [N, D] and y [M, D] with equal D; got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise UsageError("gaussian map needs at least 2 samples on each side")
    if ridge < 0:
        raise UsageError(f"ridge must be >= 0, got {ridge}")
    x64 = normalize_embeddings(x.detach().double(), normalization)
    y64 = normalize_embeddings(y.detach().double(), normalization)
    mean_x, cov_x = _regularised_covariance(x64, ridge)
    mean_y, cov_y = _regularised_covariance(y64, ridge)
    matrix = gaussian_monge_matrix(cov_x, cov_y)
    return GaussianMap(mean_x.float().cpu(), mean_y.float().cpu(), matrix.float().cpu(), normalization, ridge)
