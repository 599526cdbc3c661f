"""``pisces score`` state: the run key refuses other settings, per-video keys rescore what changed, error
rows stay, no-op re-runs load no model, reports survive re-runs byte for byte, nothing is skipped silently."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from pisces_cli.cli.main import main


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from pisces_cli.artifacts import ArtifactHeader
    from pisces_cli.encoders.registry import load_encoder
    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder
    from pisces_cli.ot.maps import fit_gaussian_map
    from pisces_cli.rewards import save_ot_map_artifact
    from pisces_cli.world.captions import world_vocabulary

    root = tmp_path_factory.mktemp("score_state")
    write_clip_folder(root / "clips", 6, seed=5, frames=8, size=32)
    encoder = load_encoder(
        "clip", str(save_tiny_clip(root / "enc", "clip", seed=0, words=world_vocabulary()))
    )
    dim = encoder.embed_dim
    header = ArtifactHeader(schema="", fingerprints={"encoder": encoder.fingerprint()})
    for name, shift in (("map_a", 0.5), ("map_b", -0.7)):
        gen = torch.Generator().manual_seed(1)
        tmap = fit_gaussian_map(
            torch.randn(40, dim, generator=gen), torch.randn(40, dim, generator=gen) + shift
        )
        save_ot_map_artifact(root / f"{name}.safetensors", tmap, dim, header)
    return root


def recipe(root: Path, **extra: str) -> Path:
    text = f"""
