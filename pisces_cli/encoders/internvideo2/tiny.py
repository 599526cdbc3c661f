"""A tiny random-weight InternVideo2-Stage2 export (config.json + model.safetensors + vocab.txt).

For tests and the offline demo: the tiny config (:meth:`InternVideo2Config.tiny`) (16×16 patch grid kept so the
token geometry matches the 1B model's), saved through the real export format and loaded through the
real loader. Weights are drawn so activations stay in a useful range (norm gains near 1, layer scale
~0.5, other weights N(0, 0.15²)).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from pisces_cli.encoders.internvideo2.config import InternVideo2Config
from pisces_cli.encoders.internvideo2.model import InternVideo2Stage2

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def randomize_weights(model: InternVideo2Stage2, seed: int = 0, scale: float = 0.15) -> InternVideo2Stage2:
    """Fill every parameter with seeded noise: norm gains 1 ± 0.1, layer scale 0.5 ± 0.1, others N(0, scale²).

    (The default init leaves position embeddings at zero and layer scale tiny, which hides bugs.)
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith(
                ("norm1.weight", "norm2.weight", "q_norm.weight", "k_norm.weight", "LayerNorm.weight")
            ):
                parameter.copy_(1.0 + 0.1 * noise)
            elif name.endswith("gamma"):
                parameter.copy_(0.5 + 0.1 * noise)
            else:
                parameter.copy_(scale * noise)
    return model.eval()


def build_tiny_internvideo2(
    seed: int = 0, num_frames: int = 4, config: InternVideo2Config | None = None
) -> InternVideo2Stage2:
    """The tiny model (or ``config``) with seeded weights."""
    return randomize_weights(
        InternVideo2Stage2(config or InternVideo2Config.tiny(num_frames=num_frames)), seed
    )


def save_tiny_internvideo2(
    directory: str | Path, words: Iterable[str], *, seed: int = 0, num_frames: int = 4
) -> Path:
    """Write the tiny export with a BERT WordPiece vocabulary of ``words`` (lower-cased, deduplicated)."""
    directory = Path(directory)
    model = build_tiny_internvideo2(seed, num_frames)
    vocab_size = model.config.text.vocab_size
    vocab = list(SPECIAL_TOKENS)
    for word in words:
        token = word.lower()
        if token not in vocab:
            vocab.append(token)
    if len(vocab) > vocab_size:
        raise ValueError(f"{len(vocab)} words do not fit the tiny vocabulary of {vocab_size}")
    model.save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return directory
