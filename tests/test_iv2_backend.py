"""InternVideo2 reward-encoder backend on a tiny exported model (no downloads)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from pisces_cli.encoders.internvideo2 import InternVideo2Config, InternVideo2Stage2
from pisces_cli.encoders.internvideo2.backend import InternVideo2Backend
from pisces_cli.encoders.internvideo2.tiny import build_tiny_internvideo2
from pisces_cli.encoders.registry import load_encoder
from pisces_cli.errors import UsageError
from pisces_cli.ot import TokenOTSettings

WORDS = ["a", "cat", "dog", "runs", "on", "the", "grass", "jumps", "over", "red", "ball", "##s"]


def micro_config() -> InternVideo2Config:
    """Tiny config with a 4×4 grid (8 px, patch 2) and 2 frames; fusion layers 2 and 3."""
    config = InternVideo2Config.tiny(num_frames=2)
    return InternVideo2Config(
        vision=dataclasses.replace(config.vision, img_size=8), text=config.text, embed_dim=config.embed_dim
    )


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("iv2-export")
    model = build_tiny_internvideo2(0, config=micro_config())
    model.save_pretrained(directory)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def backend(export_dir: Path) -> InternVideo2Backend:
    return load_encoder("internvideo2", str(export_dir))


def clips(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


CAPTIONS = ["a cat runs on the grass", "dogs jump over a red ball"]


def test_iv2_backend_describes_itself(backend: InternVideo2Backend, export_dir: Path) -> None:
    from pisces_cli.encoders.fingerprint import hash_directory

    assert backend.fingerprint() == {
        "backend": "internvideo2",
        "model": export_dir.name,
        "weights_sha256": hash_directory(export_dir),
    }
    prep = backend.preprocessing
    assert (prep.num_frames, prep.size, prep.interpolation) == (2, 8, "bicubic")
    assert prep.mean == (0.485, 0.456, 0.406) and prep.std == (0.229, 0.224, 0.225)
    assert backend.embed_dim == 16


def test_iv2_backend_features(backend: InternVideo2Backend) -> None:
    text = backend.encode_text(CAPTIONS)
    assert text.tokens.shape == (2, 9, 32) and text.global_embedding.shape == (2, 16)
    assert text.token_strings[1][:4] == ["[CLS]", "dog", "##s", "[UNK]"]
    assert text.lexical_mask.sum(-1).tolist() == [6, 7]
    torch.testing.assert_close(text.global_embedding, backend.model.text_proj(text.tokens[:, 0]))
    pixels = clips(2).requires_grad_(True)
    video = backend.encode_video(pixels)
    assert video.tokens.shape == (2, 1 + 2 * 16, 64) and video.global_embedding.shape == (2, 16)
    assert video.geometry.num_tokens == 33 and video.geometry.has_cls
    video.global_embedding.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_iv2_backend_no_ot_reward_is_the_vtm_probability(backend: InternVideo2Backend) -> None:
    text, video = backend.encode_text(CAPTIONS), backend.encode_video(clips(2))
    result = backend.semantic_reward(text, video, None)
    model = backend.model
    with torch.no_grad():
        fused = model.fusion(text.extra["text_embeds"], text.attention_mask.long(), video.tokens)
    torch.testing.assert_close(result.reward, model.vtm_probability(fused[:, 0]))
    assert result.plan is None and result.reward.shape == (2,)


def test_iv2_backend_ot_changes_the_reward_and_returns_a_plan(backend: InternVideo2Backend) -> None:
    text = backend.encode_text(CAPTIONS)
    pixels = clips(2).requires_grad_(True)
    video = backend.encode_video(pixels)
    plain = backend.semantic_reward(text, video, None).reward
    result = backend.semantic_reward(text, video, TokenOTSettings())
    assert (result.reward - plain).abs().max() > 1e-4
    assert result.plan is not None and result.plan.shape == (2, 9, 33) and not result.plan.requires_grad
    rows = result.plan.sum(-1)
    torch.testing.assert_close(rows[text.lexical_mask], torch.ones(13), rtol=0, atol=1e-5)
    assert (rows[~text.lexical_mask] == 0).all()
    assert set(result.diagnostics) == {"ot_iterations", "ot_mass", "ot_marginal_error", "ot_converged"}
    assert all(value.shape == (2,) for value in result.diagnostics.values())
    result.reward.sum().backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0


def test_iv2_backend_last_fusion_layer_prior_cannot_change_the_reward(backend: InternVideo2Backend) -> None:
    """method.md §9.5: the default skips the last fusion layer; adding it gives the same VTM reward."""
    text, video = backend.encode_text(CAPTIONS), backend.encode_video(clips(2))
    assert backend.ot_layers(TokenOTSettings()) == (2,)
    default = backend.semantic_reward(text, video, TokenOTSettings()).reward
    with_last = backend.semantic_reward(text, video, TokenOTSettings(layers=(2, 3))).reward
    only_last = backend.semantic_reward(text, video, TokenOTSettings(layers=(3,))).reward
    plain = backend.semantic_reward(text, video, None).reward
    torch.testing.assert_close(with_last, default, rtol=0, atol=1e-6)
    torch.testing.assert_close(only_last, plain, rtol=0, atol=1e-6)
    with pytest.raises(UsageError, match="not fusion layers"):
        backend.semantic_reward(text, video, TokenOTSettings(layers=(1,)))


def test_iv2_backend_batched_ot_equals_one_pair_at_a_time(backend: InternVideo2Backend) -> None:
    captions = ["a cat runs on the grass over the red ball", "dogs jump"]
    pixels = clips(2, seed=4)
    settings = TokenOTSettings(check_every=1)
    batched = backend.semantic_reward(backend.encode_text(captions), backend.encode_video(pixels), settings)
    for index in range(2):
        single = backend.semantic_reward(
            backend.encode_text(captions[index : index + 1]),
            backend.encode_video(pixels[index : index + 1]),
            settings,
        )
        torch.testing.assert_close(batched.reward[index : index + 1], single.reward, rtol=0, atol=1e-4)
        length = single.plan.shape[1]
        torch.testing.assert_close(batched.plan[index, :length], single.plan[0], rtol=0, atol=1e-3)


def test_iv2_backend_load_errors(export_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown option"):
        load_encoder("internvideo2", str(export_dir), frames=3)
    with pytest.raises(UsageError, match="not found"):
        load_encoder("internvideo2", str(tmp_path / "absent"))
    with pytest.raises(UsageError, match="tokenizer"):
        InternVideo2Stage2(micro_config()).save_pretrained(tmp_path / "no-vocab")
        load_encoder("internvideo2", str(tmp_path / "no-vocab"))
    eight = load_encoder("internvideo2", str(export_dir), num_frames=3, tokenizer_dir=str(export_dir))
    assert eight.preprocessing.num_frames == 3
    assert eight.encode_video(torch.zeros(1, 3, 3, 8, 8)).tokens.shape == (1, 49, 64)


def test_iv2_backend_inference_and_autograd_fusion_agree(backend: InternVideo2Backend) -> None:
    """Outside autograd the hook fuses in place; under autograd into a copy. Both give the same reward."""
    captions = ["a cat runs on the grass over the red ball", "dogs jump"]
    text = backend.encode_text(captions)
    pixels = clips(2, seed=5)
    with torch.no_grad():
        inference = backend.semantic_reward(text, backend.encode_video(pixels), TokenOTSettings())
    trained = backend.semantic_reward(
        text, backend.encode_video(pixels.clone().requires_grad_(True)), TokenOTSettings()
    )
    assert trained.reward.requires_grad
    torch.testing.assert_close(trained.reward.detach(), inference.reward, rtol=0, atol=1e-6)
    torch.testing.assert_close(trained.plan, inference.plan, rtol=0, atol=1e-6)