output_dir: {root}/run
runtime: {{num_workers: 0, device: cpu}}
models: {{encoder: {{backend: clip, path: {root}/enc}}}}
data: {{num_frames: 4}}
score: {{batch_size: 4, bootstrap_samples: 100}}
reward: {{ot_map: {root}/map_a.safetensors, token_ot: {{max_iter: 30}}}}
"""
    path = root / f"r{len(list(root.glob('r*.yaml')))}.yaml"
    path.write_text(text + "".join(f"{k}: {v}\n" for k, v in extra.items()))
    return path


def score(root: Path, clips: Path, out: Path, *args: str) -> int:
    return main(["score", str(clips), "-r", str(recipe(root)), "-o", str(out), *args])


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]


def assert_same_rows(got: list[dict], expected: list[dict], tol: float = 1e-6) -> None:
    """Same videos, prompts, files and errors in the same order; scores equal to ``tol``."""
    assert [r["video"] for r in got] == [r["video"] for r in expected]
    for a, b in zip(got, expected):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, float):
                assert value == pytest.approx(b[key], abs=tol), (a["video"], key)
            else:
                assert value == b[key], (a["video"], key)


def no_model(monkeypatch) -> None:
    """Make any model load fail loudly: what runs after this must not need the encoder."""

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder was loaded")

    monkeypatch.setattr("pisces_cli.rewards.build.load_encoder_from_recipe", refuse)


def copy_clips(world: Path, tmp_path: Path) -> Path:
    clips = tmp_path / "clips"
    shutil.copytree(world / "clips", clips)
    return clips


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("reward.ot_map={root}/map_b.safetensors", "ot_map.sha256"),
        ("reward.token_ot.eps=0.1", "token_ot.eps"),
        ("reward.weights.semantic=2.0", "weights.semantic"),
        ("data.num_frames=3", "frames.requested"),
        ("reward.crop=random", "frames.crop"),
        ("reward.token_ot.enabled=false", "token_ot: {"),  # one line for the whole section, not per leaf
        ("models.encoder.dtype=bfloat16", "encoder.dtype: float32 → bfloat16"),
        ("runtime.allow_tf32=true", "encoder.allow_tf32"),  # TF32 rounds like bf16 on a GPU
    ],
)
def test_other_settings_are_refused_before_loading_naming_the_field(
    world: Path, tmp_path: Path, monkeypatch, capsys, override: str, field: str
):
    out = tmp_path / "out"
    assert score(world, world / "clips", out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    no_model(monkeypatch)
    capsys.readouterr()
    code = main(["score", str(world / "clips"), "-r", str(recipe(world)), "-o", str(out),
                 override.format(root=world)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert field in err and "→" in err and "--force" in err and "--output" in err
    assert "none → none" not in err  # every line names a real change
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing rewritten


def test_same_map_content_at_another_path_is_the_same_key(world: Path, tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert score(world, world / "clips", out) == 0
    copy = tmp_path / "copy_of_map_a.safetensors"
    shutil.copy(world / "map_a.safetensors", copy)
    no_model(monkeypatch)
    capsys.readouterr()
    assert main(["score", str(world / "clips"), "-r", str(recipe(world)), "-o", str(out), "--ot-map",
                 str(copy)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "nothing to do" in printed
    assert f"results in {out}/scores.jsonl" in printed and "wrote" not in printed  # no file was written
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ot_map"]["ot_map"] == str(copy) and summary["ot_map"]["method"] == "gaussian"


def test_force_rescores_to_the_numbers_of_a_fresh_folder(world: Path, tmp_path: Path):
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert score(world, world / "clips", out) == 0
    other = ["reward.weights.semantic=2.0", f"reward.ot_map={world}/map_b.safetensors"]
    assert score(world, world / "clips", out, *other) == 2
    assert score(world, world / "clips", out, *other, "--force") == 0
    assert score(world, world / "clips", fresh, *other) == 0
    assert rows(out) == rows(fresh)
    for name in ("scores.csv", "heatmaps.jsonl"):
        assert (out / name).read_text() == (fresh / name).read_text()
    settings = json.loads((out / "settings.json").read_text())
    assert settings["run_key"]["weights"]["semantic"] == 2.0


def test_edited_prompt_and_replaced_file_are_rescored_alone(world: Path, tmp_path: Path, capsys):
    clips = copy_clips(world, tmp_path)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert score(world, clips, out) == 0
    first = {r["video"]: r for r in rows(out)}
    mapping = [json.loads(line) for line in (clips / "prompts.jsonl").read_text().splitlines()]
    mapping[1]["prompt"] = "a completely different caption"
    (clips / "prompts.jsonl").write_text("".join(json.dumps(m) + "\n" for m in mapping))
    (clips / "clip_003.mp4").write_bytes((clips / "clip_005.mp4").read_bytes())
    capsys.readouterr()
    assert score(world, clips, out) == 0
    assert "rescored 2 videos whose prompt or file changed" in capsys.readouterr().out
    second = {r["video"]: r for r in rows(out)}
    changed = {"clip_001.mp4", "clip_003.mp4"}
    for video, row in second.items():
        if video in changed:
            assert row != first[video]
        else:
            assert row == first[video]  # untouched rows are reused exactly
    assert second["clip_001.mp4"]["prompt"] == "a completely different caption"
    assert json.loads((out / "summary.json").read_text())["rescored_changed"] == 2
    assert score(world, clips, fresh) == 0
    assert_same_rows(rows(out), rows(fresh))  # batches differ, so the last float bits may too


def test_noop_rerun_loads_no_model_and_report_rebuilds_byte_identical(
    world: Path, tmp_path: Path, monkeypatch, capsys
):
    out = tmp_path / "out"
    assert score(world, world / "clips", out) == 0
    assert not (out / "report.html").exists()
    no_model(monkeypatch)
    capsys.readouterr()
    assert score(world, world / "clips", out, "--report") == 0  # report of an already-scored folder
    printed = capsys.readouterr().out
    assert "nothing to do" in printed and "(report rebuilt)" in printed and "0/0" not in printed
    first = (out / "report.html").read_bytes()
    assert score(world, world / "clips", out, "--report") == 0
    assert "(report up to date)" in capsys.readouterr().out
    assert (out / "report.html").read_bytes() == first
    (out / "report.html").unlink()  # drawn again from the same files: the same bytes
    assert score(world, world / "clips", out, "--report") == 0
    assert (out / "report.html").read_bytes() == first
    text = first.decode()
    assert "No word heatmaps" not in text
    assert text.count("<img alt='frames of") == 6 and text.count("% of mass of clip_") == 18
    # heatmaps.jsonl holds every scored video's words
    maps = [json.loads(line) for line in (out / "heatmaps.jsonl").read_text().splitlines()]
    assert [m["video"] for m in maps] == [r["video"] for r in rows(out)]
    assert all(m["words"] for m in maps)


def test_error_rows_are_kept_until_retried(world: Path, tmp_path: Path, monkeypatch, capsys):
    clips = copy_clips(world, tmp_path)
    (clips / "clip_002.mp4").write_bytes(b"\x00not a video" * 20)
    out = tmp_path / "out"
    capsys.readouterr()
    assert score(world, clips, out) == 0
    printed = capsys.readouterr().out
    assert "1 of 6 videos failed:" in printed and "clip_002.mp4:" in printed
    assert str(out / "failed.jsonl") in printed.replace("\n", "")
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert [f["video"] for f in failed] == ["clip_002.mp4"]
    error_row = next(r for r in rows(out) if r["video"] == "clip_002.mp4")
    with monkeypatch.context() as patch:
        no_model(patch)
        assert score(world, clips, out) == 0  # the error row is state: no retry, no model
    assert next(r for r in rows(out) if r["video"] == "clip_002.mp4") == error_row
    shutil.copy(world / "clips/clip_002.mp4", clips / "clip_002.mp4")
    assert score(world, clips, out) == 0  # the file changed: rescored
    assert not (out / "failed.jsonl").exists()
    assert all(r["error"] is None for r in rows(out))


def test_retry_failed_tries_error_rows_again(world: Path, tmp_path: Path):
    clips = copy_clips(world, tmp_path)
    (clips / "clip_004.mp4").write_bytes(b"junk")
    out = tmp_path / "out"
    assert score(world, clips, out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == 1
    assert score(world, clips, out, "--retry-failed") == 0
    assert json.loads((out / "summary.json").read_text())["retried_failed"] == 1


def test_rows_without_a_run_key_are_refused(world: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.jsonl").write_text(json.dumps({"video": "clip_000.mp4", "prompt": "x", "error": None,
                                                  "quality": 0.9}) + "\n")  # fmt: skip
    capsys.readouterr()
    assert score(world, world / "clips", out) == 2
    assert "without a recorded run key" in capsys.readouterr().err
    assert score(world, world / "clips", out, "--force") == 0
    assert len(rows(out)) == 6


def test_prompt_less_folder_is_error_rows_unless_names_are_asked_for(world: Path, tmp_path: Path, capsys):
    clips = copy_clips(world, tmp_path)
    (clips / "prompts.jsonl").unlink()
    capsys.readouterr()
    assert score(world, clips, tmp_path / "out") == 1  # every video failed: no prompt
    captured = capsys.readouterr()
    assert "no prompt for clip_000.mp4" in captured.out and "--prompts-from-names" in captured.out
    assert score(world, clips, tmp_path / "named", "--prompts-from-names") == 0
    assert {r["prompt"] for r in rows(tmp_path / "named")} == {f"clip_{i:03d}" for i in range(6)}
    # the recipe key says the same
    assert main(["score", str(clips), "-r", str(recipe(world)), "-o", str(tmp_path / "named2"),
                 "data.prompts_from_names=true"]) == 0  # fmt: skip
    assert rows(tmp_path / "named2") == rows(tmp_path / "named")


def test_every_entry_is_scored_failed_or_listed_as_skipped(world: Path, tmp_path: Path, capsys):
    from pisces_cli.io.writer import vbench_filename

    clips = copy_clips(world, tmp_path)
    dotted = "...and then a blue circle appears"
    name = vbench_filename(dotted, 0)
    assert not name.startswith(".")
    shutil.copy(clips / "clip_000.mp4", clips / name)
    with open(clips / "prompts.jsonl", "a") as handle:
        handle.write(json.dumps({"file": name, "prompt": dotted}) + "\n")
    (clips / ".hidden.mp4").write_bytes((clips / "clip_000.mp4").read_bytes())
    os.symlink(clips / "gone.mp4", clips / "broken.mp4")
    (clips / "notes.md").write_text("hello")
    capsys.readouterr()
    out = clips / "pisces-scores"
    assert main(["score", str(clips), "-r", str(recipe(world))]) == 0
    printed = capsys.readouterr().out
    table = {r["video"]: r for r in rows(out)}
    assert table[name]["prompt"] == dotted and table[name]["error"] is None
    summary = json.loads((out / "summary.json").read_text())
    skipped = {f["path"]: f["reason"] for f in summary["skipped_files"]["files"]}
    assert skipped == {
        ".hidden.mp4": "hidden file",
        "broken.mp4": "broken symbolic link",
        "notes.md": "not a video file (.md)",
    }
    assert "skipped 3 entries" in printed
    assert len(table) == 7
    # another command's output folder inside the videos folder is listed, never scored
    (clips / "pisces-eval").mkdir()
    (clips / "pisces-eval/settings.json").write_text(json.dumps({"schema": "pisces.eval"}))
    shutil.copy(clips / "clip_000.mp4", clips / "pisces-eval/copy.mp4")
    assert main(["score", str(clips), "-r", str(recipe(world))]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"path": "pisces-eval/", "reason": "pisces output folder"} in summary["skipped_files"]["files"]
    assert len(rows(out)) == 7


def test_heatmaps_sit_inside_the_crop_box_of_non_square_clips(tmp_path: Path):
    import numpy as np

    from pisces_cli.io.preprocess import crop_window
    from pisces_cli.io.writer import write_mp4
    from pisces_cli.stages.score_report import (
        CROP_OUTLINE_RGB,
        FRAME_ALPHA,
        FrameView,
        WordMap,
        _frames_for,
        heat_overlay,
        outlined,
        patch_index,
        video_rows,
    )

    for height, width in ((36, 64), (272, 640), (64, 36)):
        write_mp4(tmp_path / f"c{width}x{height}.mp4", np.zeros((4, height, width, 3), np.uint8), 8)
        view = FrameView(num_frames=4, size=32)
        frames, indices = _frames_for(tmp_path / f"c{width}x{height}.mp4", view)
        assert frames is not None and frames.shape[1:3] == (height, width) and indices == [0, 1, 2, 3]
        x0, y0, x1, y1 = view.crop_box(height, width)
        # the square the encoder saw: the full short side, centred on the long one (the long side's
        # resize rounds to whole pixels, so its scale differs from the short side's by < 1 pixel in 32)
        window = crop_window(height, width, 32)
        short = min(height, width)
        assert (x1 - x0) == pytest.approx(32 * width / window.resized_w)
        assert (y1 - y0) == pytest.approx(32 * height / window.resized_h)
        assert (x1 - x0) == pytest.approx(short, rel=1 / 32) and (y1 - y0) == pytest.approx(short, rel=1 / 32)
        assert x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height
        assert abs((x0 + x1) / 2 - width / 2) <= short / 32 and abs((y0 + y1) / 2 - height / 2) <= short / 32
        # every coloured pixel of a heatmap lies inside the box, every pixel inside it is coloured, and
        # the 4 x 4 grid splits the box into equal cells
        black = np.zeros((height, width, 3), np.uint8)
        heat = np.arange(16, dtype=float).reshape(4, 4) + 1.0
        overlay = heat_overlay(black, heat, 16.0, (x0, y0, x1, y1))
        faded = round(255 * (1 - FRAME_ALPHA))
        coloured = (overlay != faded).any(-1)
        ys, xs = np.nonzero(coloured)
        assert ys.min() >= np.floor(y0) and ys.max() < np.ceil(y1)
        assert xs.min() >= np.floor(x0) and xs.max() < np.ceil(x1)
        rows, cols = patch_index((x0, y0, x1, y1), (4, 4), height, width)
        assert coloured.sum() == (rows >= 0).sum() * (cols >= 0).sum()
        for index in range(4):
            assert (
                abs((rows == index).sum() - (y1 - y0) / 4) <= 1
                and abs((cols == index).sum() - (x1 - x0) / 4) <= 1
            )
        # the frame row outlines the box
        frame = outlined(black, (x0, y0, x1, y1))
        ys, xs = np.nonzero((frame == CROP_OUTLINE_RGB).all(-1))
        assert xs.min() == round(x0) and xs.max() == round(x1) - 1 and ys.min() == round(y0)
        labels = [label for label, _ in video_rows(frames, [WordMap("cat", np.ones((2, 4, 4)), 0.5)], view)]
        assert labels == ["frames", "“cat” 50% of mass"]


def test_noop_reruns_import_no_torch(world: Path, tmp_path: Path):
    """A re-run with nothing to do (score, eval, embed) answers from files: not even torch is imported."""
    import subprocess
    import sys

    clips = copy_clips(world, tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text(
        f"output_dir: {tmp_path}/run\n"
        "runtime: {num_workers: 0, device: cpu}\n"
        f"models: {{encoder: {{backend: clip, path: {world}/enc}}}}\n"
        f"data: {{videos: {clips}, num_frames: 4}}\n"
        f"reward: {{ot_map: {world}/map_a.safetensors, token_ot: {{max_iter: 30}}}}\n"
        "embed: {shard_size: 4}\neval: {bootstrap_samples: 100}\nscore: {bootstrap_samples: 100}\n"
    )
    commands = [["score", str(clips), "-r", str(path)], ["eval", str(clips), "-r", str(path)],
                ["embed", "-r", str(path)]]  # fmt: skip
    for command in commands:
        assert main(command) == 0
    script = (
        "import sys\nfrom pisces_cli.cli.main import main\n"
        f"codes = [main(c) for c in {commands!r}]\n"
        "assert codes == [0, 0, 0], codes\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("nothing to do") == 3


def test_summary_statistics_follow_the_bootstrap_settings(world: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "out"
    assert score(world, world / "clips", out) == 0
    first = json.loads((out / "summary.json").read_text())
    no_model(monkeypatch)
    assert score(world, world / "clips", out) == 0  # same rows and settings: the same statistics
    same = json.loads((out / "summary.json").read_text())
    assert (
        same["columns"] == first["columns"]
        and same["columns_inputs_sha256"] == first["columns_inputs_sha256"]
    )
    assert score(world, world / "clips", out, "score.bootstrap_samples=50") == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["columns_inputs_sha256"] != first["columns_inputs_sha256"]
    from pisces_cli.stages.score import summarize

    assert again["columns"] == json.loads(json.dumps(summarize(rows(out), 50, 0)))


def edit_prompt(clips: Path, index: int, prompt: str) -> None:
    mapping = [json.loads(line) for line in (clips / "prompts.jsonl").read_text().splitlines()]
    mapping[index]["prompt"] = prompt
    (clips / "prompts.jsonl").write_text("".join(json.dumps(m) + "\n" for m in mapping))


def test_a_torn_last_line_loses_no_row(world: Path, tmp_path: Path, capsys):
    """A run killed mid-line (disk full, SIGKILL) leaves a fragment: the next rows start on a fresh line,
    and neither a changed video's old row nor a missing row is published in its place."""
    clips = copy_clips(world, tmp_path)
    out = tmp_path / "out"
    assert score(world, clips, out) == 0
    with open(out / "scores.jsonl", "a") as handle:
        handle.write('{"video": "clip_00')
    edit_prompt(clips, 1, "a blue circle moves")
    shutil.copy(clips / "clip_000.mp4", clips / "clip_new.mp4")  # a video without any row
    with open(clips / "prompts.jsonl", "a") as handle:
        handle.write(json.dumps({"file": "clip_new.mp4", "prompt": "a red square"}) + "\n")
    capsys.readouterr()
    assert score(world, clips, out) == 0
    table = {r["video"]: r for r in rows(out)}
    assert len(table) == 7 and all(r["error"] is None for r in table.values())
    assert table["clip_001.mp4"]["prompt"] == "a blue circle moves"
    assert table["clip_new.mp4"]["prompt"] == "a red square"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 7 and summary["failed"] == 0


