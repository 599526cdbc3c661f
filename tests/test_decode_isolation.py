"""Crash isolation for decoding: a video that crashes, aborts or hangs its decoder, or whose header
declares absurd sizes, becomes that video's error row; every other row of score, embed and eval is intact.

The crashing decoders are test doubles: ``read_clip`` patched in the parent (decode workers are forked,
so they inherit it) to kill its own process by a signal, abort, or sleep for a marked file. The absurd
header is a real file: a clip whose ``stts`` box claims 2^31 frames.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import time
from pathlib import Path

import pytest

from pisces_cli.cli.main import main
from pisces_cli.io import dataset as dataset_module
from pisces_cli.io import video as video_module
from pisces_cli.io.dataset import make_loader
from pisces_cli.io.isolation import call_isolated
from pisces_cli.io.mp4header import read_mp4_header
from pisces_cli.io.preprocess import Preprocessing
from pisces_cli.io.prompts import collect_prompted_videos
from pisces_cli.io.video import MAX_DECLARED_FRAMES, VideoDecodeError, available_decoders, read_clip

GOOD = 5
BAD = {
    "crash.mp4": "the decoder crashed (killed by SIGSEGV)",
    "abort.mp4": "the decoder crashed (killed by SIGABRT)",
    "hang.mp4": "decoding took longer than 1 s (runtime.decode_timeout_s)",
    "huge.mp4": "its header declares 2147483647 frames",
}


def claim_frames(clip: Path, target: Path, frames: int = 0x7FFFFFFF) -> Path:
    """Copy ``clip`` with its ``stts`` box's first sample count set to ``frames`` (the issue's repro)."""
    data = bytearray(clip.read_bytes())
    at = data.find(b"stts")
    struct.pack_into(">I", data, at + 12, frames)
    target.write_bytes(bytes(data))
    return target


def crashing_read_clip(real):
    """``read_clip`` that segfaults on crash.mp4, aborts on abort.mp4 and hangs on hang.mp4."""

    def double(source, select=None, *, decoder="auto", name=None):
        stem = Path(str(name or source)).stem
        if stem == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        if stem == "abort":
            os.abort()
        if stem == "hang":
            time.sleep(3600)
        return real(source, select, decoder=decoder, name=name)

    return double


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder

    root = tmp_path_factory.mktemp("isolation")
    clips = root / "clips"
    write_clip_folder(clips, GOOD, seed=5, frames=8, size=32)
    shutil.copytree(clips, root / "clean")
    for name in ("crash.mp4", "abort.mp4", "hang.mp4"):
        shutil.copy(clips / "clip_000.mp4", clips / name)
    claim_frames(clips / "clip_000.mp4", clips / "huge.mp4")
    with open(clips / "prompts.jsonl", "a", encoding="utf-8") as handle:
        for name in BAD:
            handle.write(json.dumps({"file": name, "prompt": "a red circle moving right"}) + "\n")
    save_tiny_clip(root / "enc", "clip", seed=0)
    return root


def write_recipe(root: Path, workers: int) -> Path:
    path = root / f"r{workers}.yaml"
    path.write_text(
        f"""
