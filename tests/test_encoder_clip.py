"""The ``clip`` reward-encoder backend on tiny random CLIP / SigLIP / SigLIP2 checkpoints.

Every model is saved to disk by the tiny factory and reloaded through ``load_encoder``, so the real
loader path (config, safetensors, tokenizer, preprocessor config) is exercised.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from pisces_cli.encoders import EncoderBackend, TokenGeometry, load_encoder
from pisces_cli.encoders.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipBackend
from pisces_cli.encoders.tiny_clip import save_tiny_clip
from pisces_cli.errors import UsageError
from pisces_cli.ot import TokenOTSettings

CAPTIONS = ["a small red car drives quickly on the road", "a dog runs", "the bird flies over water and grass"]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_encoders")
    return {kind: save_tiny_clip(root / kind, kind, seed=0) for kind in ("clip", "siglip", "siglip2")}


@pytest.fixture(scope="module")
def backends(tiny_dirs: dict[str, Path]) -> dict[str, ClipBackend]:
    loaded = {kind: load_encoder("clip", str(path)) for kind, path in tiny_dirs.items()}
    assert all(isinstance(b, ClipBackend) for b in loaded.values())
    return loaded  # type: ignore[return-value]


def _pixels(batch: int, frames: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 3, size, size, generator=generator)


# ---------------------------------------------------------------------------------------------- loading


def test_encoder_loads_as_backend_interface(backends: dict[str, ClipBackend]) -> None:
    for backend in backends.values():
        assert isinstance(backend, EncoderBackend)
        assert backend.name == "clip"
        assert not any(p.requires_grad for p in backend.model.parameters())
        assert not backend.model.training
    assert backends["clip"].embed_dim == 16  # projection_dim
    assert backends["siglip"].embed_dim == 32  # vision width, no projection


def test_encoder_preprocessing_from_saved_config(tiny_dirs: dict[str, Path], backends) -> None:
    clip = backends["clip"].preprocessing
    assert (clip.size, clip.mean, clip.std, clip.interpolation) == (
        32,
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
        "bicubic",
    )
    assert clip.num_frames is None
    siglip = backends["siglip"].preprocessing
    assert (siglip.size, siglip.mean, siglip.std, siglip.interpolation) == (
        32,
        (0.5,) * 3,
        (0.5,) * 3,
        "bilinear",
    )
    assert backends["siglip2"].preprocessing.size == 32  # patch 8 * sqrt(16 patches)


def test_encoder_preprocessing_follows_edited_config(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(tiny_dirs["clip"], edited)
    config_path = edited / "preprocessor_config.json"
    config = json.loads(config_path.read_text())
    config.update(
        image_mean=[0.1, 0.2, 0.3], image_std=0.25, resample=2, crop_size={"height": 48, "width": 48}
    )
    config_path.write_text(json.dumps(config))
    backend = load_encoder("clip", str(edited))
    prep = backend.preprocessing
    assert (prep.size, prep.mean, prep.std, prep.interpolation) == (
        48,
        (0.1, 0.2, 0.3),
        (0.25,) * 3,
        "bilinear",
    )
    # 48 px is not the tower's native 32 px: positions are interpolated, the grid grows to 6 x 6.
    video = backend.encode_video(_pixels(1, 2, size=48))
    assert video.geometry == TokenGeometry(2, 6, 6, False)
    assert video.tokens.shape == (1, 72, 16)

    config["crop_size"] = {"height": 36, "width": 36}  # not a multiple of the patch size 8
    config_path.write_text(json.dumps(config))
    with pytest.raises(UsageError, match="multiple of the patch size"):
        load_encoder("clip", str(edited))

    config_path.unlink()  # no preprocessor config: native size and the standard CLIP constants
    prep = load_encoder("clip", str(edited)).preprocessing
    assert (prep.size, prep.mean, prep.std, prep.interpolation) == (
        32,
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
        "bicubic",
    )


def test_encoder_load_errors(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="local checkpoint directory"):
        load_encoder("clip", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="unknown option"):
        load_encoder("clip", str(tiny_dirs["clip"]), frames=8)
    bad = tmp_path / "bert"
    shutil.copytree(tiny_dirs["clip"], bad)
    config = json.loads((bad / "config.json").read_text())
    config["model_type"] = "bert"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match="model_type 'bert' is not supported"):
        load_encoder("clip", str(bad))
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_dirs["clip"], pickled)
    (pickled / "model.safetensors").unlink()
    with pytest.raises(UsageError, match="safetensors"):
        load_encoder("clip", str(pickled))


# ---------------------------------------------------------------------------------------------- features


@pytest.mark.parametrize("kind", ["clip", "siglip", "siglip2"])
def test_encoder_feature_shapes(backends: dict[str, ClipBackend], kind: str) -> None:
    backend = backends[kind]
    dim = backend.embed_dim
    text = backend.encode_text(CAPTIONS)
    length = text.tokens.shape[1]
    assert text.global_embedding.shape == (3, dim)
    assert text.tokens.shape == (3, length, dim)
    assert text.attention_mask.shape == text.lexical_mask.shape == (3, length)
    assert text.attention_mask.dtype == text.lexical_mask.dtype == torch.bool
    assert [len(row) for row in text.token_strings] == [length] * 3
    video = backend.encode_video(_pixels(2, 3))
    assert video.global_embedding.shape == (2, dim)
    assert video.tokens.shape == (2, 3 * 16, dim)
    assert video.frame_embeddings is not None and video.frame_embeddings.shape == (2, 3, dim)
    assert video.geometry == TokenGeometry(num_frames=3, grid_h=4, grid_w=4, has_cls=False)
    assert video.geometry.num_tokens == 48
    with pytest.raises(UsageError, match=r"pixels \[B, T, 3, 32, 32\]"):
        backend.encode_video(_pixels(1, 2, size=24))


def test_encoder_clip_text_masks_and_strings(backends: dict[str, ClipBackend]) -> None:
    backend = backends["clip"]
    text = backend.encode_text(CAPTIONS)
    words = [caption.split() for caption in CAPTIONS]
    # the tiny vocabulary knows every word: BOS + words + EOS, padded with EOS to the longest caption
    assert text.attention_mask.sum(-1).tolist() == [len(w) + 2 for w in words]
    assert text.lexical_mask.sum(-1).tolist() == [len(w) for w in words]
    for row, mask, caption_words in zip(text.token_strings, text.lexical_mask, words, strict=True):
        assert [tok for tok, keep in zip(row, mask.tolist(), strict=True) if keep] == [
            w + "</w>" for w in caption_words
        ]
        assert row[0] == "<|startoftext|>"


def test_encoder_siglip_text_padded_to_max_length(backends: dict[str, ClipBackend]) -> None:
    backend = backends["siglip"]
    text = backend.encode_text(CAPTIONS)
    assert text.tokens.shape[1] == backend.max_text_length == 16
    assert text.attention_mask.sum(-1).tolist() == [len(c.split()) + 1 for c in CAPTIONS]  # words + </s>
    assert text.lexical_mask.sum(-1).tolist() == [len(c.split()) for c in CAPTIONS]
    assert text.token_strings[1][:4] == ["a", "dog", "runs", "</s>"]


@pytest.mark.parametrize("kind", ["clip", "siglip", "siglip2"])
def test_encoder_text_global_matches_get_text_features(backends: dict[str, ClipBackend], kind: str) -> None:
    backend = backends[kind]
    text = backend.encode_text(CAPTIONS)
    ids = text.extra["input_ids"]
    with torch.no_grad():
        if kind == "clip":
            reference = backend.model.get_text_features(
                input_ids=ids, attention_mask=text.attention_mask.long()
            )
        else:  # SigLIP is run as trained: padded to max length, no attention mask
            reference = backend.model.get_text_features(input_ids=ids)
    torch.testing.assert_close(text.global_embedding, reference.pooler_output)
    # the pooled token's projection is the global embedding: tokens live in the same joint space
    pooled_position = (ids == backend.tokenizer.eos_token_id).int().argmax(-1) if kind == "clip" else -1
    pooled_tokens = text.tokens[torch.arange(3), pooled_position]
    torch.testing.assert_close(pooled_tokens, text.global_embedding)


def test_encoder_clip_video_matches_image_features(backends: dict[str, ClipBackend]) -> None:
    """Quality-style cosine = cos(mean_t get_image_features(frame_t), get_text_features(caption))."""
    backend = backends["clip"]
    pixels = _pixels(2, 4, seed=1)
    video = backend.encode_video(pixels)
    text = backend.encode_text(CAPTIONS[:2])
    model = backend.model
    with torch.no_grad():
        per_frame = torch.stack(
            [model.get_image_features(pixel_values=pixels[:, t]).pooler_output for t in range(4)], dim=1
        )
        hand_video = per_frame.mean(dim=1)
        hand_text = model.get_text_features(
            input_ids=text.extra["input_ids"], attention_mask=text.attention_mask.long()
        ).pooler_output
        torch.testing.assert_close(video.frame_embeddings, per_frame)
        torch.testing.assert_close(video.global_embedding, hand_video)
        hand_cos = (hand_video @ hand_text.T).diagonal() / (hand_video.norm(dim=-1) * hand_text.norm(dim=-1))
        ours = F.cosine_similarity(video.global_embedding, text.global_embedding, dim=-1)
        torch.testing.assert_close(ours, hand_cos)
        # patch tokens: the visual projection of post-layernormed patch states, frame-major
        hidden = model.vision_model(pixel_values=pixels[1, 2:3]).last_hidden_state
        projected = model.visual_projection(model.vision_model.post_layernorm(hidden))
        torch.testing.assert_close(video.tokens[1, 2 * 16 : 3 * 16], projected[0, 1:])
        torch.testing.assert_close(
            projected[0, 0], video.frame_embeddings[1, 2]
        )  # CLS path = image embedding


@pytest.mark.parametrize("kind", ["siglip", "siglip2"])
def test_encoder_siglip_video_matches_image_features(backends: dict[str, ClipBackend], kind: str) -> None:
    backend = backends[kind]
    pixels = _pixels(1, 3, seed=2)
    video = backend.encode_video(pixels)
    model = backend.model
    frames = pixels[0]
    with torch.no_grad():
        if kind == "siglip":
            reference = model.get_image_features(pixel_values=frames)
        else:  # SigLIP2's own patch layout, from its image processor module
            from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

            patches = torch.from_numpy(np.stack([convert_image_to_patches(f.numpy(), 8) for f in frames]))
            reference = model.get_image_features(
                pixel_values=patches,
                pixel_attention_mask=torch.ones(3, 16, dtype=torch.long),
                spatial_shapes=torch.tensor([[4, 4]] * 3),
            )
    torch.testing.assert_close(video.frame_embeddings[0], reference.pooler_output)
    torch.testing.assert_close(video.tokens[0], reference.last_hidden_state.reshape(48, -1))
    torch.testing.assert_close(video.global_embedding[0], reference.pooler_output.mean(0))


# ---------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("kind", ["clip", "siglip2"])
def test_encoder_gradients_reach_pixels(backends: dict[str, ClipBackend], kind: str) -> None:
    backend = backends[kind]
    text = backend.encode_text(CAPTIONS[:2])
    assert not text.tokens.requires_grad and not text.global_embedding.requires_grad
    pixels = _pixels(2, 2, seed=3).requires_grad_(True)
    video = backend.encode_video(pixels)
    quality = F.cosine_similarity(video.global_embedding, text.global_embedding, dim=-1).sum()
    (quality_grad,) = torch.autograd.grad(quality, pixels)
    assert torch.isfinite(quality_grad).all() and quality_grad.abs().sum() > 0

    video = backend.encode_video(pixels)
    result = backend.semantic_reward(text, video, TokenOTSettings())
    assert result.reward.requires_grad and not result.plan.requires_grad
    (semantic_grad,) = torch.autograd.grad(result.reward.sum(), pixels)
    assert torch.isfinite(semantic_grad).all()
    assert (semantic_grad[0].abs().sum() > 0) and (semantic_grad[1].abs().sum() > 0)
    # each pair's reward depends only on its own clip
    video = backend.encode_video(pixels)
    (only_first,) = torch.autograd.grad(backend.semantic_reward(text, video, None).reward[0], pixels)
    assert only_first[0].abs().sum() > 0 and only_first[1].abs().sum() == 0


# ---------------------------------------------------------------------------------------------- semantic reward


def _hand_token_cosines(backend: ClipBackend, caption: str, pixels: torch.Tensor) -> torch.Tensor:
    """``[N, M]`` cosines between the lexical tokens of one caption and one clip's tokens, by hand."""
    text = backend.encode_text([caption])
    video = backend.encode_video(pixels[None])
    rows = text.tokens[0][text.lexical_mask[0]]
    return F.cosine_similarity(rows[:, None, :], video.tokens[0][None, :, :], dim=-1).detach()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_encoder_no_ot_arm_is_mean_token_cosine(backends: dict[str, ClipBackend], kind: str) -> None:
    backend = backends[kind]
    pixels = _pixels(3, 2, seed=4)
    result = backend.semantic_reward(backend.encode_text(CAPTIONS), backend.encode_video(pixels), None)
    expected = torch.stack(
        [_hand_token_cosines(backend, c, p).mean() for c, p in zip(CAPTIONS, pixels, strict=True)]
    )
    torch.testing.assert_close(result.reward.detach(), expected, rtol=1e-5, atol=1e-6)
    assert result.diagnostics == {}
    text = backend.encode_text(CAPTIONS)
    assert (result.plan.sum(-1)[~text.lexical_mask] == 0).all()
    torch.testing.assert_close(result.plan.sum((-2, -1)), torch.ones(3))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("mode", ["unbalanced", "partial"])