def test_a_video_of_the_run_without_its_row_is_an_error_row_never_dropped(tmp_path: Path):
    from pisces_cli.io.prompts import VideoItem
    from pisces_cli.stages.row_store import merged_rows, plan_rows

    items = []
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (tmp_path / name).write_bytes(name.encode())
        items.append(VideoItem(key=name, source=str(tmp_path / name), prompt=f"prompt of {name}"))
    plan = plan_rows(items, {})
    made = [{"video": it.key, "prompt": it.prompt, "error": None, **plan.identities[it.key]} for it in items]
    stored = {"a.mp4": made[0], "b.mp4": {**made[1], "prompt": "an older prompt"}}  # c.mp4: no row
    rows = merged_rows(items, items, plan, stored)
    assert [r["video"] for r in rows] == ["a.mp4", "b.mp4", "c.mp4"]
    assert rows[0] == made[0]
    for row in rows[1:]:
        assert "no row was recorded" in row["error"] and row["prompt"] == f"prompt of {row['video']}"
    # such a row is computed again by the next run (not kept as a failure), and counted as nothing changed
    again = plan_rows(items, {r["video"]: r for r in rows})
    assert [it.key for it in again.todo] == ["b.mp4", "c.mp4"] and again.changed == 0


def test_heatmaps_of_a_killed_run_are_not_drawn_for_another_prompt(world: Path, tmp_path: Path, monkeypatch):
    """Killed between the heatmap append and the row append, then the prompt reverted: the report keeps
    drawing the heatmaps of the prompt its row was scored with."""
    import contextlib

    from pisces_cli.stages.row_store import RowStore

    clips = copy_clips(world, tmp_path)
    out = tmp_path / "out"
    assert score(world, clips, out, "--report") == 0
    first_maps = (out / "heatmaps.jsonl").read_text()
    first_report = (out / "report.html").read_bytes()
    original_prompt = json.loads((clips / "prompts.jsonl").read_text().splitlines()[1])["prompt"]
    edit_prompt(clips, 1, "a green triangle spins")
    real = RowStore.appender

    @contextlib.contextmanager
    def killed_before_rows(self):
        with real(self) as append:
            if self.name != "scores":
                yield append
                return

            def die(rows):
                raise KeyboardInterrupt

            yield die

    with monkeypatch.context() as patch:
        patch.setattr(RowStore, "appender", killed_before_rows)
        assert score(world, clips, out, "--report") == 130
    edit_prompt(clips, 1, original_prompt)
    no_model(monkeypatch)
    assert score(world, clips, out, "--report") == 0
    assert (out / "heatmaps.jsonl").read_text() == first_maps
    assert (out / "report.html").read_bytes() == first_report


