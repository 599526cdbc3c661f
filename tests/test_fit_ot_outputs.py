"""fit-ot: one fit per output folder (refuse or --force replace, never a mixed folder) and the selection split
that chooses the shipped map kept apart from the report split whose metrics are reported."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pisces_cli.artifacts import ArtifactHeader, ShardedArtifactWriter, read_header
from pisces_cli.cli.main import main
from pisces_cli.errors import UsageError
from pisces_cli.stages.fit_ot import FIT_OUTPUTS, split_pairs

PAIRS, DIM = 40, 8


def write_embeddings(folder: Path, seed: int = 0) -> list[str]:
    """A ``pisces.embeddings`` artifact of ``PAIRS`` correlated text/video pairs (what ``embed`` writes)."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.randn(PAIRS, DIM, generator=generator)
    video = text @ torch.randn(DIM, DIM, generator=generator) * 0.5 + 0.3 * torch.randn(
        PAIRS, DIM, generator=generator
    )
    keys = [f"clip_{i:03d}.mp4" for i in range(PAIRS)]
    header = ArtifactHeader(
        schema="pisces.embeddings",
        stage="embed",
        fingerprints={"encoder": {"backend": "clip", "model": "tiny"}},
    )
    writer = ShardedArtifactWriter(folder, "embeddings", header)
    writer.write_shard(0, {"text_cls": text, "video_cls": video}, keys)
    writer.finalize()
    return keys


@pytest.fixture()
def setup(tmp_path: Path) -> dict:
    keys = write_embeddings(tmp_path / "emb")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path}/run\nseed: 3\nruntime: {{device: cpu}}\n"
        f"fit_ot:\n  embeddings: {tmp_path}/emb\n  output: {tmp_path}/ot\n  val_fraction: 0.3\n"
        "  neural: {hidden_dim: 16, max_steps: 6, eval_every: 2, batch_size: 8, t_iters: 2, knn_k: 3}\n"
    )
    return {"recipe": str(recipe), "out": tmp_path / "ot", "keys": keys, "root": tmp_path}


def outputs(folder: Path) -> set[str]:
    return {name for name in FIT_OUTPUTS if (folder / name).exists()}


def test_split_pairs_holds_out_two_disjoint_splits_and_keeps_the_training_rows():
    splits = split_pairs(100, 0.2, 1024, seed=7)
    train, selection, report = (
        set(index.tolist()) for index in (splits.train, splits.selection, splits.report)
    )
    assert (len(train), len(selection), len(report)) == (80, 10, 10)
    assert train | selection | report == set(range(100))
    assert not (train & selection or train & report or selection & report)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(7))
    assert torch.equal(splits.train, order[20:])  # the same training rows as one held-out set of 20 had
    again = split_pairs(100, 0.2, 1024, seed=7)
    assert torch.equal(again.selection, splits.selection) and torch.equal(again.report, splits.report)
    assert len(split_pairs(10_000, 0.5, 64, seed=0).report) == 32  # val_max caps both held-out splits
    small = split_pairs(8, 0.01, 1024, seed=0)
    assert (len(small.train), len(small.selection), len(small.report)) == (2, 3, 3)
    with pytest.raises(UsageError, match="at least 8 embedded pairs"):
        split_pairs(7, 0.5, 1024, seed=0)
    with pytest.raises(UsageError, match="val_max"):
        split_pairs(100, 0.2, 4, seed=0)


