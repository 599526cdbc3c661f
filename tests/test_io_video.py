"""Decoding (decord / PyAV / fallback), bad-file handling and frame-sampling rules of pisces_cli.io.video."""

from __future__ import annotations

import shutil

import av
import numpy as np
import pytest

from pisces_cli.errors import PiscesRuntimeError, UsageError
from pisces_cli.io import video as video_mod
from pisces_cli.io.video import (
    VideoDecodeError,
    available_decoders,
    fps_indices,
    probe,
    read_clip,
    read_frames,
    uniform_indices,
    vbench_middle_indices,
)
from pisces_cli.io.writer import write_mp4

NUM_FRAMES, FPS, SIDE = 12, 8, 64


def moving_square(num_frames: int = NUM_FRAMES, height: int = SIDE, width: int = SIDE) -> np.ndarray:
    """uint8 [T, H, W, 3]: a yellow 16 px square moving 3 px/frame right over a blue background."""
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    frames[:] = (30, 60, 200)
    for t in range(num_frames):
        frames[t, 20:36, 3 * t : 3 * t + 16] = (250, 220, 10)
    return frames


def encode_with_pyav(
    path, frames: np.ndarray, fps: int, codec: str, container_format: str, pix_fmt: str
) -> None:
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "square.mp4"
    write_mp4(path, moving_square(), FPS)
    return path


@pytest.fixture(scope="module")
def reference_frames():
    return moving_square()


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


needs_decord = pytest.mark.skipif("decord" not in available_decoders(), reason="decord is not installed")


# ------------------------------------------------------------------------------------------------ decoding


@needs_decord
def test_both_decoders_agree_on_count_and_pixels(clip_path, reference_frames):
    by_decord = read_frames(clip_path, decoder="decord")
    by_pyav = read_frames(clip_path, decoder="pyav")
    assert by_decord.shape == by_pyav.shape == (NUM_FRAMES, SIDE, SIDE, 3)
    assert by_decord.dtype == by_pyav.dtype == np.uint8
    # same FFmpeg YUV->RGB conversion underneath: identical pixels (environment.md)
    np.testing.assert_array_equal(by_decord, by_pyav)
    # and both are close to what was encoded (H.264 crf 18, chroma subsampled edges)
    assert mean_abs(by_pyav, reference_frames) < 3.0


@needs_decord
def test_probe_reports_the_same_facts_with_both_decoders(clip_path):
    for decoder in ("decord", "pyav"):
        info = probe(clip_path, decoder=decoder)
        assert (info.num_frames, info.width, info.height) == (NUM_FRAMES, SIDE, SIDE)
        assert info.fps == pytest.approx(FPS)
        assert info.duration_s == pytest.approx(NUM_FRAMES / FPS)
        assert info.decoder == decoder
    assert probe(clip_path).decoder == "decord"


@pytest.mark.parametrize("decoder", ["auto", "pyav", pytest.param("decord", marks=needs_decord)])
def test_indices_are_returned_in_order_with_repeats(clip_path, decoder):
    everything = read_frames(clip_path, decoder="pyav")
    picked = read_frames(clip_path, [5, 0, 5, 11], decoder=decoder)
    assert picked.shape == (4, SIDE, SIDE, 3)
    for row, index in enumerate([5, 0, 5, 11]):
        assert mean_abs(picked[row], everything[index]) < 0.5
    # the moving square is where frame 5 put it: x in [15, 31)
    assert picked[0, 28, 20].tolist() == pytest.approx([250, 220, 10], abs=12)


@pytest.mark.parametrize("decoder", ["auto", "pyav"])
def test_index_out_of_range_is_a_decode_error(clip_path, decoder):
    with pytest.raises(VideoDecodeError, match=r"frame index 12 out of range for a video of 12 frames"):
        read_frames(clip_path, [0, 12], decoder=decoder)


def test_read_clip_selects_from_the_probed_length(clip_path):
    frames, info, indices = read_clip(clip_path, lambda n, fps: uniform_indices(n, 4))
    assert indices == [0, 4, 7, 11]
    assert frames.shape == (4, SIDE, SIDE, 3)
    assert info.num_frames == NUM_FRAMES