def test_a_prompt_the_encoder_cannot_align_is_its_own_error_row(
    world: Path, tmp_path: Path, monkeypatch, capsys
):
    """A prompt without a lexical token fails alone: its batch-mates are scored, the run goes on."""
    clips = copy_clips(world, tmp_path)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    for index, prompt in ((1, "!!!"), (4, "🎉🎉")):
        edit_prompt(clips, index, prompt)
    capsys.readouterr()
    assert score(world, clips, out) == 0
    printed = capsys.readouterr().out
    assert "2 of 6 videos failed:" in printed and "no lexical token to align" in printed
    table = {r["video"]: r for r in rows(out)}
    for video in ("clip_001.mp4", "clip_004.mp4"):
        assert "no lexical token to align" in table[video]["error"] and "total" not in table[video]
    assert sum(r["error"] is None for r in table.values()) == 4
    failed = [json.loads(line)["video"] for line in (out / "failed.jsonl").read_text().splitlines()]
    assert failed == ["clip_001.mp4", "clip_004.mp4"]
    # the good rows are the rows of a batch without the bad prompts
    edit_prompt(clips, 1, "a red circle")
    edit_prompt(clips, 4, "a blue square")
    assert score(world, clips, fresh) == 0
    fresh_rows = {r["video"]: r for r in rows(fresh)}
    for video, row in table.items():
        if row["error"] is None:
            assert_same_rows([row], [fresh_rows[video]], tol=1e-5)


