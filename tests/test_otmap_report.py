"""Fit report: report.md plus legible PNG plots."""

from __future__ import annotations

import torch

from pisces_cli.ot.maps import IdentityMap, fit_neural_map, map_metrics, write_fit_report
from pisces_cli.ot.maps.neural import NeuralOTConfig


def test_otmap_report_writes_markdown_and_plots(tmp_path):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(80, 6, generator=generator)
    y = torch.tanh(x @ torch.randn(6, 6, generator=generator))
    config = NeuralOTConfig(hidden_dim=16, potential_hidden_dim=16, lr_map=1e-3, lr_potential=1e-3, t_iters=2,
                            max_steps=6, batch_size=32, knn_k=3)  # fmt: skip
    result = fit_neural_map(x[:60], y[:60], x[60:], y[60:], config, tmp_path / "state", eval_every=2)
    x_val, y_val = (torch.nn.functional.normalize(cloud[60:], dim=1) for cloud in (x, y))
    tx_val = result.transport_map(x_val)
    report = write_fit_report(tmp_path / "report", result.history, x_val, y_val, tx_val, result.metrics)
    text = report.read_text()
    assert "![curves](curves.png)" in text and "![distances](distances.png)" in text
    assert f"| mknn_after | {result.metrics['mknn_after']:.4f} |" in text
    for name in ("curves.png", "distances.png"):
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_otmap_report_without_history_skips_curves(tmp_path):
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(1))
    tx = IdentityMap("none")(x)
    report = write_fit_report(tmp_path, [], x, x + 0.1, tx, map_metrics(x, x + 0.1, tx, k=3))
    assert not (tmp_path / "curves.png").exists()
    assert (tmp_path / "distances.png").exists()
    assert "| X–X | " in report.read_text()