def test_decode_from_bytes_matches_decode_from_file(clip_path):
    data = clip_path.read_bytes()
    assert np.array_equal(read_frames(data, [1, 2]), read_frames(clip_path, [1, 2]))
    assert probe(data).num_frames == NUM_FRAMES


@pytest.mark.parametrize(
    ("suffix", "codec", "container_format", "pix_fmt"),
    [
        (".webm", "libvpx-vp9", "webm", "yuv420p"),
        (".mkv", "libx264", "matroska", "yuv420p"),
        (".mov", "libx264", "mov", "yuv420p"),
    ],
)
def test_other_containers_decode(tmp_path, reference_frames, suffix, codec, container_format, pix_fmt):
    path = tmp_path / f"clip{suffix}"
    encode_with_pyav(path, reference_frames, FPS, codec, container_format, pix_fmt)
    for decoder in available_decoders():
        frames = read_frames(path, decoder=decoder)
        assert frames.shape == reference_frames.shape
        assert mean_abs(frames, reference_frames) < 4.0
        assert probe(path, decoder=decoder).num_frames == NUM_FRAMES


def test_gif_decodes_through_the_pyav_fallback(tmp_path):
    # colours that the fixed rgb8 palette (R, G in steps of 36, B in steps of 85) holds exactly
    reference_frames = moving_square()
    reference_frames[(reference_frames == (30, 60, 200)).all(-1)] = (0, 0, 255)
    reference_frames[(reference_frames == (250, 220, 10)).all(-1)] = (252, 216, 0)
    path = tmp_path / "clip.gif"
    encode_with_pyav(path, reference_frames, 10, "gif", "gif", "rgb8")
    info = probe(path)
    assert info.decoder == "pyav"  # decord cannot read GIFs
    assert info.num_frames == NUM_FRAMES
    assert info.fps == pytest.approx(10, rel=0.02)
    frames = read_frames(path)
    assert frames.shape == reference_frames.shape
    assert mean_abs(frames, reference_frames) < 0.5


def test_wrong_extension_with_video_content_still_decodes(tmp_path, clip_path):
    for name in ("actually_mp4.mov", "actually_mp4.webm", "no_extension"):
        target = tmp_path / name
        shutil.copy(clip_path, target)
        assert probe(target).num_frames == NUM_FRAMES
        assert read_frames(target, [3]).shape == (1, SIDE, SIDE, 3)


def test_text_named_mp4_is_a_decode_error_naming_file_and_decoders(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("these are not the frames you are looking for\n")
    with pytest.raises(VideoDecodeError) as caught:
        read_frames(path)
    message = str(caught.value)
    # one readable sentence naming the file; what each decoder said is kept in ``detail``
    assert (
        message
        == f"cannot decode video {path}: not a video pisces can read (unknown format, or damaged data)"
    )
    detail = caught.value.detail
    assert "pyav:" in detail and "tried" in detail
    if "decord" in available_decoders():
        assert "decord:" in detail


def test_random_bytes_is_a_decode_error(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match="noise.mp4"):
        probe(path)
    with pytest.raises(VideoDecodeError, match="noise.mp4"):
        read_frames(path)


@pytest.mark.parametrize("keep_fraction", [0.1, 0.5, 0.9])
def test_truncated_file_is_a_decode_error(tmp_path, keep_fraction):
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, 256, (16, SIDE, SIDE, 3), dtype=np.uint8)  # incompressible: a long mdat
    whole = tmp_path / "whole.mp4"
    write_mp4(whole, noisy, FPS)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * keep_fraction)])
    with pytest.raises(VideoDecodeError, match="cut.mp4"):
        read_frames(cut)


