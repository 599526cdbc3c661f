"""``pisces eval`` state: rows resume under the same run key only, changed videos are re-evaluated alone,
other settings are refused before any model load, and 2 torchrun ranks give the one-process eval.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pisces_cli.cli.main import main


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder
    from pisces_cli.world.captions import world_vocabulary

    root = tmp_path_factory.mktemp("eval_state")
    write_clip_folder(root / "clips", 6, seed=8, frames=8, size=32)
    save_tiny_clip(root / "enc", "clip", seed=0, words=world_vocabulary())
    (root / "r.yaml").write_text(
        f"output_dir: {root}/run\n"
        "runtime: {num_workers: 0, device: cpu}\n"
        f"models: {{encoder: {{backend: clip, path: {root}/enc}}}}\n"
        "data: {num_frames: 4}\n"
        "reward: {ot_map: null, token_ot: {max_iter: 30}}\n"
        "eval: {batch_size: 2, bootstrap_samples: 100}\n"
    )
    return root


def evaluate(world: Path, clips: Path, out: Path, *args: str) -> int:
    return main(["eval", str(clips), "-r", str(world / "r.yaml"), "-o", str(out), *args])


def document(out: Path) -> dict:
    return json.loads((out / "eval.json").read_text())


def no_model(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the encoder was loaded")

    monkeypatch.setattr("pisces_cli.rewards.build.load_encoder_from_recipe", refuse)


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("eval.flicker=false", "metrics.flicker"),
        ("reward.token_ot.mass=0.5", "token_ot.mass"),
        ("reward.weights.quality=0.3", "weights.quality"),
    ],
)
def test_other_settings_are_refused_before_loading(
    world: Path, tmp_path: Path, monkeypatch, capsys, override: str, field: str
):
    out = tmp_path / "out"
    assert evaluate(world, world / "clips", out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    no_model(monkeypatch)
    capsys.readouterr()
    assert evaluate(world, world / "clips", out, override) == 2
    err = capsys.readouterr().err
    assert field in err and "--force" in err and "--output" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    fresh = tmp_path / "fresh"
    assert evaluate(world, world / "clips", out, override, "--force") == 0
    assert evaluate(world, world / "clips", fresh, override) == 0
    assert comparable(document(out)["videos"]) == comparable(document(fresh)["videos"])


def test_noop_rerun_and_changed_videos(world: Path, tmp_path: Path, monkeypatch, capsys):
    clips = tmp_path / "clips"
    shutil.copytree(world / "clips", clips)
    out = tmp_path / "out"
    assert evaluate(world, clips, out) == 0
    first = {r["video"]: r for r in document(out)["videos"]}
    with monkeypatch.context() as patch:
        no_model(patch)
        capsys.readouterr()
        assert evaluate(world, clips, out) == 0
        assert "nothing to do" in capsys.readouterr().out
        written = (out / "eval.json").read_bytes()
        os.utime(out / "eval.json", ns=(0, 0))
        assert evaluate(world, clips, out) == 0  # nothing changed at all: eval.json left as it was
        printed = capsys.readouterr().out
        assert "nothing to do" in printed and "results in" in printed and "wrote" not in printed
        assert (out / "eval.json").read_bytes() == written and (out / "eval.json").stat().st_mtime_ns == 0
    again = {r["video"]: r for r in document(out)["videos"]}
    assert again == first
    assert document(out)["settings"]["consistency_features"] == "frame_embeddings"
    assert document(out)["settings"]["device"] == "cpu"  # what ran, beside the run key's dtype
    mapping = [json.loads(line) for line in (clips / "prompts.jsonl").read_text().splitlines()]
    mapping[2]["prompt"] = "a new caption for this clip"
    (clips / "prompts.jsonl").write_text("".join(json.dumps(m) + "\n" for m in mapping))
    (clips / "clip_004.mp4").write_bytes(b"broken now")
    capsys.readouterr()
    assert evaluate(world, clips, out) == 0
    printed = capsys.readouterr().out
    assert "re-evaluated 2 videos whose prompt or file changed" in printed
    assert "clip_004.mp4:" in printed and str(out / "failed.jsonl") in printed.replace("\n", "")
    third = {r["video"]: r for r in document(out)["videos"]}
    for video, row in third.items():
        if video in ("clip_002.mp4", "clip_004.mp4"):
            assert row != first[video]
        else:
            assert row == first[video]
    assert third["clip_004.mp4"]["error"] and third["clip_002.mp4"]["prompt"] == "a new caption for this clip"
    assert document(out)["resumed"]["reevaluated_changed"] == 2


def test_two_ranks_match_one_process(world: Path, tmp_path: Path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert evaluate(world, world / "clips", one) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pisces_cli", "eval", str(world / "clips"), "-r", str(world / "r.yaml"), "-o", str(two)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    a, b = document(two), document(one)
    assert comparable(a["videos"]) == comparable(b["videos"])
    assert a["world_size"] == 2 and a["per_rank"] == [3, 3] and b["per_rank"] == [6]
    assert a["run_key"] == b["run_key"] and a["counts"] == b["counts"]
    for metric, stat in b["aggregate"].items():
        assert a["aggregate"][metric]["mean"] == pytest.approx(stat["mean"], abs=1e-5), metric
    assert not list(two.glob("*.rank*.jsonl"))


def test_a_torn_last_line_loses_no_row(world: Path, tmp_path: Path):
    clips = tmp_path / "clips"
    shutil.copytree(world / "clips", clips)
    out = tmp_path / "out"
    assert evaluate(world, clips, out) == 0
    with open(out / "videos.jsonl", "a") as handle:
        handle.write('{"video": "clip_00')
    mapping = [json.loads(line) for line in (clips / "prompts.jsonl").read_text().splitlines()]
    mapping[1]["prompt"] = "a blue circle moves"
    (clips / "prompts.jsonl").write_text("".join(json.dumps(m) + "\n" for m in mapping))
    assert evaluate(world, clips, out) == 0
    rows = {r["video"]: r for r in document(out)["videos"]}
    assert len(rows) == 6 and all(r["error"] is None for r in rows.values())
    assert rows["clip_001.mp4"]["prompt"] == "a blue circle moves"


def test_a_prompt_the_encoder_cannot_align_is_its_own_error_row(world: Path, tmp_path: Path):
    clips = tmp_path / "clips"
    shutil.copytree(world / "clips", clips)
    mapping = [json.loads(line) for line in (clips / "prompts.jsonl").read_text().splitlines()]
    mapping[3]["prompt"] = "12345"
    (clips / "prompts.jsonl").write_text("".join(json.dumps(m) + "\n" for m in mapping))
    out = tmp_path / "out"
    assert evaluate(world, clips, out) == 0
    rows = {r["video"]: r for r in document(out)["videos"]}
    assert "no lexical token to align" in rows["clip_003.mp4"]["error"]
    assert all(r["error"] is None and r["total"] is not None for v, r in rows.items() if v != "clip_003.mp4")
    assert document(out)["counts"] == {"videos": 6, "evaluated": 5, "failed": 1}


def test_score_and_eval_cannot_share_an_output_folder(world: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    score = ["score", str(world / "clips"), "-r", str(world / "r.yaml"), "-o", str(out)]
    assert main(score) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    for extra in ([], ["--force"]):
        assert evaluate(world, world / "clips", out, *extra) == 2
        err = capsys.readouterr().err
        assert "pisces score" in err and "--output" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # score's folder untouched
    assert main(score) == 0
    other = tmp_path / "eval_first"
    assert evaluate(world, world / "clips", other) == 0
    assert main([*score[:-1], str(other)]) == 2
    assert "pisces eval" in capsys.readouterr().err
    # settings.json gone (deleted, damaged): the other stage's rows still tell the folders apart
    (out / "settings.json").unlink()
    (other / "settings.json").write_text("{")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for extra in ([], ["--force"]):
        assert evaluate(world, world / "clips", out, *extra) == 2
        assert "pisces score" in capsys.readouterr().err
        assert main([*score[:-1], str(other), *extra]) == 2
        assert "pisces eval" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("problem", ["manifest", "suite"])
def test_bad_manifest_or_prompt_suite_is_refused_before_any_work(
    world: Path, tmp_path: Path, monkeypatch, capsys, problem: str
):
    clips = tmp_path / "clips"
    shutil.copytree(world / "clips", clips)
    args = []
    if problem == "manifest":
        (clips / "manifest.json").write_text("[1, 2")
    else:
        args = [f"eval.prompts={tmp_path}/no_such_suite.txt"]
    no_model(monkeypatch)
    capsys.readouterr()
    out = tmp_path / "out"
    assert evaluate(world, clips, out, *args) == 2
    err = capsys.readouterr().err
    assert ("manifest.json" if problem == "manifest" else "no_such_suite") in err
    assert not (out / "videos.jsonl").exists()
