"""Where fine-tuning checkpoints live in an output folder (no torch import: ``pisces inspect`` reads it)."""

from __future__ import annotations

import re
from pathlib import Path

#: the resumable state's sub-folder of a checkpoint
STATE_DIR = "training_state"
#: a complete checkpoint's folder name
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dirs(output: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete checkpoint under ``output``, ascending by step."""
    root = Path(output)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and (child / STATE_DIR / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)