def test_truncated_faststart_file_is_a_decode_error_with_pyav(tmp_path):
    """moov first: the header promises all frames, the data ends early."""
    rng = np.random.default_rng(2)
    noisy = rng.integers(0, 256, (16, SIDE, SIDE, 3), dtype=np.uint8)
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
        for image in noisy:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    intact = read_frames(path, decoder="pyav")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match=r"truncated: the header declares 16 frames"):
        read_frames(path, decoder="pyav")
    with pytest.raises(VideoDecodeError, match="faststart.mp4"):
        read_frames(path)
    # frames before the cut are still readable on request (decoding stops at the last one asked for)
    early = read_frames(path, [0, 1], decoder="pyav")
    np.testing.assert_array_equal(early, intact[:2])


def test_zero_byte_missing_and_folder_inputs(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match=r"empty\.mp4: empty file \(0 bytes\)"):
        read_frames(empty)
    with pytest.raises(VideoDecodeError, match=r"missing\.mp4: file not found"):
        probe(tmp_path / "missing.mp4")
    with pytest.raises(VideoDecodeError, match="not a regular file"):
        probe(tmp_path)
    with pytest.raises(VideoDecodeError, match=r"empty input \(0 bytes\)"):
        read_frames(b"")


def test_a_video_without_read_permission_says_so(tmp_path, clip_path, monkeypatch):
    import pisces_cli.io.video as video_module

    def refuse(path, flags, *args):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(video_module.os, "open", refuse)  # chmod 000 does not stop root, who runs the tests
    with pytest.raises(VideoDecodeError, match=r"cannot open it \(Permission denied\)"):
        probe(clip_path)
    monkeypatch.undo()
    assert probe(clip_path).num_frames > 0


def test_decode_error_is_a_runtime_error_and_bad_decoder_name_is_usage_error(tmp_path, clip_path):
    assert issubclass(VideoDecodeError, PiscesRuntimeError)
    with pytest.raises(UsageError, match="unknown video decoder 'ffmpeg'"):
        read_frames(clip_path, decoder="ffmpeg")


def test_zero_frame_video_is_a_decode_error(tmp_path):
    """A valid container holding a video stream with no frames."""
    path = tmp_path / "no_frames.mp4"
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
        container.start_encoding()  # write the header although no frame follows
    assert path.stat().st_size > 0
    with pytest.raises(VideoDecodeError, match="no_frames.mp4"):
        read_frames(path)
    with pytest.raises(VideoDecodeError, match="no_frames.mp4"):
        probe(path)


def test_audio_only_file_is_a_decode_error(tmp_path):
    path = tmp_path / "sound.mp4"
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(VideoDecodeError, match=r"sound[.]mp4: it has no video stream$") as caught:
        read_frames(path)
    assert "pyav: no video stream" in caught.value.detail


class _BrokenDecord:
    """Stands in for a decord module whose reader fails on every file."""

    @staticmethod
    def cpu(index):
        return index

    class VideoReader:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("simulated decord failure")


def test_auto_falls_back_to_pyav_when_decord_fails(monkeypatch, clip_path):
    monkeypatch.setattr(video_mod, "_decord_module", lambda: _BrokenDecord)
    assert probe(clip_path).decoder == "pyav"
    assert read_frames(clip_path, [2]).shape == (1, SIDE, SIDE, 3)
    with pytest.raises(VideoDecodeError) as caught:
        read_frames(clip_path, decoder="decord")
    assert "simulated decord failure" in caught.value.detail


def test_auto_uses_pyav_when_decord_is_not_importable(monkeypatch, clip_path):
    monkeypatch.setattr(video_mod, "_decord_module", lambda: None)
    assert "decord" not in available_decoders()
    assert probe(clip_path).decoder == "pyav"
    with pytest.raises(VideoDecodeError, match="decord is not importable"):
        probe(clip_path, decoder="decord")


@pytest.mark.parametrize("width", [16, 40, 48, 72, 96])
def test_auto_returns_correct_frames_for_awkward_widths(tmp_path, width):
    """decord 0.6 mis-reshapes some widths (16, 48, 72 px); auto must still return [T, H, W, 3] right."""
    frames = moving_square(6, 32, width)
    path = tmp_path / f"w{width}.mp4"
    write_mp4(path, frames, FPS)
    decoded = read_frames(path)
    assert decoded.shape == (6, 32, width, 3)
    np.testing.assert_array_equal(decoded, read_frames(path, decoder="pyav"))
    assert mean_abs(decoded, frames) < 4.0


