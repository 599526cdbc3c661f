"""The PISCES reward module: quality (OT-mapped cosine) and semantic (token-OT) rewards.

Names are imported on first use, so reading an OT map's header (``pisces_cli.rewards.ot_map_artifact``) does not
import torch through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "REWARD_COMPONENTS": "pisces_cli.rewards.module",
    "PiscesReward": "pisces_cli.rewards.module",
    "RewardOutput": "pisces_cli.rewards.module",
    "OT_MAP_SCHEMA": "pisces_cli.rewards.ot_map_artifact",
    "load_ot_map_artifact": "pisces_cli.rewards.ot_map_artifact",
    "save_ot_map_artifact": "pisces_cli.rewards.ot_map_artifact",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
