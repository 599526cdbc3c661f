"""``pisces generate``: VBench-named files, manifest + prompts.jsonl, resume, LoRA adapters."""

from __future__ import annotations

import json

import pytest
import torch
from test_finetune_support import PROMPTS, model_root, resolve

from pisces_cli.errors import PiscesRuntimeError, UsageError


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A two-step finetune checkpoint of the tiny Hunyuan model with a clearly non-zero LoRA."""
    from pisces_cli.training.trainer import Trainer

    tmp = tmp_path_factory.mktemp("generate-ft")
    trainer = Trainer(resolve(tmp, max_steps=1), resume=False)
    trainer.setup()
    with torch.no_grad():
        for parameter in trainer.named_trainable.values():
            parameter.add_(0.05)
    trainer.train()
    return trainer.output / "checkpoint-1"


def test_generate_writes_vbench_names_manifest_and_resumes(tmp_path):
    from pisces_cli.io.prompts import collect_prompted_videos
    from pisces_cli.io.video import probe
    from pisces_cli.stages.generate import run_generate

    resolved = resolve(tmp_path, extra=["generate.videos_per_prompt=2", "generate.seeds=[11,12]"])
    prompts = tmp_path / "prompts.txt"
    output = tmp_path / "videos"
    summary = run_generate(resolved, prompts=str(prompts), output=str(output), limit=2)
    assert (summary.written, summary.skipped, summary.total) == (4, 0, 4)
    expected = {f"{p}-{i}.mp4" for p in PROMPTS[:2] for i in range(2)}
    assert {p.name for p in output.glob("*.mp4")} == expected
    info = probe(str(output / f"{PROMPTS[0]}-1.mp4"))
    assert info.num_frames == 5 and (info.height, info.width) == (16, 16)
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["settings"]["seeds"] == [11, 12] and manifest["settings"]["steps"] == 2
    assert manifest["videos"][f"{PROMPTS[1]}-0.mp4"] == PROMPTS[1]
    # `pisces score` reads prompts.jsonl: every video maps to its prompt
    items = collect_prompted_videos(output)
    assert {item.key: item.prompt for item in items} == {name: name.rsplit("-", 1)[0] for name in expected}
    (output / f"{PROMPTS[0]}-0.mp4").unlink()
    again = run_generate(resolved, prompts=str(prompts), output=str(output), limit=2)
    assert (again.written, again.skipped) == (1, 3)
    changed = resolve(
        tmp_path, extra=["generate.videos_per_prompt=2", "generate.seeds=[11,12]", "generate.steps=3"]
    )
    (output / f"{PROMPTS[0]}-0.mp4").unlink()
    with pytest.raises(UsageError, match="steps"):
        run_generate(changed, prompts=str(prompts), output=str(output), limit=2)


def test_videos_without_a_manifest_are_not_kept_and_a_killed_run_has_one(tmp_path, monkeypatch):
    """Videos of this run's names with no manifest.json (deleted, or written by hand) could come from any
    settings: refused, not skipped. A run killed after its first video has the manifest already, so the same
    command resumes it and another command is refused."""
    from pisces_cli.stages import generate as generate_module

    resolved = resolve(tmp_path, extra=["generate.batch_size=1"])
    prompts = str(tmp_path / "prompts.txt")
    output = tmp_path / "videos"
    generate_module.run_generate(resolved, prompts=prompts, output=str(output), limit=2)
    (output / "manifest.json").unlink()
    with pytest.raises(UsageError, match="no manifest.json"):
        generate_module.run_generate(resolved, prompts=prompts, output=str(output), limit=2)

    from pisces_cli.io import writer  # run_generate imports write_mp4 from here when it runs

    killed = tmp_path / "killed"

    original = writer.write_mp4

    def write_then_die(path, *args, **kwargs):
        original(path, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "write_mp4", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        generate_module.run_generate(resolved, prompts=prompts, output=str(killed), limit=2)
    monkeypatch.setattr(writer, "write_mp4", original)
    assert len(list(killed.glob("*.mp4"))) == 1
    more_steps = resolve(tmp_path, extra=["generate.batch_size=1", "generate.steps=3"])
    with pytest.raises(UsageError, match="steps"):
        generate_module.run_generate(more_steps, prompts=prompts, output=str(killed), limit=2)
    resumed = generate_module.run_generate(resolved, prompts=prompts, output=str(killed), limit=2)
    assert (resumed.written, resumed.skipped) == (1, 1)


def test_complete_folder_is_checked_before_anything_is_skipped(tmp_path, trained_checkpoint, monkeypatch):
    """Every video exists: a re-run with the same settings loads nothing; one with an adapter (or another
    sampler) is refused instead of keeping the base model's videos under the adapter's name."""
    from pisces_cli.stages import generate as generate_module

    resolved = resolve(tmp_path)
    prompts, output = str(tmp_path / "prompts.txt"), tmp_path / "videos"
    assert generate_module.run_generate(resolved, prompts=prompts, output=str(output), limit=1).written == 1

    def no_load(*args, **kwargs):
        raise AssertionError("the pipeline was loaded")

    monkeypatch.setattr(generate_module, "load_generator", no_load)
    again = generate_module.run_generate(resolved, prompts=prompts, output=str(output), limit=1)
    assert (again.written, again.skipped) == (0, 1)
    with pytest.raises(UsageError, match="adapter"):
        generate_module.run_generate(
            resolved, prompts=prompts, output=str(output), limit=1, adapter_dir=str(trained_checkpoint)
        )
    euler = resolve(tmp_path, extra=["generate.sampler=euler"])
    with pytest.raises(UsageError, match="sampler_choice"):
        generate_module.run_generate(euler, prompts=prompts, output=str(output), limit=1)
    stronger = resolve(tmp_path, extra=["generate.guidance=9.0"])
    with pytest.raises(UsageError, match="guidance"):
        generate_module.run_generate(stronger, prompts=prompts, output=str(output), limit=1)
    for setting, field in (
        ("runtime.allow_tf32=true", "allow_tf32"),
        ("models.generator.dtype=bfloat16", "dtype"),
    ):
        with pytest.raises(UsageError, match=field):  # rounding settings: the videos differ on a GPU
            generate_module.run_generate(
                resolve(tmp_path, extra=[setting]), prompts=prompts, output=str(output), limit=1
            )


def test_adapter_changes_outputs_and_matches_diffusers_load_lora_weights(tmp_path, trained_checkpoint):
    from diffusers import HunyuanVideoPipeline

    from pisces_cli.stages.generate import load_generator, sample_videos

    resolved = resolve(tmp_path)
    section = resolved.recipe.generate
    prompts, seeds = PROMPTS[:2], [3, 4]
    base = sample_videos(load_generator(resolved), prompts, seeds, section)
    tuned = sample_videos(load_generator(resolved, str(trained_checkpoint)), prompts, seeds, section)
    assert tuned.shape == (2, 5, 3, 16, 16)
    assert (tuned - base).abs().max() > 1e-3

    # independent reference: the diffusers pipeline itself with load_lora_weights, same seeds and σ grid
    pipeline = HunyuanVideoPipeline.from_pretrained(str(model_root() / "hunyuan"))
    pipeline.load_lora_weights(str(trained_checkpoint))
    for index, (prompt, seed) in enumerate(zip(prompts, seeds)):
        frames = pipeline(
            prompt=prompt,
            height=16,
            width=16,
            num_frames=5,
            num_inference_steps=2,
            guidance_scale=6.0,
            prompt_template={"template": "{}", "crop_start": 0},
            max_sequence_length=16,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
        ).frames
        torch.testing.assert_close(tuned[index], frames[0].float(), atol=2e-5, rtol=1e-4)


def test_missing_adapter_and_prompts_are_usage_errors(tmp_path):
    from pisces_cli.stages.generate import apply_adapter, load_prompts

    with pytest.raises(UsageError, match="no prompts"):
        load_prompts(None)
    with pytest.raises(UsageError, match="does not exist"):
        apply_adapter(None, str(tmp_path / "nope"))  # type: ignore[arg-type]


def _generate_worker(rank: int, port: int, tmp: str, limits: tuple[int, int] = (3, 3)) -> None:
    import os
    from pathlib import Path

    import torch.distributed as dist

    from pisces_cli.stages.generate import run_generate

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    try:
        resolved = resolve(Path(tmp) / f"r{rank}", extra=["generate.videos_per_prompt=1"])
        try:
            summary = run_generate(resolved, prompts=str(Path(tmp) / "prompts.txt"),
                                   output=str(Path(tmp) / "videos"), limit=limits[rank])  # fmt: skip
        except PiscesRuntimeError as error:
            Path(tmp, f"rank{rank}.json").write_text(json.dumps(str(error)))
            return
        Path(tmp, f"rank{rank}.json").write_text(json.dumps([summary.written, summary.total]))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_split_the_videos_and_rank0_writes_the_index(tmp_path):
    import torch.multiprocessing as mp
    from test_finetune_ddp import free_port
    from test_finetune_support import write_prompts

    write_prompts(tmp_path, PROMPTS[:3])
    model_root()  # build the tiny models once, in this process; the workers reuse them
    mp.spawn(_generate_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    videos = tmp_path / "videos"
    assert {p.name for p in videos.glob("*.mp4")} == {f"{p}-0.mp4" for p in PROMPTS[:3]}
    assert json.loads((tmp_path / "rank0.json").read_text()) == [3, 3]
    manifest = json.loads((videos / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["videos"]) == 3
    assert len((videos / "prompts.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_ranks_that_listed_different_videos_all_refuse(tmp_path):
    """Each rank lists the folder itself; when the lists differ (here: as if one rank saw a video the other
    did not) every rank refuses before rendering, instead of slicing different lists (a video skipped, another
    rendered twice)."""
    import torch.multiprocessing as mp
    from test_finetune_ddp import free_port
    from test_finetune_support import write_prompts

    write_prompts(tmp_path, PROMPTS[:3])
    model_root()
    mp.spawn(_generate_worker, args=(free_port(), str(tmp_path), (3, 2)), nprocs=2, join=True)
    for rank in range(2):
        assert "planned different work" in json.loads((tmp_path / f"rank{rank}.json").read_text())
    assert not list((tmp_path / "videos").glob("*.mp4"))