# ------------------------------------------------------------------------------------------------ sampling


def test_uniform_indices_known_answers():
    assert uniform_indices(10, 4) == [0, 3, 6, 9]
    assert uniform_indices(16, 8) == [0, 2, 4, 6, 9, 11, 13, 15]
    assert uniform_indices(12, 4) == [0, 4, 7, 11]
    assert uniform_indices(5, 1) == [0]
    assert uniform_indices(3, 5) == [0, 1, 1, 2, 2]  # x.5 rounds up: 0, .5, 1, 1.5, 2
    assert uniform_indices(1, 3) == [0, 0, 0]


@pytest.mark.parametrize(("total", "k"), [(n, k) for n in range(1, 40, 3) for k in range(1, 20, 2)])
def test_uniform_indices_match_linspace_rounded_half_up(total, k):
    expected = np.floor(np.linspace(0, total - 1, k) + 0.5 + 1e-9).astype(int).tolist()
    got = uniform_indices(total, k)
    assert got == expected
    assert got[0] == 0 and (k == 1 or got[-1] == total - 1)


def test_vbench_middle_known_answers():
    # n=10, k=4: bounds [0, 2, 5, 7, 10] -> floor((0+2-1)/2)=0, (2+5-1)/2=3, (5+7-1)/2=5, (7+10-1)/2=8
    assert vbench_middle_indices(10, 4) == [0, 3, 5, 8]
    # n=16, k=16: every frame; bounds i, i+1 -> floor((2i)/2) = i
    assert vbench_middle_indices(16, 16) == list(range(16))
    # n=32, k=16: bounds 2i -> floor((4i+1)/2) = 2i
    assert vbench_middle_indices(32, 16) == list(range(0, 32, 2))
    # n < k: all frames, padded with the last
    assert vbench_middle_indices(3, 5) == [0, 1, 2, 2, 2]


@pytest.mark.parametrize(("n", "k"), [(n, k) for n in range(1, 70, 7) for k in (1, 4, 8, 16)])
def test_vbench_middle_against_direct_transcription(n, k):
    if n < k:
        expected = list(range(n)) + [n - 1] * (k - n)
    else:
        bounds = [int(i * n / k) for i in range(k + 1)]
        expected = [(bounds[i] + bounds[i + 1] - 1) // 2 for i in range(k)]
    assert vbench_middle_indices(n, k) == expected


def test_fps_indices_rules():
    assert fps_indices(30, 30, 10) == list(range(0, 30, 3))
    assert fps_indices(12, 24, 16) == [0, 1, 3, 4, 6, 7, 9, 10]  # step 1.5
    assert fps_indices(3, 8, 16) == [0, 0, 1, 1, 2, 2]  # upsampling repeats frames
    assert fps_indices(100, 30, 10, max_frames=4) == [0, 3, 6, 9]
    assert fps_indices(5, 30, 1) == [0]  # a 1/6 s clip holds one 1-fps sample
    assert fps_indices(60, 29.97, 29.97) == list(range(60))


def test_sampling_rejects_bad_arguments():
    with pytest.raises(UsageError):
        uniform_indices(0, 3)
    with pytest.raises(UsageError):
        uniform_indices(5, 0)
    with pytest.raises(UsageError):
        vbench_middle_indices(5, 0)
    with pytest.raises(UsageError):
        fps_indices(10, 0, 8)
    with pytest.raises(UsageError):
        fps_indices(10, 8, 8, max_frames=0)


def test_a_bad_selector_is_a_usage_error_not_a_decode_error(clip_path):
    with pytest.raises(UsageError, match="frame rates must be positive"):
        read_clip(clip_path, lambda n, fps: fps_indices(n, fps, 0))
