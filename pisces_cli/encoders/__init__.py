"""Video-text reward encoders behind one interface (:class:`~pisces_cli.encoders.base.EncoderBackend`).

Backends are imported lazily by :func:`~pisces_cli.encoders.registry.load_encoder`; importing this
package loads neither transformers nor any model code.
"""

from __future__ import annotations

from pisces_cli.encoders.base import (
    EncoderBackend,
    SemanticResult,
    TextFeatures,
    TokenGeometry,
    VideoFeatures,
    VideoPreprocessing,
)
from pisces_cli.encoders.registry import KNOWN_BACKENDS, load_encoder

__all__ = [
    "KNOWN_BACKENDS",
    "EncoderBackend",
    "SemanticResult",
    "TextFeatures",
    "TokenGeometry",
    "VideoFeatures",
    "VideoPreprocessing",
    "load_encoder",
]
