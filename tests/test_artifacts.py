"""Artifact round trip, header, fingerprint refusal, atomicity and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pisces_cli import artifacts
from pisces_cli.artifacts import ArtifactHeader, ShardedArtifactWriter
from pisces_cli.errors import UsageError


def _header(**kw) -> ArtifactHeader:
    return ArtifactHeader(
        schema="pisces.test",
        stage="test",
        recipe_hash="abc",
        recipe={"seed": 1},
        fingerprints={"encoder": {"backend": "clip", "weights_sha256": "w1"}},
        tensors={"x": "[N, 4] values"},
        **kw,
    )


def test_round_trip_with_header(tmp_path: Path):
    x = torch.randn(5, 4)
    path = artifacts.save_artifact(tmp_path / "a.safetensors", {"x": x}, _header(metrics={"m": 0.5}))
    tensors, header = artifacts.load_artifact(path, expect_schema="pisces.test")
    assert torch.equal(tensors["x"], x)
    assert header.stage == "test" and header.metrics == {"m": 0.5} and header.recipe == {"seed": 1}
    assert header.fingerprints["encoder"]["weights_sha256"] == "w1"
    assert artifacts.tensor_shapes(path) == {"x": ([5, 4], "F32")}


def test_schema_mismatch_refused(tmp_path: Path):
    path = artifacts.save_artifact(tmp_path / "a.safetensors", {"x": torch.ones(1)}, _header())
    with pytest.raises(UsageError, match="expected a 'pisces.ot_map' artifact"):
        artifacts.load_artifact(path, expect_schema="pisces.ot_map")


def test_fingerprint_mismatch_refused():
    found = {"backend": "clip", "weights_sha256": "w1"}
    artifacts.check_fingerprint(
        found, {"backend": "clip", "weights_sha256": "w1"}, what="encoder", source="f"
    )
    with pytest.raises(UsageError, match="different encoder.*weights_sha256"):
        artifacts.check_fingerprint(
            found, {"backend": "clip", "weights_sha256": "w2"}, what="encoder", source="f"
        )


def test_non_pisces_file_refused(tmp_path: Path):
    from safetensors.torch import save_file

    save_file({"x": torch.ones(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(UsageError, match="without a pisces header"):
        artifacts.read_header(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(UsageError, match="not a complete safetensors file"):
        artifacts.read_header(tmp_path / "junk.safetensors")


KILLED_WRITER = r"""
import sys, torch
from pisces_cli import artifacts
from pisces_cli.atomic import atomic_path
target = sys.argv[1]
with atomic_path(target) as tmp:
    with open(tmp, "wb") as handle:
        handle.write(b"x" * 1024)
        handle.flush()
        print("writing", flush=True)
        import time; time.sleep(60)