def test_split_on_failure_isolates_bad_items_and_re_raises_what_is_not_theirs():
    from pisces_cli.errors import UsageError
    from pisces_cli.stages.batch_split import split_on_failure

    def compute(values: list[int]) -> list[int]:
        if -1 in values:
            raise UsageError(f"bad value among {values}")
        return [2 * v for v in values]

    parts = split_on_failure(compute, [1, 2, 3])
    assert [(p.start, p.stop, p.value) for p in parts] == [(0, 3, [2, 4, 6])]
    parts = split_on_failure(compute, [1, -1, 3])
    assert [(p.start, p.value, p.error) for p in parts] == [
        (0, [2], None), (1, None, "bad value among [-1]"), (2, [6], None)
    ]  # fmt: skip

    def broken(values: list[int]) -> list[int]:
        raise RuntimeError("device lost")

    with pytest.raises(RuntimeError, match="device lost"):
        split_on_failure(broken, [1, 2])

    def odd_fails(values: list[int]) -> list[int]:
        if any(v % 2 for v in values):
            raise ValueError("odd")
        return values

    parts = split_on_failure(odd_fails, [2, 3])
    assert [p.error for p in parts] == [None, "ValueError: odd"]


def test_the_run_key_carries_the_score_code_version(world: Path, tmp_path: Path, monkeypatch, capsys):
    from pisces_cli.stages.score import SCORE_VERSION

    out = tmp_path / "out"
    assert score(world, world / "clips", out) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["run_key"]["version"] == SCORE_VERSION
    settings["run_key"]["version"] = SCORE_VERSION - 1  # rows of an older pisces that computed otherwise
    (out / "settings.json").write_text(json.dumps(settings))
    no_model(monkeypatch)
    capsys.readouterr()
    assert score(world, world / "clips", out) == 2
    assert f"version: {SCORE_VERSION - 1} → {SCORE_VERSION}" in capsys.readouterr().err


