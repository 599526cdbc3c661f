"""Networks, closed-form Gaussian map, identity map, save/load and normalisation of pisces_cli.ot.maps."""

from __future__ import annotations

import pytest
import torch

from pisces_cli.errors import UsageError
from pisces_cli.ot.maps import (
    REFERENCE_KEYS,
    GaussianMap,
    IdentityMap,
    NeuralMap,
    OTMapNet,
    PotentialNet,
    fit_gaussian_map,
    gaussian_monge_matrix,
    load_map,
    map_from_state,
    normalize_embeddings,
    save_map,
)


def _spd_matrix(dim: int, low: float, high: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    orthogonal, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return orthogonal @ torch.diag(torch.linspace(low, high, dim, dtype=torch.float64)) @ orthogonal.T


def test_otmap_networks_have_reference_keys_shapes_and_counts():
    transport = OTMapNet(512)
    potential = PotentialNet(512)
    assert tuple(transport.state_dict()) == REFERENCE_KEYS
    assert tuple(potential.state_dict()) == REFERENCE_KEYS
    assert sum(p.numel() for p in transport.parameters()) == 2_103_808
    assert sum(p.numel() for p in potential.parameters()) == 1_580_033
    assert isinstance(transport.net[1], torch.nn.ReLU) and isinstance(transport.net[2], torch.nn.LayerNorm)
    small_map, small_potential = OTMapNet(6, 4, hidden_dim=16), PotentialNet(6, hidden_dim=16)
    batch = torch.randn(5, 6)
    assert small_map(batch).shape == (5, 4)
    assert small_potential(batch).shape == (5,)


def test_otmap_gaussian_recovers_linear_monge_map():
    dim = 6
    matrix = _spd_matrix(dim, 0.5, 2.0, seed=1)
    shift = torch.linspace(-1.0, 1.0, dim, dtype=torch.float64)
    generator = torch.Generator().manual_seed(2)
    source_cov_root = _spd_matrix(dim, 0.6, 1.5, seed=3)
    x = torch.randn(20_000, dim, generator=generator, dtype=torch.float64) @ source_cov_root + 0.3
    y = x @ matrix + shift  # matrix is symmetric, so this is A x + b row-wise
    fitted = fit_gaussian_map(x.float(), y.float(), normalization="none")
    relative_matrix_error = (fitted.matrix.double() - matrix).norm() / matrix.norm()
    assert relative_matrix_error < 1e-2
    x_test = torch.randn(1000, dim, generator=generator, dtype=torch.float64) @ source_cov_root + 0.3
    target = x_test @ matrix + shift
    mapped = fitted(x_test.float()).double()
    relative_error = (mapped - target).norm() / (target - target.mean(0)).norm()
    assert relative_error < 1e-2


def test_otmap_gaussian_matrix_pushes_covariance_and_is_symmetric():
    cov_x = _spd_matrix(5, 0.2, 3.0, seed=4)
    cov_y = _spd_matrix(5, 0.5, 1.5, seed=5)
    matrix = gaussian_monge_matrix(cov_x, cov_y)
    torch.testing.assert_close(matrix, matrix.T)
    torch.testing.assert_close(matrix @ cov_x @ matrix, cov_y, rtol=1e-8, atol=1e-8)
    assert torch.linalg.eigvalsh(matrix).min() > 0


def test_otmap_gaussian_ridge_handles_rank_deficient_clouds():
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(4, 16, generator=generator)  # N < D: singular covariance
    y = torch.randn(4, 16, generator=generator)
    fitted = fit_gaussian_map(x, y, normalization="l2")
    assert torch.isfinite(fitted.matrix).all()
    with pytest.raises(UsageError, match="ridge"):
        fit_gaussian_map(x, y, ridge=-1.0)
    with pytest.raises(UsageError, match="equal D"):
        fit_gaussian_map(x, y[:, :8])


def test_otmap_identity_is_exact_and_apply_normalises():
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(7)) * 3
    assert torch.equal(IdentityMap("none")(x), x)
    assert torch.equal(IdentityMap("none").apply(x), x)
    applied = IdentityMap("l2").apply(x)
    torch.testing.assert_close(applied.norm(dim=1), torch.ones(7))
    torch.testing.assert_close(applied, x / x.norm(dim=1, keepdim=True))


def test_otmap_normalization_names_are_validated():
    with pytest.raises(UsageError, match="normalization"):
        normalize_embeddings(torch.ones(2, 2), "unit")
    with pytest.raises(UsageError, match="normalization"):
        IdentityMap("L2")


def test_otmap_apply_uses_recorded_convention_for_every_method():
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(9, 4, generator=generator) * 5
    net = OTMapNet(4, hidden_dim=8)
    neural = NeuralMap(net, "l2")
    torch.testing.assert_close(neural.apply(x), neural(x / x.norm(dim=1, keepdim=True)))
    gaussian = GaussianMap(torch.zeros(4), torch.ones(4), torch.eye(4) * 2, "l2")
    torch.testing.assert_close(gaussian.apply(x), 1 + 2 * x / x.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("method", ["identity", "gaussian", "neural"])
def test_otmap_save_load_round_trip(tmp_path, method):
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(50, 4, generator=generator)
    if method == "identity":
        original = IdentityMap("none")
    elif method == "gaussian":
        original = fit_gaussian_map(x, 2 * x + 1, normalization="none")
    else:
        original = NeuralMap(OTMapNet(4, hidden_dim=8), "l2")
    save_map(original, tmp_path / "map")
    loaded = load_map(tmp_path / "map")
    assert loaded.method == method
    assert loaded.config() == original.config()
    assert torch.equal(loaded.apply(x), original.apply(x))
    assert not list((tmp_path / "map").glob("*.tmp"))


def test_otmap_map_from_state_rejects_bad_configs(tmp_path):
    with pytest.raises(UsageError, match="method"):
        map_from_state({"method": "sinkhorn", "normalization": "l2"}, {})
    with pytest.raises(UsageError, match="normalization"):
        map_from_state({"method": "identity"}, {})
    with pytest.raises(UsageError, match="missing"):
        map_from_state({"method": "gaussian", "normalization": "l2"}, {"mean_x": torch.zeros(2)})
    with pytest.raises(UsageError, match="not found"):
        load_map(tmp_path / "absent")
