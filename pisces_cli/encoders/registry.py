"""Find and load a reward-encoder backend by name, importing its heavy code only on use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

    from pisces_cli.encoders.base import EncoderBackend

__all__ = ["KNOWN_BACKENDS", "load_encoder"]

#: backend name -> (module, loader function name); ``None`` = reserved, not loadable yet.
_BACKEND_LOADERS: dict[str, tuple[str, str] | None] = {
    "clip": ("pisces_cli.encoders.clip", "load_clip_backend"),
    "internvideo2": ("pisces_cli.encoders.internvideo2.backend", "load_backend"),
    "world": ("pisces_cli.world.encoder.backend", "load_world_backend"),
}

#: every backend name ``load_encoder`` knows, loadable or reserved.
KNOWN_BACKENDS: tuple[str, ...] = tuple(_BACKEND_LOADERS)


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
    if backend not in _BACKEND_LOADERS:
        raise UsageError(
            f"unknown reward encoder backend {backend!r}; expected one of: {', '.join(KNOWN_BACKENDS)}"
        )
    target = _BACKEND_LOADERS[backend]
    if target is None:
        raise UsageError(f"reward encoder backend {backend!r} is reserved and cannot be loaded by path yet")
    module_name, loader_name = target
    try:
        module = importlib.import_module(module_name)
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
    loader = getattr(module, loader_name, None)
    if loader is None:
        raise UsageError(f"reward encoder backend {backend!r}: module {module_name} has no {loader_name}()")
    return loader(path_or_id, device=device, dtype=dtype, **options)