def test_the_report_decodes_and_digests_only_the_videos_it_draws(
    world: Path, tmp_path: Path, monkeypatch, capsys
):
    from pisces_cli.stages import score_report

    out = tmp_path / "out"
    assert score(world, world / "clips", out) == 0
    monkeypatch.setattr(score_report, "REPORT_MAX_VIDEOS", 2)
    decoded = []
    real = score_report.decode_words
    monkeypatch.setattr(
        score_report, "decode_words", lambda records: decoded.append(records) or real(records)
    )
    no_model(monkeypatch)
    assert score(world, world / "clips", out, "--report") == 0
    assert len(decoded) == 2
    page = (out / "report.html").read_text()
    assert page.count("<img alt='frames of") == 2 and page.count("% of mass of clip_") == 6
    # a heatmap the page does not draw is not one of its inputs: the report stays as it is
    maps = [json.loads(line) for line in (out / "heatmaps.jsonl").read_text().splitlines()]
    maps[5]["words"] = maps[5]["words"][:1]
    (out / "heatmaps.jsonl").write_text("".join(json.dumps(m) + "\n" for m in maps))
    capsys.readouterr()
    assert score(world, world / "clips", out, "--report") == 0
    assert "(report up to date)" in capsys.readouterr().out
    maps[0]["words"] = maps[0]["words"][:1]  # one it draws: drawn again
    (out / "heatmaps.jsonl").write_text("".join(json.dumps(m) + "\n" for m in maps))
    assert score(world, world / "clips", out, "--report") == 0
    assert "(report rebuilt)" in capsys.readouterr().out
    assert (out / "report.html").read_text().count("% of mass of clip_") == 4


