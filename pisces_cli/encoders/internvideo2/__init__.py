"""Native PyTorch InternVideo2-Stage2 (the PISCES reward model) and the loader of the released checkpoint.

The architecture follows the released InternVideo2-Stage2 model; the module docstrings say how. Public API:

* :class:`InternVideo2Config` (``stage2_1b()``, ``tiny()``, JSON round trip)
* :class:`InternVideo2Stage2` (``encode_vision``, ``encode_text``, ``fusion``, ``vtm_probability``,
  ``video_embedding``, ``text_embedding``, ``save_pretrained``, ``from_pretrained``)
* :func:`load_internvideo2` (released ``.pt``), :func:`convert_released_checkpoint`
* :func:`load_bert_tokenizer`, :func:`tokenize_captions`, :func:`preprocess_video`
"""

from __future__ import annotations

from pisces_cli.encoders.internvideo2.bert import CrossAttentionHook
from pisces_cli.encoders.internvideo2.checkpoint import (
    convert_released_checkpoint,
    interpolate_pos_embed,
    load_internvideo2,
)
from pisces_cli.encoders.internvideo2.config import InternVideo2Config, TextConfig, VisionConfig
from pisces_cli.encoders.internvideo2.model import InternVideo2Stage2
from pisces_cli.encoders.internvideo2.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_SIZE,
    preprocess_video,
)
from pisces_cli.encoders.internvideo2.tokenizer import (
    TokenizedCaptions,
    load_bert_tokenizer,
    tokenize_captions,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_SIZE",
    "CrossAttentionHook",
    "InternVideo2Config",
    "InternVideo2Stage2",
    "TextConfig",
    "TokenizedCaptions",
    "VisionConfig",
    "convert_released_checkpoint",
    "interpolate_pos_embed",
    "load_bert_tokenizer",
    "load_internvideo2",
    "preprocess_video",
    "tokenize_captions",
]
