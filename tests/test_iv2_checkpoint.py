"""Loader of the released InternVideo2-Stage2 layout, pos_embed interpolation, strictness, safetensors export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pisces_cli.encoders.internvideo2 import (
    InternVideo2Config,
    InternVideo2Stage2,
    interpolate_pos_embed,
    load_internvideo2,
)
from pisces_cli.encoders.internvideo2.tiny import randomize_weights
from pisces_cli.errors import UsageError

# Sizes of the released distillation extras in the tiny layout (internvideo2.md §6).
CLIP_TEACHER_EMBED_DIM = 48
CLIP_TEACHER_FINAL_DIM = 32
CLIP_RETURN_LAYERS = 2


def released_layout(model: InternVideo2Stage2, seed: int = 1) -> dict[str, torch.Tensor]:
    """Our tiny model's weights in the released key layout, plus every ignorable extra key (random values)."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    dim, vocab = config.vision.embed_dim, config.text.vocab_size
    hidden = config.text.hidden_size
    rows = 1 + config.vision.patches_per_frame * config.vision.num_frames
    released: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("text_encoder."):
            key = "text_encoder.bert." + key[len("text_encoder.") :]
        released[key] = value.clone()

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    for index in range(CLIP_RETURN_LAYERS):
        prefix = f"vision_encoder.clip_decoder.{index}."
        released[prefix + "head.weight"] = rand(CLIP_TEACHER_EMBED_DIM, dim)
        released[prefix + "head.bias"] = rand(CLIP_TEACHER_EMBED_DIM)
        released[prefix + "norm.weight"] = rand(CLIP_TEACHER_EMBED_DIM)
        released[prefix + "norm.bias"] = rand(CLIP_TEACHER_EMBED_DIM)
    clip_dim = config.vision.clip_embed_dim
    released["vision_encoder.final_clip_decoder.head.weight"] = rand(CLIP_TEACHER_FINAL_DIM, clip_dim)
    released["vision_encoder.final_clip_decoder.head.bias"] = rand(CLIP_TEACHER_FINAL_DIM)
    released["vision_encoder.final_clip_decoder.norm.weight"] = rand(CLIP_TEACHER_FINAL_DIM)
    released["vision_encoder.final_clip_decoder.norm.bias"] = rand(CLIP_TEACHER_FINAL_DIM)
    released["vision_encoder.clip_pos_embed"] = rand(1, rows, dim)
    released["vision_encoder.clip_img_pos_embed"] = rand(1, 1 + config.vision.patches_per_frame, dim)
    mlm_bias = rand(vocab)
    released["text_encoder.cls.predictions.bias"] = mlm_bias
    released["text_encoder.cls.predictions.decoder.bias"] = mlm_bias
    released["text_encoder.cls.predictions.decoder.weight"] = released[
        "text_encoder.bert.embeddings.word_embeddings.weight"
    ]
    released["text_encoder.cls.predictions.transform.dense.weight"] = rand(hidden, hidden)
    released["text_encoder.cls.predictions.transform.dense.bias"] = rand(hidden)
    released["text_encoder.cls.predictions.transform.LayerNorm.weight"] = rand(hidden)
    released["text_encoder.cls.predictions.transform.LayerNorm.bias"] = rand(hidden)
    released["temp"] = torch.tensor(0.07)
    released["text_encoder.bert.embeddings.position_ids"] = torch.arange(config.text.max_position_embeddings)[
        None
    ]
    return released


def randomize(model: InternVideo2Stage2, seed: int = 0) -> InternVideo2Stage2:
    """Seeded non-trivial weights (see :func:`randomize_weights`)."""
    return randomize_weights(model, seed, scale=0.2)


@pytest.fixture(scope="module")
def source_model() -> InternVideo2Stage2:
    torch.manual_seed(0)
    return randomize(InternVideo2Stage2(InternVideo2Config.tiny(num_frames=4)))


