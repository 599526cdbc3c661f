"""Tiny random-weight CLIP / SigLIP / SigLIP2 checkpoints for tests, demos and smoke runs.

:func:`save_tiny_clip` writes a complete checkpoint directory (``config.json``,
``model.safetensors``, tokenizer files, ``preprocessor_config.json``) that the ``clip`` backend
loads through its normal loader, offline. Widths are 32, 2 layers, 32x32 images with 8x8 patches
(a 4x4 patch grid per frame). The weights are random: rewards computed with them are meaningless
numbers with the right shapes and gradients.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["TINY_WORDS", "TinyKind", "build_tiny_clip", "save_tiny_clip"]

TinyKind = Literal["clip", "siglip", "siglip2"]

#: words the tiny tokenizers know as whole tokens (anything else splits into characters / <unk>).
TINY_WORDS: tuple[str, ...] = (
    "a", "an", "the", "cat", "dog", "bird", "car", "person", "runs", "jumps", "flies", "drives",
    "walks", "on", "in", "over", "under", "grass", "road", "sky", "water", "red", "blue", "green",
    "small", "big", "slowly", "quickly", "and", "with",
)  # fmt: skip

_HIDDEN = 32
_LAYERS = 2
_HEADS = 4
_INTERMEDIATE = 64
_IMAGE_SIZE = 32
_PATCH = 8
_CLIP_PROJECTION = 16
_CLIP_TEXT_POSITIONS = 77
_SIGLIP_TEXT_POSITIONS = 16
_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _clip_tokenizer(words: tuple[str, ...] = TINY_WORDS) -> PreTrainedTokenizerBase:
    """A byte-pair CLIPTokenizer whose merges rebuild every word of ``words`` (default :data:`TINY_WORDS`)."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(letter, len(vocab))
        vocab.setdefault(letter + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    rank: dict[tuple[str, str], int] = {}
    for word in words:
        # Replay BPE on the word with the merges so far; where none applies, append the first pair.
        # A new merge ranks after every existing one, so it never changes how earlier words split.
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = [(rank.get(pair, len(merges)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
            best, index = min(pairs)
            pair = (symbols[index], symbols[index + 1])
            if best == len(merges):
                rank[pair] = len(merges)
                merges.append(pair)
            symbols = [*symbols[:index], pair[0] + pair[1], *symbols[index + 2 :]]
            vocab.setdefault(pair[0] + pair[1], len(vocab))
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=_CLIP_TEXT_POSITIONS,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def _siglip_tokenizer(words: tuple[str, ...] = TINY_WORDS) -> PreTrainedTokenizerBase:
    """A word-level fast tokenizer shaped like SigLIP's: lower-cased words, then ``</s>``, pad ``</s>``.

    SigLIP's own tokenizer needs a sentencepiece model file, which cannot be built offline.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=_SIGLIP_TEXT_POSITIONS,
        eos_token="</s>",
        pad_token="</s>",
        unk_token="<unk>",
        model_input_names=["input_ids"],
    )


def _preprocessor_config(kind: TinyKind) -> dict[str, object]:
    if kind == "clip":
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": _IMAGE_SIZE},
            "resample": 3,
            "do_center_crop": True,
            "crop_size": {"height": _IMAGE_SIZE, "width": _IMAGE_SIZE},
            "do_normalize": True,
            "image_mean": list(_OPENAI_CLIP_MEAN),
            "image_std": list(_OPENAI_CLIP_STD),
        }
    common = {
        "do_resize": True,
        "resample": 2,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    if kind == "siglip":
        return {
            "image_processor_type": "SiglipImageProcessor",
            "size": {"height": _IMAGE_SIZE, "width": _IMAGE_SIZE},
            **common,
        }
    return {
        "image_processor_type": "Siglip2ImageProcessor",
        "patch_size": _PATCH,
        "max_num_patches": (_IMAGE_SIZE // _PATCH) ** 2,
        **common,
    }


def build_tiny_clip(
    kind: TinyKind = "clip", seed: int = 0, words: Sequence[str] = ()
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, object]]:
    """Build a tiny random-weight dual encoder of family ``kind``.

    Args:
        kind: ``"clip"`` (CLIPModel), ``"siglip"`` (SiglipModel) or ``"siglip2"`` (Siglip2Model).
        seed: torch seed for the random weights (same seed, same weights).
        words: extra whole-word tokens besides :data:`TINY_WORDS` (e.g. the synthetic world's vocabulary).

    Returns:
        ``(model, tokenizer, preprocessor_config)``; the model is in eval mode, fp32.
    """
    vocabulary = tuple(dict.fromkeys([*TINY_WORDS, *(w.lower() for w in words if w.isalpha())]))
    if kind == "clip":
        from transformers import CLIPConfig, CLIPModel

        tokenizer = _clip_tokenizer(vocabulary)
        text = {
            "vocab_size": len(tokenizer.get_vocab()),
            "hidden_size": _HIDDEN,
            "intermediate_size": _INTERMEDIATE,
            "num_hidden_layers": _LAYERS,
            "num_attention_heads": _HEADS,
            "max_position_embeddings": _CLIP_TEXT_POSITIONS,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        vision = {
            "hidden_size": _HIDDEN,
            "intermediate_size": _INTERMEDIATE,
            "num_hidden_layers": _LAYERS,
            "num_attention_heads": _HEADS,
            "image_size": _IMAGE_SIZE,
            "patch_size": _PATCH,
        }
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=_CLIP_PROJECTION)
        torch.manual_seed(seed)
        model: PreTrainedModel = CLIPModel(config)
    elif kind in ("siglip", "siglip2"):
        tokenizer = _siglip_tokenizer(vocabulary)
        text = {
            "vocab_size": len(tokenizer.get_vocab()),
            "hidden_size": _HIDDEN,
            "intermediate_size": _INTERMEDIATE,
            "num_hidden_layers": _LAYERS,
            "num_attention_heads": _HEADS,
            "max_position_embeddings": _SIGLIP_TEXT_POSITIONS,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": None,
        }
        vision = {
            "hidden_size": _HIDDEN,
            "intermediate_size": _INTERMEDIATE,
            "num_hidden_layers": _LAYERS,
            "num_attention_heads": _HEADS,
            "patch_size": _PATCH,
        }
        torch.manual_seed(seed)
        if kind == "siglip":
            from transformers import SiglipConfig, SiglipModel

            vision["image_size"] = _IMAGE_SIZE
            model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        else:
            from transformers import Siglip2Config, Siglip2Model

            vision["num_patches"] = (_IMAGE_SIZE // _PATCH) ** 2
            model = Siglip2Model(Siglip2Config(text_config=text, vision_config=vision))
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}; expected clip, siglip or siglip2")
    model.eval()
    return model, tokenizer, _preprocessor_config(kind)


def save_tiny_clip(
    directory: str | Path, kind: TinyKind = "clip", seed: int = 0, words: Sequence[str] = ()
) -> Path:
    """Write a tiny checkpoint of family ``kind`` to ``directory`` (created if missing).

    The directory holds ``config.json``, ``model.safetensors``, the tokenizer files and a
    ``preprocessor_config.json``, like a checkpoint downloaded from the Hugging Face Hub.

    Returns:
        The directory path.
    """
    from pisces_cli.atomic import apply_default_mode
    from pisces_cli.runtime import quiet_model_loading

    quiet_model_loading()
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    model, tokenizer, preprocessor = build_tiny_clip(kind, seed=seed, words=words)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    apply_default_mode(target)  # transformers' safetensors files are 0600 whatever the umask
    return target
