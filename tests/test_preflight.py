"""`pisces validate RECIPE --weights` and the cheap preflight every stage runs: a correct tiny setup passes;
each broken variant fails with the right row and exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pisces_cli.artifacts import ArtifactHeader
from pisces_cli.cli.main import main
from pisces_cli.config import resolve_data
from pisces_cli.encoders.internvideo2 import InternVideo2Config
from pisces_cli.errors import UsageError
from pisces_cli.preflight import StageInputs, Status, check_stage, run_preflight

WORDS = ["a", "red", "cat", "runs"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny InternVideo2 export (+ vocab), tiny HunyuanVideo and Wan folders, an OT map fit on the encoder."""
    from pisces_cli.backbones.tiny import save_tiny_hunyuan, save_tiny_wan
    from pisces_cli.encoders.internvideo2.tiny import save_tiny_internvideo2

    root = tmp_path_factory.mktemp("preflight")
    save_tiny_internvideo2(root / "iv2", WORDS)
    save_tiny_hunyuan(root / "hunyuan")
    save_tiny_wan(root / "wan")
    encoder_fp, dim = encoder_fingerprint(root / "iv2")
    write_map(root / "ot_map.safetensors", dim, encoder_fp)
    write_map(root / "ot_map_wide.safetensors", dim + 8, encoder_fp)
    (root / "prompts.txt").write_text("a red cat runs\n", encoding="utf-8")
    (root / "clips").mkdir()
    return root


def encoder_fingerprint(path: Path) -> tuple[dict, int]:
    from pisces_cli.encoders.registry import load_encoder

    encoder = load_encoder("internvideo2", str(path))
    return encoder.fingerprint(), encoder.embed_dim


def write_map(path: Path, dim: int, fingerprint: dict, seed: int = 0) -> None:
    from pisces_cli.ot.maps import fit_gaussian_map
    from pisces_cli.rewards import save_ot_map_artifact

    generator = torch.Generator().manual_seed(seed)
    transport_map = fit_gaussian_map(
        torch.randn(64, dim, generator=generator), torch.randn(64, dim, generator=generator)
    )
    header = ArtifactHeader(schema="", stage="test", fingerprints={"encoder": fingerprint})
    save_ot_map_artifact(path, transport_map, dim, header)


def recipe_data(root: Path, run: Path, **changes: dict) -> dict:
    """A recipe over the tiny models in ``root`` writing under ``run``; ``changes`` are merged into sections."""
    data = {
        "output_dir": str(run),
        "runtime": {"device": "cpu"},
        "models": {
            "encoder": {"backend": "internvideo2", "path": str(root / "iv2"), "num_frames": 4},
            "generator": {"backbone": "hunyuan", "path": str(root / "hunyuan"), "dtype": "float32"},
        },
        "data": {"videos": str(root / "clips")},
        "reward": {"ot_map": str(root / "ot_map.safetensors")},
        "finetune": {
            "data": {"prompts": str(root / "prompts.txt")},
            "lora": {"rank": 4, "alpha": 4},
            "num_frames": 9,
            "height": 32,
            "width": 32,
        },
        "generate": {"prompts": str(root / "prompts.txt"), "num_frames": 9, "height": 32, "width": 32},
    }
    return merge(data, changes)


def merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def validate(recipe: Path, *extra: str) -> int:
    return main(["validate", str(recipe), "--weights", *extra])


def rows(report, status: Status) -> dict[str, str]:
    return {check.key: check.detail for check in report.checks if check.status is status}


def named(report, name: str):
    """The first row called ``name``."""
    return next(check for check in report.checks if check.name == name)


def preflight(root: Path, tmp_path: Path, stages=None, **changes):
    resolved = resolve_data(recipe_data(root, tmp_path / "run", **changes), [], "test")
    return run_preflight(resolved, **({"stages": stages} if stages else {}))


# ----------------------------------------------------------------------------------------- correct setup


