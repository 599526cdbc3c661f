"""mp4 writing (round trip, padding, atomicity, codec fallback) and VBench file names of pisces_cli.io.writer."""

from __future__ import annotations

import os
import unicodedata

import av
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pisces_cli.errors import PiscesRuntimeError, UsageError
from pisces_cli.io.prompts import prompt_from_filename
from pisces_cli.io.video import probe, read_frames
from pisces_cli.io.writer import to_uint8_frames, vbench_filename, write_mp4


def moving_square(num_frames: int = 10, height: int = 64, width: int = 64) -> np.ndarray:
    """uint8 [T, H, W, 3]: a green 12 px square moving 4 px/frame down over a grey background."""
    frames = np.full((num_frames, height, width, 3), 90, np.uint8)
    for t in range(num_frames):
        frames[t, 4 * t : 4 * t + 12, 20:32] = (20, 230, 40)
    return frames


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_round_trip_uint8(tmp_path):
    frames = moving_square()
    result = write_mp4(tmp_path / "out.mp4", frames, 8)
    assert (result.codec, result.width, result.height, result.num_frames, result.note) == (
        "libx264",
        64,
        64,
        10,
        "",
    )
    decoded = read_frames(result.path)
    assert decoded.shape == frames.shape
    assert mean_abs(decoded, frames) < 2.0
    info = probe(result.path)
    assert info.fps == pytest.approx(8) and info.num_frames == 10
    # the square is where it was drawn in the last frame (rows 36..47)
    assert decoded[9, 40, 25].tolist() == pytest.approx([20, 230, 40], abs=12)
    with av.open(str(result.path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"


def test_round_trip_float_tensor_matches_uint8(tmp_path):
    frames = moving_square()
    as_float = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    write_mp4(tmp_path / "u8.mp4", frames, 8)
    write_mp4(tmp_path / "f32.mp4", as_float.requires_grad_(), 8)
    np.testing.assert_array_equal(read_frames(tmp_path / "u8.mp4"), read_frames(tmp_path / "f32.mp4"))


def test_to_uint8_frames_rounds_and_clamps():
    values = np.array([-0.5, 0.0, 0.6 / 255, 0.2, 1.0, 1.7], np.float32)
    floats = np.broadcast_to(values[None, None, None, :], (1, 3, 2, 6))
    out = to_uint8_frames(floats)
    assert out.shape == (1, 2, 6, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 1, 51, 255, 255]
    with pytest.raises(UsageError, match=r"\[T, 3, H, W\]"):
        to_uint8_frames(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(UsageError, match="4-D"):
        to_uint8_frames(np.zeros((4, 4, 3), np.uint8))


def test_odd_sides_are_padded_by_one_edge_pixel(tmp_path):
    frames = moving_square(6, 33, 47)
    result = write_mp4(tmp_path / "odd.mp4", frames, 8)
    assert (result.height, result.width) == (34, 48)
    assert "padded 33x47 to 34x48" in result.note
    decoded = read_frames(result.path)
    assert decoded.shape == (6, 34, 48, 3)
    assert mean_abs(decoded[:, :33, :47], frames) < 2.5
    # the added row/column repeat the last ones
    assert mean_abs(decoded[:, 33, :47], frames[:, 32]) < 4.0
    assert mean_abs(decoded[:, :33, 47], frames[:, :, 46]) < 4.0


def test_fractional_fps_is_kept(tmp_path):
    result = write_mp4(tmp_path / "ntsc.mp4", moving_square(6), 24000 / 1001)
    assert probe(result.path).fps == pytest.approx(23.976, abs=1e-3)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"old content")
    write_mp4(target, moving_square(4), 8)
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]
    assert probe(target).num_frames == 4


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"old content")

    def explode(*args, **kwargs):
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", explode)
    with pytest.raises(
        PiscesRuntimeError, match=r"failed to write video .*clip.mp4 with libx264: encoder exploded"
    ):
        write_mp4(target, moving_square(4), 8)
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]
    assert target.read_bytes() == b"old content"


def test_falls_back_to_mpeg4_when_libx264_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"libx264"})
    with pytest.warns(UserWarning, match="libx264 is not available"):
        result = write_mp4(tmp_path / "fallback.mp4", moving_square(), 8)
    assert result.codec == "mpeg4"
    assert "wrote mpeg4 instead" in result.note
    decoded = read_frames(result.path)
    assert decoded.shape == (10, 64, 64, 3)
    assert mean_abs(decoded, moving_square()) < 6.0


