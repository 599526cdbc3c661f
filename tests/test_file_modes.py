"""Files others can read (the umask decides, for every file type) and full disks that name the file."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from pisces_cli import atomic
from pisces_cli.artifacts import ArtifactHeader, save_artifact
from pisces_cli.cli.main import main
from pisces_cli.errors import PiscesRuntimeError


@contextlib.contextmanager
def umask(mask: int):
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640)])
def test_every_atomic_write_keeps_the_umask(tmp_path: Path, mask: int, expected: int):
    from pisces_cli.io.writer import write_mp4

    with umask(mask):
        assert atomic.current_umask() == mask
        atomic.atomic_write_safetensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)})
        save_artifact(tmp_path / "a.safetensors", {"x": torch.ones(3)}, ArtifactHeader(schema="pisces.test"))
        atomic.atomic_write_json(tmp_path / "j.json", {"a": 1})
        atomic.atomic_write_text(tmp_path / "t.txt", "hi")
        write_mp4(tmp_path / "v.mp4", np.zeros((2, 16, 16, 3), np.uint8), 8)
    for name in ("t.safetensors", "a.safetensors", "j.json", "t.txt", "v.mp4"):
        assert mode(tmp_path / name) == expected, name


@pytest.mark.parametrize(("mask", "files", "folders"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_checkpoints_and_saved_models_get_the_umask_modes(
    tmp_path: Path, mask: int, files: int, folders: int
):
    from safetensors.torch import save_file

    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.training.checkpoint import publish, staging_dir

    with umask(mask):
        staging = staging_dir(tmp_path / "run", 3)
        (staging / "training_state").mkdir()
        save_file({"x": torch.zeros(1)}, str(staging / "adapter_model.safetensors"))  # safetensors: 0600
        save_file({"x": torch.zeros(1)}, str(staging / "training_state" / "optimizer.safetensors"))
        os.chmod(staging / "training_state", 0o700)
        final = publish(staging, tmp_path / "run", 3)
        model_dir = save_tiny_clip(tmp_path / "enc", "clip", seed=0)
    assert mode(final / "adapter_model.safetensors") == files
    assert mode(final / "training_state" / "optimizer.safetensors") == files
    assert mode(final / "training_state") == folders and mode(final) == folders
    weights = [p for p in model_dir.iterdir() if p.suffix == ".safetensors"]
    assert weights and all(mode(p) == files for p in weights)


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_names_the_file_and_keeps_the_previous_version(tmp_path: Path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic.atomic_write_json(target, {"version": 1})
    monkeypatch.setattr(Path, "write_bytes", _disk_full)
    with pytest.raises(PiscesRuntimeError) as info:
        atomic.atomic_write_json(target, {"version": 2})
    assert str(target) in str(info.value) and "no space left" in str(info.value)
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left behind


def test_a_full_disk_during_a_safetensors_write_keeps_the_previous_file(tmp_path: Path, monkeypatch):
    import safetensors.torch

    target = tmp_path / "ot_map.safetensors"
    save_artifact(target, {"x": torch.ones(2)}, ArtifactHeader(schema="pisces.test"))
    before = target.read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    with pytest.raises(PiscesRuntimeError, match="ot_map.safetensors: no space left"):
        save_artifact(target, {"x": torch.zeros(2)}, ArtifactHeader(schema="pisces.test"))
    assert target.read_bytes() == before


def test_safetensors_own_disk_full_error_names_the_file_too(tmp_path: Path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*_args, **_kwargs):  # what safetensors really raises: its own type, not an OSError
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    target = tmp_path / "embeddings-00000.safetensors"
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(PiscesRuntimeError, match="embeddings-00000.safetensors: no space left"):
        save_artifact(target, {"x": torch.zeros(2)}, ArtifactHeader(schema="pisces.test"))
    assert list(tmp_path.iterdir()) == []


def test_appending_to_a_full_disk_names_the_file(tmp_path: Path):
    with pytest.raises(OSError) as info, atomic.appending("/dev/full") as write:  # every write: ENOSPC
        write('{"video": "a.mp4"}\n')
    assert info.value.errno == errno.ENOSPC and info.value.filename == "/dev/full"
    rows = tmp_path / "scores.jsonl"
    with atomic.appending(rows) as write:
        write("a\n")
        write("ü\n")
    assert rows.read_text(encoding="utf-8") == "a\nü\n"


def test_a_full_disk_through_the_cli_exits_1_naming_the_file(tmp_path: Path, monkeypatch, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"subject_consistency": 0.9, "motion_smoothness": 0.95}))
    out = tmp_path / "out.json"
    out.write_text("previous\n")
    monkeypatch.setattr(Path, "write_bytes", _disk_full)
    assert main(["eval", "aggregate", str(results), "-o", str(out)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"cannot write {out}: no space left on the device" in err and "Traceback" not in err
    monkeypatch.undo()
    assert out.read_text() == "previous\n"
