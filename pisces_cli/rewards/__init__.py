"""The PISCES reward module: quality (OT-mapped cosine) and semantic (token-OT) rewards.

Names are imported on first use, so reading an OT map's header (``pisces_cli.rewards.ot_map_artifact``) does not
import torch through this package.
"""

from __future__ import annotations

from pisces_cli.lazy_exports import lazy_exports

_WHERE = {
    "REWARD_COMPONENTS": "pisces_cli.rewards.module",
    "PiscesReward": "pisces_cli.rewards.module",
    "RewardOutput": "pisces_cli.rewards.module",
    "OT_MAP_SCHEMA": "pisces_cli.rewards.ot_map_artifact",
    "load_ot_map_artifact": "pisces_cli.rewards.ot_map_artifact",
    "save_ot_map_artifact": "pisces_cli.rewards.ot_map_artifact",
}

__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