def test_no_encoder_at_all_is_a_runtime_error(tmp_path, monkeypatch):
    monkeypatch.setattr(av, "codecs_available", set())
    with pytest.raises(PiscesRuntimeError, match="no usable video encoder"):
        write_mp4(tmp_path / "none.mp4", moving_square(2), 8)
    assert os.listdir(tmp_path) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(UsageError, match="fps must be positive"):
        write_mp4(tmp_path / "a.mp4", moving_square(2), 0)
    with pytest.raises(UsageError, match="no frames"):
        write_mp4(tmp_path / "a.mp4", np.zeros((0, 8, 8, 3), np.uint8), 8)
    with pytest.raises(UsageError, match="does not exist"):
        write_mp4(tmp_path / "missing" / "a.mp4", moving_square(2), 8)


# ------------------------------------------------------------------------------------------------ file names


def test_plain_prompt_gives_the_vbench_name():
    prompt = "A person is dancing, in the style of Van Gogh."
    name = vbench_filename(prompt, 3)
    assert name == f"{prompt}-3.mp4"
    assert prompt_from_filename(name) == prompt


def test_unsafe_characters_are_replaced_and_hashed():
    name = vbench_filename("left/right\x00tab\tnew\nline", 0)
    assert "/" not in name and "\x00" not in name and "\t" not in name and "\n" not in name
    assert name.startswith("left_right_tab_new_line~") and name.endswith("-0.mp4")
    # "a/b" and "a_b" must not collide
    assert vbench_filename("a/b", 0) != vbench_filename("a_b", 0)


def test_leading_dot_never_gives_a_hidden_file(tmp_path):
    from pisces_cli.io.prompts import scan_folder

    prompts = ["...and then a blue circle appears", ".", ".hidden", "a.b"]
    names = [vbench_filename(p, 0) for p in prompts]
    assert names[3] == "a.b-0.mp4"
    assert all(not n.startswith(".") for n in names) and len(set(names)) == 4
    assert names[0].startswith("_..and then a blue circle appears~")
    for name in names:
        write_mp4(tmp_path / name, moving_square(2), 8)
    scan = scan_folder(tmp_path)
    assert sorted(p.name for p in scan.videos) == sorted(names) and scan.skipped == []


@pytest.mark.parametrize("max_bytes", [60, 200, 255])
def test_long_prompts_are_cut_on_utf8_boundaries_without_collisions(tmp_path, max_bytes):
    base = "一只猫在钢琴上弹奏爵士乐 🎹 " * 30
    prompts = [base + "ending one", base + "ending two", base]
    names = [vbench_filename(p, 4, max_bytes=max_bytes) for p in prompts]
    assert len(set(names)) == 3
    for name in names:
        encoded = name.encode("utf-8")
        assert len(encoded) <= max_bytes
        assert encoded.decode("utf-8") == name  # no split characters
        assert name.endswith("-4.mp4")
        (tmp_path / name).write_bytes(b"")  # a valid file name on this file system
    assert len(os.listdir(tmp_path)) == 3


def test_name_is_deterministic_and_index_checked():
    assert vbench_filename("x" * 500, 1) == vbench_filename("x" * 500, 1)
    assert vbench_filename("x" * 500, 1) != vbench_filename("x" * 500, 2)
    with pytest.raises(UsageError):
        vbench_filename("a", -1)
    with pytest.raises(UsageError, match="too small"):
        vbench_filename("a/b", 0, max_bytes=8)


def test_write_to_a_255_byte_name(tmp_path):
    name = vbench_filename("a very long prompt about a cat " * 20, 0, max_bytes=255)
    assert len(name.encode()) == 255
    write_mp4(tmp_path / name, moving_square(2), 8)
    assert os.listdir(tmp_path) == [name]


def test_write_with_vbench_name_round_trip(tmp_path):
    prompt = "A drone view of a castle; it's raining (heavily) & windy!"
    path = tmp_path / vbench_filename(prompt, 2)
    write_mp4(path, moving_square(4), 8)
    assert path.is_file()
    assert prompt_from_filename(path.name) == prompt


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    first=st.text(min_size=0, max_size=300),
    second=st.text(min_size=0, max_size=300),
    index=st.integers(0, 24),
    max_bytes=st.integers(40, 255),
)
def test_vbench_filename_properties(first, second, index, max_bytes):
    name = vbench_filename(first, index, max_bytes=max_bytes)
    encoded = name.encode("utf-8")
    assert len(encoded) <= max_bytes
    assert "/" not in name and "\x00" not in name
    assert not any(unicodedata.category(ch) == "Cc" for ch in name)
    assert not name.startswith(".")  # never a hidden file that folder listings would skip
    assert name.endswith(f"-{index}.mp4")
    if first != second:
        assert vbench_filename(second, index, max_bytes=max_bytes) != name
