"""Print what `pisces validate RECIPE --weights --stage finetune` shows on a correct setup (the README example).

Builds tiny random-weight stand-ins for the real files in a temporary folder, laid out as the README's
real-weights guide lays out the real ones (``pretrained/InternVideo2-tiny``, ``pretrained/bert-large-uncased``,
``models/HunyuanVideo``, ``runs/tiny/ot/ot_map.safetensors``), writes ``my.yaml`` and runs the preflight there.

    python benchmarks/readme_preflight.py            # 113 columns, as pasted in the README
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

WORDS = ["a", "red", "cat", "runs"]


def build(root: Path) -> None:
    from pisces_cli.artifacts import ArtifactHeader
    from pisces_cli.backbones.tiny import save_tiny_hunyuan
    from pisces_cli.encoders.internvideo2.tiny import save_tiny_internvideo2
    from pisces_cli.encoders.registry import load_encoder
    from pisces_cli.ot.maps import fit_gaussian_map
    from pisces_cli.rewards import save_ot_map_artifact

    encoder_dir = save_tiny_internvideo2(root / "pretrained" / "InternVideo2-tiny", WORDS)
    tokenizer_dir = root / "pretrained" / "bert-large-uncased"
    tokenizer_dir.mkdir(parents=True)
    shutil.move(str(encoder_dir / "vocab.txt"), tokenizer_dir / "vocab.txt")
    save_tiny_hunyuan(root / "models" / "HunyuanVideo")
    encoder = load_encoder("internvideo2", str(encoder_dir), tokenizer_dir=str(tokenizer_dir))
    generator = torch.Generator().manual_seed(0)
    dim = encoder.embed_dim
    transport_map = fit_gaussian_map(
        torch.randn(64, dim, generator=generator), torch.randn(64, dim, generator=generator)
    )
    header = ArtifactHeader(schema="", stage="fit-ot", fingerprints={"encoder": encoder.fingerprint()})
    (root / "runs" / "tiny" / "ot").mkdir(parents=True)
    save_ot_map_artifact(root / "runs" / "tiny" / "ot" / "ot_map.safetensors", transport_map, dim, header)
    (root / "prompts.txt").write_text("a red cat runs\n", encoding="utf-8")
    recipe = {
        "output_dir": "runs/tiny",
        "models": {
            "encoder": {
                "backend": "internvideo2",
                "path": "pretrained/InternVideo2-tiny",
                "tokenizer": "pretrained/bert-large-uncased",
                "num_frames": 4,
            },
            "generator": {"backbone": "hunyuan", "path": "models/HunyuanVideo", "dtype": "float32"},
        },
        "reward": {"ot_map": "runs/tiny/ot/ot_map.safetensors"},
        "finetune": {
            "data": {"prompts": "prompts.txt"},
            "lora": {"rank": 4, "alpha": 4},
            "num_frames": 9,
            "height": 32,
            "width": 32,
        },
    }
    (root / "my.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        build(root)
        env = {**os.environ, "COLUMNS": "113", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        command = [
            sys.executable,
            "-m",
            "pisces_cli",
            "validate",
            "my.yaml",
            "--weights",
            "--stage",
            "finetune",
        ]
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
        print("$ pisces validate my.yaml --weights --stage finetune")
        print(done.stdout + done.stderr, end="")
        return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