def test_reported_metrics_come_from_the_report_split_not_the_one_that_selected(setup):
    from pisces_cli.ot.maps import load_map, map_metrics, normalize_embeddings
    from pisces_cli.rewards.ot_map_artifact import load_ot_map_artifact

    assert main(["fit-ot", "-r", setup["recipe"]]) == 0
    out = setup["out"]
    shipped, header = load_ot_map_artifact(out / "ot_map.safetensors")
    splits = header.extra["splits"]
    assert (splits["train"], splits["selection"], splits["report"], splits["seed"]) == (28, 6, 6, 3)
    assert "selection split" in splits["rule"] and "report split" in splits["rule"]
    assert header.extra["selected_by"] == "mknn_after"
    assert (
        set(header.extra["selection_metrics"])
        == set(header.metrics)
        == {"mknn_before", "mknn_after", "spearman"}
    )

    # recompute both splits' metrics by hand from the embeddings and the shipped map
    parts = split_pairs(PAIRS, 0.3, 1024, seed=3)
    from pisces_cli.artifacts import load_sharded

    tensors, _, _ = load_sharded(setup["root"] / "emb", expect_schema="pisces.embeddings")
    x, y = tensors["text_cls"], tensors["video_cls"]

    def on(index: torch.Tensor) -> dict[str, float]:
        xs, ys = x[index], y[index]
        return map_metrics(
            normalize_embeddings(xs, "l2"), normalize_embeddings(ys, "l2"), shipped.apply(xs), k=3
        )

    assert header.metrics == pytest.approx(on(parts.report))
    assert header.extra["selection_metrics"] == pytest.approx(on(parts.selection))
    # the best-by-mutual-kNN checkpoint was chosen on the selection split: it is the best there
    state = out / "state" / "best_mknn_after"
    best = load_map(state)
    assert torch.equal(best.apply(x[:3]), shipped.apply(x[:3]))
    history = (out / "report.md").read_text()
    assert "6 select the checkpoint, 6 report the metrics" in history
    assert "Training curves (metrics on the selection split)" in history


def test_a_fit_of_another_method_is_refused_then_replaces_the_folder_with_force(setup, capsys):
    out = setup["out"]
    assert main(["fit-ot", "-r", setup["recipe"]]) == 0
    assert {"state", "ot_map_last.safetensors", "ot_map_best_mknn.safetensors", "curves.png"} <= outputs(out)
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()

    assert main(["fit-ot", "-r", setup["recipe"], "fit_ot.method=gaussian"]) == 2
    err = capsys.readouterr().err
    assert "holds the outputs of a neural fit" in err and "--force" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched

    assert main(["fit-ot", "-r", setup["recipe"], "fit_ot.method=gaussian", "--force"]) == 0
    assert outputs(out) == {"ot_map.safetensors", "report.md", "distances.png"}
    assert (out / "notes.txt").read_text() == "mine"  # not a fit-ot output: left alone
    assert read_header(out / "ot_map.safetensors").extra["method"] == "gaussian"

    # the same method again needs no --force; identity over gaussian does
    assert main(["fit-ot", "-r", setup["recipe"], "fit_ot.method=gaussian"]) == 0
    assert main(["fit-ot", "-r", setup["recipe"], "fit_ot.method=identity"]) == 2
    assert main(["fit-ot", "-r", setup["recipe"], "fit_ot.method=identity", "--force"]) == 0
    assert outputs(out) == {"ot_map.safetensors", "report.md", "distances.png"}


def test_an_interrupted_neural_fit_counts_as_a_neural_folder(setup, capsys):
    out = setup["out"]
    (out / "state" / "last").mkdir(parents=True)
    (out / "state" / "last" / "state.json").write_text("{}")
    assert main(["fit-ot", "-r", setup["recipe"], "fit_ot.method=gaussian"]) == 2
    assert "a neural fit (state)" in capsys.readouterr().err
    assert main(["fit-ot", "-r", setup["recipe"], "fit_ot.method=gaussian", "--force"]) == 0
    assert not (out / "state").exists()


def test_resuming_a_neural_fit_on_other_rows_is_refused(setup, capsys):
    assert main(["fit-ot", "-r", setup["recipe"], "fit_ot.neural.max_steps=4"]) == 0
    # another seed picks other train / selection rows: the saved state does not belong to them
    assert main(["fit-ot", "-r", setup["recipe"], "fit_ot.neural.max_steps=6", "seed=4"]) == 2
    assert "trained on other data or splits" in capsys.readouterr().err
    assert main(["fit-ot", "-r", setup["recipe"], "fit_ot.neural.max_steps=6", "seed=4", "--fresh"]) == 0
    assert (
        main(["fit-ot", "-r", setup["recipe"], "fit_ot.neural.max_steps=6", "seed=4"]) == 0
    )  # same rows: resumes


