"""BERT tokenizer of InternVideo2 (``bert-large-uncased`` vocabulary, lower-cased) from a local directory.

Captions are padded only to the longest caption of the batch (BERT then runs on the real length; pads are
masked with -10000, so the [CLS] output does not depend on the padded length beyond float noise) and
truncated at ``max_length`` (the reference uses 300 with token OT, 40 without). Lexical tokens are the real
tokens minus [CLS], [SEP] and [PAD].
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pisces_cli.errors import UsageError

DEFAULT_MAX_LENGTH = 300


@dataclass
class TokenizedCaptions:
    """``input_ids``/``attention_mask``/``lexical_mask`` [B, L] (L = longest caption, ≤ max_length);
    ``token_strings`` [B][L] (pads included as "[PAD]")."""

    input_ids: Tensor
    attention_mask: Tensor
    lexical_mask: Tensor
    token_strings: list[list[str]]


def load_bert_tokenizer(directory: str | os.PathLike[str]) -> Any:
    """Load a ``BertTokenizer`` (lower-case) from a local directory holding ``vocab.txt`` (or tokenizer files)."""
    from transformers import BertTokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(
            f"{directory}: tokenizer directory not found (expected a local bert-large-uncased copy)"
        )
    if not any((directory / name).is_file() for name in ("vocab.txt", "tokenizer.json")):
        raise UsageError(f"{directory}: no vocab.txt or tokenizer.json in the tokenizer directory")
    try:
        tokenizer = BertTokenizer.from_pretrained(str(directory), do_lower_case=True, local_files_only=True)
    except Exception as error:  # noqa: BLE001 - any load failure is a bad directory
        raise UsageError(f"{directory}: cannot load a BERT tokenizer ({error})") from error
    vocab_file = directory / "vocab.txt"
    if (
        vocab_file.is_file()
    ):  # read the file: transformers appends absent special tokens to the loaded vocabulary
        vocab = set(vocab_file.read_text(encoding="utf-8").splitlines())
        absent = [token for token in ("[CLS]", "[SEP]", "[PAD]", "[UNK]") if token not in vocab]
        if absent:
            raise UsageError(
                f"{vocab_file}: lacks BERT's {', '.join(absent)} ({len(vocab)} distinct lines): not a "
                "bert-large-uncased vocab.txt (empty, or of another tokenizer?)"
            )
    return tokenizer


def check_vocabulary_fits(tokenizer: Any, directory: Path, vocab_size: int, *, released: bool) -> None:
    """UsageError when the tokenizer's ids do not index the model's word embeddings (``vocab_size`` rows).

    A released checkpoint was trained with bert-large-uncased, so its vocabulary must have exactly
    ``vocab_size`` tokens: a smaller one (a cased BERT vocabulary, say) gives valid but wrong ids and silently
    wrong text features. A pisces export may use a shorter vocabulary (its tokenizer is saved with it).
    """
    size = len(tokenizer)
    if size > vocab_size or (released and size != vocab_size):
        raise UsageError(
            f"{directory}: {size} tokens, but the model's word embedding table has {vocab_size} rows "
            "(bert-large-uncased's vocab.txt has them one to one)"
        )


def lexical_token_mask(
    input_ids: Tensor, attention_mask: Tensor, special_ids: list[int] | set[int]
) -> Tensor:
    """[B, L] bool: real tokens whose id is not a special id ([CLS], [SEP], [PAD])."""
    special = torch.tensor(sorted(special_ids), dtype=input_ids.dtype, device=input_ids.device)
    return attention_mask.bool() & ~torch.isin(input_ids, special)


def tokenize_captions(
    tokenizer: Any, captions: list[str], max_length: int = DEFAULT_MAX_LENGTH
) -> TokenizedCaptions:
    """Tokenise ``captions`` with [CLS] … [SEP], padding to the longest and truncating at ``max_length``."""
    if not captions:
        raise UsageError("tokenize_captions needs at least one caption")
    encoded = tokenizer(
        list(captions), padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
    )
    input_ids = encoded["input_ids"].long()
    attention_mask = encoded["attention_mask"].long()
    special_ids = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    lexical = lexical_token_mask(input_ids, attention_mask, special_ids)
    strings = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in input_ids]
    return TokenizedCaptions(input_ids, attention_mask, lexical, strings)
