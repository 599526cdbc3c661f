"""The finetune trainer: resume, NaN handling, checkpoints (diffusers/peft loadable), data, dry run."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from test_finetune_support import PROMPTS, model_root, resolve, trainable_snapshot

from pisces_cli.errors import PiscesRuntimeError
from pisces_cli.training.data import TrainingData


def make_trainer(tmp_path, resume=True, extra=None, max_steps=None, **finetune):
    from pisces_cli.training.trainer import Trainer

    trainer = Trainer(resolve(tmp_path, "hunyuan", extra, **finetune), resume=resume, max_steps=max_steps)
    trainer.setup()
    return trainer


def record_batches(trainer, log):
    original = trainer.data.micro_batches

    def recording(step, **kwargs):
        batches = original(step, **kwargs)
        log.append((step, [tuple(b.keys) for b in batches]))
        return batches

    trainer.data.micro_batches = recording


def read_events(trainer):
    path = trainer.output / "logs" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------- data
def test_batches_are_a_pure_function_of_seed_step_rank():
    data = TrainingData(prompts=[f"p{i}" for i in range(7)], seed=3)
    first = data.micro_batches(5, accumulation=2, batch_size=2, rank=1, world_size=2)
    data.micro_batches(0, accumulation=2, batch_size=2)  # other calls in between change nothing
    again = TrainingData(prompts=[f"p{i}" for i in range(7)], seed=3).micro_batches(
        5, accumulation=2, batch_size=2, rank=1, world_size=2
    )
    assert [b.keys for b in first] == [b.keys for b in again]
    # one epoch = 7 consecutive positions = a permutation of all items
    epoch = [data.item_index(p) for p in range(7)]
    assert sorted(epoch) == list(range(7))
    # two ranks at step 0 (accumulation 1, batch 3) draw disjoint items from the same epoch
    rank0 = data.micro_batches(0, accumulation=1, batch_size=3, rank=0, world_size=2)[0].keys
    rank1 = data.micro_batches(0, accumulation=1, batch_size=3, rank=1, world_size=2)[0].keys
    assert not set(rank0) & set(rank1)


# ------------------------------------------------------------------------------------------- resume
def test_resume_after_interrupt_matches_an_uninterrupted_run(tmp_path):
    settings = {"lr_scheduler": "linear", "checkpointing_steps": 10, "gradient_accumulation_steps": 2}
    settings["extra"] = ["finetune.max_steps=3"]  # the linear schedule's length
    straight = make_trainer(tmp_path / "a", max_steps=3, **settings)
    straight_log: list = []
    record_batches(straight, straight_log)
    straight.train()
    expected = trainable_snapshot(straight)

    interrupted = make_trainer(tmp_path / "b", max_steps=3, **settings)
    log: list = []
    record_batches(interrupted, log)
    original = interrupted.train_one_step

    def stop_at_two():
        if interrupted.step == 2:
            raise KeyboardInterrupt
        return original()

    interrupted.train_one_step = stop_at_two
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    assert (interrupted.output / "checkpoint-2" / "training_state" / "state.json").is_file()

    resumed = make_trainer(tmp_path / "b", max_steps=3, **settings)
    assert resumed.step == 2 and resumed.resumed_from.name == "checkpoint-2"
    record_batches(resumed, log)
    resumed.train()
    assert log == straight_log
    final = trainable_snapshot(resumed)
    for name, value in expected.items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=1e-7)
    assert resumed.scheduler.get_last_lr() == straight.scheduler.get_last_lr()
    assert any(e.get("event") == "resumed" for e in read_events(resumed))


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step()` has been overridden")
def test_ctrl_c_during_the_update_stops_after_the_step_with_a_consistent_checkpoint(tmp_path):
    """Ctrl-C landing between the weight update and the step count would save the updated weights under the
    previous step (the resumed run applies that step twice); it is held until the step is counted and logged."""
    import os
    import signal

    straight = make_trainer(tmp_path / "a", max_steps=3, checkpointing_steps=10)
    straight.train()
    interrupted = make_trainer(tmp_path / "b", max_steps=3, checkpointing_steps=10)
    update = interrupted.optimizer.step

    def update_then_ctrl_c(*args, **kwargs):
        result = update(*args, **kwargs)
        if interrupted.step == 1:  # the update of the second step
            os.kill(os.getpid(), signal.SIGINT)
        return result

    interrupted.optimizer.step = update_then_ctrl_c
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    assert [r["step"] for r in read_events(interrupted) if "loss" in r] == [1, 2]
    resumed = make_trainer(tmp_path / "b", max_steps=3, checkpointing_steps=10)
    assert resumed.step == 2
    resumed.train()
    assert [r["step"] for r in read_events(resumed) if "loss" in r] == [1, 2, 3]
    expected = trainable_snapshot(straight)
    for name, value in trainable_snapshot(resumed).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-7)


def test_sigterm_saves_a_checkpoint_like_ctrl_c(tmp_path):
    """A cluster's preemption (SIGTERM) keeps the finished steps: the run saves a checkpoint and stops as on
    Ctrl-C; SIGTERM gets its default action back afterwards."""
    import os
    import signal

    trainer = make_trainer(tmp_path, max_steps=4, checkpointing_steps=10)
    original = trainer.train_one_step

    def preempted_in_step_three():
        if trainer.step == 2:
            # without a handler SIGTERM would end the test process itself
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            os.kill(os.getpid(), signal.SIGTERM)
        return original()

    trainer.train_one_step = preempted_in_step_three
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert (trainer.output / "checkpoint-2" / "training_state" / "state.json").is_file()
    assert [e["step"] for e in read_events(trainer) if e.get("event") == "interrupted"] == [2]
    assert make_trainer(tmp_path, max_steps=4, checkpointing_steps=10).step == 2


def test_a_resume_after_a_kill_logs_each_step_once(tmp_path):
    """A killed run logged steps its last checkpoint does not hold; the resumed run trains them again and
    metrics.jsonl ends with each step once (a torn last line is dropped too)."""
    import shutil

    make_trainer(tmp_path, max_steps=3, checkpointing_steps=2).train()
    output = tmp_path / "run" / "finetune"
    shutil.rmtree(output / "checkpoint-3")  # killed before the step-3 checkpoint was written
    log = output / "logs" / "metrics.jsonl"
    before = [json.loads(line) for line in log.read_text().splitlines()]
    with log.open("a") as handle:
        handle.write('{"step": 4, "loss": 0.')  # the kill tore a line
    resumed = make_trainer(tmp_path, max_steps=3, checkpointing_steps=2)
    assert resumed.step == 2
    resumed.train()
    records = read_events(resumed)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in records if r.get("event") == "checkpoint"] == [2, 3]
    losses = {r["step"]: r["loss"] for r in before if "loss" in r}
    assert {r["step"]: r["loss"] for r in records if "loss" in r} == pytest.approx(losses)
    assert next(r for r in records if r.get("event") == "resumed")["replaced_log_lines"] == 3


def test_a_run_from_step_0_never_mixes_with_an_earlier_runs_checkpoints_or_log(tmp_path):
    """resume: never into a folder holding checkpoints would write among them, and checkpoints_total_limit would
    prune the new run's (lower steps) first: refused. A run that starts at step 0 beside the log of a run that
    died before its first checkpoint replaces that log instead of appending a second step 1."""
    from pisces_cli.errors import UsageError

    make_trainer(tmp_path, max_steps=3, checkpointing_steps=1, checkpoints_total_limit=2).train()
    with pytest.raises(
        UsageError, match=r"holds checkpoints of an earlier run \(checkpoint-2, checkpoint-3\)"
    ):
        make_trainer(tmp_path, extra=["finetune.resume=never"], max_steps=1)
    output = tmp_path / "run" / "finetune"
    for folder in output.glob("checkpoint-*"):
        shutil.rmtree(folder)  # as if the earlier run died before its first checkpoint
    fresh = make_trainer(tmp_path, max_steps=2, checkpointing_steps=1)
    fresh.train()
    records = read_events(fresh)
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert records[0]["event"] == "started_over" and records[0]["replaced_log_lines"] > 0


def test_resume_under_other_training_settings_is_refused_naming_them(tmp_path):
    """A checkpoint's weights never continue under settings that did not make them; training longer,
    checkpointing more often or logging differently is still a resume."""
    from pisces_cli.errors import UsageError

    make_trainer(tmp_path, max_steps=1).train()
    longer = make_trainer(tmp_path, max_steps=2, checkpointing_steps=5, log_every=2)
    assert longer.step == 1 and longer.resumed_from.name == "checkpoint-1"
    from pisces_cli.training.checkpoint import training_key

    data = longer.resolved.portable_data()
    one_gpu, eight = dict(data), dict(data)
    one_gpu["finetune"] = {**data["finetune"], "batch_size": 1, "gradient_accumulation_steps": 32}
    eight["finetune"] = {**data["finetune"], "batch_size": 1, "gradient_accumulation_steps": 4}
    assert training_key(one_gpu, 1) == training_key(eight, 8)  # the same effective batch
    assert training_key(eight, 4) != training_key(eight, 8)
    with pytest.raises(UsageError) as refused:
        make_trainer(
            tmp_path, max_steps=2, extra=["reward.weights.quality=0.5", "finetune.weight_decay=0.125"]
        )
    text = str(refused.value)
    assert "reward.weights.quality: 1 → 0.5" in text and "finetune.weight_decay" in text
    assert "--fresh" in text and "finetune.output" in text


def test_a_decaying_schedule_spans_finetune_max_steps_and_keys_it(tmp_path):
    """linear/cosine decay to 0 at finetune.max_steps: stopping early (--max-steps) and resuming follows one
    schedule; resuming under another finetune.max_steps (another lr at every step) is refused; a constant
    schedule still trains longer."""
    from pisces_cli.errors import UsageError

    def run(folder, horizon=4, max_steps=None, schedule="linear"):
        extra = [f"finetune.max_steps={horizon}"]
        return make_trainer(
            tmp_path / folder, extra=extra, max_steps=max_steps, lr_scheduler=schedule, checkpointing_steps=10
        )

    straight = run("a")
    straight.train()
    run("b", max_steps=2).train()
    resumed = run("b")
    assert resumed.step == 2
    resumed.train()

    def learning_rates(trainer):
        return [e["lr"] for e in read_events(trainer) if "lr" in e]

    assert learning_rates(resumed) == learning_rates(straight) == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    with pytest.raises(UsageError, match=r"finetune\.max_steps: 4 → 8"):
        run("b", horizon=8)
    with pytest.raises(UsageError, match="goes past finetune.max_steps=4"):
        run("c", max_steps=6)
    run("d", schedule="constant").train()
    assert run("d", horizon=6, schedule="constant").step == 4

    from rich.console import Console

    from pisces_cli.training.trainer import Trainer

    console = Console(record=True, width=200)
    past = Trainer(resolve(tmp_path / "d", "hunyuan", ["finetune.max_steps=4"]), console=console, max_steps=2)
    past.setup()
    assert past.train().step == 4
    text = console.export_text()
    assert "nothing to train" in text and "checkpoint-4 is already at step 4" in text


def test_reward_and_data_files_rewritten_at_their_paths_are_not_resumed(tmp_path):
    """The recipe names the OT map and the training data by path; a refit written over the map changes every
    reward, an edited prompt file every batch: a checkpoint trained on the old files is refused (naming the
    changed hash), not continued under the new ones."""
    from test_preflight import write_map

    from pisces_cli.encoders.registry import load_encoder
    from pisces_cli.errors import UsageError

    encoder = load_encoder("clip", str(model_root() / "clip"))
    ot_map = tmp_path / "ot_map.safetensors"
    write_map(ot_map, encoder.embed_dim, encoder.fingerprint())
    prompts = tmp_path / "own_prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    extra = [f"reward.ot_map={ot_map}", f"finetune.data.prompts={prompts}"]
    make_trainer(tmp_path, max_steps=1, extra=extra).train()
    assert make_trainer(tmp_path, max_steps=2, extra=extra).step == 1  # the same files: resumed
    prompts.write_text(prompts.read_text() + "a new prompt\n")  # edited in place
    with pytest.raises(UsageError, match=r"contents\.data_sha256"):
        make_trainer(tmp_path, max_steps=2, extra=extra)
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    from pisces_cli.stages.finetune import finished_run

    assert finished_run(resolve(tmp_path, "hunyuan", extra), 1) is not None  # step 1 done: nothing to do
    write_map(ot_map, encoder.embed_dim, encoder.fingerprint(), seed=1)  # `fit-ot` again, same path
    with pytest.raises(UsageError, match=r"contents\.ot_map_sha256"):
        make_trainer(tmp_path, max_steps=2, extra=extra)
    with pytest.raises(
        UsageError, match=r"contents\.ot_map_sha256"
    ):  # nor is step 1 "done" under the new map
        finished_run(resolve(tmp_path, "hunyuan", extra), 1)


def test_a_resume_under_other_settings_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    """The recipe part of the training key is compared before the generator, encoder and captions load
    (minutes on the real models); an unreadable state.json is a usage error too."""
    from pisces_cli.backbones import registry
    from pisces_cli.errors import UsageError
    from pisces_cli.stages.finetune import run_finetune

    make_trainer(tmp_path, max_steps=1).train()

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(registry, "load_backbone", no_loading)
    with pytest.raises(UsageError, match=r"finetune\.learning_rate"):
        run_finetune(resolve(tmp_path, "hunyuan", ["finetune.learning_rate=0.5"]), max_steps=2)
    state = tmp_path / "run" / "finetune" / "checkpoint-1" / "training_state" / "state.json"
    state.write_text("{", encoding="utf-8")
    with pytest.raises(UsageError, match="cannot read the training state"):
        run_finetune(resolve(tmp_path, "hunyuan"), max_steps=2)


def test_a_damaged_training_state_file_is_a_usage_error_naming_it(tmp_path):
    from pisces_cli.errors import UsageError

    make_trainer(tmp_path, max_steps=1).train()
    optimizer = tmp_path / "run" / "finetune" / "checkpoint-1" / "training_state" / "optimizer.safetensors"
    optimizer.write_bytes(optimizer.read_bytes()[:-40])
    with pytest.raises(UsageError, match=r"optimizer\.safetensors: not a complete safetensors file"):
        make_trainer(tmp_path, max_steps=2)
    optimizer.unlink()
    with pytest.raises(UsageError, match=r"optimizer\.safetensors: cannot read"):
        make_trainer(tmp_path, max_steps=2)


def test_fresh_run_removes_the_earlier_checkpoints_and_log(tmp_path):
    from pisces_cli.stages.finetune import run_finetune

    make_trainer(tmp_path, max_steps=2, checkpointing_steps=1).train()
    output = tmp_path / "run" / "finetune"
    (output / "validation" / "step-2").mkdir(parents=True)  # what an earlier validation left
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    run_finetune(resolve(tmp_path, "hunyuan", ["reward.weights.quality=0.5"]), fresh=True, max_steps=1)
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-1"]
    steps = [
        json.loads(line)["step"] for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps and max(steps) <= 1
    assert not (output / "validation").exists()


def test_fresh_ignores_checkpoints_and_limit_prunes(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=3, checkpoints_total_limit=2)
    trainer.train()
    names = sorted(p.name for p in trainer.output.glob("checkpoint-*"))
    assert names == ["checkpoint-2", "checkpoint-3"]
    again = make_trainer(tmp_path, resume=False, max_steps=3)
    assert again.step == 0


# ------------------------------------------------------------------------------------------- NaN
class PoisonedReward:
    """Wraps the reward; while ``poison`` is set the pixels become NaN (so the loss is NaN)."""

    def __init__(self, reward):
        self.reward = reward
        self.poison = False

    def __call__(self, pixels, captions):
        if self.poison:
            pixels = pixels * float("nan")
        return self.reward(pixels, captions)


def test_a_nan_step_is_skipped(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=3)
    poisoned = PoisonedReward(trainer.ctx.reward)
    trainer.ctx.reward = poisoned
    trainer.train_one_step()
    after_first = trainable_snapshot(trainer)
    poisoned.poison = True
    metrics = trainer.train_one_step()
    assert metrics["skipped"] == 1.0 and not math.isfinite(metrics["loss"])
    for name, value in trainable_snapshot(trainer).items():
        assert torch.equal(value, after_first[name])
    poisoned.poison = False
    metrics = trainer.train_one_step()
    assert metrics["skipped"] == 0.0 and trainer.step == 3 and trainer.skipped_steps == 1
    assert any(e.get("event") == "nan_step_skipped" for e in read_events(trainer))


def test_max_nan_steps_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6, max_nan_steps=2)
    poisoned = PoisonedReward(trainer.ctx.reward)
    trainer.ctx.reward = poisoned
    original = trainer.train_one_step

    def poison_after_first():
        poisoned.poison = trainer.step >= 1
        return original()

    trainer.train_one_step = poison_after_first
    with pytest.raises(PiscesRuntimeError, match="checkpoint-1"):
        trainer.train()
    assert sorted(p.name for p in trainer.output.glob("checkpoint-*")) == ["checkpoint-1"]


# ------------------------------------------------------------------------------------------- export
def test_checkpoint_loads_with_diffusers_load_lora_weights_and_peft(tmp_path):
    from diffusers import HunyuanVideoPipeline
    from peft import PeftConfig

    trainer = make_trainer(tmp_path, max_steps=2)
    with torch.no_grad():  # make the LoRA clearly non-zero
        for parameter in trainer.named_trainable.values():
            parameter.add_(0.05)
    trainer.train()
    checkpoint = trainer.output / "checkpoint-2"
    pipeline = HunyuanVideoPipeline.from_pretrained(str(model_root() / "hunyuan"))
    pipeline.load_lora_weights(str(checkpoint), adapter_name="trained")
    latents = torch.randn(
        1, *trainer.adapter.latent_shape(5, 16, 16), generator=torch.Generator().manual_seed(0)
    )
    embeds = trainer.ctx.encode_prompts(PROMPTS[:1])
    kwargs = dict(
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=embeds.embeds,
        encoder_attention_mask=embeds.mask,
        pooled_projections=embeds.pooled,
        guidance=torch.tensor([6000.0]),
        return_dict=False,
    )
    with torch.no_grad():
        ours = trainer.adapter.transformer(hidden_states=latents, **kwargs)[0]
        loaded = pipeline.transformer(hidden_states=latents, **kwargs)[0]
        pipeline.transformer.disable_lora()
        base = pipeline.transformer(hidden_states=latents, **kwargs)[0]
    torch.testing.assert_close(loaded, ours)
    assert not torch.allclose(base, ours)
    config = PeftConfig.from_pretrained(str(checkpoint))
    assert (config.r, config.lora_alpha) == (4, 4)
    state = json.loads((checkpoint / "training_state" / "state.json").read_text())
    assert state["step"] == 2 and state["format_version"] == 1


def write_training_clips(videos, count=2):
    """``count`` random clips ``clip{i}.mp4`` (6 frames of 20×24) captioned ``PROMPTS[i]`` in ``videos``."""
    from pisces_cli.io.writer import write_mp4

    videos.mkdir()
    generator = torch.Generator().manual_seed(0)
    lines = []
    for index, caption in enumerate(PROMPTS[:count]):
        write_mp4(videos / f"clip{index}.mp4", torch.rand(6, 3, 20, 24, generator=generator), 8)
        lines.append(json.dumps({"file": f"clip{index}.mp4", "prompt": caption}))
    (videos / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return videos


def test_video_folder_is_encoded_into_a_latent_cache(tmp_path):
    from pisces_cli.training.data import load_latent_cache, read_training_clip

    videos = write_training_clips(tmp_path / "videos")
    trainer = make_trainer(
        tmp_path, max_steps=1, extra=["finetune.data.prompts=null", f"finetune.data.videos={videos}"]
    )
    latents, captions, keys = load_latent_cache(trainer.output / "latents")
    assert captions == PROMPTS[:2] and keys == ["clip0.mp4", "clip1.mp4"]
    assert latents.shape == (2, *trainer.adapter.latent_shape(5, 16, 16))
    pixels = read_training_clip(str(videos / "clip1.mp4"), 5, 16, 16)
    torch.testing.assert_close(latents[1], trainer.adapter.encode_video(pixels[None])[0])
    metrics = trainer.train_one_step()
    assert math.isfinite(metrics["loss"])


def test_the_latent_cache_follows_clips_added_or_removed_in_the_folder(tmp_path):
    """The cache's shards are reused only for the same (clip, caption) items: a clip added to (or removed from)
    the training folder is encoded (dropped), never silently left out or trained twice."""
    from pisces_cli.io.writer import write_mp4
    from pisces_cli.training.data import load_latent_cache

    videos = tmp_path / "videos"
    videos.mkdir()
    generator = torch.Generator().manual_seed(0)

    def add_clip(name, caption):
        write_mp4(videos / name, torch.rand(6, 3, 20, 24, generator=generator), 8)
        with (videos / "prompts.jsonl").open("a") as handle:
            handle.write(json.dumps({"file": name, "prompt": caption}) + "\n")

    add_clip("clip0.mp4", PROMPTS[0])
    add_clip("clip1.mp4", PROMPTS[1])
    extra = ["finetune.data.prompts=null", f"finetune.data.videos={videos}"]
    trainer = make_trainer(tmp_path, max_steps=1, extra=extra)
    cache = trainer.output / "latents"
    assert load_latent_cache(cache)[2] == ["clip0.mp4", "clip1.mp4"]
    add_clip("clip0a.mp4", PROMPTS[2])  # sorts between the two
    make_trainer(tmp_path, max_steps=1, extra=extra)
    latents, captions, keys = load_latent_cache(cache)
    assert keys == ["clip0.mp4", "clip0a.mp4", "clip1.mp4"] and captions == [
        PROMPTS[0],
        PROMPTS[2],
        PROMPTS[1],
    ]
    assert latents.shape[0] == 3


def test_a_training_clip_rewritten_under_its_name_is_not_resumed(tmp_path):
    """Video data is keyed on what its latents were made from: a clip rewritten in place (same name, same
    caption) is encoded again and the checkpoint trained on the old clip is refused, not continued."""
    import os

    from pisces_cli.errors import UsageError
    from pisces_cli.io.writer import write_mp4

    videos = write_training_clips(tmp_path / "videos")
    extra = ["finetune.data.prompts=null", f"finetune.data.videos={videos}"]
    make_trainer(tmp_path, max_steps=1, extra=extra).train()
    assert make_trainer(tmp_path, max_steps=2, extra=extra).step == 1  # the same clips: resumed
    clip = videos / "clip1.mp4"
    before = clip.stat().st_mtime_ns
    write_mp4(clip, torch.rand(6, 3, 20, 24, generator=torch.Generator().manual_seed(1)), 8)
    os.utime(clip, ns=(before + 1_000_000_000, before + 1_000_000_000))
    with pytest.raises(UsageError, match=r"contents\.data_sha256"):
        make_trainer(tmp_path, max_steps=2, extra=extra)


def test_dry_run_prints_the_plan_and_a_memory_estimate(tmp_path):
    from rich.console import Console

    from pisces_cli.stages.finetune import run_finetune

    console = Console(record=True, width=160)
    assert run_finetune(resolve(tmp_path), console=console, dry_run=True) is None
    text = console.export_text()
    assert "1 × accumulation 1 × world 1 = 1 videos per step" in text
    assert "activations:vae_decoder" in text and "total" in text
    assert not (tmp_path / "run" / "finetune").exists()


def test_text_encoders_are_offloaded_after_pre_encoding_every_caption(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1)
    cache = trainer.ctx.encode_prompts
    assert cache.frozen and set(cache.rows) == set(PROMPTS)
    expected = trainer.adapter.encode_prompts(PROMPTS[1:3])
    got = cache(PROMPTS[1:3])
    assert torch.equal(got.embeds, expected.embeds) and torch.equal(got.mask, expected.mask)
    with pytest.raises(PiscesRuntimeError, match="not pre-encoded"):
        cache(["an unseen prompt"])


@pytest.mark.parametrize("name", ["hunyuan", "wan"])
def test_bundled_recipes_carry_the_papers_finetune_values(name):
    from pisces_cli.config import load_recipe

    recipe = load_recipe(name).recipe
    section = recipe.finetune
    assert section.algorithm == "backprop"
    assert (section.lora.rank, section.lora.alpha) == (256, 32.0)
    paper_targets = ["attn", r"single_transformer_blocks\.\d+\.(proj_mlp|proj_out)"]  # method.md §5.1
    assert section.lora.targets == (paper_targets if name == "hunyuan" else ["attn_mlp"])
    assert (section.learning_rate, section.max_steps) == (1e-6, 256)
    # the training grid and guidance belong to the backbone: HunyuanVideo's (the paper's) shift 17 with its embedded
    # guidance 6; Wan's released scheduler shift 3 with WanPipeline's real CFG 5 (Wan is not guidance-distilled)
    expected = {"hunyuan": (17.0, 50, 6.0), "wan": (3.0, 50, 5.0)}[name]
    assert (section.schedule.shift, section.schedule.euler_steps, section.guidance) == expected
    assert recipe.models.encoder.options == {"use_checkpoint": True}
    assert section.reward_dtype == "bfloat16" and section.validation.every == 64
    assert (recipe.reward.weights.quality, recipe.reward.weights.semantic, section.consistency.weight) == (
        1,
        1,
        1,
    )
    world = 8 if name == "hunyuan" else 1  # the GPUs each recipe is sized for (header comment)
    assert world * section.batch_size * section.gradient_accumulation_steps == 32


def test_full_finetune_trains_saves_diffusers_weights_and_resumes(tmp_path):
    from pisces_cli.backbones.registry import load_backbone

    settings = {"full_finetune": "true", "lora.enabled": "false", "learning_rate": 1e-4}
    trainer = make_trainer(tmp_path, max_steps=1, **settings)
    assert not any("lora" in name for name in trainer.named_trainable)
    base = load_backbone(str(model_root() / "hunyuan"), family="hunyuan_video")
    before = {n: p.detach().clone() for n, p in trainer.adapter.transformer.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.adapter.transformer.named_parameters() if not torch.equal(p, before[n])]
    assert changed
    # the teacher is a frozen copy of the base weights
    teacher = trainer.ctx.extra["teacher_transformers"]["transformer"]
    for name, parameter in base.transformer.named_parameters():
        assert torch.equal(dict(teacher.named_parameters())[name], parameter)
    saved = trainer.output / "checkpoint-1" / "transformer"
    assert (saved / "config.json").is_file()
    resumed = make_trainer(tmp_path, max_steps=2, **settings)
    assert resumed.step == 1
    for name, parameter in resumed.adapter.transformer.named_parameters():
        assert torch.equal(parameter, dict(trainer.adapter.transformer.named_parameters())[name])


@pytest.mark.parametrize("backbone", ["hunyuan", "wan"])
def test_dry_run_lora_count_matches_the_attached_lora(tmp_path, backbone):
    from pisces_cli.stages.finetune import estimate
    from pisces_cli.training.trainer import Trainer

    resolved = resolve(tmp_path, backbone)
    planned = estimate(resolved)
    trainer = Trainer(resolved, resume=False)
    trainer.setup()
    attached = sum(p.numel() for p in trainer.named_trainable.values())
    assert planned.parts["trainable_fp32"] == 4 * attached
    assert planned.parts["gradients_and_adamw"] == 12 * attached
    transformer_numel = sum(
        p.numel() for n, p in trainer.adapter.transformer.named_parameters() if "lora_" not in n
    )
    assert planned.parts["weights:transformer"] == 4 * transformer_numel  # fp32 tiny model


def test_hunyuan_recipe_targets_wrap_exactly_the_papers_layers(tmp_path):
    from pisces_cli.config import load_recipe

    targets = load_recipe("hunyuan").recipe.finetune.lora.targets
    trainer = make_trainer(tmp_path, max_steps=1, extra=[f"finetune.lora.targets={json.dumps(targets)}"])
    wrapped = sorted({n.rsplit(".lora_", 1)[0] for n in trainer.named_trainable})
    dual = [
        f"transformer.transformer_blocks.0.attn.{m}"
        for m in ("add_k_proj", "add_q_proj", "add_v_proj", "to_add_out", "to_k", "to_out.0", "to_q", "to_v")
    ]
    single = [
        f"transformer.single_transformer_blocks.0.{m}"
        for m in ("attn.to_k", "attn.to_q", "attn.to_v", "proj_mlp", "proj_out")
    ]
    assert wrapped == sorted(dual + single)


def test_wan22_two_experts_train_save_and_generate(tmp_path):
    from pisces_cli.backbones.tiny import save_tiny_wan
    from pisces_cli.stages.generate import run_generate

    model = save_tiny_wan(tmp_path / "wan22", variant="2.2-a14b")
    extra = [f"models.generator.path={model}"]
    from pisces_cli.training.trainer import Trainer

    trainer = Trainer(resolve(tmp_path, "wan", extra, max_steps=1), resume=False)
    trainer.setup()
    components = {name.split(".", 1)[0] for name in trainer.named_trainable}
    assert components == {"transformer", "transformer_2"}
    trainer.train()
    checkpoint = trainer.output / "checkpoint-1"
    assert (checkpoint / "pytorch_lora_weights_transformer_2.safetensors").is_file()
    summary = run_generate(
        resolve(tmp_path, "wan", extra),
        prompts=str(tmp_path / "prompts.txt"),
        output=str(tmp_path / "videos"),
        adapter_dir=str(checkpoint),
        limit=1,
    )
    assert summary.written == 1 and (tmp_path / "videos" / f"{PROMPTS[0]}-0.mp4").is_file()


@pytest.mark.parametrize(("name", "billions"), [("hunyuan", 12.82), ("wan", 1.42)])
def test_dry_run_knows_the_bundled_hub_models(name, billions):
    from pisces_cli.config import load_recipe
    from pisces_cli.stages.finetune import estimate

    planned = estimate(load_recipe(name))
    # parameter counts of the real configurations, measured on the meta device in docs/backbones.md §2.3/§3.2
    assert planned.parts["weights:transformer"] / 2 / 1e9 == pytest.approx(billions, rel=0.01)
    assert not any(part.startswith("weights:text_encoder") for part in planned.parts)
    unchecked = estimate(load_recipe(name, ["finetune.vae.decode_checkpointing=false"]))
    assert planned.parts["activations:vae_decoder"] < 0.5 * unchecked.parts["activations:vae_decoder"]


def test_fsdp_is_refused_for_two_experts_before_anything_loads(tmp_path, monkeypatch):
    """Wan 2.2 A14B's ranks pick their expert by their own timestep: FSDP's weight gathers would not line up."""
    from pisces_cli.backbones.tiny import save_tiny_wan
    from pisces_cli.errors import UsageError
    from pisces_cli.training.trainer import Trainer

    a14b = save_tiny_wan(tmp_path / "a14b", seed=0, variant="2.2-a14b")
    monkeypatch.setenv("WORLD_SIZE", "2")
    extra = [f"models.generator.path={a14b}", "finetune.distributed=fsdp"]
    with pytest.raises(UsageError, match="two experts"):
        Trainer(resolve(tmp_path, "wan", extra), resume=False).check_plan()
    ddp = ["finetune.distributed=ddp", f"models.generator.path={a14b}"]
    Trainer(resolve(tmp_path, "wan", ddp), resume=False).check_plan()  # ddp is fine