def test_the_report_reads_frames_in_a_child_and_a_crash_costs_only_the_picture(
    world: Path, tmp_path: Path, monkeypatch
):
    import signal

    import numpy as np

    from pisces_cli.stages.score_report import FrameView, WordMap, write_score_report

    parent, in_parent = os.getpid(), []

    def crashing_decoder(*args, **kwargs):
        if os.getpid() == parent:
            in_parent.append(args)
            raise ValueError("decoded in the main process")
        os.kill(os.getpid(), signal.SIGSEGV)  # a native decoder crash, in the child

    monkeypatch.setattr("pisces_cli.io.video.read_clip", crashing_decoder)
    rows = [
        {"video": f"clip_00{i}.mp4", "prompt": "a red circle", "error": None, "total": 0.5} for i in range(2)
    ]
    words = {r["video"]: [WordMap("red", np.ones((4, 4, 4)), 0.5)] for r in rows}
    stats = {"total": {"mean": 0.5, "ci_low": 0.5, "ci_high": 0.5, "n": 2}}
    path = write_score_report(tmp_path / "report.html", world / "clips", rows, words, stats,
                              view=FrameView(num_frames=4, size=32), decode_timeout_s=30)  # fmt: skip
    assert in_parent == []
    page = path.read_text()
    assert page.count("The video could not be re-read for its frames.") == 2
    assert page.count("% of mass of clip_") == 2  # the heatmaps are drawn alone


