"""The InternVideo2 vision encoder runs on any frame count, interpolating pos_embed like the loader does."""

from __future__ import annotations

import torch

from pisces_cli.encoders.internvideo2 import InternVideo2Config, InternVideo2Stage2
from pisces_cli.encoders.internvideo2.checkpoint import interpolate_pos_embed


def _model(frames: int) -> InternVideo2Stage2:
    torch.manual_seed(0)
    config = InternVideo2Config.tiny(num_frames=frames)
    model = InternVideo2Stage2(config).eval().requires_grad_(False)
    with torch.no_grad():
        model.vision_encoder.pos_embed.normal_()
    return model


def test_other_frame_count_equals_a_model_loaded_for_it():
    stored = _model(4)
    reloaded = _model(4)
    grid = stored.config.vision.grid_size
    with torch.no_grad():
        table = interpolate_pos_embed(stored.vision_encoder.pos_embed, 4, 6, grid)
    size = stored.config.vision.img_size
    pixels = torch.randn(2, 6, 3, size, size)
    on_the_fly, pooled = stored.encode_vision(pixels)
    # reference: a model whose pos_embed was interpolated at load time
    config6 = InternVideo2Config.tiny(num_frames=6)
    loaded = InternVideo2Stage2(config6).eval().requires_grad_(False)
    state = dict(reloaded.state_dict())
    state["vision_encoder.pos_embed"] = table
    loaded.load_state_dict(state)
    expected, expected_pooled = loaded.encode_vision(pixels)
    assert on_the_fly.shape[1] == 1 + 6 * grid * grid
    assert torch.allclose(on_the_fly, expected, atol=1e-5)
    assert torch.allclose(pooled, expected_pooled, atol=1e-5)


def test_stored_frame_count_and_cache():
    model = _model(4)
    size = model.config.vision.img_size
    for frames in (4, 3, 8, 3):
        x_vis, _ = model.encode_vision(torch.randn(1, frames, 3, size, size))
        assert x_vis.shape[1] == 1 + frames * model.config.vision.grid_size**2
    assert model.vision_encoder.video_pos_embed(4) is model.vision_encoder.pos_embed
