"""embed → fit-ot → score through the CLI on tiny models and synthetic clips (exit codes, resume, refusals)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pisces_cli.cli.main import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder

    root = tmp_path_factory.mktemp("pipeline")
    write_clip_folder(root / "clips", 16, seed=3, frames=8, size=32)
    save_tiny_clip(root / "enc", "clip", seed=0)
    save_tiny_clip(root / "enc_other", "clip", seed=1)
    return root


def write_recipe(root: Path, name: str = "r.yaml", **extra: str) -> Path:
    text = f"""
output_dir: {root}/run
runtime: {{num_workers: 0}}
models: {{encoder: {{backend: clip, path: {root}/enc}}}}
data: {{videos: {root}/clips, num_frames: 4}}
embed: {{shard_size: 6, batch_size: 4}}
fit_ot:
  method: neural
  val_fraction: 0.25
  neural: {{hidden_dim: 16, max_steps: 6, eval_every: 3, batch_size: 4, t_iters: 2}}
reward: {{ot_map: {root}/run/ot/ot_map.safetensors, token_ot: {{max_iter: 30}}}}
"""
    path = root / name
    path.write_text(text + "".join(f"{k}: {v}\n" for k, v in extra.items()))
    return path


def test_embed_fit_score_round(world: Path):
    recipe = write_recipe(world)
    assert main(["embed", "-r", str(recipe)]) == 0
    manifest = json.loads((world / "run/embeddings/manifest.json").read_text())
    assert manifest["complete"] and sum(s["rows"] for s in manifest["shards"]) == 16
    assert [s["index"] for s in manifest["shards"]] == [0, 1, 2]
    # resume: everything is done, nothing is re-embedded
    mtimes = {p.name: p.stat().st_mtime_ns for p in (world / "run/embeddings").glob("*.safetensors")}
    assert main(["embed", "-r", str(recipe)]) == 0
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (world / "run/embeddings").glob("*.safetensors")}

    assert main(["fit-ot", "-r", str(recipe)]) == 0
    out = world / "run/ot"
    for name in (
        "ot_map.safetensors",
        "ot_map_last.safetensors",
        "ot_map_best_mknn.safetensors",
        "report.md",
    ):
        assert (out / name).is_file(), name
    from pisces_cli.artifacts import read_header

    header = read_header(out / "ot_map.safetensors")
    assert header.schema == "pisces.ot_map" and header.extra["map"]["method"] == "neural"
    assert header.extra["map"]["normalization"] == "l2"
    assert {"mknn_before", "mknn_after", "spearman"} <= set(header.metrics)
    assert header.fingerprints["encoder"]["backend"] == "clip"

    (world / "clips" / "corrupt.mp4").write_bytes(b"\x00garbage" * 50)
    with open(world / "clips" / "prompts.jsonl", "a") as handle:
        handle.write(json.dumps({"file": "corrupt.mp4", "prompt": "a red circle"}) + "\n")
    (world / "clips" / "noprompt.mp4").write_bytes((world / "clips" / "clip_000.mp4").read_bytes())
    assert main(["score", str(world / "clips"), "-r", str(recipe), "--report"]) == 0
    rows = [
        json.loads(line) for line in (world / "clips/pisces-scores/scores.jsonl").read_text().splitlines()
    ]
    by_video = {r["video"]: r for r in rows}
    assert len(rows) == 18
    assert "corrupt.mp4" in by_video and by_video["corrupt.mp4"]["error"]
    assert "no prompt" in by_video["noprompt.mp4"]["error"]
    good = [r for r in rows if r["error"] is None]
    assert len(good) == 16
    for r in good:
        assert -1.0 <= r["quality"] <= 1.0 and -1.0 <= r["quality_no_ot"] <= 1.0
        assert r["total"] == pytest.approx(r["quality"] + r["semantic"], abs=1e-5)
    summary = json.loads((world / "clips/pisces-scores/summary.json").read_text())
    assert summary["scored"] == 16 and summary["failed"] == 2
    assert (
        summary["columns"]["quality"]["ci_low"]
        <= summary["columns"]["quality"]["mean"]
        <= summary["columns"]["quality"]["ci_high"]
    )
    assert (world / "clips/pisces-scores/scores.csv").read_text().startswith("video,prompt,quality")
    html = (world / "clips/pisces-scores/report.html").read_text()
    assert "data:image/png;base64" in html and "http" not in html.split("<body>", 1)[1].replace(
        "http-equiv", ""
    )
    # re-run skips what is scored
    before = (world / "clips/pisces-scores/scores.jsonl").read_text()
    assert main(["score", str(world / "clips"), "-r", str(recipe)]) == 0
    assert (world / "clips/pisces-scores/scores.jsonl").read_text() == before

    # a map of another encoder is refused with exit code 2
    other = write_recipe(world, "other.yaml")
    text = other.read_text().replace(f"path: {world}/enc}}", f"path: {world}/enc_other}}")
    other.write_text(text)
    assert main(["score", str(world / "clips"), "-r", str(other), "-o", str(world / "s2")]) == 2

    # gaussian and identity maps
    assert main(["fit-ot", "-r", str(recipe), "fit_ot.method=gaussian", f"fit_ot.output={world}/ot_g"]) == 0
    assert main(["fit-ot", "-r", str(recipe), "fit_ot.method=identity", f"fit_ot.output={world}/ot_i"]) == 0
    assert read_header(world / "ot_i/ot_map.safetensors").extra["map"]["method"] == "identity"


def test_score_all_failed_exits_1(world: Path, tmp_path: Path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(2):
        (folder / f"v{i}.mp4").write_bytes(b"nope")
        (folder / f"v{i}.txt").write_text("a blue square")
    recipe = write_recipe(world, "bad.yaml")
    assert main(["score", str(folder), "-r", str(recipe), "reward.ot_map=null"]) == 1


def test_score_missing_folder_exits_2(world: Path):
    assert main(["score", str(world / "nope"), "-r", str(write_recipe(world))]) == 2


def test_import_reference_map(world: Path, tmp_path: Path):
    from pisces_cli.ot.maps import OTMapNet

    dim = 16  # tiny clip projection dim
    from pisces_cli.encoders.registry import load_encoder

    dim = load_encoder("clip", str(world / "enc")).embed_dim
    net = OTMapNet(dim, dim, 8)
    torch.save({"T": {f"module.{k}": v for k, v in net.state_dict().items()}, "step": 3}, tmp_path / "map.pt")
    recipe = write_recipe(world, "imp.yaml")
    assert (
        main(
            ["fit-ot", "-r", str(recipe), "--import", str(tmp_path / "map.pt"), f"fit_ot.output={tmp_path}/o"]
        )
        == 0
    )
    from pisces_cli.rewards.ot_map_artifact import load_ot_map_artifact

    tmap, header = load_ot_map_artifact(tmp_path / "o/ot_map.safetensors")
    x = torch.randn(3, dim)
    assert torch.allclose(tmap(x), net(x), atol=1e-6)
    torch.save({"weird": torch.zeros(2)}, tmp_path / "bad.pt")
    assert main(["fit-ot", "-r", str(recipe), "--import", str(tmp_path / "bad.pt")]) == 2


def test_import_under_torchrun_rank1_writes_nothing(world: Path, tmp_path: Path, monkeypatch, capsys):
    """Under torchrun rank 0 alone writes the imported map (every rank claimed the folder and wrote it)."""
    from pisces_cli.encoders.registry import load_encoder
    from pisces_cli.ot.maps import OTMapNet

    dim = load_encoder("clip", str(world / "enc")).embed_dim
    torch.save({"T": OTMapNet(dim, dim, 8).state_dict()}, tmp_path / "map.pt")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = ["fit-ot", "-r", str(write_recipe(world, "imp1.yaml")), "--import", str(tmp_path / "map.pt")]
    assert main([*args, f"fit_ot.output={tmp_path}/o"]) == 0
    assert not (tmp_path / "o").exists() and capsys.readouterr().out == ""