@pytest.mark.parametrize("damage", ["deleted", "one record lost"])
def test_scored_rows_whose_heatmaps_were_lost_are_rescored(
    world: Path, tmp_path: Path, monkeypatch, capsys, damage: str
):
    """heatmaps.jsonl deleted or missing a record: the rows without heatmaps are scored again (the report
    never draws a scored video without its heatmaps nor blames the semantic reward), the others are kept."""
    out = tmp_path / "out"
    assert score(world, world / "clips", out, "--report") == 0
    first_rows = rows(out)
    maps_file = out / "heatmaps.jsonl"
    if damage == "deleted":
        maps_file.unlink()
        lost = len(first_rows)
    else:
        lines = maps_file.read_text().splitlines(keepends=True)
        maps_file.write_text("".join(lines[:2] + lines[3:]))
        lost = 1
    capsys.readouterr()
    assert score(world, world / "clips", out, "--report") == 0
    assert (
        f"rescored {lost} videos whose heatmaps were missing from heatmaps.jsonl" in capsys.readouterr().out
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rescored_missing_heatmaps"] == lost
    assert summary["skipped_already_scored"] == len(first_rows) - lost
    assert_same_rows(rows(out), first_rows, tol=1e-5)
    maps = [json.loads(line) for line in maps_file.read_text().splitlines()]
    assert [m["video"] for m in maps] == [r["video"] for r in first_rows] and all(m["words"] for m in maps)
    page = (out / "report.html").read_text()
    assert "No word heatmaps" not in page and page.count("% of mass of clip_") == 18
    no_model(monkeypatch)  # complete again: nothing to do, the same report
    assert score(world, world / "clips", out, "--report") == 0
    assert "(report up to date)" in capsys.readouterr().out
    assert (out / "report.html").read_text() == page


def test_score_applies_runtime_allow_tf32_before_loading_the_encoder(
    world: Path, tmp_path: Path, monkeypatch
):
    """Only finetune applied runtime.allow_tf32: score ran under torch's default (cuDNN convolutions in TF32)
    whatever the recipe said."""
    from pisces_cli import runtime

    applied: list[bool] = []
    monkeypatch.setattr(runtime, "configure_tf32", applied.append)
    assert score(world, world / "clips", tmp_path / "out") == 0
    assert applied == [False]
    # what ran is recorded beside the dtype of the run key
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["run_key"]["encoder"]["dtype"] == "float32"