def test_correct_tiny_setup_passes_every_check(models: Path, tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_data(models, tmp_path / "run"))
    assert validate(recipe) == 0
    out = capsys.readouterr().out
    assert "✗" not in out and "preflight passed" in out
    report = preflight(models, tmp_path)
    assert report.ok
    passed = {(check.name, check.key) for check in report.checks if check.status is Status.OK}
    for row in [
        ("reward encoder", "models.encoder.path"),
        ("tokenizer", "models.encoder.tokenizer"),
        ("OT map", "reward.ot_map"),
        ("generator", "models.generator.path"),
        ("generator transformer", "models.generator.path"),
        ("generator vae", "models.generator.path"),
        ("generator configs", "models.generator.path"),
        ("output", "finetune.output"),
        ("memory plan", "finetune"),
    ]:
        assert row in passed, row
    # nothing was written by the probes
    assert not (tmp_path / "run").exists()


def test_validate_without_weights_is_schema_only_and_stage_needs_weights(
    models: Path, tmp_path: Path
) -> None:
    broken = recipe_data(
        models, tmp_path / "run", models={"encoder": {"backend": "internvideo2", "path": "/nowhere"}}
    )
    recipe = write_recipe(tmp_path / "recipe.yaml", broken)
    assert main(["validate", str(recipe)]) == 0
    assert main(["validate", str(recipe), "--stage", "embed"]) == 2


def test_stage_option_limits_the_checks(models: Path, tmp_path: Path) -> None:
    report = preflight(models, tmp_path, stages=("generate",))
    keys = {check.key for check in report.checks}
    assert "models.generator.path" in keys and "generate.output" in keys
    assert "models.encoder.path" not in keys and "reward.ot_map" not in keys
    with pytest.raises(UsageError, match="unknown stage"):
        preflight(models, tmp_path, stages=("train",))


# ----------------------------------------------------------------------------------------- broken variants


def test_missing_encoder_file_names_its_key(models: Path, tmp_path: Path, capsys) -> None:
    data = recipe_data(models, tmp_path / "run")
    data["models"]["encoder"]["path"] = str(tmp_path / "InternVideo2-stage2_1b-224p-f4.pt")
    assert validate(write_recipe(tmp_path / "r.yaml", data)) == 2
    out = capsys.readouterr().out
    assert "models.encoder.path" in out and "not found" in out
    report = run_preflight(resolve_data(data, [], "t"))
    assert "models.encoder.path" in rows(report, Status.FAIL)


def test_missing_tokenizer_and_generator_files(models: Path, tmp_path: Path) -> None:
    data = recipe_data(models, tmp_path / "run")
    data["models"]["encoder"]["tokenizer"] = str(tmp_path / "bert-large-uncased")
    data["models"]["generator"]["path"] = str(tmp_path / "no-such-folder")
    failed = rows(run_preflight(resolve_data(data, [], "t")), Status.FAIL)
    assert "models.encoder.tokenizer" in failed
    assert "not found" in failed["models.generator.path"]


def test_tokenizer_dir_option_is_read_as_the_loader_reads_it(models: Path, tmp_path: Path) -> None:
    """models.encoder.options.tokenizer_dir wins over models.encoder.tokenizer, in the loader and here."""
    import shutil

    moved = tmp_path / "bert"
    moved.mkdir()
    shutil.copy(models / "iv2" / "vocab.txt", moved / "vocab.txt")
    data = recipe_data(models, tmp_path / "run")
    data["models"]["encoder"].update(
        tokenizer=str(tmp_path / "nowhere"), options={"tokenizer_dir": str(moved)}
    )
    report = run_preflight(resolve_data(data, [], "t"), stages=("score",))
    assert rows(report, Status.OK)["models.encoder.options.tokenizer_dir"].startswith(str(moved))


