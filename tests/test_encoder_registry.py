"""``load_encoder``: backend names, lazy imports, errors."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from pisces_cli.encoders import KNOWN_BACKENDS, load_encoder, registry
from pisces_cli.errors import UsageError


def test_encoder_unknown_backend_lists_known() -> None:
    assert KNOWN_BACKENDS == ("clip", "internvideo2", "world")
    with pytest.raises(UsageError, match="unknown reward encoder backend 'blip'.*clip, internvideo2, world"):
        load_encoder("blip", "/nowhere")


def test_encoder_world_backend_needs_a_checkpoint_dir() -> None:
    with pytest.raises(UsageError, match="world"):
        load_encoder("world", "/nowhere")


def test_encoder_missing_backend_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        registry._BACKEND_LOADERS, "internvideo2", ("pisces_cli.encoders.no_such_backend", "load")
    )
    with pytest.raises(UsageError, match="'internvideo2' is not available.*no_such_backend"):
        load_encoder("internvideo2", "/nowhere")


def test_encoder_registry_passes_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []
    fake = types.ModuleType("pisces_fake_backend")
    fake.load_backend = lambda path, **kwargs: calls.append((path, kwargs)) or "loaded"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pisces_fake_backend", fake)
    monkeypatch.setitem(registry._BACKEND_LOADERS, "internvideo2", ("pisces_fake_backend", "load_backend"))
    assert load_encoder("internvideo2", "/ckpt", device="cpu", dtype=None, num_frames=8) == "loaded"
    assert calls == [("/ckpt", {"device": "cpu", "dtype": None, "num_frames": 8})]


def test_encoder_package_import_is_light() -> None:
    code = (
        "import sys, pisces_cli.encoders, pisces_cli.encoders.registry; "
        "print(sorted(m for m in ('transformers', 'ot', 'pisces_cli.encoders.clip') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
    )
    assert out.stdout.strip() == "[]"


def test_encoder_backend_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("pisces_fake_backend_with_dep")

    def _import(name: str, *args, **kwargs):
        if name == "pisces_fake_backend_with_dep":
            raise ModuleNotFoundError("No module named 'decord'", name="decord")
        return original(name, *args, **kwargs)

    original = registry.importlib.import_module
    monkeypatch.setattr(registry.importlib, "import_module", _import)
    monkeypatch.setitem(registry._BACKEND_LOADERS, "internvideo2", (fake.__name__, "load_backend"))
    with pytest.raises(UsageError, match="needs the Python package 'decord'"):
        load_encoder("internvideo2", "/nowhere")
