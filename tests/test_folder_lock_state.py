"""One run at a time per output folder: a second ``score`` / ``eval`` / ``embed`` into a folder another run is
writing is refused (exit 2) before it reads or writes anything — two runs of different settings used to
append to one table under one ``settings.json`` — and a killed holder never leaves the folder locked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pisces_cli.cli.main import main
from pisces_cli.errors import UsageError
from pisces_cli.stages.folder_lock import LOCK_FILE, FolderLock


def test_a_held_lock_refuses_a_second_holder_until_released(tmp_path: Path):
    folder = tmp_path / "out"
    first = FolderLock.acquire(folder)
    with pytest.raises(UsageError, match="another pisces run") as refused:
        FolderLock.acquire(folder)
    assert f"pid {os.getpid()}" in str(refused.value) and "--output" in str(refused.value)
    first.release()
    first.release()  # twice is harmless
    with FolderLock.acquire(folder):
        pass
    FolderLock.acquire(folder).release()  # the with released it


def test_a_killed_holder_leaves_the_folder_free(tmp_path: Path):
    folder = tmp_path / "out"
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom pisces_cli.stages.folder_lock import FolderLock\n"
        "lock = FolderLock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=f"pid {holder.pid}"):
            FolderLock.acquire(folder)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    FolderLock.acquire(folder).release()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder
    from pisces_cli.world.captions import world_vocabulary

    root = tmp_path_factory.mktemp("folder_lock")
    write_clip_folder(root / "clips", 3, seed=4, frames=8, size=32)
    save_tiny_clip(root / "enc", "clip", seed=0, words=world_vocabulary())
    (root / "r.yaml").write_text(
        f"output_dir: {root}/run\n"
        "runtime: {num_workers: 0, device: cpu}\n"
        f"models: {{encoder: {{backend: clip, path: {root}/enc}}}}\n"
        f"data: {{videos: {root}/clips, num_frames: 4}}\n"
        "reward: {ot_map: null, token_ot: {max_iter: 20}}\n"
        "score: {bootstrap_samples: 50}\n"
        "eval: {bootstrap_samples: 50}\n"
    )
    return root


@pytest.mark.parametrize("stage", ["score", "eval", "embed"])
def test_a_second_run_into_a_folder_being_written_is_refused_and_writes_nothing(
    world: Path, tmp_path: Path, monkeypatch, capsys, stage: str
):
    out = tmp_path / "out"
    args = [stage, *([str(world / "clips")] if stage != "embed" else []), "-r", str(world / "r.yaml")]
    args += ["-o", str(out)] if stage != "embed" else [f"embed.output={out}"]
    held = FolderLock.acquire(out)  # another run is writing here

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder was loaded")

    with monkeypatch.context() as patch:
        patch.setattr("pisces_cli.rewards.build.load_encoder_from_recipe", refuse)
        for extra in ([], ["--force"]):
            assert main([*args, *extra]) == 2
            err = capsys.readouterr().err
            assert "being written by another pisces run" in err and "--output" in err
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing read, nothing written
    held.release()
    assert main(args) == 0  # the folder is free again, and this run released it at its end
    FolderLock.acquire(out).release()


def test_a_folder_that_cannot_hold_the_lock_file_takes_no_lock(tmp_path: Path):
    (tmp_path / "a_file").write_text("")
    lock = FolderLock.acquire(tmp_path / "a_file" / "out")  # cannot be created: no lock, no traceback
    lock.release()
