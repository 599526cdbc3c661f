"""Importing reference-layout OT map checkpoints (torch.load weights_only)."""

from __future__ import annotations

import pytest
import torch

from pisces_cli.errors import UsageError
from pisces_cli.ot.maps import REFERENCE_KEYS, MapDims, NeuralMap, OTMapNet, import_reference_map


@pytest.fixture
def reference_net() -> OTMapNet:
    torch.manual_seed(0)
    return OTMapNet(12, 10, hidden_dim=16)


def _assert_same(state_dict: dict[str, torch.Tensor], net: OTMapNet) -> None:
    assert tuple(sorted(state_dict)) == tuple(sorted(REFERENCE_KEYS))
    for name, tensor in net.state_dict().items():
        assert torch.equal(state_dict[name], tensor)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {
            "format_version": 1,
            "step": 7,
            "T": sd,
            "f": {"net.0.weight": torch.zeros(1)},
            "args": {"lr": 1e-4},
        },
        lambda sd: {"T": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"ot_map": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
        lambda sd: {"model": sd},
    ],
    ids=["raw", "structured-T", "module-prefix", "ot_map-compiled", "model"],
)
def test_otmap_import_round_trips_reference_layouts(tmp_path, reference_net, wrap):
    path = tmp_path / "ot_map.pt"
    torch.save(wrap(reference_net.state_dict()), path)
    state_dict, dims = import_reference_map(path)
    _assert_same(state_dict, reference_net)
    assert dims == MapDims(input_dim=12, hidden_dim=16, output_dim=10)
    imported = NeuralMap.from_state_dict(state_dict, "none")
    x = torch.randn(3, 12)
    torch.testing.assert_close(imported(x), reference_net(x))


def test_otmap_import_prefers_first_container_key(tmp_path, reference_net):
    other = OTMapNet(12, 10, hidden_dim=16)
    path = tmp_path / "both.pt"
    torch.save({"model": other.state_dict(), "T": reference_net.state_dict()}, path)
    state_dict, _ = import_reference_map(path)
    _assert_same(state_dict, reference_net)


def test_otmap_import_mismatched_keys_lists_expected_and_found(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"T": {"layers.0.weight": torch.zeros(2, 2), "layers.0.bias": torch.zeros(2)}}, path)
    with pytest.raises(UsageError) as error:
        import_reference_map(path)
    message = str(error.value)
    assert "net.0.weight" in message and "net.6.bias" in message  # expected keys
    assert "layers.0.weight" in message and "layers.0.bias" in message  # found keys
    assert str(path) in message


def test_otmap_import_unknown_container_lists_top_level_keys(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": {"a": torch.zeros(1)}, "step": 3}, path)
    with pytest.raises(UsageError, match=r"found top-level keys \['step', 'weights'\]"):
        import_reference_map(path)


def test_otmap_import_inconsistent_shapes_and_missing_file(tmp_path, reference_net):
    state_dict = reference_net.state_dict()
    state_dict["net.3.weight"] = torch.zeros(16, 15)
    path = tmp_path / "bad_shape.pt"
    torch.save(state_dict, path)
    with pytest.raises(UsageError, match=r"net\.3\.weight: expected \[16, 16\], found \[16, 15\]"):
        import_reference_map(path)
    with pytest.raises(UsageError, match="not found"):
        import_reference_map(tmp_path / "absent.pt")
    (tmp_path / "empty.pt").write_bytes(b"")  # torch's own message for it is empty
    with pytest.raises(UsageError, match=r"empty\.pt: empty file \(0 bytes\)"):
        import_reference_map(tmp_path / "empty.pt")


def test_otmap_import_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"T": OTMapNet(4, hidden_dim=4)}, path)  # a whole module: not loadable with weights_only
    with pytest.raises(UsageError, match="weights_only"):
        import_reference_map(path)