@pytest.fixture(scope="module")
def released_file(tmp_path_factory: pytest.TempPathFactory, source_model: InternVideo2Stage2) -> Path:
    path = tmp_path_factory.mktemp("iv2") / "InternVideo2-stage2_tiny-f4.pt"
    torch.save({"module": released_layout(source_model)}, path)
    return path


def run_all(model: InternVideo2Stage2, pixels: torch.Tensor, seed: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(103, 1000, (pixels.shape[0], 6), generator=generator)
    input_ids[:, 0] = 101
    input_ids[:, -1] = 102
    mask = torch.ones_like(input_ids)
    with torch.no_grad():
        x_vis, pooled = model.encode_vision(pixels)
        text_embeds = model.encode_text(input_ids, mask)
        fused = model.fusion(text_embeds, mask, x_vis)
        return {
            "x_vis": x_vis,
            "pooled": pooled,
            "video": model.video_embedding(pooled),
            "text": model.text_embedding(text_embeds),
            "vtm": model.vtm_probability(fused[:, 0]),
        }


def test_iv2_released_layout_loads_and_matches_source(
    source_model: InternVideo2Stage2, released_file: Path
) -> None:
    loaded = load_internvideo2(released_file, config=InternVideo2Config.tiny())
    assert loaded.config.vision.num_frames == 4
    assert not loaded.training
    pixels = torch.randn(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    expected, actual = run_all(source_model, pixels), run_all(loaded, pixels)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def test_iv2_loader_accepts_model_key_and_raw_dict(source_model: InternVideo2Stage2, tmp_path: Path) -> None:
    weights = released_layout(source_model)
    for wrapped, name in (({"model": weights}, "model.pt"), (weights, "raw.pt")):
        torch.save(wrapped, tmp_path / name)
        loaded = load_internvideo2(tmp_path / name, config=InternVideo2Config.tiny())
        torch.testing.assert_close(loaded.itm_head.weight, source_model.itm_head.weight, rtol=0, atol=0)


def test_iv2_loader_refuses_missing_keys(source_model: InternVideo2Stage2, tmp_path: Path) -> None:
    weights = released_layout(source_model)
    del weights["vision_encoder.blocks.1.attn.q_norm.weight"]
    del weights["text_encoder.bert.encoder.layer.3.crossattention.self.key.bias"]
    torch.save({"module": weights}, tmp_path / "missing.pt")
    with pytest.raises(UsageError) as caught:
        load_internvideo2(tmp_path / "missing.pt", config=InternVideo2Config.tiny())
    message = str(caught.value)
    assert "missing keys (2)" in message
    assert "vision_encoder.blocks.1.attn.q_norm.weight" in message
    assert "text_encoder.encoder.layer.3.crossattention.self.key.bias" in message


def test_iv2_loader_refuses_unexpected_and_misshaped_keys(
    source_model: InternVideo2Stage2, tmp_path: Path
) -> None:
    weights = released_layout(source_model)
    weights["text_encoder.bert.pooler.dense.weight"] = torch.zeros(32, 32)
    weights["vision_encoder.norm.weight"] = torch.zeros(64)
    weights["itm_head.weight"] = torch.zeros(3, 32)
    torch.save({"module": weights}, tmp_path / "extra.pt")
    with pytest.raises(UsageError) as caught:
        load_internvideo2(tmp_path / "extra.pt", config=InternVideo2Config.tiny())
    message = str(caught.value)
    assert "unexpected keys (2)" in message
    assert "text_encoder.pooler.dense.weight" in message and "vision_encoder.norm.weight" in message
    assert "itm_head.weight: file (3, 32) vs model (2, 32)" in message


def test_iv2_loader_ignores_exactly_the_documented_set(
    source_model: InternVideo2Stage2, tmp_path: Path
) -> None:
    from pisces_cli.encoders.internvideo2.checkpoint import is_ignored_released_key

    weights = released_layout(source_model)
    ignored = sorted(key for key in weights if is_ignored_released_key(key))
    used = set(weights) - set(ignored)
    assert "temp" in ignored and "text_encoder.bert.embeddings.position_ids" in ignored
    assert {key.split(".")[1] for key in ignored if key.startswith("vision_encoder.")} == {
        "clip_decoder",
        "final_clip_decoder",
        "clip_pos_embed",
        "clip_img_pos_embed",
    }
    assert len(used) == len(source_model.state_dict())
    # A near-miss of an ignored name is not ignored.
    weights["vision_encoder.clip_decoder_extra"] = torch.zeros(1)
    torch.save({"module": weights}, tmp_path / "near.pt")
    with pytest.raises(UsageError, match="clip_decoder_extra"):
        load_internvideo2(tmp_path / "near.pt", config=InternVideo2Config.tiny())


def test_iv2_loader_refuses_bad_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        load_internvideo2(tmp_path / "absent.pt", config=InternVideo2Config.tiny())
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="cannot read"):
        load_internvideo2(tmp_path / "garbage.pt", config=InternVideo2Config.tiny())


def test_iv2_pos_embed_interpolation_matches_f_interpolate(
    source_model: InternVideo2Stage2, released_file: Path
) -> None:
    stored = source_model.vision_encoder.pos_embed.detach()  # [1, 1 + 4·256, 64]
    loaded = load_internvideo2(released_file, config=InternVideo2Config.tiny(), num_frames=8)
    # the checkpoint's own 4-frame table is kept; 8 frames are interpolated from it when an 8-frame clip arrives
    assert loaded.vision_encoder.pos_embed.shape == (1, 1 + 4 * 256, 64)
    assert loaded.config.vision.num_frames == 8 and loaded.config.vision.pos_embed_frames == 4
    result = loaded.vision_encoder.video_pos_embed(8).detach()
    assert result.shape == (1, 1 + 8 * 256, 64)
    torch.testing.assert_close(result[:, 0], stored[:, 0], rtol=0, atol=0)
    layout = stored[0, 1:].reshape(4, 256, 64).permute(1, 2, 0)  # [g², C, T]
    reference = (
        F.interpolate(layout, size=8, mode="linear", align_corners=False).permute(2, 0, 1).reshape(-1, 64)
    )
    torch.testing.assert_close(result[0, 1:], reference, rtol=0, atol=0)
    # Hand check of align_corners=False for 4 → 8: output frame i samples source i/2 - 0.25 (clamped).
    frames = stored[0, 1:].reshape(4, 256, 64)
    resized = result[0, 1:].reshape(8, 256, 64)
    torch.testing.assert_close(resized[0], frames[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(resized[1], 0.75 * frames[0] + 0.25 * frames[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(resized[4], 0.25 * frames[1] + 0.75 * frames[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(resized[7], frames[3], rtol=0, atol=1e-6)
    # img_pos_embed is untouched.
    torch.testing.assert_close(
        loaded.vision_encoder.img_pos_embed, source_model.vision_encoder.img_pos_embed, rtol=0, atol=0
    )


def test_iv2_pos_embed_spatial_step_is_bicubic() -> None:
    pos = torch.randn(1, 1 + 2 * 16, 8, generator=torch.Generator().manual_seed(0))  # 2 frames, 4×4 grid
    resized = interpolate_pos_embed(pos, orig_frames=2, new_frames=2, new_grid=6)
    grid = pos[0, 1:].reshape(2, 4, 4, 8).permute(0, 3, 1, 2)
    reference = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(resized[0, 1:], reference.reshape(-1, 8), rtol=0, atol=0)
    assert interpolate_pos_embed(pos, 2, 2, 4) is pos


@pytest.mark.parametrize("num_frames", [1, 3, 8])
def test_iv2_any_frame_count_gives_cls_first_tokens(released_file: Path, num_frames: int) -> None:
    model = load_internvideo2(released_file, config=InternVideo2Config.tiny(), num_frames=num_frames)
    pixels = torch.randn(1, num_frames, 3, 32, 32, generator=torch.Generator().manual_seed(num_frames))
    with torch.no_grad():
        x_vis, pooled = model.encode_vision(pixels)
        assert x_vis.shape == (1, 1 + 256 * num_frames, 64)
        assert pooled.shape == (1, 32)
        assert torch.isfinite(x_vis).all()
        # CLS first: the CLS token (before the blocks) is cls_token + pos row 0, independent of the pixels.
        embedded = model.vision_encoder.embed(pixels.permute(0, 2, 1, 3, 4))
    position = model.vision_encoder.img_pos_embed if num_frames == 1 else model.vision_encoder.pos_embed
    torch.testing.assert_close(embedded[:, 0], (model.vision_encoder.cls_token + position[:, :1])[:, 0])
    # Another frame count works too: pos_embed is interpolated on the fly (see test_iv2_any_frames.py).
    with torch.no_grad():
        other, _ = model.encode_vision(torch.zeros(1, num_frames + 1, 3, 32, 32))
    assert other.shape == (1, 1 + 256 * (num_frames + 1), 64)


def test_iv2_save_and_from_pretrained_round_trip(source_model: InternVideo2Stage2, tmp_path: Path) -> None:
    source_model.save_pretrained(tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["vision"]["num_frames"] == 4 and config["text"]["fusion_layer"] == 2
    loaded = InternVideo2Stage2.from_pretrained(tmp_path / "export")
    for (name, a), (_, b) in zip(source_model.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    pixels = torch.randn(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    expected, actual = run_all(source_model, pixels), run_all(loaded, pixels)
    for name in expected:  # same weights; kernels may pick other SIMD paths for other memory alignment
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-6, atol=1e-6, msg=name)
    # Re-interpolation at load time equals the released loader's interpolation from the same 4-frame weights.
    eight = InternVideo2Stage2.from_pretrained(tmp_path / "export", num_frames=8)
    reference = interpolate_pos_embed(source_model.vision_encoder.pos_embed.detach(), 4, 8, 16)
    torch.testing.assert_close(eight.vision_encoder.video_pos_embed(8), reference, rtol=0, atol=0)
    # an export of a model sampling 8 frames still stores (and reloads from) the 4-frame table
    eight.save_pretrained(tmp_path / "export8")
    again = InternVideo2Stage2.from_pretrained(tmp_path / "export8")
    assert again.config.vision.num_frames == 8 and again.config.vision.table_frames == 4
    nine = interpolate_pos_embed(source_model.vision_encoder.pos_embed.detach(), 4, 9, 16)
    torch.testing.assert_close(again.vision_encoder.video_pos_embed(9), nine, rtol=0, atol=0)


def test_iv2_from_pretrained_refuses_partial_export(source_model: InternVideo2Stage2, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    source_model.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["text_proj.bias"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(UsageError, match="text_proj.bias"):
        InternVideo2Stage2.from_pretrained(tmp_path)


def test_iv2_convert_released_checkpoint(released_file: Path, tmp_path: Path) -> None:
    from pisces_cli.encoders.internvideo2 import convert_released_checkpoint

    converted = convert_released_checkpoint(
        released_file, tmp_path, config=InternVideo2Config.tiny(), dtype=torch.bfloat16
    )
    reloaded = InternVideo2Stage2.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert reloaded.dtype == torch.bfloat16 and reloaded.config.vision.num_frames == 4
    for (name, a), (_, b) in zip(converted.state_dict().items(), reloaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_iv2_config_json_round_trip_and_validation(tmp_path: Path) -> None:
    for config in (InternVideo2Config.tiny(num_frames=8), InternVideo2Config.stage2_1b()):
        config.save_json(tmp_path / "config.json")
        assert InternVideo2Config.load_json(tmp_path / "config.json") == config
    big = InternVideo2Config.stage2_1b()
    assert big.vision.mlp_hidden_dim == 6144 and big.vision.head_dim == 88 and big.vision.grid_size == 16
    assert big.text.encoder_width == 1408 and big.text.fusion_layer == 19
    (tmp_path / "bad.json").write_text(json.dumps({**big.to_dict(), "extra": 1}))
    with pytest.raises(UsageError, match="unknown keys"):
        InternVideo2Config.load_json(tmp_path / "bad.json")
    data = big.to_dict()
    data["vision"]["gelu_approximate"] = "sigmoid"
    with pytest.raises(UsageError, match="gelu_approximate"):
        InternVideo2Config.from_dict(data)
    data = big.to_dict()
    data["text"]["encoder_width"] = 768
    with pytest.raises(UsageError, match="encoder_width"):
        InternVideo2Config.from_dict(data)


def test_iv2_stage2_1b_parameter_counts_match_the_reference() -> None:
    """internvideo2.md §3.2: 1,019,628,672 vision, 359,026,688 BERT, 920,578 heads (built on meta, no memory)."""
    with torch.device("meta"):
        model = InternVideo2Stage2(InternVideo2Config.stage2_1b())

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert count(model.vision_encoder) == 1_019_628_672
    assert count(model.vision_encoder.blocks[0]) == 25_248_768
    assert count(model.text_encoder) == 359_026_688
    assert count(model.vision_proj) + count(model.text_proj) + count(model.itm_head) == 920_578
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["vision_encoder.pos_embed"] == (1, 1025, 1408)
    assert shapes["text_encoder.encoder.layer.19.crossattention.self.key.weight"] == (1024, 1408)
    assert "text_encoder.encoder.layer.18.crossattention.self.key.weight" not in shapes
    assert shapes["vision_encoder.clip_projector.cross_attn.proj.weight"] == (768, 1408)


def test_iv2_bf16_checkpoint_interpolates_in_fp32_and_keeps_its_dtype(
    source_model: InternVideo2Stage2, tmp_path: Path
) -> None:
    weights = {key: value.to(torch.bfloat16) for key, value in released_layout(source_model).items()}
    weights["text_encoder.bert.embeddings.position_ids"] = torch.arange(512)[None]
    torch.save({"module": weights}, tmp_path / "bf16.pt")
    model = load_internvideo2(
        tmp_path / "bf16.pt", config=InternVideo2Config.tiny(), num_frames=26, dtype=None
    )
    assert model.dtype == torch.bfloat16 and model.config.vision.num_frames == 26
    stored = weights["vision_encoder.pos_embed"]
    expected = interpolate_pos_embed(stored.float(), 4, 26, 16).to(torch.bfloat16)
    torch.testing.assert_close(model.vision_encoder.video_pos_embed(26), expected, rtol=0, atol=0)
    # a model cast to fp16 still interpolates the checkpoint's stored table, then casts the result
    model = load_internvideo2(
        tmp_path / "bf16.pt", config=InternVideo2Config.tiny(), num_frames=26, dtype=torch.float16
    )
    torch.testing.assert_close(
        model.vision_encoder.video_pos_embed(26), expected.to(torch.float16), rtol=0, atol=0
    )


def test_iv2_loader_refuses_a_pos_embed_that_does_not_fit_the_grid(
    source_model: InternVideo2Stage2, tmp_path: Path
) -> None:
    weights = released_layout(source_model)
    weights["vision_encoder.pos_embed"] = weights["vision_encoder.pos_embed"][:, :-5]
    torch.save({"module": weights}, tmp_path / "bad_pos.pt")
    with pytest.raises(UsageError, match=r"vision_encoder.pos_embed has shape \(1, 1020, 64\)"):
        load_internvideo2(tmp_path / "bad_pos.pt", config=InternVideo2Config.tiny())
