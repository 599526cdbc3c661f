"""The PISCES reward module: quality (OT-mapped cosine) and semantic (token-OT) rewards."""

from pisces_cli.rewards.module import REWARD_COMPONENTS, PiscesReward, RewardOutput
from pisces_cli.rewards.ot_map_artifact import OT_MAP_SCHEMA, load_ot_map_artifact, save_ot_map_artifact

__all__ = [
    "OT_MAP_SCHEMA",
    "REWARD_COMPONENTS",
    "PiscesReward",
    "RewardOutput",
    "load_ot_map_artifact",
    "save_ot_map_artifact",
]
