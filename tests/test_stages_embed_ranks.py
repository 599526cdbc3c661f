"""`pisces embed` under torchrun with 2 CPU processes: each rank writes its shards, rank 0 merges manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pisces_cli.artifacts import load_sharded


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder
    from pisces_cli.world.captions import world_vocabulary

    root = tmp_path_factory.mktemp("ranks")
    write_clip_folder(root / "clips", 10, seed=11, frames=8, size=32)
    save_tiny_clip(root / "enc", "clip", seed=0, words=world_vocabulary())
    recipe = root / "r.yaml"
    recipe.write_text(
        f"output_dir: {root}/run\n"
        "runtime: {num_workers: 0, device: cpu}\n"
        f"models: {{encoder: {{backend: clip, path: {root}/enc}}}}\n"
        f"data: {{videos: {root}/clips, num_frames: 4}}\n"
        "embed: {shard_size: 3, batch_size: 2}\n"
    )
    return root, recipe


def test_two_ranks_match_one_process(setup):
    root, recipe = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "pisces_cli",
        "embed",
        "--recipe",
        str(recipe),
        f"embed.output={root}/two",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    manifest = json.loads((root / "two" / "manifest.json").read_text())
    assert manifest["complete"] and [s["index"] for s in manifest["shards"]] == [0, 1, 2, 3]
    # the ranks' manifests and counts are folded into manifest.json / summary.json, then removed
    assert not list((root / "two").glob("*.rank*.json"))

    from pisces_cli.cli.main import main

    assert main(["embed", "--recipe", str(recipe), f"embed.output={root}/one"]) == 0
    two, keys_two, _ = load_sharded(root / "two", expect_schema="pisces.embeddings")
    one, keys_one, _ = load_sharded(root / "one", expect_schema="pisces.embeddings")
    assert keys_two == keys_one and len(keys_one) == 10
    for name in ("text_cls", "video_cls"):
        assert (two[name] - one[name]).abs().max() < 1e-5
    assert Path(root / "two" / "summary.json").is_file()
    summary = json.loads((root / "two" / "summary.json").read_text())
    assert summary["items"] == 10 and summary["embedded_now"] == 10 and summary["failed_now"] == 0

    import pisces_cli.rewards.build as build

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder was loaded")

    original, build.load_encoder_from_recipe = build.load_encoder_from_recipe, refuse
    try:  # a one-process run over the 2-rank folder: every shard is done
        assert main(["embed", "--recipe", str(recipe), f"embed.output={root}/two"]) == 0
    finally:
        build.load_encoder_from_recipe = original
