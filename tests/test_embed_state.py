"""``pisces embed`` state: the run key refuses other settings before loading, ``--force`` starts over,
changed items re-embed their shard alone, error rows survive interruptions exactly once, no-op re-runs
load no model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pisces_cli.artifacts import load_sharded
from pisces_cli.cli.main import main


@pytest.fixture()
def world(tmp_path: Path) -> Path:
    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder
    from pisces_cli.world.captions import world_vocabulary

    write_clip_folder(tmp_path / "clips", 8, seed=21, frames=8, size=32)
    # shard 0 (clip_000..002): one corrupt video; shard 2 (clip_006, clip_007): every video corrupt
    for name in ("clip_001.mp4", "clip_006.mp4", "clip_007.mp4"):
        (tmp_path / "clips" / name).write_bytes(b"not a video " * 10)
    save_tiny_clip(tmp_path / "enc", "clip", seed=0, words=world_vocabulary())
    (tmp_path / "r.yaml").write_text(
        f"output_dir: {tmp_path}/run\n"
        "runtime: {num_workers: 0, device: cpu}\n"
        f"models: {{encoder: {{backend: clip, path: {tmp_path}/enc}}}}\n"
        f"data: {{videos: {tmp_path}/clips, num_frames: 4}}\n"
        "embed: {shard_size: 3, batch_size: 2}\n"
    )
    return tmp_path


def embed(world: Path, *args: str) -> int:
    return main(["embed", "-r", str(world / "r.yaml"), *args])


def errors(world: Path) -> list[dict]:
    return [json.loads(line) for line in (world / "run/embeddings/errors.jsonl").read_text().splitlines()]


def no_model(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the encoder was loaded")

    monkeypatch.setattr("pisces_cli.rewards.build.load_encoder_from_recipe", refuse)


def test_errors_survive_an_interrupted_run_exactly_once(world: Path, monkeypatch, capsys):
    from pisces_cli.stages import embed as stage

    real = stage._Embedder.embed_shard
    calls = []

    def interrupted(self, index, *args, **kwargs):
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, index, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(stage._Embedder, "embed_shard", interrupted)
        assert embed(world) == 130
    # shard 0 finished: its error row was written as it happened
    assert [e["key"] for e in errors(world)] == ["clip_001.mp4"]
    assert embed(world) == 0
    first = errors(world)
    assert [(e["key"], e["shard"]) for e in first] == [
        ("clip_001.mp4", 0),
        ("clip_006.mp4", 2),
        ("clip_007.mp4", 2),
    ]
    manifest = json.loads((world / "run/embeddings/manifest.json").read_text())
    assert manifest["complete"] and [e["index"] for e in manifest["empty_shards"]] == [2]
    summary = json.loads((world / "run/embeddings/summary.json").read_text())
    assert summary["failed"] == 3 and summary["embedded"] == 5 and summary["skipped_shards"] == 1
    # everything done, even the all-failed shard: no model, nothing to do, the errors come back
    no_model(monkeypatch)
    capsys.readouterr()
    assert embed(world) == 0
    printed = capsys.readouterr().out
    assert "nothing to do" in printed and "0/0" not in printed and "embedded 0 new" not in printed
    assert errors(world) == first
    tensors, keys, _ = load_sharded(world / "run/embeddings", expect_schema="pisces.embeddings")
    assert keys == ["clip_000.mp4", "clip_002.mp4", "clip_003.mp4", "clip_004.mp4", "clip_005.mp4"]
    assert tensors["text_cls"].shape[0] == 5


def test_other_settings_are_refused_before_loading_and_force_starts_over(world: Path, monkeypatch, capsys):
    assert embed(world) == 0
    out = world / "run/embeddings"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with monkeypatch.context() as patch:
        no_model(patch)
        capsys.readouterr()
        assert embed(world, "data.num_frames=3") == 2
        err = capsys.readouterr().err
        assert "frames.requested: 4 → 3" in err and "--force" in err and "--output" in err
        assert embed(world, "embed.shard_size=4") == 2
        assert "shards.shard_size: 3 → 4" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert embed(world, "embed.shard_size=4", "--force") == 0
    assert embed(world, "embed.shard_size=4", "--output", str(world / "fresh")) == 0
    forced, keys_forced, _ = load_sharded(out, expect_schema="pisces.embeddings")
    fresh, keys_fresh, _ = load_sharded(world / "fresh", expect_schema="pisces.embeddings")
    assert keys_forced == keys_fresh
    for name in ("text_cls", "video_cls"):
        assert (forced[name] - fresh[name]).abs().max() < 1e-6
    assert sorted(p.name for p in out.glob("embeddings-*.safetensors")) == [
        "embeddings-00000.safetensors",
        "embeddings-00001.safetensors",
    ]  # no shard of the old layout stays
    assert errors(world) == [
        {**e} for e in [json.loads(x) for x in (world / "fresh/errors.jsonl").read_text().splitlines()]
    ]


def test_changed_items_re_embed_their_shard_alone(world: Path, capsys):
    assert embed(world) == 0
    out = world / "run/embeddings"
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("embeddings-*.safetensors")}
    shutil.copy(world / "clips/clip_000.mp4", world / "clips/clip_004.mp4")  # shard 1 changes
    capsys.readouterr()
    assert embed(world) == 0
    assert "embedded 1 shards again whose items changed" in capsys.readouterr().out
    now = {p.name: p.stat().st_mtime_ns for p in out.glob("embeddings-*.safetensors")}
    assert now["embeddings-00000.safetensors"] == mtimes["embeddings-00000.safetensors"]
    assert now["embeddings-00001.safetensors"] != mtimes["embeddings-00001.safetensors"]
    tensors, keys, _ = load_sharded(out, expect_schema="pisces.embeddings")
    row = keys.index("clip_004.mp4")
    assert (tensors["video_cls"][row] - tensors["video_cls"][keys.index("clip_000.mp4")]).abs().max() < 1e-5


def test_the_run_key_carries_the_embed_code_version(world: Path, monkeypatch, capsys):
    from pisces_cli.stages.embed import EMBED_VERSION

    assert embed(world) == 0
    path = world / "run/embeddings/manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["header"]["extra"]["run_key"]["version"] == EMBED_VERSION
    manifest["header"]["extra"]["run_key"]["version"] = EMBED_VERSION - 1
    path.write_text(json.dumps(manifest))
    no_model(monkeypatch)
    capsys.readouterr()
    assert embed(world) == 2
    assert f"version: {EMBED_VERSION - 1} → {EMBED_VERSION}" in capsys.readouterr().err


def embeddings(world: Path, out: Path | None = None) -> dict[str, object]:
    tensors, keys, _ = load_sharded(out or world / "run/embeddings", expect_schema="pisces.embeddings")
    return {key: (tensors["text_cls"][i], tensors["video_cls"][i]) for i, key in enumerate(keys)}


def set_caption(world: Path, index: int, caption: str) -> None:
    path = world / "clips/prompts.jsonl"
    mapping = [json.loads(line) for line in path.read_text().splitlines()]
    mapping[index]["prompt"] = caption
    path.write_text("".join(json.dumps(m) + "\n" for m in mapping))


def test_a_shard_is_reused_only_when_its_own_file_holds_these_items(world: Path, capsys):
    """A caption changed and changed back, a shard file deleted or replaced: the shard is embedded again."""
    out = world / "run/embeddings"
    assert embed(world) == 0
    first = embeddings(world)
    original = json.loads((world / "clips/prompts.jsonl").read_text().splitlines()[0])["prompt"]
    shutil.copy(out / "manifest.json", out / "manifest.rank0.json")  # as a killed 1-rank torchrun leaves it
    set_caption(world, 0, "a purple star")
    assert embed(world) == 0
    assert not list(out.glob("*.rank*.json"))  # folded into manifest.json, then removed
    shutil.copy(out / "manifest.json", out / "manifest.rank1.json")
    set_caption(world, 0, original)
    capsys.readouterr()
    assert embed(world) == 0
    assert "nothing to do" not in capsys.readouterr().out
    again = embeddings(world)
    assert (again["clip_000.mp4"][0] - first["clip_000.mp4"][0]).abs().max() < 1e-6
    for damage in ("delete", "replace"):
        shard = out / "embeddings-00001.safetensors"
        if damage == "delete":
            shard.unlink()
        else:
            shutil.copy(out / "embeddings-00000.safetensors", shard)  # another shard's rows under its name
        capsys.readouterr()
        assert embed(world) == 0
        assert "nothing to do" not in capsys.readouterr().out
        now = embeddings(world)
        assert list(now) == list(first)
        for key, (text, video) in now.items():
            assert (text - first[key][0]).abs().max() < 1e-6 and (video - first[key][1]).abs().max() < 1e-6


def test_limit_never_deletes_the_shards_beyond_it(world: Path, capsys):
    out = world / "run/embeddings"
    assert embed(world) == 0
    first = embeddings(world)
    kept = {p.name: p.read_bytes() for p in out.glob("embeddings-0000[12].*")}
    capsys.readouterr()
    assert embed(world, "--limit", "2") == 0  # a smoke test over the first 2 items
    assert "where --limit ends" in capsys.readouterr().out  # not "videos or captions changed"
    assert {p.name: p.read_bytes() for p in out.glob("embeddings-0000[12].*")} == kept
    assert list(embeddings(world)) == ["clip_000.mp4"]  # clip_001 is corrupt: the limited artifact
    capsys.readouterr()
    assert embed(world) == 0
    printed = capsys.readouterr().out
    assert "nothing to do" not in printed and "embedded 1 shards again" in printed  # shard 0 alone
    now = embeddings(world)
    assert list(now) == list(first)
    for key, (text, video) in now.items():
        assert (text - first[key][0]).abs().max() < 1e-6 and (video - first[key][1]).abs().max() < 1e-6