def test_encoder_batched_semantic_equals_one_at_a_time(
    backends: dict[str, ClipBackend], kind: str, mode: str
) -> None:
    backend = backends[kind]
    settings = TokenOTSettings(mode=mode, mass=0.9 if mode == "unbalanced" else 0.5)
    pixels = _pixels(3, 2, seed=5)
    batched = backend.semantic_reward(backend.encode_text(CAPTIONS), backend.encode_video(pixels), settings)
    for b, caption in enumerate(CAPTIONS):
        text = backend.encode_text([caption])
        single = backend.semantic_reward(text, backend.encode_video(pixels[b : b + 1]), settings)
        torch.testing.assert_close(batched.reward[b], single.reward[0], rtol=1e-5, atol=1e-6)
        length = text.tokens.shape[1]
        torch.testing.assert_close(batched.plan[b, :length], single.plan[0], rtol=1e-4, atol=1e-7)
        assert batched.plan[b, length:].abs().sum() == 0
        for name, value in batched.diagnostics.items():
            assert value.shape == (3,)
            assert torch.allclose(
                value[b].float(), single.diagnostics[name][0].float(), rtol=1e-4, atol=1e-6
            ), name


@pytest.mark.filterwarnings("ignore:If reg_type = entropy:UserWarning")
def test_encoder_ot_reward_matches_pot_reference(backends: dict[str, ClipBackend]) -> None:
    """The OT arm against a from-scratch cost (method.md §4.4) and POT's unbalanced Sinkhorn."""
    backend = backends["clip"]
    caption, frames = CAPTIONS[0], 3
    pixels = _pixels(1, frames, seed=6)[0]
    settings = TokenOTSettings(gamma=0.2, eta=0.2, eps=0.05, mass=0.9, max_iter=5000, tol=1e-9, check_every=1)
    result = backend.semantic_reward(
        backend.encode_text([caption]), backend.encode_video(pixels[None]), settings
    )

    cos = _hand_token_cosines(backend, caption, pixels).double().numpy()  # [N, M]
    n, m = cos.shape
    attention = np.exp(backend.logit_scale * (cos - cos.max(1, keepdims=True)))
    attention /= attention.sum(1, keepdims=True)
    frame_of = np.repeat(np.arange(frames), 16).astype(float)
    grid = np.linspace(0, 1, 4)
    positions = np.tile(np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(16, 2), (frames, 1))
    tau = attention @ frame_of
    pi = attention @ positions
    cost = (
        np.clip(1 - cos, 0, 2)
        + 0.2 * np.abs(tau[:, None] - frame_of[None]) / (frames - 1)
        + 0.2 * np.linalg.norm(pi[:, None, :] - positions[None], axis=-1) / math.sqrt(2)
    )
    cost = (cost - cost.min()) / (cost.max() - cost.min())
    rho = 0.05 * 0.9 / (1 - 0.9)
    plan = ot.unbalanced.sinkhorn_unbalanced(
        np.full(n, 1 / n), np.full(m, 1 / m), cost, reg=0.05, reg_m=rho, reg_type="entropy",
        numItermax=10000, stopThr=1e-13,
    )  # fmt: skip
    expected_reward = (plan * cos).sum() / plan.sum()

    ours = result.plan[0][backend.encode_text([caption]).lexical_mask[0]].double().numpy()
    np.testing.assert_allclose(ours, plan, rtol=1e-3, atol=1e-9)
    assert result.reward.item() == pytest.approx(expected_reward, rel=1e-4)
    assert result.diagnostics["ot_mass"].item() == pytest.approx(plan.sum(), rel=1e-3)
    assert bool(result.diagnostics["ot_converged"].item())
    # the OT plan weights the cosines differently from the uniform (no-OT) arm
    assert abs(expected_reward - cos.mean()) > 1e-4


