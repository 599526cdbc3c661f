"""Token-level optimal transport for PISCES: solvers, token geometry and cost, attention fusion.

Public API: :func:`sinkhorn` (balanced / unbalanced / partial entropic OT, batched) with its
:class:`SinkhornInfo`; :class:`TokenOTSettings` (paper defaults); :func:`video_token_geometry`;
:func:`token_ot_cost` and :func:`token_ot_prior` (the cross-attention prior; :func:`token_ot_prior_rows` on
compacted rows); :func:`fuse_attention` (:func:`fuse_rows` on compacted rows).
"""

from __future__ import annotations

from pisces_cli.ot.fusion import fuse_attention, fuse_rows
from pisces_cli.ot.geometry import video_token_geometry
from pisces_cli.ot.settings import TokenOTSettings
from pisces_cli.ot.sinkhorn import SinkhornInfo, sinkhorn
from pisces_cli.ot.token_cost import token_ot_cost, token_ot_prior, token_ot_prior_rows

__all__ = [
    "SinkhornInfo",
    "TokenOTSettings",
    "fuse_attention",
    "fuse_rows",
    "sinkhorn",
    "token_ot_cost",
    "token_ot_prior",
    "token_ot_prior_rows",
    "video_token_geometry",
]
