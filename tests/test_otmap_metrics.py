"""Mutual kNN and distance Spearman on hand-made cases and against brute-force references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

from pisces_cli.errors import UsageError
from pisces_cli.ot.maps import distance_spearman, map_metrics, mutual_knn


def _brute_force_mknn(a: np.ndarray, b: np.ndarray, k: int) -> float:
    def neighbours(points: np.ndarray, row: int) -> set[int]:
        unit = points / np.linalg.norm(points, axis=1, keepdims=True)
        scores = [(float(unit[row] @ unit[other]), other) for other in range(len(points)) if other != row]
        scores.sort(key=lambda item: -item[0])
        return {other for _, other in scores[:k]}

    k = min(k, len(a) - 1)
    return float(np.mean([len(neighbours(a, i) & neighbours(b, i)) / k for i in range(len(a))]))


def test_otmap_mknn_hand_case_k1():
    # Rows 0, 1 and 3 have the same nearest neighbour in both clouds, row 2 does not.
    a = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, 0.1]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    # kNN_a: 0→1, 1→0, 2→3, 3→2.  kNN_b (cosine): 0→1, 1→0, 2→1 (closest to (0,1) is (1,0.1)), 3→2.
    assert mutual_knn(a, b, k=1) == pytest.approx(3 / 4)


def test_otmap_mknn_identical_scaled_and_capped():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(30, 8, generator=generator)
    assert mutual_knn(a, a, k=10) == 1.0
    assert mutual_knn(a, 5 * a, k=10) == 1.0  # cosine: scale-invariant
    assert mutual_knn(a[:4], torch.randn(4, 3, generator=generator), k=10) == 1.0  # k capped at N-1 = 3


def test_otmap_mknn_matches_brute_force():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(40, 6, generator=generator)
    b = a[:, :3] + 0.7 * torch.randn(40, 3, generator=generator)
    for k in (1, 5, 10):
        assert mutual_knn(a, b, k) == pytest.approx(_brute_force_mknn(a.numpy(), b.numpy(), k), abs=1e-12)


def test_otmap_mknn_rejects_bad_inputs():
    with pytest.raises(UsageError, match="equal N"):
        mutual_knn(torch.ones(3, 2), torch.ones(4, 2))
    with pytest.raises(UsageError, match="k must"):
        mutual_knn(torch.randn(3, 2), torch.randn(3, 2), k=0)


def test_otmap_spearman_hand_case():
    # Points on a line: distances of x are (1, 3, 2) for pairs (01, 02, 12); tx reverses the order of two.
    x = torch.tensor([[0.0], [1.0], [3.0]])
    tx = torch.tensor([[0.0], [2.5], [3.0]])  # distances (2.5, 3.0, 0.5): ranks (2, 3, 1) vs x's (1, 3, 2)
    # Spearman of ranks (1,3,2) vs (2,3,1): d = (-1, 0, 1), rho = 1 - 6*2/(3*8) = 0.5
    assert distance_spearman(x, tx) == pytest.approx(0.5)


def test_otmap_spearman_similarity_invariance_and_reference():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(25, 5, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=generator))
    assert distance_spearman(x, 3 * x @ rotation + 7) == pytest.approx(1.0)
    tx = torch.tanh(x @ torch.randn(5, 4, generator=generator))
    expected = spearmanr(pdist(x.numpy()), pdist(tx.numpy())).statistic
    assert distance_spearman(x, tx) == pytest.approx(expected, abs=1e-12)


def test_otmap_spearman_excludes_diagonal_and_duplicates():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(12, 3, generator=generator)
    tx = torch.randn(12, 3, generator=generator)  # unrelated: upper-triangle rho is near 0
    full_x = torch.cdist(x.double(), x.double()).flatten().numpy()
    full_tx = torch.cdist(tx.double(), tx.double()).flatten().numpy()
    reference_n_squared = spearmanr(full_x, full_tx).statistic
    ours = distance_spearman(x, tx)
    upper = [(i, j) for i, j in itertools.combinations(range(12), 2)]
    manual = spearmanr(
        [float((x[i] - x[j]).norm()) for i, j in upper], [float((tx[i] - tx[j]).norm()) for i, j in upper]
    )
    assert ours == pytest.approx(manual.statistic, abs=1e-9)
    assert reference_n_squared > ours + 0.05  # the N² version is inflated by its tied zero diagonal


def test_otmap_map_metrics_keys():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(20, 4, generator=generator)
    metrics = map_metrics(x, x, x, k=3)
    assert metrics == {"mknn_before": 1.0, "mknn_after": 1.0, "spearman": pytest.approx(1.0)}