@pytest.mark.parametrize("method", ["neural", "gaussian"])
def test_a_rerun_with_nothing_changed_keeps_the_map_bytes_and_says_nothing_to_do(setup, method, capsys):
    """A no-op re-run must not rewrite ot_map.safetensors: score/eval folders are keyed on its hash."""
    map_path = setup["out"] / "ot_map.safetensors"

    def fit(*extra: str) -> tuple[int, str]:
        code = main(["fit-ot", "-r", setup["recipe"], f"fit_ot.method={method}", *extra])
        return code, capsys.readouterr().out

    assert fit()[0] == 0
    first = map_path.read_bytes()
    code, out = fit()
    assert code == 0 and "nothing to do" in out
    assert map_path.read_bytes() == first
    code, out = fit("fit_ot.val_fraction=0.4", "--fresh")  # other settings: fit again
    assert code == 0 and "nothing to do" not in out and map_path.read_bytes() != first
    changed = map_path.read_bytes()
    assert "nothing to do" in fit("fit_ot.val_fraction=0.4")[1] and map_path.read_bytes() == changed
    write_embeddings(setup["root"] / "emb", seed=1)  # new embeddings, same settings: never "nothing to do"
    code, out = fit("fit_ot.val_fraction=0.4")
    assert "nothing to do" not in out
    assert (code == 0 and map_path.read_bytes() != changed) or (method == "neural" and code == 2)
    assert fit("fit_ot.val_fraction=0.4", "--fresh")[0] == 0 and map_path.read_bytes() != changed


def test_changed_neural_settings_name_the_way_out(setup, capsys):
    assert main(["fit-ot", "-r", setup["recipe"]]) == 0
    (setup["out"] / "ot_map.safetensors").unlink()  # an interrupted fit: only the training state is left
    capsys.readouterr()
    assert main(["fit-ot", "-r", setup["recipe"], "fit_ot.neural.max_steps=8"]) == 2
    assert "pass --fresh" in capsys.readouterr().err


def test_splits_too_small_for_mutual_knn_are_said_and_the_shipped_step_is_recorded(setup, capsys):
    """6 pairs per split with knn_k = 5: every other pair is a neighbour, so mknn is 1.000 for any map and
    select: mknn_after ties on every checkpoint (the first evaluated one ships). It printed 1.000 silently and
    the header's step named the last training step, not the shipped checkpoint's."""
    from pisces_cli.stages.fit_ot import split_pairs, trivial_knn_notes

    recipe = Path(setup["recipe"])
    recipe.write_text(recipe.read_text().replace("knn_k: 3", "knn_k: 5"))
    capsys.readouterr()
    assert main(["fit-ot", "-r", str(recipe)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    header = read_header(setup["out"] / "ot_map.safetensors")
    assert header.metrics["mknn_before"] == header.metrics["mknn_after"] == 1.0
    assert "on the report split are 1 for any map" in printed and "on the selection split" in printed
    assert "the first evaluated one ships" in printed and "hold out at least 7 pairs" in printed
    assert (
        header.extra["selected_step"] == 2 and header.extra["step"] == 6
    )  # every checkpoint ties: step 2 ships
    report = (setup["out"] / "report.md").read_text()
    assert "checkpoint of step 2 (chosen by: mknn_after)" in report and "1 for any map" in report
    # a no-op re-run says it again (from the map's header)
    assert main(["fit-ot", "-r", str(recipe)]) == 0
    assert "on the report split are 1 for any map" in " ".join(capsys.readouterr().out.split())
    # k below N − 1 tells maps apart: no note
    assert trivial_knn_notes(split_pairs(PAIRS, 0.3, 1024, seed=3), 4, "mknn_after") == []


@pytest.mark.parametrize("method", ["gaussian", "identity", "neural"])
def test_a_second_rank_writes_and_prints_nothing(setup, monkeypatch, capsys, method: str):
    """Under torchrun every rank fits the same map; rank 0 alone writes the map, the report and the table
    (every rank wrote ot_map.safetensors and report.md and printed the table once per rank)."""
    import pisces_cli.runtime as runtime

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(runtime, "init_distributed", lambda timeout_s=None: runtime.dist_context())
    assert main(["fit-ot", "-r", setup["recipe"], f"fit_ot.method={method}"]) == 0
    assert not setup["out"].exists() or outputs(setup["out"]) <= {"state"}
    assert capsys.readouterr().out == ""