def test_finetune_inputs_the_loader_would_refuse(models: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    data = recipe_data(models, tmp_path / "run", finetune={"data": {"prompts": str(empty)}})
    assert (
        "no prompt"
        in rows(run_preflight(resolve_data(data, [], "t"), stages=("finetune",)), Status.FAIL)[
            "finetune.data.prompts"
        ]
    )
    cache = tmp_path / "latents"
    cache.mkdir()
    videos = {"prompts": None, "videos": str(tmp_path / "gone"), "latents": str(cache)}
    data = recipe_data(models, tmp_path / "run", finetune={"data": videos})
    failed = rows(run_preflight(resolve_data(data, [], "t"), stages=("finetune",)), Status.FAIL)
    assert "finetune.data.videos" in failed  # the trainer lists the videos even with a latents cache


def test_missing_vae_weights_fail_the_component(models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "hunyuan"
    shutil.copytree(models / "hunyuan", folder)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    report = preflight(models, tmp_path, models={"generator": {"backbone": "hunyuan", "path": str(folder)}})
    failed = [check for check in report.failed if check.name == "generator vae"]
    assert failed and "no safetensors weights" in failed[0].detail


@pytest.fixture(scope="module")
def released(models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Released-layout ``.pt`` files of the tiny model: intact, with a renamed key, with a wrong shape."""
    from test_iv2_checkpoint import released_layout

    from pisces_cli.encoders.internvideo2 import InternVideo2Stage2

    root = tmp_path_factory.mktemp("released")
    model = InternVideo2Stage2.from_pretrained(models / "iv2")
    files = {}
    for name in ("good", "renamed", "misshaped"):
        weights = released_layout(model)
        if name == "renamed":
            weights["vision_encoder.blocks.1.attn.qkv.weights"] = weights.pop(
                "vision_encoder.blocks.1.attn.qkv.weight"
            )
        if name == "misshaped":
            weights["itm_head.weight"] = torch.zeros(3, weights["itm_head.weight"].shape[1])
        files[name] = root / f"{name}.pt"
        torch.save({"module": weights}, files[name])
    return files


@pytest.fixture
def tiny_is_released(monkeypatch: pytest.MonkeyPatch) -> None:
    """The released .pt is read with the 1B config; here the tiny config stands in for it."""
    monkeypatch.setattr(
        InternVideo2Config, "stage2_1b", classmethod(lambda cls, num_frames=4: cls.tiny(num_frames))
    )


def released_recipe(models: Path, run: Path, checkpoint: Path) -> dict:
    data = recipe_data(models, run, reward={"ot_map": None})
    data["models"]["encoder"].update(path=str(checkpoint), tokenizer=str(models / "iv2"))
    return data


def test_released_checkpoint_is_checked_memory_mapped(
    models: Path, released: dict[str, Path], tmp_path: Path, tiny_is_released: None
) -> None:
    report = run_preflight(resolve_data(released_recipe(models, tmp_path, released["good"]), [], "t"))
    detail = rows(report, Status.OK)["models.encoder.path"]
    assert "released checkpoint" in detail and "match the model" in detail


def test_wrong_key_in_a_pt_is_listed(
    models: Path, released: dict[str, Path], tmp_path: Path, tiny_is_released: None, capsys
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", released_recipe(models, tmp_path / "run", released["renamed"]))
    assert validate(recipe, "--stage", "embed") == 2
    failed = rows(run_preflight(resolve_data(yaml.safe_load(recipe.read_text()), [], "t")), Status.FAIL)
    detail = failed["models.encoder.path"]
    assert "missing keys (1): ['vision_encoder.blocks.1.attn.qkv.weight']" in detail
    assert "unexpected keys (1): ['vision_encoder.blocks.1.attn.qkv.weights']" in detail
    assert "✗" in capsys.readouterr().out


def test_wrong_shape_in_a_pt_is_listed(
    models: Path, released: dict[str, Path], tmp_path: Path, tiny_is_released: None
) -> None:
    data = released_recipe(models, tmp_path / "run", released["misshaped"])
    failed = rows(run_preflight(resolve_data(data, [], "t"), stages=("score",)), Status.FAIL)
    assert "itm_head.weight: file (3, 32) vs model (2, 32)" in failed["models.encoder.path"]


@pytest.mark.parametrize("lines", [[], ["a", "red", "cat"]], ids=["empty", "no-special-tokens"])
def test_a_vocab_without_berts_special_tokens_is_refused(models: Path, tmp_path: Path, lines) -> None:
    """transformers loads an empty (or non-BERT) vocab.txt by appending the special tokens: every caption would
    become [UNK]s; the preflight and the loader refuse it."""
    from pisces_cli.encoders.internvideo2.tokenizer import load_bert_tokenizer

    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    data = recipe_data(models, tmp_path / "run")
    data["models"]["encoder"]["tokenizer"] = str(folder)
    failed = rows(run_preflight(resolve_data(data, [], "t"), stages=("score",)), Status.FAIL)
    assert "lacks BERT's [CLS], [SEP], [PAD], [UNK]" in failed["models.encoder.tokenizer"]
    with pytest.raises(UsageError, match="not a bert-large-uncased vocab.txt"):
        load_bert_tokenizer(folder)


def test_a_released_checkpoint_needs_the_whole_bert_vocabulary(
    models: Path, released: dict[str, Path], tmp_path: Path, tiny_is_released: None
) -> None:
    """The released weights index bert-large-uncased's ids one to one: a shorter vocabulary (another
    tokenizer) gives valid but wrong ids, so it is refused; the full-size one passes."""
    from pisces_cli.encoders.registry import load_encoder

    vocab_size = InternVideo2Config.tiny().text.vocab_size
    short = released_recipe(models, tmp_path / "run", released["good"])  # the tiny export's 9-token vocab
    failed = rows(run_preflight(resolve_data(short, [], "t"), stages=("score",)), Status.FAIL)
    assert f"the model's word embedding table has {vocab_size} rows" in failed["models.encoder.tokenizer"]
    with pytest.raises(UsageError, match=f"embedding table has {vocab_size} rows"):
        load_encoder("internvideo2", str(released["good"]), tokenizer_dir=str(models / "iv2"))
    full = tmp_path / "bert"
    full.mkdir()
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokens += [f"[unused{i}]" for i in range(vocab_size - len(tokens))]
    (full / "vocab.txt").write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
    short["models"]["encoder"]["tokenizer"] = str(full)
    passed = rows(run_preflight(resolve_data(short, [], "t"), stages=("score",)), Status.OK)
    assert f"vocab.txt with {vocab_size} tokens" in passed["models.encoder.tokenizer"]


class _RunsCode:
    """Pickles to a call of ``os.system``: loading it without weights_only would run the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pt_whose_pickle_needs_code_is_refused_without_running_it(models: Path, tmp_path: Path) -> None:
    """The reward encoder's .pt and the reference OT map's .pt: refused with what to do instead (torch's own
    message suggests weights_only=False, which pisces never uses), and the code never runs."""
    from pisces_cli.ot.maps.reference import import_reference_map

    marker = tmp_path / "code-ran"
    checkpoint = tmp_path / "evil.pt"
    torch.save({"module": _RunsCode(marker)}, checkpoint)
    data = released_recipe(models, tmp_path / "run", checkpoint)
    failed = rows(run_preflight(resolve_data(data, [], "t"), stages=("score",)), Status.FAIL)
    detail = failed["models.encoder.path"]
    assert "never runs code from a file" in detail and "posix.system" in detail
    assert "weights_only` set to `False`" not in detail
    with pytest.raises(UsageError, match="never runs code from a file"):
        import_reference_map(checkpoint)
    assert not marker.exists()


def test_finetune_preflight_shows_the_resume_and_refuses_other_settings(models: Path, tmp_path: Path) -> None:
    """`validate --weights --stage finetune` tells whether the checkpoint that finetune would resume was made
    under these settings, before any GPU is asked for."""
    from pisces_cli.training.checkpoint import training_key

    resolved = resolve_data(recipe_data(models, tmp_path / "run"), [], "t")
    assert named(run_preflight(resolved, stages=("finetune",)), "resume").status is Status.SKIP
    state = Path(resolved.recipe.finetune.output) / "checkpoint-3" / "training_state" / "state.json"
    state.parent.mkdir(parents=True)
    key = training_key(resolved.portable_data(), 1)
    state.write_text(json.dumps({"step": 3, "training_key": key}), encoding="utf-8")
    resume = named(run_preflight(resolved, stages=("finetune",)), "resume")
    assert resume.status is Status.OK and "step 3" in resume.detail
    key["finetune"]["learning_rate"] = 0.5
    state.write_text(json.dumps({"step": 3, "training_key": key}), encoding="utf-8")
    failed = rows(run_preflight(resolved, stages=("finetune",)), Status.FAIL)
    assert (
        "finetune.learning_rate: 0.5 →" in failed["finetune.resume"]
        and "--fresh" in failed["finetune.resume"]
    )


def test_diffusers_folder_of_another_model(models: Path, tmp_path: Path, capsys) -> None:
    data = recipe_data(models, tmp_path / "run")
    data["models"]["generator"]["path"] = str(models / "wan")
    assert validate(write_recipe(tmp_path / "r.yaml", data), "--stage", "generate") == 2
    assert "WanPipeline" in capsys.readouterr().out
    failed = rows(run_preflight(resolve_data(data, [], "t"), stages=("generate",)), Status.FAIL)
    assert "is a WanPipeline but models.generator.backbone=hunyuan" in failed["models.generator.path"]


def edited_copy(source: Path, target: Path, component: str, **changes) -> Path:
    """A copy of a diffusers folder with ``changes`` written into one component's config.json."""
    shutil.copytree(source, target)
    config_path = target / component / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **changes}))
    return target


