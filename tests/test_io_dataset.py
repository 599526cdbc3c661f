"""ClipDataset / make_loader of pisces_cli.io.dataset: worker decoding, error rows, determinism."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from pisces_cli.errors import UsageError
from pisces_cli.io.dataset import ClipDataset, collate_video_items, frame_selector, make_loader
from pisces_cli.io.preprocess import Preprocessing, preprocess_clip
from pisces_cli.io.prompts import VideoItem, collect_prompted_videos, read_tar_shards
from pisces_cli.io.video import read_frames
from pisces_cli.io.writer import write_mp4

NUM_FRAMES = 4
PREP = Preprocessing(size=16)


def moving_square(num_frames: int, height: int, width: int, colour: tuple[int, int, int]) -> np.ndarray:
    """uint8 [T, H, W, 3]: a coloured 8 px square moving 2 px/frame right over black."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        frames[t, 4:12, 2 * t : 2 * t + 8] = colour
    return frames


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Four good clips (one 24 fps), a corrupt file and a video without a sidecar prompt."""
    root = tmp_path_factory.mktemp("videos")
    specs = {"a": (12, 8, 32, 40), "b": (9, 8, 24, 24), "c": (16, 24, 32, 32), "e": (10, 8, 32, 32)}
    for index, (name, (frames, fps, height, width)) in enumerate(specs.items()):
        write_mp4(root / f"{name}.mp4", moving_square(frames, height, width, (255, 40 * index, 0)), fps)
        (root / f"{name}.txt").write_text(f"prompt {name}")
    (root / "d.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (root / "d.txt").write_text("prompt d")
    write_mp4(root / "f.mp4", moving_square(5, 16, 16, (0, 0, 255)), 8)  # no f.txt
    return root


def run_loader(items, **kwargs) -> list:
    options = dict(num_frames=NUM_FRAMES, preprocessing=PREP, batch_size=2, num_workers=0)
    options.update(kwargs)
    return list(make_loader(items, **options))


def test_loader_with_two_workers_batches_good_items_and_passes_errors(folder):
    items = collect_prompted_videos(folder)
    assert [i.key for i in items] == ["a.mp4", "b.mp4", "c.mp4", "d.mp4", "e.mp4", "f.mp4"]
    batches = run_loader(items, num_workers=2)
    assert len(batches) == 3
    good_keys = [k for b in batches for k in b.keys]
    assert good_keys == ["a.mp4", "b.mp4", "c.mp4", "e.mp4"]
    for batch in batches:
        if batch.clips is not None:
            assert batch.clips.shape == (len(batch.keys), NUM_FRAMES, 3, 16, 16)
            assert batch.clips.dtype == torch.float32
    assert batches[0].prompts == ["prompt a", "prompt b"]
    errors = [row for b in batches for row in b.errors]
    assert [(row["index"], row["key"]) for row in errors] == [(3, "d.mp4"), (5, "f.mp4")]
    assert "cannot decode video" in errors[0]["error"] and "d.mp4" in errors[0]["error"]
    assert errors[1]["error"].startswith("no prompt for f.mp4")
    assert "clip" not in errors[0]


def test_workers_give_the_same_tensors_as_the_main_process(folder):
    items = collect_prompted_videos(folder)
    for crop in ("center", "random"):
        serial = run_loader(items, num_workers=0, crop=crop, seed=7)
        parallel = run_loader(items, num_workers=2, crop=crop, seed=7)
        for one, two in zip(serial, parallel, strict=True):
            assert one.keys == two.keys and len(one.errors) == len(two.errors)
            if one.clips is not None:
                torch.testing.assert_close(one.clips, two.clips, rtol=0, atol=0)


def test_item_matches_a_hand_pipeline(folder):
    items = collect_prompted_videos(folder)
    row = ClipDataset(items, num_frames=NUM_FRAMES, preprocessing=PREP)[0]
    frames = read_frames(folder / "a.mp4", [0, 4, 7, 11])  # uniform 4 of 12
    torch.testing.assert_close(row["clip"], preprocess_clip(frames, size=16))
    assert row["error"] is None and row["prompt"] == "prompt a"


def test_frame_rate_sampling_and_padding(folder):
    items = [VideoItem("c", str(folder / "c.mp4"), "p"), VideoItem("b", str(folder / "b.mp4"), "p")]
    dataset = ClipDataset(items, num_frames=NUM_FRAMES, preprocessing=PREP, frame_rate=8)
    # c: 16 frames at 24 fps -> 8 fps takes frames 0, 3, 6, 9
    expected_c = preprocess_clip(read_frames(folder / "c.mp4", [0, 3, 6, 9]), size=16)
    torch.testing.assert_close(dataset[0]["clip"], expected_c)
    select = frame_selector(6, frame_rate=8)
    assert select(16, 24.0) == [0, 3, 6, 9, 12, 15]
    assert select(3, 8.0) == [0, 1, 2, 2, 2, 2]  # short video: last frame repeats
    assert frame_selector(4, sampling="middle")(10, 8.0) == [0, 3, 5, 8]


def test_random_crop_is_reproducible_per_seed(folder):
    items = collect_prompted_videos(folder)[:1]
    first = ClipDataset(items, num_frames=2, preprocessing=PREP, crop="random", seed=1)[0]["clip"]
    again = ClipDataset(items, num_frames=2, preprocessing=PREP, crop="random", seed=1)[0]["clip"]
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    others = [
        ClipDataset(items, num_frames=2, preprocessing=PREP, crop="random", seed=s)[0]["clip"]
        for s in range(2, 8)
    ]
    assert any(not torch.equal(first, other) for other in others)


def test_random_crop_follows_the_video_not_its_place_in_the_run(folder):
    """A resumed or multi-rank run gives a video the crop a fresh one-process run gives it."""
    items = collect_prompted_videos(folder)[:3]
    whole = ClipDataset(items, num_frames=2, preprocessing=PREP, crop="random", seed=1)
    last_alone = ClipDataset(items[2:], num_frames=2, preprocessing=PREP, crop="random", seed=1)
    torch.testing.assert_close(whole[2]["clip"], last_alone[0]["clip"], rtol=0, atol=0)


def test_tar_items_decode_in_workers(folder, tmp_path):
    shard = tmp_path / "000.tar"
    with tarfile.open(shard, "w") as archive:
        for key, data in [("k1", (folder / "a.mp4").read_bytes()), ("k2", b"garbage" * 100)]:
            for suffix, payload in [(".mp4", data), (".txt", f"caption {key}".encode())]:
                info = tarfile.TarInfo(key + suffix)
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
    items = read_tar_shards(str(shard))
    (batch,) = run_loader(items, num_workers=2, batch_size=4)
    assert batch.keys == ["k1"] and batch.prompts == ["caption k1"]
    assert batch.clips.shape == (1, NUM_FRAMES, 3, 16, 16)
    serial = ClipDataset(collect_prompted_videos(folder)[:1], num_frames=NUM_FRAMES, preprocessing=PREP)[0]
    torch.testing.assert_close(batch.clips[0], serial["clip"])
    assert batch.errors[0]["key"] == "k2"
    assert f"{shard}:k2" in batch.errors[0]["error"]


def test_collate_with_only_errors():
    batch = collate_video_items(
        [
            {
                "index": 0,
                "key": "x",
                "source": "x.mp4",
                "prompt": None,
                "clip": None,
                "error": "no prompt for x.mp4",
            }
        ]
    )
    assert batch.clips is None and batch.keys == [] and batch.errors[0]["error"] == "no prompt for x.mp4"


def test_bad_loader_arguments():
    with pytest.raises(UsageError):
        make_loader([], num_frames=0, preprocessing=PREP, batch_size=1, num_workers=0)
    with pytest.raises(UsageError):
        make_loader([], num_frames=2, preprocessing=PREP, batch_size=0, num_workers=0)
    with pytest.raises(UsageError):
        make_loader([], num_frames=2, preprocessing=PREP, batch_size=1, num_workers=0, crop="left")
    with pytest.raises(UsageError):
        frame_selector(2, sampling="random")


def test_middle_sampling_in_the_dataset(folder):
    items = [VideoItem("a", str(folder / "a.mp4"), "p")]
    row = ClipDataset(items, num_frames=NUM_FRAMES, preprocessing=PREP, sampling="middle")[0]
    # n=12, k=4: bounds [0, 3, 6, 9, 12] -> frames 1, 4, 7, 10
    expected = preprocess_clip(read_frames(folder / "a.mp4", [1, 4, 7, 10]), size=16)
    torch.testing.assert_close(row["clip"], expected)
