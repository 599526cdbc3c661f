"""Neural OT training: recovery of a known Monge map, exact resume, checkpoints, DDP (2-process gloo)."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp

from pisces_cli.errors import UsageError
from pisces_cli.ot.maps import (
    NeuralOTConfig,
    NeuralOTTrainer,
    fit_neural_map,
    load_last_state,
    load_map,
)
from pisces_cli.ot.maps.state_io import read_safetensors


def _linear_problem(dim: int, count: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    orthogonal, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
    matrix = orthogonal @ torch.diag(torch.linspace(0.5, 2.0, dim)) @ orthogonal.T  # symmetric PD
    shift = 0.5 * torch.randn(dim, generator=generator)
    x = torch.randn(count, dim, generator=generator)
    y = torch.randn(count, dim, generator=generator) @ matrix + shift  # unpaired samples of N(b, A²)
    return x, y, matrix, shift


def _tiny_config(**overrides) -> NeuralOTConfig:
    values = dict(
        hidden_dim=16, potential_hidden_dim=16, lr_map=1e-3, lr_potential=1e-3, t_iters=2, max_steps=12,
        batch_size=32, normalization="l2", knn_k=3, seed=3,
    )  # fmt: skip
    values.update(overrides)
    return NeuralOTConfig(**values)


def _clouds(seed: int = 0, count: int = 64, dim: int = 6):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, dim, generator=generator)
    y = x @ torch.randn(dim, dim, generator=generator) + 0.1 * torch.randn(count, dim, generator=generator)
    return x, y


def test_otmap_neural_recovers_linear_monge_map():
    """x ~ N(0, I), y ~ N(b, A²) with A SPD: the quadratic-cost Monge map is T*(x) = A x + b.

    Two errors on fresh x: the L2-UVP of Korotin et al. (2021), mean ‖T(x) − T*(x)‖² / Var(y); and the
    relative error of the affine map the network implements (least-squares fit of T(x) on [x, 1]) against
    [A; b] — the same "recovered map" measure as the Gaussian test. Pointwise RMS error is ~0.14 here:
    the minimax training leaves small nonlinear wiggles around the recovered affine map.
    """
    dim = 8
    x, y, matrix, shift = _linear_problem(dim, 20_000, seed=0)
    config = NeuralOTConfig(
        hidden_dim=64, potential_hidden_dim=64, lr_map=3e-3, lr_potential=3e-3, t_iters=3, max_steps=360,
        batch_size=512, normalization="none", seed=0,
    )  # fmt: skip
    trainer = NeuralOTTrainer(x, y, config)
    initial_map = trainer.transport_map()
    for _ in range(config.max_steps):
        trainer.train_step()
    x_test = torch.randn(4000, dim, generator=torch.Generator().manual_seed(1))
    target = x_test @ matrix + shift
    variance = (target - target.mean(0)).pow(2).sum(1).mean()

    def uvp(transport) -> float:
        return float((transport(x_test) - target).pow(2).sum(1).mean() / variance)

    assert uvp(initial_map) > 0.5  # the untrained map is far off
    final_uvp = uvp(trainer.transport_map())
    print(f"neural L2-UVP {final_uvp:.4f}, unsquared relative error {final_uvp**0.5:.4f}")
    assert final_uvp < 5e-2
    mapped = trainer.transport_map()(x_test)
    design = torch.cat([x_test, torch.ones(len(x_test), 1)], dim=1)
    affine_fit = torch.linalg.lstsq(design, mapped).solution  # [D + 1, D]: rows of A (x @ A) then b
    affine_true = torch.cat([matrix, shift[None]], dim=0)
    relative = float((affine_fit - affine_true).norm() / affine_true.norm())
    print(f"neural recovered affine map relative error {relative:.4f}")
    assert relative < 5e-2


def test_otmap_neural_loss_definitions_match_hand_computation():
    x, y = _clouds()
    config = _tiny_config(t_iters=1, grad_clip=1e9, weight_decay=0.0)
    trainer = NeuralOTTrainer(x, y, config)
    x_batch = trainer._draw(trainer.x_train, 0)
    with torch.no_grad():
        transported = trainer.map_net(x_batch)
        expected_map_loss = ((transported - x_batch) ** 2).mean() - trainer.potential_net(transported).mean()
    losses = trainer.train_step()
    assert losses["loss_map"] == pytest.approx(float(expected_map_loss), rel=1e-5)
    assert losses["lr_map"] == pytest.approx(1e-3)
    torch.testing.assert_close(trainer.x_train, x / x.norm(dim=1, keepdim=True))  # "l2" applied at fit time


def test_otmap_cosine_schedule_reaches_eta_min():
    x, y = _clouds()
    trainer = NeuralOTTrainer(x, y, _tiny_config(max_steps=4, eta_min_ratio=0.05))
    for _ in range(4):
        trainer.train_step()
    assert trainer.map_opt.param_groups[0]["lr"] == pytest.approx(0.05 * 1e-3)
    assert trainer.potential_opt.param_groups[0]["lr"] == pytest.approx(0.05 * 1e-3)


def test_otmap_fit_progress_checkpoints_and_history(tmp_path):
    x, y = _clouds(0)
    x_val, y_val = _clouds(1, count=20)
    calls = []
    result = fit_neural_map(
        x, y, x_val, y_val, _tiny_config(max_steps=10), tmp_path / "state", eval_every=4,
        on_progress=lambda step, losses, metrics: calls.append((step, sorted(losses), metrics)),
    )  # fmt: skip
    assert [call[0] for call in calls] == list(range(1, 11))
    assert [call[0] for call in calls if call[2] is not None] == [4, 8, 10]
    assert calls[0][1] == ["loss_map", "loss_potential", "lr_map", "lr_potential", "transport_cost"]
    assert [entry["step"] for entry in result.history] == [4, 8, 10]
    assert set(result.metrics) == {"mknn_before", "mknn_after", "spearman"}
    assert result.step == 10 and result.start_step == 0
    for name in ("mknn_after", "spearman"):
        best = result.best[name]
        assert best["value"] == max(entry["metrics"][name] for entry in result.history)
        saved_metrics = json.loads((tmp_path / "state" / f"best_{name}" / "metrics.json").read_text())
        assert saved_metrics["step"] == best["step"]
        assert load_map(best["path"]).method == "neural"
    last_map = load_map(tmp_path / "state" / "last")
    assert last_map.normalization == "l2"
    assert torch.equal(last_map.apply(x_val), result.transport_map.apply(x_val))
    tensors, meta = load_last_state(tmp_path / "state")
    assert meta["step"] == 10 and len(list((tmp_path / "state" / "last").glob("trainer-*"))) == 1
    assert any(name.startswith("map_opt.") for name in tensors)


def _final_tensors(state_dir) -> dict[str, torch.Tensor]:
    tensors, _ = load_last_state(state_dir)
    return tensors


def test_otmap_resume_matches_uninterrupted_run(tmp_path):
    x, y = _clouds(0)
    x_val, y_val = _clouds(1, count=20)
    config = _tiny_config(max_steps=12)
    full = fit_neural_map(x, y, x_val, y_val, config, tmp_path / "full", eval_every=4)

    class Interrupt(Exception):
        pass

    def stop_at_step_7(step, losses, metrics):
        if step == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit_neural_map(
            x, y, x_val, y_val, config, tmp_path / "resumed", eval_every=4, on_progress=stop_at_step_7
        )
    assert load_last_state(tmp_path / "resumed")[1]["step"] == 4
    resumed = fit_neural_map(x, y, x_val, y_val, config, tmp_path / "resumed", eval_every=4)
    assert resumed.start_step == 4 and resumed.step == 12
    assert resumed.history == full.history
    assert resumed.best.keys() == full.best.keys()
    full_tensors, resumed_tensors = _final_tensors(tmp_path / "full"), _final_tensors(tmp_path / "resumed")
    assert full_tensors.keys() == resumed_tensors.keys()
    for name, tensor in full_tensors.items():
        if name != "rng.torch":
            assert torch.equal(tensor, resumed_tensors[name]), name


def test_otmap_resume_under_another_number_of_processes_is_refused(tmp_path):
    """Each process draws batch_size pairs per step: a state trained by 2 processes continued by 1 would
    average its remaining steps over half the batch without a word; a finished state is only written out."""
    import json

    x, y = _clouds(0)
    x_val, y_val = _clouds(1, count=20)
    config = _tiny_config(max_steps=8)

    def stop_at_step_5(step, losses, metrics):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_neural_map(x, y, x_val, y_val, config, tmp_path / "s", eval_every=4, on_progress=stop_at_step_5)
    state = tmp_path / "s" / "last" / "state.json"
    meta = json.loads(state.read_text())
    assert meta["step"] == 4 and meta["world_size"] == 1
    state.write_text(json.dumps({**meta, "world_size": 2}))  # as a 2-process torchrun run leaves it
    with pytest.raises(UsageError, match=r"trained by 2 process\(es\).*this run has 1.*--nproc_per_node"):
        fit_neural_map(x, y, x_val, y_val, config, tmp_path / "s", eval_every=4)
    done = fit_neural_map(x, y, x_val, y_val, _tiny_config(max_steps=4), tmp_path / "d", eval_every=4)
    state = tmp_path / "d" / "last" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "world_size": 2}))
    again = fit_neural_map(x, y, x_val, y_val, _tiny_config(max_steps=4), tmp_path / "d", eval_every=4)
    assert again.start_step == again.step == done.step == 4


def test_otmap_resume_false_restarts_and_config_mismatch_is_refused(tmp_path):
    x, y = _clouds(0)
    x_val, y_val = _clouds(1, count=20)
    fit_neural_map(x, y, x_val, y_val, _tiny_config(max_steps=4), tmp_path / "s", eval_every=2)
    again = fit_neural_map(x, y, x_val, y_val, _tiny_config(max_steps=4), tmp_path / "s", eval_every=2)
    assert again.start_step == 4 and again.step == 4
    fresh = fit_neural_map(
        x, y, x_val, y_val, _tiny_config(max_steps=4), tmp_path / "s", eval_every=2, resume=False
    )
    assert fresh.start_step == 0
    with pytest.raises(UsageError, match="lr_map: saved 0.001 vs now 0.002"):
        fit_neural_map(x, y, x_val, y_val, _tiny_config(max_steps=4, lr_map=2e-3), tmp_path / "s")


def test_otmap_config_validation():
    with pytest.raises(UsageError, match="t_iters"):
        NeuralOTConfig(t_iters=0).validate()
    with pytest.raises(UsageError, match="normalization"):
        NeuralOTConfig(normalization="raw").validate()
    with pytest.raises(UsageError, match="unknown neural OT config keys \\['lr'\\]"):
        NeuralOTConfig.from_dict({"lr": 1e-3})
    assert NeuralOTConfig.from_dict(NeuralOTConfig().to_dict()) == NeuralOTConfig()
    x, y = _clouds(0)
    with pytest.raises(UsageError, match="validation"):
        fit_neural_map(x, y, x[:5], y[:4], _tiny_config(), "unused")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, state_dir: str, out_dir: str) -> None:
    import torch.distributed as dist

    from pisces_cli.atomic import atomic_write_json, atomic_write_safetensors

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        x, y = _clouds(0)
        x_val, y_val = _clouds(1, count=20)
        seen_batches = []
        original_draw = NeuralOTTrainer._draw

        def recording_draw(self, cloud, phase):
            batch = original_draw(self, cloud, phase)
            seen_batches.append(batch)
            return batch

        NeuralOTTrainer._draw = recording_draw
        result = fit_neural_map(x, y, x_val, y_val, _tiny_config(max_steps=4), state_dir, eval_every=2)
        NeuralOTTrainer._draw = original_draw
        atomic_write_safetensors(
            f"{out_dir}/rank{rank}.safetensors",
            {**result.transport_map.state_dict(), "first_batch": seen_batches[0]},
        )
        atomic_write_json(
            f"{out_dir}/rank{rank}.json", {"metrics": result.metrics, "history": len(result.history)}
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_otmap_ddp_two_process_gloo(tmp_path):
    world_size = 2
    mp.spawn(
        _ddp_worker,
        args=(world_size, _free_port(), str(tmp_path / "state"), str(tmp_path)),
        nprocs=world_size,
    )
    rank0, rank1 = (read_safetensors(tmp_path / f"rank{rank}.safetensors") for rank in range(world_size))
    assert not torch.equal(rank0.pop("first_batch"), rank1.pop("first_batch"))  # seed + rank
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), name  # DDP kept the replicas identical
    info0, info1 = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(world_size))
    assert info0["history"] == 2 and set(info0["metrics"]) == {"mknn_before", "mknn_after", "spearman"}
    assert info1 == {"metrics": {}, "history": 0}
    _, meta = load_last_state(tmp_path / "state")
    assert meta["step"] == 4 and meta["world_size"] == 2
    single = fit_neural_map(
        *_clouds(0), *_clouds(1, count=20), _tiny_config(max_steps=4), tmp_path / "single"
    )
    assert not torch.equal(single.transport_map.state_dict()["net.0.weight"], rank0["net.0.weight"])