def test_transformer_weights_of_another_size(models: Path, tmp_path: Path) -> None:
    folder = edited_copy(models / "hunyuan", tmp_path / "hunyuan", "transformer", num_layers=2)
    report = preflight(models, tmp_path, stages=("generate",), models={"generator": {"path": str(folder)}})
    failed = [check for check in report.failed if check.name == "generator transformer"]
    assert failed and "missing keys" in failed[0].detail and "transformer_blocks.1." in failed[0].detail


def test_component_configs_that_disagree(models: Path, tmp_path: Path) -> None:
    folder = edited_copy(models / "wan", tmp_path / "wan", "text_encoder", d_model=48)
    report = preflight(
        models, tmp_path, stages=("generate",), models={"generator": {"backbone": "wan", "path": str(folder)}}
    )
    failed = [check for check in report.failed if check.name == "generator configs"]
    assert failed and "text_dim 32 != text_encoder d_model 48" in failed[0].detail


def test_ot_map_of_another_width(models: Path, tmp_path: Path, capsys) -> None:
    data = recipe_data(models, tmp_path / "run", reward={"ot_map": str(models / "ot_map_wide.safetensors")})
    assert validate(write_recipe(tmp_path / "r.yaml", data), "--stage", "score") == 2
    capsys.readouterr()
    failed = rows(run_preflight(resolve_data(data, [], "t"), stages=("score",)), Status.FAIL)
    assert "takes 24-d embeddings but the encoder gives 16-d" in failed["reward.ot_map"]


