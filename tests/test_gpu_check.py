"""``benchmarks/gpu_check.py --dry``: the GPU acceptance plan runs end to end on the CPU with tiny sizes, writes
its JSON and markdown, and stops cleanly at its budgets (so the script cannot rot before a GPU is lent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT, check=False
    )


def test_dry_run_measures_every_part(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = run_script("--dry", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(out.read_text())
    assert document["machine"]["mode"].startswith("dry")
    assert list(document["parts"]) == [
        "gpu_tests",
        "iv2_reward",
        "token_ot",
        "finetune_step",
        "fit_ot",
        "score",
    ]
    for name, part in document["parts"].items():
        assert part["status"] == "ok", (name, part["status"])
        assert part["measurements"], name
    names = [row["measurement"] for row in document["parts"]["iv2_reward"]["measurements"]]
    for dtype in ("fp16", "bf16"):
        assert f"semantic reward, reference loop, {dtype}" in names
        assert f"pixels → quality + semantic → backward, {dtype}" in names
    steps = [row["measurement"] for row in document["parts"]["finetune_step"]["measurements"]]
    assert len(steps) == 4 and all(
        isinstance(row["value"], float) for row in document["parts"]["finetune_step"]["measurements"]
    )
    table = out.with_suffix(".md").read_text()
    assert "| part | measurement | value | unit | notes |" in table and "score / decode" in table


def test_budget_stops_the_run_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = run_script("--dry", "--budget", "1", "--parts", "fit_ot,score", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    parts = json.loads(out.read_text())["parts"]
    assert parts["fit_ot"]["status"] == parts["score"]["status"] == "not run: total budget spent"
    assert "not run: total budget spent" in out.with_suffix(".md").read_text()


def test_a_part_over_its_budget_is_stopped_and_marked_partial(tmp_path: Path) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    result = gpu_check.run_part("score", dry=True, timeout=0.01, scratch=tmp_path)
    assert result["status"].endswith("(partial)") and result["measurements"] == []
    recorder = gpu_check.Recorder(tmp_path / "rows.json")
    recorder.add("first", 1.0, "s")
    assert json.loads((tmp_path / "rows.json").read_text())[0]["measurement"] == "first"


def test_unknown_part_is_refused() -> None:
    done = run_script("--dry", "--parts", "warp_drive")
    assert done.returncode == 2 and "unknown part" in done.stderr
