"""The world encoder: tokenizer, hard negatives, a short training run, the ``world`` backend and its rewards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pisces_cli.encoders.base import EncoderBackend
from pisces_cli.encoders.fingerprint import hash_directory, hash_state_dict
from pisces_cli.encoders.registry import load_encoder
from pisces_cli.errors import UsageError
from pisces_cli.ot import TokenOTSettings
from pisces_cli.world import make_clips, parse_caption, sample_scene, world_vocabulary
from pisces_cli.world.encoder import WordTokenizer, WorldEncoderConfig, train_world_encoder
from pisces_cli.world.encoder.data import corrupted_spec, hard_negative_captions
from pisces_cli.world.spec import OPPOSITE_DIRECTION

FRAMES, SIZE = 8, 32
#: A narrower model than the default so the module's training run stays quick.
SMALL = WorldEncoderConfig(vocab_size=len(WordTokenizer.for_world()), width=32, embed_dim=32, text_layers=1)
CAPTIONS = [
    "a red circle moves left on a gray background",
    "two blue squares rise, while a green diamond falls",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world_encoder")
    metrics = train_world_encoder(
        out, seed=3, steps=16, clips=16, frames=FRAMES, size=SIZE, batch_size=8, eval_clips=8, log_every=8,
        config=SMALL,
    )  # fmt: skip
    return out, metrics


@pytest.fixture(scope="module")
def backend(trained: tuple[Path, dict]) -> EncoderBackend:
    return load_encoder("world", str(trained[0]))


def world_pixels(n: int, seed: int = 11) -> torch.Tensor:
    """``[n, T, 3, S, S]`` world clips normalised for the encoder ((x - 0.5) / 0.5)."""
    clips = np.stack([f for f, _, _ in make_clips(seed, n, frames=FRAMES, size=SIZE)])
    return (torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float() / 255.0 - 0.5) / 0.5


# ----------------------------------------------------------------------------- tokenizer / data


def test_word_tokenizer_encodes_world_captions() -> None:
    tokenizer = WordTokenizer.for_world()
    assert tokenizer.tokens[:4] == ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    assert tokenizer.tokens[4:] == world_vocabulary()
    encoded = tokenizer.encode(["A red circle, while zebras", "two squares"], max_length=48)
    assert encoded.token_strings[0] == ["[CLS]", "a", "red", "circle", "while", "[UNK]", "[SEP]"]
    assert encoded.token_strings[1] == ["[CLS]", "two", "squares", "[SEP]", "[PAD]", "[PAD]", "[PAD]"]
    assert encoded.attention_mask.tolist() == [[True] * 7, [True] * 4 + [False] * 3]
    assert encoded.lexical_mask.tolist() == [
        [False, True, True, True, True, True, False],
        [False, True, True, False, False, False, False],
    ]
    assert encoded.input_ids[1, 4:].tolist() == [0, 0, 0]
    truncated = tokenizer.encode(["a red circle moves left"], max_length=4)
    assert truncated.token_strings[0] == ["[CLS]", "a", "red", "[SEP]"]
    with pytest.raises(UsageError):
        tokenizer.encode("a red circle", max_length=8)  # type: ignore[arg-type]


def test_word_tokenizer_round_trips_through_vocab_json(tmp_path: Path) -> None:
    tokenizer = WordTokenizer.for_world()
    tokenizer.save(tmp_path / "vocab.json")
    assert WordTokenizer.load(tmp_path / "vocab.json").tokens == tokenizer.tokens
    (tmp_path / "bad.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(UsageError, match="must start with"):
        WordTokenizer.load(tmp_path / "bad.json")


@pytest.mark.parametrize("seed", range(6))
def test_hard_negatives_change_exactly_the_named_attribute(seed: int) -> None:
    spec = sample_scene(seed)
    for kind in ("wrong_color", "wrong_count", "wrong_direction"):
        edited = corrupted_spec(spec, kind, np.random.default_rng(seed))
        if edited is None:
            assert kind == "wrong_count" and sum(g.count for g in spec.groups) == 1
            continue
        changed = [(a, b) for a, b in zip(spec.groups, edited.groups, strict=True) if a != b]
        assert len(changed) == 1
        before, after = changed[0]
        if kind == "wrong_color":
            assert after.color not in {g.color for g in spec.groups}
            assert (after.shape, after.count, after.direction) == (
                before.shape,
                before.count,
                before.direction,
            )
        elif kind == "wrong_count":
            assert abs(after.count - before.count) == 1 and after.color == before.color
        else:
            expected = OPPOSITE_DIRECTION.get(before.direction)
            assert after.direction == expected if expected else after.direction != "still"
    negatives = hard_negative_captions(spec, seed, 0)
    assert 2 <= len(negatives) <= 3
    for text in negatives:
        assert parse_caption(text).objects  # still a world caption


def test_config_round_trip_and_validation() -> None:
    config = WorldEncoderConfig(vocab_size=100)
    assert WorldEncoderConfig.from_dict(config.to_dict()) == config
    with pytest.raises(UsageError, match="unknown key"):
        WorldEncoderConfig.from_dict({**config.to_dict(), "depth": 3})
    with pytest.raises(UsageError, match="patch"):
        WorldEncoderConfig(vocab_size=100, patch=6).validate()


# ----------------------------------------------------------------------------- training


def test_training_lowers_the_loss_and_reports_held_out_metrics(trained: tuple[Path, dict]) -> None:
    out, metrics = trained
    assert metrics["steps"] == 16 and len(metrics["losses"]) == 2
    assert metrics["loss_last"] < metrics["loss_first"]
    held = metrics["held_out"]
    assert held["retrieval_candidates"] == 8 and held["retrieval_chance"] == pytest.approx(1 / 8)
    for key in ("t2v_top1", "v2t_top1", "itm_hard_negative_accuracy", "itm_vs_wrong_color"):
        assert 0.0 <= held[key] <= 1.0
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "vocab.json"}
    assert json.loads((out / "config.json").read_text())["model_type"] == "pisces_world_encoder"


def test_training_is_deterministic_given_the_seed(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        train_world_encoder(
            tmp_path / name, seed=5, steps=2, clips=4, frames=FRAMES, batch_size=4, eval_clips=0, config=SMALL
        )
        runs.append(hash_directory(tmp_path / name))
    assert runs[0] == runs[1]
    train_world_encoder(
        tmp_path / "c", seed=6, steps=2, clips=4, frames=FRAMES, batch_size=4, eval_clips=0, config=SMALL
    )
    assert hash_directory(tmp_path / "c") != runs[0]


# ----------------------------------------------------------------------------- backend


def test_backend_loads_through_the_registry(backend: EncoderBackend, trained: tuple[Path, dict]) -> None:
    out = trained[0]
    assert backend.name == "world"
    assert backend.fingerprint() == {
        "backend": "world",
        "model": out.name,
        "weights_sha256": hash_directory(out),
    }
    prep = backend.preprocessing
    assert (prep.num_frames, prep.size, prep.mean, prep.std) == (None, SIZE, (0.5,) * 3, (0.5,) * 3)
    reloaded = load_encoder("world", str(out))
    assert hash_state_dict(reloaded.model.state_dict()) == hash_state_dict(backend.model.state_dict())
    with pytest.raises(UsageError, match="unknown option"):
        load_encoder("world", str(out), num_frames=8)
    with pytest.raises(UsageError, match="expected a world encoder checkpoint"):
        load_encoder("world", str(out / "missing"))


def test_backend_load_rejects_broken_checkpoints(trained: tuple[Path, dict], tmp_path: Path) -> None:
    out = trained[0]
    for name in ("config.json", "model.safetensors", "vocab.json"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "width": 64, "embed_dim": 64}))
    with pytest.raises(UsageError, match="do not match"):
        load_encoder("world", str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "clip"}))
    with pytest.raises(UsageError, match="model_type"):
        load_encoder("world", str(tmp_path))
    (tmp_path / "vocab.json").unlink()
    with pytest.raises(UsageError, match="missing vocab.json"):
        load_encoder("world", str(tmp_path))


def test_backend_feature_shapes(backend: EncoderBackend) -> None:
    text = backend.encode_text(CAPTIONS)
    width, dim = backend.model.config.width, backend.embed_dim
    length = len(text.token_strings[0])
    assert text.global_embedding.shape == (2, dim) and text.tokens.shape == (2, length, width)
    assert text.attention_mask.dtype == torch.bool and text.lexical_mask.dtype == torch.bool
    assert text.lexical_mask.sum(-1).tolist() == [9, 9]
    video = backend.encode_video(world_pixels(2))
    grid = SIZE // backend.model.config.patch
    assert (
        video.geometry.num_frames == FRAMES and video.geometry.grid_h == grid and not video.geometry.has_cls
    )
    assert video.tokens.shape == (2, video.geometry.num_tokens, width)
    assert video.global_embedding.shape == (2, dim) and video.frame_embeddings.shape == (2, FRAMES, dim)
    # any frame count up to max_frames works; frames are encoded jointly (motion), so counts matter
    assert backend.encode_video(world_pixels(1)[:, :5]).tokens.shape[1] == 5 * grid * grid
    with pytest.raises(UsageError, match="max_frames"):
        backend.encode_video(torch.zeros(1, 17, 3, SIZE, SIZE))


def test_no_ot_semantic_reward_is_the_matching_probability(backend: EncoderBackend) -> None:
    text, video = backend.encode_text(CAPTIONS), backend.encode_video(world_pixels(2))
    result = backend.semantic_reward(text, video, None)
    with torch.no_grad():
        logits = backend.model.match_logits(text.tokens, text.attention_mask, video.tokens)
    torch.testing.assert_close(result.reward, logits.softmax(-1)[:, 1])
    assert result.plan is None and ((result.reward > 0) & (result.reward < 1)).all()


def test_ot_semantic_reward_returns_a_plan_and_gradients_reach_pixels(backend: EncoderBackend) -> None:
    text = backend.encode_text(CAPTIONS)
    pixels = world_pixels(2).requires_grad_(True)
    video = backend.encode_video(pixels)
    plain = backend.semantic_reward(text, video, None).reward
    result = backend.semantic_reward(text, video, TokenOTSettings())
    assert (result.reward - plain).abs().max() > 1e-6
    assert result.plan is not None and not result.plan.requires_grad
    assert result.plan.shape == (2, text.tokens.shape[1], video.tokens.shape[1])
    rows = result.plan.sum(-1)
    torch.testing.assert_close(rows[text.lexical_mask], torch.ones(18), rtol=0, atol=1e-5)
    assert (rows[~text.lexical_mask] == 0).all()
    assert set(result.diagnostics) == {"ot_iterations", "ot_mass", "ot_marginal_error", "ot_converged"}
    result.reward.sum().backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0


def test_last_fusion_layer_prior_cannot_change_the_reward(backend: EncoderBackend) -> None:
    """As in InternVideo2: the [CLS] row is not lexical, so the last layer's prior never reaches the output."""
    text, video = backend.encode_text(CAPTIONS), backend.encode_video(world_pixels(2))
    assert backend.ot_layers(TokenOTSettings()) == (0,)
    plain = backend.semantic_reward(text, video, None).reward
    only_last = backend.semantic_reward(text, video, TokenOTSettings(layers=(1,)))
    torch.testing.assert_close(only_last.reward, plain, rtol=0, atol=1e-6)
    assert only_last.plan is not None
    with pytest.raises(UsageError, match="not fusion layers"):
        backend.semantic_reward(text, video, TokenOTSettings(layers=(2,)))


def test_quality_reward_gradients_reach_pixels(backend: EncoderBackend) -> None:
    text = backend.encode_text(CAPTIONS)
    pixels = world_pixels(2).requires_grad_(True)
    video = backend.encode_video(pixels)
    quality = F.cosine_similarity(video.global_embedding, text.global_embedding, dim=-1)
    assert quality.shape == (2,) and (quality.abs() <= 1).all()
    quality.sum().backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
