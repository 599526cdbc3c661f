"""Weight fingerprints: stable across reloads, sensitive to any weight change, cached per file state."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pisces_cli.encoders import fingerprint as fp
from pisces_cli.encoders import load_encoder
from pisces_cli.encoders.tiny_clip import save_tiny_clip
from pisces_cli.errors import UsageError


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("fp") / "tiny-clip", "clip", seed=0)


def _hand_hash(files: list[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(len(name.encode()).to_bytes(8, "little") + name.encode() + data)
    return digest.hexdigest()


def test_encoder_fingerprint_directory_matches_hand_hash(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.safetensors").write_bytes(b"bbb")
    (tmp_path / "sub" / "a.bin").write_bytes(b"aa")
    (tmp_path / "config.json").write_text("{}")  # not a weight file
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "partial.safetensors").write_bytes(b"ignored")
    expected = _hand_hash([("b.safetensors", b"bbb"), ("sub/a.bin", b"aa")])
    assert fp.hash_directory(tmp_path) == expected
    (tmp_path / "config.json").write_text('{"changed": true}')
    assert fp.hash_directory(tmp_path) == expected


def test_encoder_fingerprint_stable_across_reloads(clip_dir: Path) -> None:
    first = load_encoder("clip", str(clip_dir)).fingerprint()
    fp.clear_cache()
    second = load_encoder("clip", str(clip_dir)).fingerprint()
    assert first == second
    assert first["backend"] == "clip" and first["model"] == "tiny-clip"
    assert len(first["weights_sha256"]) == 64
    # same seed, separate save: byte-identical weights, same hash
    again = save_tiny_clip(clip_dir.parent / "again", "clip", seed=0)
    assert fp.hash_directory(again) == first["weights_sha256"]


def test_encoder_fingerprint_changes_with_weights(clip_dir: Path, tmp_path: Path) -> None:
    before = load_encoder("clip", str(clip_dir)).fingerprint()["weights_sha256"]
    other_seed = save_tiny_clip(tmp_path / "tiny-clip", "clip", seed=1)
    assert load_encoder("clip", str(other_seed)).fingerprint()["weights_sha256"] != before

    # one value changed, file replaced atomically at the same path: the cache must not hide it
    weights_path = other_seed / "model.safetensors"
    seed1_hash = fp.hash_directory(other_seed)
    tensors = load_file(weights_path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    tmp = weights_path.with_suffix(".tmp")
    save_file(tensors, tmp)
    os.replace(tmp, weights_path)
    assert fp.hash_directory(other_seed) != seed1_hash


def test_encoder_fingerprint_state_dict() -> None:
    torch.manual_seed(0)
    state = {"b.weight": torch.randn(3, 4), "a.bias": torch.randn(4), "scale": torch.tensor(2.0)}
    digest = fp.hash_state_dict(state)
    assert fp.hash_state_dict(dict(reversed(list(state.items())))) == digest  # order-independent
    assert fp.hash_state_dict({k: v.clone() for k, v in state.items()}) == digest
    changed = {k: v.clone() for k, v in state.items()}
    changed["b.weight"][2, 3] += 1e-3
    assert fp.hash_state_dict(changed) != digest
    assert fp.hash_state_dict({**state, "a.bias": state["a.bias"].double()}) != digest
    assert (
        fp.hash_state_dict({"renamed": state["b.weight"], "a.bias": state["a.bias"], "scale": state["scale"]})
        != digest
    )
    assert fp.hash_state_dict({**state, "b.weight": state["b.weight"].reshape(4, 3)}) != digest
    assert fp.hash_state_dict({**state, "b.weight": state["b.weight"].T.contiguous().T}) == digest


def test_encoder_fingerprint_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no weight file"):
        fp.hash_directory(tmp_path)
    with pytest.raises(UsageError, match="checkpoint directory"):
        fp.hash_directory(tmp_path / "missing")


def test_encoder_fingerprint_hub_snapshot_layout(clip_dir: Path, tmp_path: Path) -> None:
    """A Hub cache snapshot (files symlinked to blobs) is named ``org/name`` and hashes like its files."""
    from pisces_cli.encoders.clip import checkpoint_name

    assert checkpoint_name(clip_dir) == "tiny-clip"
    snapshot = tmp_path / "models--google--tiny-clip" / "snapshots" / "fedc0123"
    blobs = tmp_path / "models--google--tiny-clip" / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for item in clip_dir.iterdir():
        blob = blobs / f"blob-{item.name}"
        blob.write_bytes(item.read_bytes())
        (snapshot / item.name).symlink_to(blob)
    assert checkpoint_name(snapshot) == "google/tiny-clip"
    backend = load_encoder("clip", str(snapshot))
    assert backend.fingerprint() == {
        "backend": "clip",
        "model": "google/tiny-clip",
        "weights_sha256": fp.hash_directory(clip_dir),
    }
