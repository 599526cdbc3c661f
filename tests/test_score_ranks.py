"""`pisces score` under torchrun with 2 CPU (gloo) processes: each rank scores every 2nd video still to do,
rank 0 merges into the tables a one-process run writes; resume works across a change of world size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pisces_cli.cli.main import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder
    from pisces_cli.world.captions import world_vocabulary

    root = tmp_path_factory.mktemp("score_ranks")
    write_clip_folder(root / "clips", 10, seed=12, frames=8, size=32)
    (root / "clips" / "broken.mp4").write_bytes(b"not a video at all")
    with open(root / "clips" / "prompts.jsonl", "a") as handle:
        handle.write(json.dumps({"file": "broken.mp4", "prompt": "a red circle"}) + "\n")
    save_tiny_clip(root / "enc", "clip", seed=0, words=world_vocabulary())
    recipe = root / "r.yaml"
    recipe.write_text(
        f"output_dir: {root}/run\n"
        "runtime: {num_workers: 0, device: cpu}\n"
        f"models: {{encoder: {{backend: clip, path: {root}/enc}}}}\n"
        "data: {num_frames: 4}\n"
        "score: {batch_size: 2, bootstrap_samples: 100}\n"
        "reward: {ot_map: null, token_ot: {max_iter: 30}}\n"
    )
    return root, recipe


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_ranks_resume_a_one_process_run_and_match_it(setup):
    root, recipe = setup
    clips = root / "clips"
    assert main(["score", str(clips), "-r", str(recipe), "-o", str(root / "one"), "--report"]) == 0
    # a one-process run scored the first 4 videos; 2 ranks finish the folder
    assert main(["score", str(clips), "-r", str(recipe), "-o", str(root / "mixed"), "--limit", "4"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pisces_cli", "score", str(clips), "-r", str(recipe), "-o", str(root / "mixed"),
           "--report"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("pisces score —") == 1  # rank 0 alone prints the table

    one, mixed = read_rows(root / "one/scores.jsonl"), read_rows(root / "mixed/scores.jsonl")
    assert [r["video"] for r in mixed] == [r["video"] for r in one]  # input order restored
    for a, b in zip(mixed, one):
        assert a.keys() == b.keys() and a["error"] == b["error"] and a["prompt"] == b["prompt"]
        for key, value in a.items():
            if isinstance(value, float):
                assert value == pytest.approx(b[key], abs=1e-6), (a["video"], key)
    assert not list((root / "mixed").glob("*.rank*.jsonl"))  # rank files folded in
    summary = json.loads((root / "mixed/summary.json").read_text())
    assert summary["world_size"] == 2 and summary["per_rank"] == [4, 3]  # 7 left: 6 clips + broken.mp4
    assert summary["skipped_already_scored"] == 4 and summary["failed"] == 1
    reference = json.loads((root / "one/summary.json").read_text())
    for name in ("videos", "scored", "failed", "run_key", "skipped_files", "weights", "num_frames"):
        assert summary[name] == reference[name], name
    heatmaps = read_rows(root / "mixed/heatmaps.jsonl")
    assert [h["video"] for h in heatmaps] == [r["video"] for r in one if r["error"] is None]
    report = (root / "mixed/report.html").read_text()
    assert report.count("<img alt='frames of") == 10
    assert report.count("% of mass of clip_") == 30  # 3 word strips per scored video
    assert "No word heatmaps" not in report


def test_leftover_rank_rows_of_an_interrupted_run_are_folded_in(setup, tmp_path):
    """Rows a killed multi-rank run left in scores.rank{r}.jsonl count as scored for a later run of any size."""
    from pisces_cli.stages.row_store import RowStore

    root, recipe = setup
    out = tmp_path / "out"
    assert main(["score", str(root / "clips"), "-r", str(recipe), "-o", str(out)]) == 0
    rows = read_rows(out / "scores.jsonl")
    heatmaps = read_rows(out / "heatmaps.jsonl")
    # as if ranks 0 and 3 of a 4-rank run had appended the last rows and been killed before merging
    kept, left = rows[:6], rows[6:]
    (out / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (out / "scores.rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in left[::2]))
    (out / "scores.rank3.jsonl").write_text("".join(json.dumps(r) + "\n" for r in left[1::2]) + '{"vid')
    assert set(RowStore(out, "scores").read()) == {r["video"] for r in rows}

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder was loaded")

    import pisces_cli.rewards.build as build

    original, build.load_encoder_from_recipe = build.load_encoder_from_recipe, refuse
    try:
        assert main(["score", str(root / "clips"), "-r", str(recipe), "-o", str(out)]) == 0
    finally:
        build.load_encoder_from_recipe = original
    assert read_rows(out / "scores.jsonl") == rows
    assert read_rows(out / "heatmaps.jsonl") == heatmaps
    assert not list(out.glob("*.rank*.jsonl"))


def _agree(rank: int, store: str, plan_hash: str, results) -> None:
    import torch.distributed as dist

    from pisces_cli.stages.resume import agree_across_ranks

    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"file://{store}")
    try:
        agree_across_ranks(plan_hash, "the videos still to do")
        results.put((rank, "ok"))
    except Exception as error:  # reported to the test
        results.put((rank, f"{type(error).__name__}: {error}"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("same", [True, False])
def test_ranks_that_planned_different_work_all_refuse(tmp_path, same: bool):
    """Each rank lists the folder itself: when the plans differ (the folder changed in between) every rank
    refuses before computing anything, instead of slicing different lists and skipping a video."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    hashes = ["a" * 64, "a" * 64 if same else "b" * 64]
    procs = [context.Process(target=_agree, args=(r, str(tmp_path / "store"), hashes[r], results))
             for r in range(2)]  # fmt: skip
    for proc in procs:
        proc.start()
    outcome = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
    if same:
        assert outcome == {0: "ok", 1: "ok"}
    else:
        for text in outcome.values():
            assert text.startswith("PiscesRuntimeError") and "planned different work" in text
