"""`pisces inspect` knows every file pisces writes: artifacts, checkpoints and their files, the fit-ot
training state, and the stages' plain outputs; it refuses wrong-typed headers and manifests with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_finetune_support import tiny_overrides

from pisces_cli.cli.main import main


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    """embed → fit-ot (neural, resumable state) → score, and a one-step LoRA fine-tune, on tiny models."""
    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder

    root = tmp_path_factory.mktemp("inspect")
    write_clip_folder(root / "clips", 12, seed=4, frames=8, size=32)
    save_tiny_clip(root / "enc", "clip", seed=0)
    recipe = root / "r.yaml"
    recipe.write_text(
        f"""
output_dir: {root}/run
runtime: {{num_workers: 0}}
models: {{encoder: {{backend: clip, path: {root}/enc}}}}
data: {{videos: {root}/clips, num_frames: 4}}
embed: {{shard_size: 4}}
fit_ot:
  method: neural
  val_fraction: 0.3
  neural: {{hidden_dim: 16, max_steps: 4, eval_every: 2, batch_size: 4, t_iters: 2}}
score: {{bootstrap_samples: 50}}
reward: {{ot_map: {root}/run/ot/ot_map.safetensors, token_ot: {{max_iter: 20}}}}
"""
    )
    assert main(["embed", "-r", str(recipe)]) == 0
    assert main(["fit-ot", "-r", str(recipe)]) == 0
    assert main(["score", str(root / "clips"), "-r", str(recipe)]) == 0
    assert main(["finetune", "-r", "demo", *tiny_overrides(root / "ft", max_steps=1)]) == 0
    return root


def run_inspect(path: Path, capsys, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["inspect", str(path), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_every_safetensors_file_pisces_wrote_is_inspectable(outputs: Path, capsys):
    files = sorted(outputs.rglob("*.safetensors"))
    files = [f for f in files if "enc" not in f.relative_to(outputs).parts[:1]]  # not the test's own model
    names = {f.name for f in files}
    assert {"ot_map.safetensors", "embeddings-00000.safetensors", "pytorch_lora_weights.safetensors"} <= names
    assert {
        "adapter_model.safetensors",
        "trainable.safetensors",
        "optimizer.safetensors",
        "map.safetensors",
    } <= names
    assert any(name.startswith("trainer-") for name in names)
    for path in files:
        code, text = run_inspect(path, capsys)
        assert code == 0, (path, text)
        assert "Traceback" not in text and "without a pisces header" not in text
        code, text = run_inspect(path, capsys, "--json")
        assert code == 0 and json.loads(text)


@pytest.mark.parametrize(
    ("where", "kind"),
    [
        ("ft/run/finetune/checkpoint-1", "finetune.checkpoint"),
        ("ft/run/finetune/checkpoint-1/training_state", "finetune.training_state"),
        ("ft/run/finetune/checkpoint-1/pytorch_lora_weights.safetensors", "finetune.lora_diffusers"),
        ("ft/run/finetune/checkpoint-1/adapter_model.safetensors", "finetune.lora_peft"),
        ("ft/run/finetune/checkpoint-1/adapter_config.json", "finetune.lora_peft_config"),
        ("ft/run/finetune/checkpoint-1/pisces_lora.json", "finetune.lora_metadata"),
        (
            "ft/run/finetune/checkpoint-1/training_state/trainable.safetensors",
            "finetune.training_state.trainable",
        ),
        (
            "ft/run/finetune/checkpoint-1/training_state/optimizer.safetensors",
            "finetune.training_state.optimizer",
        ),
        ("ft/run/finetune/checkpoint-1/training_state/state.json", "finetune.training_state.state"),
        ("ft/run/finetune", "finetune.output"),
        ("run/ot/state", "fit_ot.state"),
        ("run/ot/state/last", "fit_ot.state_part"),
        ("run/ot/state/last/map.safetensors", "fit_ot.map"),
        ("run/ot/state/last/state.json", "fit_ot.state_meta"),
        ("clips/pisces-scores/scores.jsonl", "output.scores.jsonl"),
        ("clips/pisces-scores/summary.json", "output.summary.json"),
        ("run/embeddings/embeddings-00000.keys.json", "artifact.shard_keys"),
    ],
)
def test_inspect_says_what_each_kind_of_file_is(outputs: Path, capsys, where: str, kind: str):
    code, text = run_inspect(outputs / where, capsys, "--json")
    assert code == 0, text
    assert json.loads(text)["kind"] == kind
    code, text = run_inspect(outputs / where, capsys)
    assert code == 0 and "Traceback" not in text


def test_checkpoint_facts_come_from_its_own_files(outputs: Path, capsys):
    code, text = run_inspect(outputs / "ft/run/finetune/checkpoint-1", capsys, "--json")
    data = json.loads(text)
    assert (
        data["facts"]["step"] == 1
        and data["facts"]["rank"] == 4
        and data["facts"]["backbone"] == "hunyuan_video"
    )
    assert "pytorch_lora_weights.safetensors" in data["contents"]
    code, text = run_inspect(outputs / "run/ot/state", capsys, "--json")
    assert json.loads(text)["facts"]["last.step"] == 4


def test_sharded_folder_and_artifact_still_show_their_header(outputs: Path, capsys):
    code, text = run_inspect(outputs / "run/embeddings", capsys)
    assert code == 0 and "pisces.embeddings" in text
    code, text = run_inspect(outputs / "run/ot/ot_map.safetensors", capsys)
    assert code == 0 and "pisces.ot_map" in text


def test_unknown_files_are_refused_saying_what_inspect_reads(tmp_path: Path, capsys):
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(other))
    code, text = run_inspect(other, capsys)
    assert code == 2 and "without a pisces header" in text
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    code, text = run_inspect(notes, capsys)
    assert code == 2 and "not a file pisces inspect knows" in " ".join(text.split())
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(other.read_bytes()[:-3])
    code, text = run_inspect(truncated, capsys)
    assert code == 2 and "not a complete safetensors file" in " ".join(text.split())


def _with_header(path: Path, header: dict) -> Path:
    save_file({"x": torch.zeros(2)}, str(path), metadata={"pisces": json.dumps(header)})
    return path


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ({"schema": 3}, "schema: expected str"),
        ({"schema": "pisces.test", "fingerprints": [1, 2]}, "fingerprints: expected a mapping"),
        (
            {"schema": "pisces.test", "fingerprints": {"encoder": "clip"}},
            "fingerprints.encoder: expected a mapping",
        ),
        ({"schema": "pisces.test", "tensors": {"x": 5}}, "tensors.x: expected str"),
        ({"schema": "pisces.test", "schema_version": "1"}, "schema_version: expected int"),
        ({"schema": "pisces.test", "metrics": []}, "metrics: expected a mapping"),
        (
            {"schema": "pisces.ot_map", "extra": {"map": {"method": 1, "normalization": "l2"}}},
            "extra.map.method",
        ),
        ({"schema": "pisces.ot_map", "extra": {}}, "extra.map: missing"),
        ({"schema": "pisces.embeddings", "extra": {"num_frames": "8"}}, "extra.num_frames: expected int"),
    ],
)
def test_wrong_typed_headers_exit_2_naming_file_and_field(tmp_path: Path, capsys, header: dict, field: str):
    path = _with_header(tmp_path / "bad.safetensors", header)
    code, text = run_inspect(path, capsys)
    text = "".join(text.split())  # rich wraps long paths anywhere
    assert code == 2 and "bad.safetensors:invalidpiscesheader" in text and "".join(field.split()) in text, (
        text
    )


def test_wrong_typed_ot_map_header_is_refused_by_score(outputs: Path, tmp_path: Path, capsys):
    bad = _with_header(
        tmp_path / "ot_map.safetensors",
        {"schema": "pisces.ot_map", "fingerprints": {"encoder": []}, "extra": {"map": "neural"}},
    )
    capsys.readouterr()
    argv = [
        "score",
        str(outputs / "clips"),
        "-r",
        str(outputs / "r.yaml"),
        "--ot-map",
        str(bad),
        "-o",
        str(tmp_path / "s"),
    ]
    assert main(argv) == 2
    err = "".join(capsys.readouterr().err.split())  # rich wraps long paths anywhere
    assert "ot_map.safetensors:invalidpiscesheader" in err and "fingerprints.encoder" in err


@pytest.mark.parametrize(
    ("manifest", "field"),
    [
        ({"schema": "pisces.embeddings", "shards": "all"}, "shards: expected a list"),
        (
            {"schema": "pisces.embeddings", "shards": [{"file": "a.safetensors", "index": "0", "rows": 1}]},
            "shards[0].index",
        ),
        (
            {
                "schema": "pisces.embeddings",
                "shards": [{"file": "../../x.safetensors", "index": 0, "rows": 1}],
            },
            "not a file name inside",
        ),
        ({"schema": "pisces.embeddings", "shards": [], "complete": "yes"}, "complete: expected"),
        ([1, 2, 3], "expected a mapping"),
        ({"schema": "pisces.embeddings", "shards": [], "num_items": "48"}, "num_items: expected int"),
        (  # one shard listed twice would load its rows twice (and into both fit-ot splits)
            {
                "schema": "pisces.embeddings",
                "shards": [
                    {"file": "e-0.safetensors", "keys_file": "e-0.keys.json", "index": 0, "rows": 1},
                    {"file": "e-1.safetensors", "keys_file": "e-1.keys.json", "index": 1, "rows": 1},
                    {"file": "e-0.safetensors", "keys_file": "e-0.keys.json", "index": 2, "rows": 1},
                ],
            },
            "shards[2].file: 'e-0.safetensors' is listed twice (also shards[0])",
        ),
        (
            {
                "schema": "pisces.embeddings",
                "shards": [{"file": "e-0.safetensors", "index": 0, "rows": 1}],
                "empty_shards": [{"index": 0}],
            },
            "empty_shards[0].index: 0 is listed twice",
        ),
    ],
)
def test_wrong_typed_manifests_exit_2_for_inspect_and_embed_resume(
    outputs: Path, tmp_path: Path, capsys, manifest, field: str
):
    folder = tmp_path / "emb"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, text = run_inspect(folder, capsys)
    text = "".join(text.split())  # rich wraps long paths anywhere
    assert code == 2 and "manifest.json:invalidmanifest" in text and "".join(field.split()) in text, text
    capsys.readouterr()
    assert main(["embed", "-r", str(outputs / "r.yaml"), "-o", str(folder)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "invalid manifest" in err and "Traceback" not in err


def test_a_fifo_is_refused_instead_of_blocking_inspect(tmp_path: Path, capsys):
    import os

    for name in ("ot_map.safetensors", "manifest.json"):
        os.mkfifo(tmp_path / name)  # nobody writes to it: reading it would wait for ever
        code, text = run_inspect(tmp_path / name, capsys)
        assert code == 2 and "not a regular file" in text and "Traceback" not in text
    from pisces_cli.safetensors_header import SafetensorsHeaderError, read_safetensors_header

    with pytest.raises(SafetensorsHeaderError, match="not a regular file"):
        read_safetensors_header(tmp_path / "ot_map.safetensors")


def test_generate_folders_rank_parts_and_state_files_are_recognised(tmp_path: Path, capsys):
    from pisces_cli.cli.file_kinds import identify

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a cat-0.mp4").write_bytes(b"x")
    (videos / "manifest.json").write_text(json.dumps({"schema": "pisces.generated_videos", "complete": True}))
    assert identify(videos).kind == "generate.output" and identify(videos).facts["videos"] == 1
    assert identify(videos / "manifest.json").kind == "generate.manifest"
    code, text = run_inspect(videos, capsys)  # not mistaken for a sharded artifact
    assert code == 0 and "pisces generate" in text
    for name, kind in (
        ("scores.rank1.jsonl", "output.rank.scores"),
        ("manifest.rank0.json", "output.rank.manifest"),
        ("heatmaps.jsonl", "output.heatmaps.jsonl"),
        ("videos.jsonl", "output.videos.jsonl"),
        ("failed.jsonl", "output.failed.jsonl"),
    ):
        (tmp_path / name).write_text("{}\n")
        assert identify(tmp_path / name).kind == kind, name


def test_inspect_reads_headers_without_torch(outputs: Path):
    """Headers are read in plain Python: inspecting an artifact or a checkpoint file imports no torch."""
    import subprocess
    import sys

    targets = [p for p in outputs.rglob("*.safetensors")][:3]
    code = (
        "import sys\nfrom pisces_cli.cli.main import main\n"
        f"codes = [main(['inspect', p]) for p in {[str(t) for t in targets]!r}]\n"
        "assert codes == [0] * len(codes), codes\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert targets and proc.returncode == 0, proc.stderr[-2000:]
