"""pisces: annotation-free post-training of text-to-video models with OT-aligned rewards.

The public Python API is the names in :data:`__all__` (README, "Python API"). They are loaded on first
use, so ``import pisces_cli`` (and ``pisces --help``) imports no torch. Everything else in the package is
private: it may change in any release without notice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pisces_cli.lazy_exports import lazy_exports

__version__ = "0.1.0.dev0"

#: public name -> module that defines it (imported on first attribute access).
_PUBLIC: dict[str, str] = {
    # rewards
    "load_reward": "pisces_cli.api",
    "build_reward": "pisces_cli.api",
    "load_encoder": "pisces_cli.api",
    "PiscesReward": "pisces_cli.rewards.module",
    "RewardOutput": "pisces_cli.rewards.module",
    "EncoderBackend": "pisces_cli.encoders.base",
    # distributional OT map
    "load_ot_map": "pisces_cli.api",
    "save_ot_map": "pisces_cli.api",
    "TransportMap": "pisces_cli.ot.maps.transport",
    "fit_gaussian_map": "pisces_cli.ot.maps.gaussian",
    # token-level OT
    "TokenOTSettings": "pisces_cli.ot.settings",
    "token_ot_cost": "pisces_cli.ot.token_cost",
    "token_ot_prior": "pisces_cli.ot.token_cost",
    "video_token_geometry": "pisces_cli.ot.geometry",
    "fuse_attention": "pisces_cli.ot.fusion",
    "sinkhorn": "pisces_cli.ot.sinkhorn",
    "SinkhornInfo": "pisces_cli.ot.sinkhorn",
    # artifacts
    "ArtifactHeader": "pisces_cli.artifacts",
    "save_artifact": "pisces_cli.artifacts",
    "load_artifact": "pisces_cli.artifacts",
    "read_header": "pisces_cli.artifacts",
    "load_sharded": "pisces_cli.artifacts",
    # errors
    "PiscesError": "pisces_cli.errors",
    "UsageError": "pisces_cli.errors",
    "PiscesRuntimeError": "pisces_cli.errors",
}

#: the public API (every name of :data:`_PUBLIC`, plus the version).
__all__ = [
    "__version__",
    "ArtifactHeader",
    "EncoderBackend",
    "PiscesError",
    "PiscesReward",
    "PiscesRuntimeError",
    "RewardOutput",
    "SinkhornInfo",
    "TokenOTSettings",
    "TransportMap",
    "UsageError",
    "build_reward",
    "fit_gaussian_map",
    "fuse_attention",
    "load_artifact",
    "load_encoder",
    "load_ot_map",
    "load_reward",
    "load_sharded",
    "read_header",
    "save_artifact",
    "save_ot_map",
    "sinkhorn",
    "token_ot_cost",
    "token_ot_prior",
    "video_token_geometry",
]


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)


if TYPE_CHECKING:  # static type checkers and IDEs see the real objects
    from pisces_cli.api import build_reward, load_encoder, load_ot_map, load_reward, save_ot_map
    from pisces_cli.artifacts import ArtifactHeader, load_artifact, load_sharded, read_header, save_artifact
    from pisces_cli.encoders.base import EncoderBackend
    from pisces_cli.errors import PiscesError, PiscesRuntimeError, UsageError
    from pisces_cli.ot.fusion import fuse_attention
    from pisces_cli.ot.geometry import video_token_geometry
    from pisces_cli.ot.maps.gaussian import fit_gaussian_map
    from pisces_cli.ot.maps.transport import TransportMap
    from pisces_cli.ot.settings import TokenOTSettings
    from pisces_cli.ot.sinkhorn import SinkhornInfo, sinkhorn
    from pisces_cli.ot.token_cost import token_ot_cost, token_ot_prior
    from pisces_cli.rewards.module import PiscesReward, RewardOutput