"""


def test_killed_write_leaves_no_complete_looking_file(tmp_path: Path):
    target = tmp_path / "out.safetensors"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(name.startswith(".") and ".tmp-" in name for name in leftovers)
    from pisces_cli.atomic import remove_stale_temps

    assert remove_stale_temps(tmp_path) == len(leftovers)


def test_sharded_resume_skips_completed(tmp_path: Path):
    writer = ShardedArtifactWriter(tmp_path / "emb", "emb", _header())
    writer.write_shard(0, {"x": torch.zeros(2, 4)}, ["a", "b"])
    # "interrupt": a new writer sees shard 0 as done, manifest not complete
    again = ShardedArtifactWriter(tmp_path / "emb", "emb", _header())
    assert again.done_indices() == {0}
    with pytest.raises(UsageError, match="incomplete"):
        artifacts.load_sharded(tmp_path / "emb", expect_schema="pisces.test")
    again.write_shard(1, {"x": torch.ones(1, 4)}, ["c"])
    again.finalize()
    tensors, keys, header = artifacts.load_sharded(tmp_path / "emb", expect_schema="pisces.test")
    assert keys == ["a", "b", "c"] and tensors["x"].shape == (3, 4) and header.schema == "pisces.test"
    manifest = json.loads((tmp_path / "emb" / "manifest.json").read_text())
    assert manifest["complete"] and [s["rows"] for s in manifest["shards"]] == [2, 1]


def test_shard_with_missing_file_is_redone(tmp_path: Path):
    writer = ShardedArtifactWriter(tmp_path / "emb", "emb", _header())
    path = writer.write_shard(0, {"x": torch.zeros(2, 4)}, ["a", "b"])
    path.unlink()
    assert ShardedArtifactWriter(tmp_path / "emb", "emb", _header()).done_indices() == set()


def test_sharded_other_schema_refused(tmp_path: Path):
    ShardedArtifactWriter(tmp_path / "emb", "emb", _header()).write_shard(0, {"x": torch.zeros(1)}, ["a"])
    other = ArtifactHeader(schema="pisces.other")
    with pytest.raises(UsageError, match="use another output folder"):
        ShardedArtifactWriter(tmp_path / "emb", "emb", other)


def test_atomic_json_replaces_whole_file(tmp_path: Path):
    from pisces_cli.atomic import atomic_write_json

    atomic_write_json(tmp_path / "m.json", {"a": 1})
    atomic_write_json(tmp_path / "m.json", {"b": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    time.sleep(0)


def test_temp_path_for_a_name_near_the_limit_fits_and_stays_unique(tmp_path):
    from pisces_cli.atomic import NAME_MAX, atomic_write_text, temp_path_for

    long_a, long_b = "é" * 120 + "a.txt", "é" * 120 + "b.txt"  # 245 bytes each
    tmp_a, tmp_b = temp_path_for(tmp_path / long_a), temp_path_for(tmp_path / long_b)
    assert len(tmp_a.name.encode()) <= NAME_MAX and tmp_a != tmp_b
    assert tmp_a.name.startswith(".") and ".tmp-" in tmp_a.name
    atomic_write_text(tmp_path / long_a, "x")
    assert (tmp_path / long_a).read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == [long_a]


def test_stale_temp_cleanup_spares_temps_of_running_writers(tmp_path: Path):
    """Regression: rank 0 opening a sharded writer deleted rank 1's in-flight temp file (torchrun race)."""
    from pisces_cli import atomic

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        finished = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
        )
        dead_pid = int(finished.stdout)
        host = atomic._host_tag()
        live = tmp_path / f".a.json{atomic.TMP_MARK}{sleeper.pid}-{host}"
        own = atomic.temp_path_for(tmp_path / "b.json")
        dead = tmp_path / f".c.json{atomic.TMP_MARK}{dead_pid}-{host}"
        legacy_dead = tmp_path / f".d.json{atomic.TMP_MARK}{dead_pid}"
        foreign_fresh = tmp_path / f".e.json{atomic.TMP_MARK}{dead_pid}-00000000"
        foreign_old = tmp_path / f".f.json{atomic.TMP_MARK}{dead_pid}-00000000"
        for item in (live, own, dead, legacy_dead, foreign_fresh, foreign_old):
            item.write_text("partial")
        old = time.time() - atomic.FOREIGN_TEMP_MAX_AGE_S - 60
        os.utime(foreign_old, (old, old))

        ShardedArtifactWriter(tmp_path, "emb", _header())  # cleans stale temps on open
        left = {p.name for p in tmp_path.iterdir()}
        assert {live.name, own.name, foreign_fresh.name} <= left
        assert not left & {dead.name, legacy_dead.name, foreign_old.name}
    finally:
        sleeper.kill()
        sleeper.wait()


def test_checkpoint_staging_folders_of_dead_runs_are_removed_live_ones_kept(tmp_path: Path):
    from pisces_cli import atomic
    from pisces_cli.training.checkpoint import publish, staging_dir

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    host = atomic._host_tag()
    dead = tmp_path / f".checkpoint-3{atomic.TMP_MARK}{int(finished.stdout)}-{host}"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".checkpoint-4{atomic.TMP_MARK}{sleeper.pid}-{host}"
        for folder in (dead, live):
            (folder / "state").mkdir(parents=True)
            (folder / "state" / "optimizer.safetensors").write_bytes(b"partial")
        staging = staging_dir(tmp_path, 5)
        assert staging.is_dir() and staging.name.startswith(".checkpoint-5" + atomic.TMP_MARK)
        assert live.is_dir() and not dead.exists()
        (staging / "weights").write_text("w")
        assert publish(staging, tmp_path, 5) == tmp_path / "checkpoint-5" and not staging.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
