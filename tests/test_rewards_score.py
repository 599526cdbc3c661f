"""``score`` against the reward module called by hand, with decode workers; the worker-thread guard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from pisces_cli.stages.score import cpu_threads_beside_workers


def test_thread_guard_leaves_cores_to_workers_and_restores():
    before = torch.get_num_threads()
    cores = os.cpu_count() or 1
    try:
        torch.set_num_threads(max(2, before))
        start = torch.get_num_threads()
        with cpu_threads_beside_workers(torch.device("cpu"), 1):
            assert torch.get_num_threads() == max(1, min(start, cores - 1))
        assert torch.get_num_threads() == start
        with cpu_threads_beside_workers(torch.device("cpu"), 64):
            assert torch.get_num_threads() == 1
        with (
            cpu_threads_beside_workers(torch.device("cpu"), 0),
            cpu_threads_beside_workers(torch.device("cuda"), 4),
        ):
            assert torch.get_num_threads() == start  # no workers, or not on CPU: untouched
        with pytest.raises(RuntimeError), cpu_threads_beside_workers(torch.device("cpu"), 1):
            raise RuntimeError("boom")
        assert torch.get_num_threads() == start
    finally:
        torch.set_num_threads(before)


def test_score_with_workers_matches_reward_by_hand(tmp_path: Path):
    """Scores written by ``run_score`` (2 decode workers) equal PiscesReward on the same sampled frames."""
    from pisces_cli.artifacts import ArtifactHeader
    from pisces_cli.config import resolve_data
    from pisces_cli.encoders.registry import load_encoder
    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder
    from pisces_cli.io.preprocess import preprocess_clip
    from pisces_cli.io.video import read_clip, uniform_indices
    from pisces_cli.ot import TokenOTSettings
    from pisces_cli.ot.maps import fit_gaussian_map
    from pisces_cli.rewards import PiscesReward, load_ot_map_artifact, save_ot_map_artifact
    from pisces_cli.stages.score import run_score

    records = write_clip_folder(tmp_path / "clips", 5, seed=4, frames=16, size=64)
    encoder = load_encoder("clip", str(save_tiny_clip(tmp_path / "enc", "clip", seed=0)))
    gen = torch.Generator().manual_seed(0)
    dim = encoder.embed_dim
    tmap = fit_gaussian_map(torch.randn(40, dim, generator=gen), torch.randn(40, dim, generator=gen) + 0.5)
    header = ArtifactHeader(schema="", fingerprints={"encoder": encoder.fingerprint()})
    map_path = save_ot_map_artifact(tmp_path / "ot_map.safetensors", tmap, dim, header)
    data = {
        "output_dir": str(tmp_path / "run"),
        "runtime": {"num_workers": 2, "device": "cpu"},
        "models": {"encoder": {"backend": "clip", "path": str(tmp_path / "enc")}},
        "data": {"videos": str(tmp_path / "clips"), "num_frames": 6},
        "score": {"batch_size": 2, "bootstrap_samples": 200},
        "reward": {
            "ot_map": str(map_path),
            "weights": {"quality": 0.5, "semantic": 2.0},
            "token_ot": {"max_iter": 50},
        },
    }
    threads = torch.get_num_threads()
    summary = run_score(resolve_data(data, [], "test"), str(tmp_path / "clips"), output=str(tmp_path / "out"))
    assert torch.get_num_threads() == threads
    assert summary.scored == 5 and summary.failed == 0
    rows = [json.loads(line) for line in (tmp_path / "out/scores.jsonl").read_text().splitlines()]
    assert [r["video"] for r in rows] == [r.file for r in records]

    loaded, _ = load_ot_map_artifact(map_path, encoder_fingerprint=encoder.fingerprint(), dim=dim)
    settings = TokenOTSettings(max_iter=50)
    reward = PiscesReward(
        encoder, ot_map=loaded, weights={"quality": 0.5, "semantic": 2.0}, token_ot=settings
    )
    clips = [read_clip(tmp_path / "clips" / r.file, lambda n, f: uniform_indices(n, 6))[0] for r in records]
    prep = encoder.preprocessing
    # the loader's preprocessing of decoded uint8 frames (it clamps after the bicubic resize, unlike
    # preprocess_pixels on float pixels, so the two differ slightly at hard edges)
    batch = torch.stack([preprocess_clip(c, size=prep.size, mean=prep.mean, std=prep.std,
                                         interpolation=prep.interpolation) for c in clips])  # fmt: skip
    with torch.no_grad():
        expected = reward.from_preprocessed(batch, [r.prompt for r in records]).columns()
    for column in ("quality", "quality_no_ot", "semantic", "total"):
        got = torch.tensor([r[column] for r in rows])
        torch.testing.assert_close(got, expected[column].float(), atol=1e-5, rtol=0, msg=column)
    assert json.loads((tmp_path / "out/summary.json").read_text())["weights"] == {
        "quality": 0.5,
        "semantic": 2.0,
    }
