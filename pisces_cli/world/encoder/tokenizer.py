"""Word-level tokenizer over the world vocabulary with ``[PAD]`` / ``[CLS]`` / ``[SEP]`` / ``[UNK]``.

A caption is lower-cased, split on anything that is not a letter, and encoded as
``[CLS] w_1 ... w_n [SEP]`` then right-padded with ``[PAD]``; words outside the vocabulary become ``[UNK]``
(lexical). The vocabulary is stored as ``vocab.json`` (a list of tokens; the id is the position).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from pisces_cli.atomic import atomic_write_json
from pisces_cli.errors import UsageError
from pisces_cli.world.captions import world_vocabulary

PAD, CLS, SEP, UNK = "[PAD]", "[CLS]", "[SEP]", "[UNK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, CLS, SEP, UNK)
VOCAB_FILE = "vocab.json"
_WORD_RE = re.compile(r"[a-z]+")


@dataclass
class EncodedCaptions:
    """``input_ids`` / ``attention_mask`` / ``lexical_mask`` ``[B, L]`` and readable ``token_strings [B][L]``."""

    input_ids: Tensor
    attention_mask: Tensor
    lexical_mask: Tensor
    token_strings: list[list[str]]


class WordTokenizer:
    """Maps captions to ids over a fixed token list (special tokens first)."""

    def __init__(self, tokens: list[str]) -> None:
        if list(tokens[: len(SPECIAL_TOKENS)]) != list(SPECIAL_TOKENS) or len(set(tokens)) != len(tokens):
            raise UsageError(
                f"world tokenizer: vocabulary must start with {list(SPECIAL_TOKENS)} and hold unique tokens"
            )
        self.tokens = list(tokens)
        self.index = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def for_world(cls) -> WordTokenizer:
        """The special tokens followed by :func:`pisces_cli.world.world_vocabulary`."""
        return cls([*SPECIAL_TOKENS, *world_vocabulary()])

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        """Read ``vocab.json`` (a JSON list of tokens)."""
        try:
            tokens = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"{path}: cannot read the world tokenizer vocabulary ({exc})") from exc
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise UsageError(f"{path}: expected a JSON list of token strings")
        return cls(tokens)

    def save(self, path: str | Path) -> None:
        """Write ``vocab.json`` atomically."""
        atomic_write_json(path, self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def words(self, caption: str) -> list[str]:
        """Lower-cased words of ``caption`` (punctuation and digits dropped)."""
        return _WORD_RE.findall(caption.lower())

    def encode(self, captions: list[str], max_length: int) -> EncodedCaptions:
        """Encode ``B`` captions padded to the longest (``<= max_length``, words beyond it are truncated)."""
        if isinstance(captions, str) or not captions:
            raise UsageError("world tokenizer: expected a non-empty list of caption strings")
        rows = []
        for caption in captions:
            words = self.words(caption)[: max_length - 2]
            rows.append([CLS, *(w if w in self.index else UNK for w in words), SEP])
        length = max(len(row) for row in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        attention = torch.zeros(len(rows), length, dtype=torch.bool)
        strings = []
        for b, row in enumerate(rows):
            ids[b, : len(row)] = torch.tensor([self.index[t] for t in row])
            attention[b, : len(row)] = True
            strings.append(row + [PAD] * (length - len(row)))
        lexical = attention & (ids != self.index[CLS]) & (ids != self.index[SEP])
        return EncodedCaptions(ids, attention, lexical, strings)
