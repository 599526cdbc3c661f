"""Clean interrupts (Ctrl-C: one line, exit 130, state kept), --output naming a file, truncated adapters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pisces_cli.cli.main import main

REPO = Path(__file__).resolve().parents[1]

SLOW_SCORE = """
import sys, time
from pisces_cli.io import dataset
real = dataset.read_clip
def slow(*args, **kwargs):
    time.sleep(0.2)
    return real(*args, **kwargs)
dataset.read_clip = slow
from pisces_cli.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from pisces_cli.encoders.tiny_clip import save_tiny_clip
    from pisces_cli.fixtures import write_clip_folder

    root = tmp_path_factory.mktemp("interrupts")
    write_clip_folder(root / "clips", 24, seed=2, frames=8, size=32)
    save_tiny_clip(root / "enc", "clip", seed=0)
    (root / "r.yaml").write_text(
        f"""
output_dir: {root}/run
runtime: {{num_workers: 2}}
models: {{encoder: {{backend: clip, path: {root}/enc}}}}
data: {{num_frames: 4}}
score: {{batch_size: 2, bootstrap_samples: 50}}
reward: {{ot_map: null, token_ot: {{max_iter: 20}}}}
"""
    )
    return root


def _session_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_during_score_prints_one_line_exits_130_and_resumes(world: Path, tmp_path: Path):
    script = tmp_path / "slow_score.py"
    script.write_text(SLOW_SCORE)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    argv = ["score", str(world / "clips"), "-r", str(world / "r.yaml"), "-o", str(out)]
    process = subprocess.Popen(
        [sys.executable, str(script), *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: SIGINT reaches it and its workers, as Ctrl-C does
    )
    scores = out / "scores.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if scores.is_file() and len(scores.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    os.killpg(process.pid, signal.SIGINT)
    _stdout, stderr = process.communicate(timeout=120)
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert process.returncode == 130
    assert lines == ["interrupted: finished work is saved; run the same command again to resume"]
    for _ in range(100):  # the decode workers went with it
        if not _session_alive(process.pid):
            break
        time.sleep(0.05)
    assert not _session_alive(process.pid)
    kept = [json.loads(line) for line in scores.read_text().splitlines() if line.strip()]
    assert len(kept) >= 4 and all(row["error"] is None for row in kept)
    # the same command resumes: the rows already there are kept, the rest scored
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 24 and summary["skipped_already_scored"] >= 4


@pytest.mark.parametrize("command", ["score", "eval", "embed"])
def test_output_naming_a_file_is_a_usage_error(world: Path, tmp_path: Path, command: str, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder\n")
    argv = {
        "score": ["score", str(world / "clips"), "-r", str(world / "r.yaml"), "-o", str(blocker)],
        "eval": ["eval", str(world / "clips"), "-r", str(world / "r.yaml"), "-o", str(blocker / "sub")],
        "embed": ["embed", "-r", str(world / "r.yaml"), f"data.videos={world / 'clips'}", "-o", str(blocker)],
    }[command]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{blocker} is a file, but pisces needs a folder there" in err
    assert "FileExistsError" not in err and "Traceback" not in err
    assert blocker.read_text() == "not a folder\n"


def test_truncated_adapter_is_a_usage_error_naming_the_file(tmp_path: Path):
    import torch
    from safetensors.torch import save_file

    from pisces_cli.errors import UsageError
    from pisces_cli.stages.generate import apply_adapter

    adapter = tmp_path / "checkpoint-3"
    adapter.mkdir()
    (adapter / "pisces_lora.json").write_text(json.dumps({"components": ["transformer"]}))
    weights = adapter / "pytorch_lora_weights.safetensors"
    save_file({"transformer.a.lora_A.weight": torch.zeros(4, 8)}, str(weights))
    weights.write_bytes(weights.read_bytes()[:-40])
    with pytest.raises(UsageError) as info:
        apply_adapter(None, str(adapter))  # type: ignore[arg-type]  # refused before any model is touched
    assert f"--adapter: {weights}: not a complete safetensors file" in str(info.value)
    with pytest.raises(UsageError, match="not a complete safetensors file"):
        apply_adapter(None, str(weights))  # type: ignore[arg-type]


def test_generate_with_a_truncated_adapter_exits_2_naming_the_file(tmp_path: Path, capsys):
    import torch
    from safetensors.torch import save_file
    from test_finetune_support import tiny_overrides

    adapter = tmp_path / "checkpoint-2"
    adapter.mkdir()
    (adapter / "pisces_lora.json").write_text(json.dumps({"components": ["transformer"]}))
    weights = adapter / "pytorch_lora_weights.safetensors"
    save_file({"transformer.a.lora_A.weight": torch.zeros(4, 8)}, str(weights))
    weights.write_bytes(weights.read_bytes()[:-40])
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    argv = ["generate", str(prompts), "-r", "demo", *tiny_overrides(tmp_path), "--adapter", str(adapter)]
    capsys.readouterr()
    assert main(argv) == 2
    err = "".join(capsys.readouterr().err.split())  # rich wraps long paths anywhere
    assert "pytorch_lora_weights.safetensors:notacompletesafetensorsfile" in err and "Traceback" not in err
