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


def reference_temporal_interpolation(
    pos_embed: torch.Tensor, orig_frames: int, new_frames: int
) -> torch.Tensor:
    """The reference loader's frame-count change, written here from its definition (not from pisces' code):
    keep the first (CLS) token; view the patch tokens [1, T₀·N, C] as [1, T₀, N, C]; move time last to get
    [N, C, T₀]; ``F.interpolate(size=T, mode="linear")`` (align_corners False); move time back to frame-major
    [1, T·N, C]; put the CLS token back in front."""
    import torch.nn.functional as F

    cls_token, patches = pos_embed[:, :1], pos_embed[:, 1:]
    channels = pos_embed.shape[-1]
    per_frame = patches.shape[1] // orig_frames
    by_time = patches.view(1, orig_frames, per_frame, channels).permute(0, 2, 3, 1)
    by_time = by_time.reshape(per_frame, channels, orig_frames)
    resized = F.interpolate(by_time, size=new_frames, mode="linear")
    resized = resized.view(1, per_frame, channels, new_frames).permute(0, 3, 1, 2).reshape(1, -1, channels)
    return torch.cat([cls_token, resized], dim=1)


def test_a_nine_frame_clip_uses_the_direct_four_to_nine_interpolation(tmp_path):
    """A model set to sample 8 frames (the bundled recipes) scoring a 9-frame decoded clip (training) interpolates
    the checkpoint's 4-frame table straight to 9 frames, never 4 → 8 → 9."""
    checkpoint = _model(4)
    checkpoint.save_pretrained(tmp_path / "export")
    loaded = InternVideo2Stage2.from_pretrained(tmp_path / "export", num_frames=8)
    table = checkpoint.vision_encoder.pos_embed.detach()
    direct = reference_temporal_interpolation(table, 4, 9)
    torch.testing.assert_close(loaded.vision_encoder.video_pos_embed(9), direct, rtol=0, atol=1e-6)
    # what interpolating twice would have given differs by ~10 % (relative norm) on a random table
    twice = reference_temporal_interpolation(reference_temporal_interpolation(table, 4, 8), 8, 9)
    assert float((twice - direct).norm() / direct.norm()) > 0.05
    # and the encoder's tokens are those of a model whose table is the reference's 9-frame table
    size = loaded.config.vision.img_size
    pixels = torch.randn(1, 9, 3, size, size, generator=torch.Generator().manual_seed(2))
    expected_model = InternVideo2Stage2(InternVideo2Config.tiny(num_frames=9)).eval()
    state = dict(checkpoint.state_dict())
    state["vision_encoder.pos_embed"] = direct
    expected_model.load_state_dict(state)
    torch.testing.assert_close(loaded.encode_vision(pixels)[0], expected_model.encode_vision(pixels)[0])


def test_a_new_pos_embed_replaces_the_loaders_copy():
    """After a load_state_dict (or an edit) of pos_embed, other frame counts come from the new table."""
    model = _model(4).eval().requires_grad_(False)  # frozen, as a reward encoder: the cached path
    encoder = model.vision_encoder
    encoder.source_pos_embed = encoder.pos_embed.detach().clone()  # as the loader keeps it
    before = encoder.video_pos_embed(8).clone()
    with torch.no_grad():
        encoder.pos_embed.add_(torch.randn_like(encoder.pos_embed))
    after = encoder.video_pos_embed(8)
    expected = reference_temporal_interpolation(encoder.pos_embed.detach(), 4, 8)
    torch.testing.assert_close(after, expected, rtol=1e-6, atol=1e-6)
    assert not torch.equal(after, before)