def test_encoder_semantic_reward_input_errors(backends: dict[str, ClipBackend]) -> None:
    backend = backends["clip"]
    video = backend.encode_video(_pixels(2, 1))
    with pytest.raises(UsageError, match="3 captions for 2 videos"):
        backend.semantic_reward(backend.encode_text(CAPTIONS), video, None)
    with pytest.raises(UsageError, match="no lexical token"):
        backend.semantic_reward(backend.encode_text(["a dog", ""]), video, None)
    with pytest.raises(UsageError, match="non-empty list"):
        backend.encode_text([])
    with pytest.raises(UsageError, match="mode"):
        backend.semantic_reward(backend.encode_text(CAPTIONS[:2]), video, TokenOTSettings(mode="fast"))


def test_encoder_to_dtype(tiny_dirs: dict[str, Path]) -> None:
    backend = load_encoder("clip", str(tiny_dirs["siglip"]), dtype=torch.float64)
    assert backend.dtype == torch.float64
    video = backend.encode_video(_pixels(1, 2))
    assert video.tokens.dtype == torch.float64
    result = backend.semantic_reward(backend.encode_text(CAPTIONS[:1]), video, TokenOTSettings())
    assert result.reward.dtype == torch.float32 and torch.isfinite(result.reward).all()
    assert backend.to("cpu", torch.float32) is backend and backend.dtype == torch.float32


def test_encoder_long_captions_truncated(
    tiny_dirs: dict[str, Path], backends: dict[str, ClipBackend]
) -> None:
    long_caption = " ".join(["a red car drives on the road"] * 20)  # 140 words
    text = backends["clip"].encode_text([long_caption, "a dog"])
    assert text.tokens.shape[1] == 77
    assert text.token_strings[0][0] == "<|startoftext|>" and text.token_strings[0][-1] == "<|endoftext|>"
    assert text.lexical_mask[0].sum() == 75
    short = load_encoder("clip", str(tiny_dirs["clip"]), max_text_length=8)
    assert short.encode_text([long_caption]).lexical_mask.sum() == 6
    with pytest.raises(UsageError, match="max_text_length"):
        load_encoder("clip", str(tiny_dirs["clip"]), max_text_length=500)


def test_encoder_describe(backends: dict[str, ClipBackend]) -> None:
    summary = backends["siglip"].describe()
    assert summary["backend"] == "clip" and summary["model"] == "siglip"
    assert summary["embed_dim"] == 32
    assert summary["preprocessing"] == {
        "num_frames": None,
        "size": 32,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "interpolation": "bilinear",
    }
    json.dumps(summary)
