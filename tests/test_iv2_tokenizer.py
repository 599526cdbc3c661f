"""BERT tokenizer helpers (a tiny in-memory vocabulary, no downloads) and video preprocessing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pisces_cli.encoders.internvideo2 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_bert_tokenizer,
    preprocess_video,
    tokenize_captions,
)
from pisces_cli.errors import UsageError

WORDS = ["a", "cat", "dog", "runs", "on", "the", "grass", "jumps", "over", "red", "ball", "##s", ","]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bert-tiny-vocab")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return directory


def test_iv2_tokenizer_pads_to_longest_and_marks_lexical_tokens(tokenizer_dir: Path) -> None:
    tokenizer = load_bert_tokenizer(tokenizer_dir)
    tokens = tokenize_captions(tokenizer, ["A cat runs on the grass", "Dogs jump"])
    assert tokens.token_strings[0] == ["[CLS]", "a", "cat", "runs", "on", "the", "grass", "[SEP]"]
    assert tokens.token_strings[1] == ["[CLS]", "dog", "##s", "[UNK]", "[SEP]", "[PAD]", "[PAD]", "[PAD]"]
    assert tokens.input_ids.shape == (2, 8)
    assert tokens.attention_mask.tolist() == [[1] * 8, [1] * 5 + [0] * 3]
    assert tokens.lexical_mask.tolist() == [
        [False] + [True] * 6 + [False],
        [False, True, True, True, False, False, False, False],
    ]
    assert (
        tokens.input_ids[0, 0] == tokenizer.cls_token_id and tokens.input_ids[1, 4] == tokenizer.sep_token_id
    )


def test_iv2_tokenizer_truncates_at_max_length(tokenizer_dir: Path) -> None:
    tokenizer = load_bert_tokenizer(tokenizer_dir)
    tokens = tokenize_captions(tokenizer, ["a red ball " * 20], max_length=6)
    assert tokens.token_strings[0] == ["[CLS]", "a", "red", "ball", "a", "[SEP]"]
    assert tokens.lexical_mask.sum() == 4


def test_iv2_tokenizer_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        load_bert_tokenizer(tmp_path / "absent")
    with pytest.raises(UsageError, match="vocab.txt"):
        load_bert_tokenizer(tmp_path)


def test_iv2_preprocess_resizes_short_side_crops_center_and_normalises() -> None:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 3, 20, 36, generator=generator)
    out = preprocess_video(pixels, size=10)
    assert out.shape == (2, 3, 3, 10, 10)
    flat = pixels.reshape(6, 3, 20, 36)
    resized = F.interpolate(flat, size=(10, 18), mode="bicubic", align_corners=False, antialias=True)
    cropped = resized[..., :, 4:14]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out.reshape(6, 3, 10, 10), (cropped - mean) / std)
    # A constant mid-grey frame maps to (0.5 - mean) / std per channel.
    grey = preprocess_video(torch.full((1, 1, 3, 12, 12), 0.5), size=10)
    torch.testing.assert_close(
        grey[0, 0, :, 5, 5], (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    )


def test_iv2_preprocess_random_crop_is_shared_by_all_frames_and_differentiable() -> None:
    pixels = torch.rand(1, 4, 3, 10, 30, generator=torch.Generator().manual_seed(1))
    pixels[:, 1:] = pixels[:, :1]  # identical frames stay identical after one shared crop
    leaf = pixels.clone().requires_grad_(True)
    out = preprocess_video(leaf, size=10, crop="random", generator=torch.Generator().manual_seed(3))
    for frame in range(1, 4):
        torch.testing.assert_close(out[:, frame], out[:, 0], rtol=0, atol=0)
    out.sum().backward()
    assert leaf.grad is not None
    kept_columns = (leaf.grad[0, 0].abs().sum(dim=(0, 1)) > 0).nonzero().flatten()
    assert (
        len(kept_columns) == 10 and int(kept_columns[-1] - kept_columns[0]) == 9
    )  # no resize at short side 10
    with pytest.raises(UsageError, match="crop"):
        preprocess_video(pixels, crop="left")
