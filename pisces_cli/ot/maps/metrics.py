"""Held-out metrics of a transport map (docs/method.md §2.5; the Spearman fix: docs/method.md §9.9).

* :func:`mutual_knn` — neighbourhood agreement between two aligned clouds, in [0, 1].
* :func:`distance_spearman` — how well T preserves the geometry of X, in [−1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from pisces_cli.errors import UsageError


def _knn_indices(points: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k cosine neighbours of each row, self excluded: ``[N, D] → [N, k]`` indices."""
    unit = F.normalize(points.double(), dim=-1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(float("-inf"))
    return similarity.topk(k, dim=1).indices


def mutual_knn(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> float:
    """Mean mutual-kNN overlap of paired clouds ``a [N, Da]`` and ``b [N, Db]`` (row i of a ↔ row i of b).

    Both are L2-normalised; neighbours come from the within-modality cosine matrices with the diagonal
    set to −inf; k is capped at N − 1. Returns ``mean_i |kNN_a(i) ∩ kNN_b(i)| / k`` in [0, 1].
    Paper use: ``mknn_before = mutual_knn(X, Y)``, ``mknn_after = mutual_knn(T(X), Y)``.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise UsageError(
            f"mutual_knn needs [N, Da] and [N, Db] with equal N; got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    count = a.shape[0]
    if count < 2:
        raise UsageError("mutual_knn needs at least 2 paired samples")
    if k < 1:
        raise UsageError(f"mutual_knn k must be >= 1, got {k}")
    k = min(k, count - 1)
    knn_a = _knn_indices(a, k)
    knn_b = _knn_indices(b, k)
    # overlap[i] = number of j in knn_a[i] that also appear in knn_b[i]
    overlap = (knn_a.unsqueeze(2) == knn_b.unsqueeze(1)).any(dim=2).sum(dim=1)
    return float(overlap.double().mean() / k)


def distance_spearman(x: torch.Tensor, tx: torch.Tensor) -> float:
    """Spearman ρ between the pairwise Euclidean distances of ``x [N, Dx]`` and ``tx [N, Dt]``.

    Uses each unordered pair once (upper triangle i < j: ``N(N−1)/2`` values, no diagonal, no
    duplicates; ties get average ranks). The reference instead correlated the full N×N matrices, whose
    N zero diagonal entries and mirrored duplicates inflate ρ (method.md §9.9). Returns NaN when one
    side has constant distances.
    """
    if x.ndim != 2 or tx.ndim != 2 or x.shape[0] != tx.shape[0]:
        raise UsageError(
            f"distance_spearman needs [N, D] pairs with equal N; got {tuple(x.shape)}, {tuple(tx.shape)}"
        )
    if x.shape[0] < 3:
        raise UsageError("distance_spearman needs at least 3 samples")
    distances_x = torch.pdist(x.detach().double().cpu())
    distances_tx = torch.pdist(tx.detach().double().cpu())
    result = spearmanr(distances_x.numpy(), distances_tx.numpy())
    return float(result.statistic)


def map_metrics(x: torch.Tensor, y: torch.Tensor, tx: torch.Tensor, k: int = 10) -> dict[str, float]:
    """``{"mknn_before", "mknn_after", "spearman"}`` for paired held-out ``x``, ``y`` and ``tx = T(x)``."""
    return {
        "mknn_before": mutual_knn(x, y, k),
        "mknn_after": mutual_knn(tx, y, k),
        "spearman": distance_spearman(x, tx),
    }
