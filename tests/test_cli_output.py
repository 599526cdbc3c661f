"""Console output: --version, flag help, and tables / progress lines that never cut a number or a path."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from pisces_cli import __version__
from pisces_cli.cli import stage_commands
from pisces_cli.cli.main import main

LONG_PATH = "/data/experiments/2026-05-01/a-rather-long-run-name/pisces-scores/with/many/levels"


def console_at(width: int, *, terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    console = Console(
        file=buffer, width=width, force_terminal=terminal, color_system=None, soft_wrap=not terminal
    )
    return console, buffer  # soft_wrap off a terminal, as the CLI console (cli/common.py)


def test_version_option_and_env_show_the_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pisces {__version__}"
    assert main(["-V"]) == 0
    assert capsys.readouterr().out.strip() == f"pisces {__version__}"
    assert main(["env"]) == 0
    assert re.search(rf"^pisces\s+{re.escape(__version__)}$", capsys.readouterr().out, re.M)


def test_version_is_one_source_for_the_package_metadata():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "version" not in config["project"] and config["project"]["dynamic"] == ["version"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pisces_cli.__version__"}


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (["eval", "aggregate", "--help"], ["--json"]),
        (["score", "--help"], ["--force", "--report"]),
        (["fit-ot", "--help"], ["--fresh"]),
        (["--help"], ["--version"]),
    ],
)
def test_boolean_flags_show_no_value_type(command, flags, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "<bool>" not in out
    for flag in flags:
        assert flag in out
    assert "<int>" in out or "<str>" in out or command == ["--help"]  # value options keep their type


def every_command_path() -> list[list[str]]:
    """``[]``, ``["score"]``, ``["eval", "compare"]``, … for every command and group of the CLI."""
    import typer.main

    from pisces_cli.cli.main import app

    paths: list[list[str]] = []

    def walk(command, path: list[str]) -> None:
        paths.append(path)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def option_names(path: list[str]) -> list[str]:
    import typer.main

    from pisces_cli.cli.main import app

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return [
        name
        for param in command.params
        for name in (*param.opts, *param.secondary_opts)
        if name.startswith("-")
    ]


@pytest.mark.parametrize("columns", [40, 60, 80, 120])
def test_help_of_every_command_keeps_option_names_and_words_whole(columns, capsys, monkeypatch):
    """``--help`` cuts no option name, default or path with an ellipsis, on any terminal width."""
    monkeypatch.setenv("COLUMNS", str(columns))
    paths = every_command_path()
    assert ["score"] in paths and ["eval", "compare"] in paths and ["world", "run"] in paths
    for path in paths:
        assert main([*path, "--help"]) == 0, path
        out = capsys.readouterr().out
        assert "…" not in out, (path, out)
        assert "<bool>" not in out and "\\[" not in out, (path, out)
        for name in option_names(path):
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", out), (path, name, out)


def score_summary() -> SimpleNamespace:
    stats = {
        name: {"mean": -0.30123456, "ci_low": -0.3456789, "ci_high": -0.2567891, "n": 1234}
        for name in ("quality", "semantic", "quality_no_ot", "semantic_no_ot", "total")
    }
    return SimpleNamespace(scored=1234, failed=0, skipped=0, stats=stats, output=Path(LONG_PATH))


def comparison_summary() -> SimpleNamespace:
    metric = SimpleNamespace(
        metric="subject_consistency_with_a_long_name",
        n=128,
        mean_a=0.912345,
        mean_b=0.923456,
        diff=0.011111,
        ci_low=-0.004321,
        ci_high=0.026543,
        win_rate=0.5625,
    )
    comparison = SimpleNamespace(
        label_a="runs/videos/base-model-with-a-long-name",
        label_b="runs/videos/finetuned-model-with-a-long-name",
        item_scores={"x": 1},
        metrics=[metric],
    )
    return SimpleNamespace(comparison=comparison)


@pytest.mark.parametrize("terminal", [False, True])
def test_tables_at_80_columns_never_cut_a_number_or_a_path(monkeypatch, terminal):
    console, buffer = console_at(80, terminal=terminal)
    monkeypatch.setattr(stage_commands, "console", console)
    stage_commands._print_score_table(score_summary())
    stage_commands.print_comparison(comparison_summary())
    stage_commands._print_metrics(
        "fit-ot (neural)", {"mknn_before_with_a_long_name": 0.65123, "spearman": -0.4201}
    )
    text = buffer.getvalue()
    assert "…" not in text
    for number in (
        "-0.3012",
        "[-0.3457, -0.2568]",
        "1234",
        "+0.0111",
        "[-0.0043, +0.0265]",
        "0.562",
        "-0.4201",
    ):
        assert number in text, number
    flat = text.replace("\n", "").replace("│", "").replace(" ", "")
    assert LONG_PATH.replace(" ", "") in flat
    if not terminal:  # a log file: every row on one line, the path whole
        assert LONG_PATH in text


def test_finetune_table_at_80_columns_and_no_empty_sanity_row(tmp_path):
    from pisces_cli.training.metrics_log import MetricsLogger

    console, buffer = console_at(80, terminal=False)
    logger = MetricsLogger(tmp_path / "logs", report_to=[], console=console)
    logger.log(0, {"sanity_max_abs_ratio_dev": 0.0, "sanity_max_mean_dev": 0.0})
    logger.start_live()
    metrics = {
        "loss": -0.30123456,
        "loss_cd": 0.0123456,
        "reward_quality_mean": 0.5123456,
        "reward_semantic_mean": 0.7123456,
        "grad_norm": 12.3456,
        "lr": 1e-6,
        "step_time_s": 3.14159,
        "peak_memory_gb": 71.234,
    }
    logger.log(1, metrics)
    logger.log(2, {**metrics, "loss": -0.2987654})
    logger.close()
    text = buffer.getvalue()
    assert "…" not in text
    assert "step 0: sanity_max_abs_ratio_dev=0" in text
    for value in ("-0.3012", "-0.2988", "0.01235", "0.5123", "12.35", "1e-06", "3.142", "71.23"):
        assert value in text, value
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["1", "2"]  # no row for step 0


def test_finetune_live_view_falls_back_to_lines_on_a_narrow_terminal(tmp_path):
    from pisces_cli.training.metrics_log import MetricsLogger, _LiveView

    logger = MetricsLogger(tmp_path / "logs", report_to=[], console=None)
    logger.rows = [(3, {"loss": -0.30123456, "grad_norm": 1.5, "lr": 2e-5, "step_time_s": 0.25})]
    narrow, buffer = console_at(30, terminal=True)
    narrow.print(_LiveView(logger))
    assert "…" not in buffer.getvalue()
    assert "step 3: loss=-0.3012" in buffer.getvalue().replace("\n", "")
    wide, buffer = console_at(120, terminal=True)
    wide.print(_LiveView(logger))
    assert "┃ step ┃" in buffer.getvalue() and "-0.3012" in buffer.getvalue()
    logger.close()


def test_progress_bar_not_on_a_terminal_prints_one_whole_line():
    from pisces_cli.stages.progress import progress_bar

    console, buffer = console_at(80, terminal=False)
    with progress_bar(console, "generate", total=12) as advance:
        for _ in range(12):
            advance(1, loss_T=-0.30123456, path=LONG_PATH)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1
    assert re.match(
        r"generate: 12/12 in \d+:\d\d:\d\d  loss_T=-0\.3012  path=" + re.escape(LONG_PATH), lines[0]
    )


def test_progress_bar_on_an_80_column_terminal_keeps_counts_and_times_whole():
    from pisces_cli.stages.progress import progress_bar

    console, buffer = console_at(80, terminal=True)
    with progress_bar(console, "fit-ot (neural)", total=2000) as advance:
        advance(2000, loss_T=-0.30123456, loss_f=0.987654, mknn_after=0.51234, spearman=0.25678)
    last = buffer.getvalue().rsplit("\r", 1)[-1]
    assert "…" not in last
    assert re.search(r"2000/2000 \d+:\d\d:\d\d \d+:\d\d:\d\d", last)
    assert "loss_T=-0.3012" in last and "spearman=0.2568" in last


def test_cli_log_output_keeps_a_path_on_one_line(tmp_path):
    """Not on a terminal, the CLI's console does not break a long message at 80 columns."""
    code = (
        "from pisces_cli.cli.common import console; "
        f"console.print('[green]wrote[/] ' + {LONG_PATH + '/' + 'x' * 40!r} + '/scores.jsonl, scores.csv')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and LONG_PATH in proc.stdout
