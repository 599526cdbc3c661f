"""Find and load a reward-encoder backend by name, importing its heavy code only on use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

    from pisces_cli.encoders.base import EncoderBackend, EncoderIdentity

__all__ = ["KNOWN_BACKENDS", "encoder_identity", "load_encoder"]

#: backend name -> (module, loader function name); ``None`` = reserved, not loadable yet.
_BACKEND_LOADERS: dict[str, tuple[str, str] | None] = {
    "clip": ("pisces_cli.encoders.clip", "load_clip_backend"),
    "internvideo2": ("pisces_cli.encoders.internvideo2.backend", "load_backend"),
    "world": ("pisces_cli.world.encoder.backend", "load_world_backend"),
}

#: every backend name ``load_encoder`` knows, loadable or reserved.
KNOWN_BACKENDS: tuple[str, ...] = tuple(_BACKEND_LOADERS)


def _backend_module(backend: str) -> tuple[Any, str]:
    """The imported module of ``backend`` and the name of its loader function."""
    if backend not in _BACKEND_LOADERS:
        raise UsageError(
            f"unknown reward encoder backend {backend!r}; expected one of: {', '.join(KNOWN_BACKENDS)}"
        )
    target = _BACKEND_LOADERS[backend]
    if target is None:
        raise UsageError(f"reward encoder backend {backend!r} is reserved and cannot be loaded by path yet")
    module_name, loader_name = target
    try:
        return importlib.import_module(module_name), loader_name
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise UsageError(
                f"reward encoder backend {backend!r} is not available in this installation "
                f"(module {module_name} not found)"
            ) from exc
        raise UsageError(
            f"reward encoder backend {backend!r} needs the Python package {missing!r}, which is not installed"
        ) from exc


def encoder_identity(backend: str, path: str, *, weights_sha256: bool = False) -> EncoderIdentity:
    """Fingerprint and embedding width of the checkpoint ``path`` without loading it.

    Reads only config files (``weights_sha256=True`` also hashes the weight files, streaming them). Each
    backend module provides ``checkpoint_identity(path, weights_sha256=...)``, which its loader uses too.

    Raises:
        UsageError: unknown backend, a missing path or unreadable config.
    """
    module, _loader = _backend_module(backend)
    return module.checkpoint_identity(path, weights_sha256=weights_sha256)


def load_encoder(
    backend: str,
    path_or_id: str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **options: Any,
) -> EncoderBackend:
    """Load the reward encoder ``backend`` from a local checkpoint.

    Args:
        backend: one of :data:`KNOWN_BACKENDS` (``"clip"`` covers CLIP, SigLIP and SigLIP2).
        path_or_id: local checkpoint directory (pisces never downloads).
        device: where the model runs.
        dtype: parameter dtype (``None`` keeps the checkpoint's).
        **options: backend-specific options, passed through.

    Raises:
        UsageError: unknown backend, a backend whose module is not available, or a bad checkpoint.
    """
    module, loader_name = _backend_module(backend)
    loader = getattr(module, loader_name, None)
    if loader is None:
        raise UsageError(
            f"reward encoder backend {backend!r}: module {module.__name__} has no {loader_name}()"
        )
    return loader(path_or_id, device=device, dtype=dtype, **options)
