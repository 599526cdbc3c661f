"""Recipes that travel: every recipe pisces writes holds absolute paths and runs from any folder."""

from __future__ import annotations

from pathlib import Path

import yaml

from pisces_cli.cli.main import main
from pisces_cli.config import resolve_data
from pisces_cli.config.recipe import portable_data


def test_demo_recipe_scores_from_another_folder(tmp_path: Path, monkeypatch):
    from pisces_cli.demo import write_demo_recipe
    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder
    from pisces_cli.world.captions import world_vocabulary

    demo_home = tmp_path / "where-the-demo-ran"
    demo_home.mkdir()
    monkeypatch.chdir(demo_home)
    _raw, resolved = write_demo_recipe(Path("pisces-demo"))  # relative, as `pisces demo` is usually run
    save_tiny_clip(resolved.recipe.models.encoder.path, "clip", seed=0, words=world_vocabulary())
    write_clip_folder(Path("pisces-demo/clips/eval"), 3, seed=1, frames=8, size=32)

    written = yaml.safe_load((demo_home / "pisces-demo/recipe.yaml").read_text())
    for value in (
        written["output_dir"],
        written["models"]["encoder"]["path"],
        written["models"]["generator"]["path"],
        written["embed"]["output"],
        written["reward"]["ot_map"],
        written["finetune"]["data"]["prompts"],
        written["generate"]["prompts"],
    ):
        assert Path(value).is_absolute(), value

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = demo_home / "pisces-demo/recipe.yaml"
    argv = ["score", str(demo_home / "pisces-demo/clips/eval"), "--recipe", str(recipe), "reward.ot_map=null"]
    assert main([*argv, "runtime.num_workers=0", "-o", "scores"]) == 0
    assert (elsewhere / "scores/scores.jsonl").is_file()


def test_paths_become_absolute_but_hub_ids_and_names_do_not(tmp_path: Path):
    (tmp_path / "enc").mkdir()
    (tmp_path / "prompts.txt").write_text("a cat\n")
    data = resolve_data(
        {},
        [
            "output_dir=runs/x",
            "models.encoder.path=enc",
            "models.generator.path=hunyuanvideo-community/HunyuanVideo",
            "generate.prompts=vbench",
            "eval.prompts=prompts.txt",
            "data.shards=shards/{000..003}.tar",
            "reward.ot_map=~/maps/ot_map.safetensors",
        ],
        "t",
    ).data
    out = portable_data(data, tmp_path)
    assert out["output_dir"] == str(tmp_path / "runs/x")
    assert out["embed"]["output"] == str(tmp_path / "runs/x/embeddings")
    assert out["models"]["encoder"]["path"] == str(tmp_path / "enc")
    assert out["models"]["generator"]["path"] == "hunyuanvideo-community/HunyuanVideo"
    assert out["generate"]["prompts"] == "vbench"
    assert out["eval"]["prompts"] == str(tmp_path / "prompts.txt")
    assert out["data"]["shards"] == str(tmp_path / "shards/{000..003}.tar")
    assert out["reward"]["ot_map"] == "~/maps/ot_map.safetensors"
    assert out["finetune"]["resume"] == "latest" and out["score"]["output"] is None
    assert portable_data(out, tmp_path / "other") == out  # already portable: unchanged
    assert portable_data({"seed": 1, "unknown": "rel/path"}, tmp_path) == {"seed": 1, "unknown": "rel/path"}


def test_recipes_you_write_keep_their_relative_paths():
    resolved = resolve_data({"output_dir": "runs/x"}, [], "t")
    assert resolved.data["output_dir"] == "runs/x" and "output_dir: runs/x" in resolved.to_yaml()


def test_recipe_stored_in_an_artifact_runs_from_another_folder(tmp_path: Path, monkeypatch):
    from pisces_cli.artifacts import read_header
    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    write_clip_folder(Path("clips"), 3, seed=2, frames=8, size=32)
    save_tiny_clip(Path("enc"), "clip", seed=0)
    Path("r.yaml").write_text(
        "output_dir: run\nruntime: {num_workers: 0}\nmodels: {encoder: {backend: clip, path: enc}}\n"
        "data: {videos: clips, num_frames: 4}\n"
    )
    assert main(["embed", "-r", "r.yaml"]) == 0
    stored = read_header(home / "run/embeddings/embeddings-00000.safetensors").recipe
    assert stored["data"]["videos"] == str(home / "clips")
    assert stored["models"]["encoder"]["path"] == str(home / "enc")

    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    Path("stored.yaml").write_text(yaml.safe_dump(stored))
    assert main(["embed", "-r", "stored.yaml", "embed.output=again"]) == 0  # inputs found from here
    manifest = (other / "again/manifest.json").read_text()
    assert '"rows": 3' in manifest and not (other / "run").exists()