output_dir: {root}/run{workers}
runtime: {{num_workers: {workers}, decode_timeout_s: 1}}
models: {{encoder: {{backend: clip, path: {root}/enc}}}}
data: {{videos: {root}/clips, num_frames: 4}}
embed: {{batch_size: 3}}
score: {{batch_size: 3, bootstrap_samples: 50}}
eval: {{batch_size: 3, bootstrap_samples: 50}}
reward: {{ot_map: null, token_ot: {{max_iter: 20}}}}
"""
    )
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_header_claiming_2_to_the_31_frames_is_refused_before_decoding(world: Path, tmp_path: Path):
    huge = world / "clips" / "huge.mp4"
    for decoder in ["auto", "pyav", *(["decord"] if "decord" in available_decoders() else [])]:
        with pytest.raises(VideoDecodeError) as caught:
            read_clip(huge, lambda n, fps: [0, 1], decoder=decoder)
        assert str(caught.value) == (
            f"cannot decode video {huge}: its header declares 2147483647 frames, more than the "
            f"{MAX_DECLARED_FRAMES} pisces reads (a corrupt header?)"
        )
    # a smaller lie is caught by the duration: 1 s at 8 fps cannot hold 100000 frames
    liar = claim_frames(world / "clips" / "clip_001.mp4", tmp_path / "liar.mp4", frames=100_000)
    with pytest.raises(VideoDecodeError, match=r"declares 100000 frames lasting 12500 s in a track of 1 s"):
        read_clip(liar, lambda n, fps: [0])


def test_absurd_frame_sides_are_refused(world: Path, tmp_path: Path, monkeypatch):
    data = bytearray((world / "clean" / "clip_000.mp4").read_bytes())
    at = data.find(b"tkhd")
    struct.pack_into(">II", data, at + 4 + 76, 60000 << 16, 40000 << 16)  # version-0 tkhd width, height
    wide = tmp_path / "wide.mp4"
    wide.write_bytes(bytes(data))
    with pytest.raises(VideoDecodeError, match=r"declares 60000x40000 frames, larger than the 16384 px"):
        read_clip(wide, lambda n, fps: [0])
    monkeypatch.setattr(video_module, "MAX_FRAME_SIDE", 16)  # the clips are 32x32
    with pytest.raises(VideoDecodeError, match=r"declares 32x32 frames, larger than the 16 px"):
        read_clip(world / "clean" / "clip_000.mp4", lambda n, fps: [0])


def test_mp4_header_reader_reads_boxes_and_never_raises(world: Path, tmp_path: Path):
    import av
    import numpy as np

    clip = world / "clean" / "clip_000.mp4"
    header = read_mp4_header(clip)
    assert header is not None and (header.frames, header.width, header.height) == (8, 32, 32)
    assert header.table_duration_s == pytest.approx(1.0) and read_mp4_header(clip.read_bytes()) == header
    # moov before mdat ("faststart") reads the same
    fast = tmp_path / "fast.mp4"
    with av.open(str(fast), mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 48, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert read_mp4_header(fast) == read_mp4_header(fast.read_bytes())
    assert (read_mp4_header(fast).frames, read_mp4_header(fast).width) == (5, 48)
    # not an mp4, or damaged: None (the decoders say what is wrong), never an exception
    data = clip.read_bytes()
    for bad in (b"", b"GIF89a" + bytes(40), bytes(range(256)) * 8, data[: data.find(b"moov") + 40]):
        assert read_mp4_header(bad) is None
    for cut in range(0, len(data), 97):
        read_mp4_header(data[:cut])
    assert read_mp4_header(tmp_path / "missing.mp4") is None


@pytest.mark.skipif("decord" not in available_decoders(), reason="needs decord (x86_64)")
def test_a_real_native_abort_in_a_worker_is_an_error_row(world: Path, monkeypatch):
    """Without the header check, decord really aborts (std::bad_alloc) on huge.mp4: the worker dies,
    the row says so, and the other videos are decoded."""
    monkeypatch.setattr(video_module, "_check_declared_sizes", lambda source, label: None)
    items = [i for i in collect_prompted_videos(world / "clips") if i.key in ("huge.mp4", "clip_001.mp4")]
    batches = list(
        make_loader(items, num_frames=2, preprocessing=Preprocessing(size=16), batch_size=2, num_workers=0)
    )
    errors = {row["key"]: row for batch in batches for row in batch.errors}
    assert [k for batch in batches for k in batch.keys] == ["clip_001.mp4"]
    assert "the decoder crashed (killed by SIGABRT)" in errors["huge.mp4"]["error"]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_turns_crashes_and_hangs_into_rows_in_item_order(world: Path, monkeypatch, workers: int):
    monkeypatch.setattr(dataset_module, "read_clip", crashing_read_clip(read_clip))
    items = collect_prompted_videos(world / "clips")
    loader = make_loader(
        items,
        num_frames=2,
        preprocessing=Preprocessing(size=16),
        batch_size=3,
        num_workers=workers,
        decode_timeout_s=1,
    )
    assert loader.num_workers == workers
    batches = list(loader)
    assert [len(b.keys) + len(b.errors) for b in batches] == [3, 3, 3]
    good = [key for batch in batches for key in batch.keys]
    assert good == [f"clip_{i:03d}.mp4" for i in range(GOOD)]
    errors = {row["key"]: row for batch in batches for row in batch.errors}
    assert set(errors) == set(BAD)
    for name, words in BAD.items():
        assert errors[name]["error"].startswith(f"cannot decode video {world / 'clips' / name}: ")
        assert words in errors[name]["error"]
        assert errors[name]["detail"]


def run_stage(argv: list[str], monkeypatch) -> int:
    monkeypatch.setattr(dataset_module, "read_clip", crashing_read_clip(read_clip))
    return main(argv)


@pytest.mark.parametrize("workers", [0, 2])
def test_score_keeps_every_other_row(world: Path, monkeypatch, workers: int):
    recipe = write_recipe(world, workers)
    out = world / f"scores{workers}"
    assert run_stage(["score", str(world / "clips"), "-r", str(recipe), "-o", str(out)], monkeypatch) == 0
    rows = {row["video"]: row for row in read_jsonl(out / "scores.jsonl")}
    assert len(rows) == GOOD + len(BAD)
    for name, words in BAD.items():
        assert words in rows[name]["error"] and rows[name]["detail"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == GOOD and summary["failed"] == len(BAD)
    # the good rows are exactly what a folder without the bad files gives
    monkeypatch.undo()
    clean = world / f"clean-scores{workers}"
    assert main(["score", str(world / "clean"), "-r", str(recipe), "-o", str(clean)]) == 0
    for row in read_jsonl(clean / "scores.jsonl"):
        assert rows[row["video"]]["total"] == row["total"] and row["error"] is None


def test_embed_keeps_every_other_row(world: Path, monkeypatch):
    recipe = write_recipe(world, 2)
    assert run_stage(["embed", "-r", str(recipe)], monkeypatch) == 0
    out = world / "run2" / "embeddings"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and sum(s["rows"] for s in manifest["shards"]) == GOOD
    errors = {row["key"]: row for row in read_jsonl(out / "errors.jsonl")}
    assert set(errors) == set(BAD)
    for name, words in BAD.items():
        assert words in errors[name]["error"]


def test_eval_keeps_every_other_row(world: Path, monkeypatch):
    recipe = write_recipe(world, 0)
    out = world / "eval0"
    assert run_stage(["eval", str(world / "clips"), "-r", str(recipe), "-o", str(out)], monkeypatch) == 0
    rows = {row["video"]: row for row in json.loads((out / "eval.json").read_text())["videos"]}
    assert len(rows) == GOOD + len(BAD)
    for name, words in BAD.items():
        assert words in rows[name]["error"]
    for i in range(GOOD):
        row = rows[f"clip_{i:03d}.mp4"]
        assert row["error"] is None and row["frame_stability"] is not None and row["total"] is not None


def test_eval_pixel_metrics_of_a_crashing_video_are_its_error_row(world: Path, monkeypatch):
    """eval decodes every native frame for its pixel metrics, in a child process per video too."""
    from pisces_cli.stages import eval as eval_module

    real = eval_module._add_pixel_metrics

    def double(row, source, section):
        if Path(source).name == "clip_002.mp4":
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(row, source, section)

    monkeypatch.setattr(eval_module, "_add_pixel_metrics", double)
    recipe = write_recipe(world, 0)
    out = world / "eval-pixels"
    assert main(["eval", str(world / "clean"), "-r", str(recipe), "-o", str(out)]) == 0
    rows = {row["video"]: row for row in json.loads((out / "eval.json").read_text())["videos"]}
    assert "the decoder crashed (killed by SIGSEGV)" in rows["clip_002.mp4"]["error"]
    assert rows["clip_002.mp4"]["total"] is None  # an error row reports no metric of the video
    assert all(rows[f"clip_{i:03d}.mp4"]["error"] is None for i in (0, 1, 3, 4))


def _sleep_forever() -> None:
    time.sleep(3600)


def _fail_usage() -> None:
    from pisces_cli.errors import UsageError

    raise UsageError("a usage problem")


def test_call_isolated_returns_results_and_contains_crashes_and_hangs():
    from pisces_cli.errors import UsageError

    assert call_isolated(sum, [1, 2, 3], label="x.mp4", timeout_s=None) == 6
    with pytest.raises(VideoDecodeError, match=r"x\.mp4: the decoder crashed \(killed by SIGKILL\)"):
        call_isolated(_kill_self, label="x.mp4", timeout_s=None)
    with pytest.raises(VideoDecodeError, match=r"y\.mp4: decoding took longer than 0.5 s"):
        call_isolated(_sleep_forever, label="y.mp4", timeout_s=0.5)
    with pytest.raises(UsageError, match="a usage problem"):
        call_isolated(_fail_usage, label="z.mp4", timeout_s=None)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_decode_children_end_when_the_main_process_is_killed(tmp_path: Path):
    """A run killed with SIGKILL (OOM killer, a scheduler's hard stop) leaves no decode child behind holding
    its memory: a forked child holds copies of the main process's pipe ends, so it never sees its pipe close
    and must notice the main process is gone by itself."""
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(
        "import time\n"
        "from pisces_cli.io.isolation import process_context, quiet_child\n"
        "def child():\n"
        "    quiet_child()\n"
        "    time.sleep(600)\n"
        "context = process_context()\n"
        "children = [context.Process(target=child, daemon=True) for _ in range(2)]\n"
        "for process in children:\n"
        "    process.start()\n"
        "print(' '.join(str(process.pid) for process in children), flush=True)\n"
        "time.sleep(600)\n",
        encoding="utf-8",
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in parent.stdout.readline().split()]
    finally:
        parent.kill()
        parent.wait()
    assert len(pids) == 2

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # a zombie (reaped by nobody yet) counts as gone
        status = Path(f"/proc/{pid}/stat")
        return not (status.is_file() and status.read_text().split(") ")[-1].startswith("Z"))

    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [pid for pid in pids if alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "decode children outlived the killed main process"
