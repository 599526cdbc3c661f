"""CLI commands and exit codes (0 ok, 1 runtime failure, 2 usage/recipe error)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from pisces_cli.artifacts import ArtifactHeader, save_artifact
from pisces_cli.cli.main import main


def run(args: list[str]) -> int:
    return main(args)


def test_help_and_no_args(capsys):
    assert run(["--help"]) == 0
    assert "pisces" in capsys.readouterr().out


def test_ls_lists_bundled(capsys):
    assert run(["ls"]) == 0
    assert "hunyuan" in capsys.readouterr().out


def test_validate_ok_and_errors(capsys):
    assert run(["validate", "hunyuan"]) == 0
    assert run(["validate", "hunyuan", "fit_ot.neural.max_steps=abc"]) == 2
    assert "fit_ot.neural.max_steps" in capsys.readouterr().err
    assert run(["validate", "no-such-recipe"]) == 2
    assert run(["validate", "hunyuan", "--bogus-flag"]) == 2


def test_cat_prints_resolved(capsys):
    assert run(["cat", "hunyuan", "output_dir=/tmp/x"]) == 0
    out = capsys.readouterr().out
    assert "output: /tmp/x/embeddings" in out


def test_cp_copies_and_refuses_overwrite(tmp_path: Path):
    assert run(["cp", "hunyuan", str(tmp_path)]) == 0
    assert (tmp_path / "hunyuan.yaml").is_file()
    assert run(["cp", "hunyuan", str(tmp_path)]) == 2
    assert run(["cp", "hunyuan", str(tmp_path), "--force"]) == 0
    assert run(["validate", str(tmp_path / "hunyuan.yaml")]) == 0


def test_inspect_artifact(tmp_path: Path, capsys):
    header = ArtifactHeader(schema="pisces.test", stage="unit", fingerprints={"encoder": {"backend": "clip"}})
    path = save_artifact(tmp_path / "a.safetensors", {"x": torch.zeros(3, 2)}, header)
    assert run(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pisces.test" in out and "3×2" in out
    assert run(["inspect", str(path), "--json"]) == 0
    assert '"shape": [\n        3,\n        2\n      ]' in capsys.readouterr().out
    assert run(["inspect", str(tmp_path / "missing.safetensors")]) == 2


def test_env_block(capsys):
    assert run(["env"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "decoders" in out


def test_console_script_help_does_not_import_torch():
    code = (
        "import sys; from pisces_cli.cli.main import main; "
        "rc = main(['--help']); assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_ls_does_not_import_torch():
    code = "import sys; from pisces_cli.cli.main import main; rc = main(['ls']); assert 'torch' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
