"""Video-text reward encoders behind one interface (:class:`~pisces_cli.encoders.base.EncoderBackend`).

Backends are imported lazily by :func:`~pisces_cli.encoders.registry.load_encoder`, and the names below on first
use: importing this package (or ``pisces_cli.encoders.registry``) loads neither torch, transformers nor any model
code.
"""

from __future__ import annotations

from pisces_cli.lazy_exports import lazy_exports

_WHERE = {
    "EncoderBackend": "pisces_cli.encoders.base",
    "SemanticResult": "pisces_cli.encoders.base",
    "TextFeatures": "pisces_cli.encoders.base",
    "TokenGeometry": "pisces_cli.encoders.base",
    "VideoFeatures": "pisces_cli.encoders.base",
    "VideoPreprocessing": "pisces_cli.encoders.base",
    "KNOWN_BACKENDS": "pisces_cli.encoders.registry",
    "load_encoder": "pisces_cli.encoders.registry",
}

__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