def test_ot_map_of_another_encoder(models: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    fingerprint, dim = encoder_fingerprint(models / "iv2")
    write_map(other, dim, {**fingerprint, "weights_sha256": "0" * 64})
    data = recipe_data(models, tmp_path / "run", reward={"ot_map": str(other)})
    cheap = rows(run_preflight(resolve_data(data, [], "t"), stages=("score",), deep=False), Status.OK)
    assert "reward.ot_map" in cheap  # the cheap check compares backend and model name only
    failed = rows(run_preflight(resolve_data(data, [], "t"), stages=("score",)), Status.FAIL)
    assert "weights_sha256" in failed["reward.ot_map"]


def test_unwritable_output(models: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    data = recipe_data(models, blocker / "run")
    assert validate(write_recipe(tmp_path / "r.yaml", data), "--stage", "fit-ot") == 2
    capsys.readouterr()
    failed = rows(run_preflight(resolve_data(data, [], "t"), stages=("embed",)), Status.FAIL)
    assert "is a file" in failed["embed.output"]


def test_read_only_folder_is_unwritable(models: Path, tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        report = preflight(models, tmp_path, stages=("embed",), embed={"output": str(locked / "emb")})
        assert "cannot create files" in rows(report, Status.FAIL)["embed.output"]
    finally:
        locked.chmod(0o755)


def test_folder_where_no_file_can_be_created_is_unwritable(models: Path, tmp_path: Path) -> None:
    """Root too: /proc takes no new files, whatever the permission bits say."""
    report = preflight(models, tmp_path, stages=("embed",), embed={"output": "/proc/self/pisces-emb"})
    assert "cannot create files in /proc/self" in rows(report, Status.FAIL)["embed.output"]


def test_disk_estimate_larger_than_the_free_space(models: Path, tmp_path: Path, monkeypatch) -> None:
    from pisces_cli.preflight import outputs

    monkeypatch.setattr(outputs, "free_bytes", lambda folder: 1024)
    failed = rows(preflight(models, tmp_path, stages=("fit-ot",)), Status.FAIL)
    assert "to write" in failed["fit_ot.output"] and "1 KiB free" in failed["fit_ot.output"]


# ----------------------------------------------------------------------------------------- hub ids, devices


def fake_hub_cache(cache: Path, repo: str, source: Path) -> None:
    """The layout huggingface_hub keeps: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(source, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)


def test_hub_id_cached_offline_and_uncached(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    fake_hub_cache(cache, "tiny-org/tiny-hunyuan", models / "hunyuan")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cached = preflight(
        models, tmp_path, stages=("generate",), models={"generator": {"path": "tiny-org/tiny-hunyuan"}}
    )
    assert cached.ok and "hub cache" in named(cached, "generator").detail
    missing = {"generator": {"path": "tiny-org/absent"}}
    offline = rows(preflight(models, tmp_path, stages=("generate",), models=missing), Status.FAIL)
    assert "HF_HUB_OFFLINE is set" in offline["models.generator.path"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    online = preflight(models, tmp_path, stages=("generate",), models=missing)
    assert online.ok and "will download" in rows(online, Status.WARN)["models.generator.path"]


def test_gpus_against_the_world_size_and_memory(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pisces_cli.preflight import devices

    monkeypatch.setattr(devices, "visible_gpus", lambda: [("Fake GPU", 80 * 2**30)] * 4)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    failed = rows(preflight(models, tmp_path, stages=("finetune",), runtime={"device": "auto"}), Status.FAIL)
    assert "4 GPU(s) visible" in failed["runtime.device"] and "LOCAL_WORLD_SIZE=8" in failed["runtime.device"]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(devices, "visible_gpus", lambda: [("Fake GPU", 1024)] * 4)
    failed = rows(preflight(models, tmp_path, stages=("finetune",), runtime={"device": "auto"}), Status.FAIL)
    assert "runtime.device" not in failed and "per GPU" in failed["finetune"]
    monkeypatch.setattr(devices, "visible_gpus", lambda: [])
    report = preflight(models, tmp_path, stages=("finetune",), runtime={"device": "cuda"})
    assert "no CUDA device visible" in rows(report, Status.FAIL)["runtime.device"]


def test_validate_checks_each_dtype_key_on_the_device_the_stages_use(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """validate --weights said nothing of precision: bf16 on a GPU without it, or half precision this torch
    cannot run on CPU, first failed when finetune/score started."""
    import torch

    from pisces_cli.preflight import devices
    from pisces_cli.training import precision

    report = preflight(models, tmp_path, stages=("finetune",), finetune={"mixed_precision": "fp16"})
    ok = rows(report, Status.OK)
    assert (
        ok["models.encoder.dtype"] == "float32 on cpu"
        and ok["finetune.mixed_precision"] == "fp16 autocast on cpu"
    )
    assert "gradient scaler" in ok["finetune (bf16, scaler)"]
    from test_runtime_devices import _no_half_layer_norm

    with monkeypatch.context() as patch:
        _no_half_layer_norm(patch)
        half = {"models": {"encoder": {"dtype": "float16"}}}
        failed = rows(preflight(models, tmp_path, stages=("score",), **half), Status.FAIL)
        assert failed["models.encoder.dtype"].startswith("models.encoder.dtype: this torch")
        auto = rows(
            preflight(models, tmp_path, stages=("score",), runtime={"device": "auto"}, **half), Status.WARN
        )
        assert "auto found no GPU here" in auto["models.encoder.dtype"]  # a login node: not a failure
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    monkeypatch.setattr(devices, "visible_gpus", lambda: [("Fake V100", 32 * 2**30)])
    failed = rows(
        preflight(models, tmp_path, stages=("finetune",), runtime={"device": "cuda:0"}), Status.FAIL
    )
    assert "does not support bfloat16" in failed["finetune (bf16, scaler)"]


# ----------------------------------------------------------------------------------------- cheap stage check


def test_every_stage_names_the_key_of_a_missing_file(models: Path, tmp_path: Path) -> None:
    from pisces_cli.stages.embed import run_embed
    from pisces_cli.stages.generate import run_generate
    from pisces_cli.stages.score import run_score

    data = recipe_data(models, tmp_path / "run")
    data["models"]["encoder"]["path"] = "pretrained/InternVideo2-stage2_1b-224p-f4.pt"
    with pytest.raises(
        UsageError, match=r"✗ models.encoder.path: pretrained/InternVideo2-stage2_1b-224p-f4.pt not found"
    ):
        run_embed(resolve_data(data, [], "t"))
    data = recipe_data(models, tmp_path / "run", reward={"ot_map": str(tmp_path / "absent.safetensors")})
    with pytest.raises(UsageError, match="reward.ot_map: .*absent.safetensors does not exist"):
        run_score(resolve_data(data, [], "t"), str(models / "clips"))
    with pytest.raises(UsageError, match="--ot-map: .*absent.safetensors does not exist"):
        run_score(resolve_data(recipe_data(models, tmp_path / "run"), [], "t"), str(models / "clips"),
                  ot_map=str(tmp_path / "absent.safetensors"))  # fmt: skip
    data = recipe_data(models, tmp_path / "run", models={"generator": {"path": str(models / "wan")}})
    with pytest.raises(UsageError, match="models.generator.path: .* is a WanPipeline"):
        run_generate(resolve_data(data, [], "t"))
    assert not (tmp_path / "run").exists()  # refused before writing anything


def test_cheap_check_passes_on_the_correct_setup(models: Path, tmp_path: Path) -> None:
    resolved = resolve_data(recipe_data(models, tmp_path / "run"), [], "t")
    for stage in ("embed", "score", "finetune", "generate", "eval"):
        check_stage(stage, resolved, videos_dir=str(models / "clips") if stage in ("score", "eval") else None)
    with pytest.raises(UsageError, match="fit_ot.embeddings: .* is not a folder"):
        check_stage("fit-ot", resolved)
    assert StageInputs().output is None


def test_encoder_identity_equals_the_loaded_fingerprint(models: Path, tmp_path: Path) -> None:
    from pisces_cli.encoders.registry import encoder_identity, load_encoder
    from pisces_cli.encoders.tiny_clip import save_tiny_clip

    save_tiny_clip(tmp_path / "clip", "clip", words=WORDS)
    for backend, path in (("internvideo2", models / "iv2"), ("clip", tmp_path / "clip")):
        loaded = load_encoder(backend, str(path))
        identity = encoder_identity(backend, str(path), weights_sha256=True)
        assert identity.fingerprint == loaded.fingerprint()
        assert identity.embed_dim == loaded.embed_dim
        cheap = encoder_identity(backend, str(path))
        assert cheap.fingerprint == {k: v for k, v in loaded.fingerprint().items() if k != "weights_sha256"}


def test_loading_the_encoder_from_a_recipe_names_the_key_of_a_missing_file(
    models: Path, tmp_path: Path
) -> None:
    from pisces_cli.rewards.build import load_encoder_from_recipe

    data = recipe_data(models, tmp_path / "run", models={"encoder": {"path": "pretrained/absent.pt"}})
    with pytest.raises(UsageError, match=r"^models.encoder.path: pretrained/absent.pt not found"):
        load_encoder_from_recipe(resolve_data(data, [], "t").recipe, torch.device("cpu"))
    data = recipe_data(
        models, tmp_path / "run", models={"encoder": {"tokenizer": "pretrained/bert-large-uncased"}}
    )
    with pytest.raises(
        UsageError, match=r"^models.encoder.tokenizer: pretrained/bert-large-uncased is not a folder"
    ):
        load_encoder_from_recipe(resolve_data(data, [], "t").recipe, torch.device("cpu"))


@pytest.mark.parametrize(
    ("backbone", "section", "change", "expected"),
    [
        ("hunyuan", "generate", {"height": 31}, "generate.height must be a positive multiple of"),
        ("hunyuan", "finetune", {"num_frames": 10}, "finetune.num_frames must be 4k+1"),
        ("wan", "generate", {"width": 40}, "generate.width must be a positive multiple of"),
    ],
)
def test_a_clip_geometry_the_generator_cannot_make_is_refused_before_loading_it(
    models: Path, tmp_path: Path, monkeypatch, backbone: str, section: str, change: dict, expected: str
) -> None:
    """Sides and frame counts are checked against the folder's VAE and patch sizes (configs only): the
    preflight row names the keys, and the stage refuses before minutes of loading the generator."""
    from pisces_cli.backbones import registry
    from pisces_cli.errors import UsageError
    from pisces_cli.stages.finetune import run_finetune
    from pisces_cli.stages.generate import run_generate

    generator = {"generator": {"backbone": backbone, "path": str(models / backbone)}}
    report = preflight(models, tmp_path, models=generator)
    assert named(report, f"{section} geometry").status is Status.OK
    report = preflight(models, tmp_path, models=generator, **{section: change})
    row = named(report, f"{section} geometry")
    assert row.status is Status.FAIL and expected in row.detail
    assert row.key == f"{section}.num_frames/height/width"

    def no_loading(*args, **kwargs):
        raise AssertionError("the generator was loaded")

    monkeypatch.setattr(registry, "load_backbone", no_loading)
    data = recipe_data(models, tmp_path / "run", models=generator, **{section: change})
    resolved = resolve_data(data, [], "test")
    with pytest.raises(UsageError, match=expected.replace(".", r"\.").replace("+", r"\+")):
        if section == "generate":
            run_generate(resolved)
        else:
            run_finetune(resolved)


def test_a_misspelt_vbench_dimension_is_refused_by_the_eval_preflight(models: Path, tmp_path: Path) -> None:
    """``eval.vbench_dimensions`` is read only when ``--vbench`` plans its run: the preflight names a typo
    (with the closest dimension) before any work, and accepts VBench's spellings."""
    report = preflight(
        models,
        tmp_path,
        stages=("eval",),
        eval={"vbench_dimensions": ["Subject Consistency", "moton_smoothness"]},
    )
    row = named(report, "eval")
    assert row.status is Status.FAIL and row.key == "eval.vbench_dimensions"
    assert "'moton_smoothness'" in row.detail and "motion_smoothness" in row.detail
    report = preflight(
        models, tmp_path, stages=("eval",), eval={"vbench_dimensions": ["subject-consistency"]}
    )
    assert named(report, "eval").status is Status.OK
