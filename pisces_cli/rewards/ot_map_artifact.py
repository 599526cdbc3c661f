"""The shipped OT map: ``ot_map.safetensors`` (schema ``pisces.ot_map``).

Tensors are the map's own state (neural: the reference ``net.*`` keys; gaussian: ``mean_x``,
``mean_y``, ``matrix``) plus ``dims`` = ``[input_dim, output_dim]`` (int64). The header's ``extra.map``
holds the map config (method, normalisation, sizes) and ``fingerprints.encoder`` the encoder whose
embeddings the map was fit on; a reward refuses a map of another encoder or dimension.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.artifacts import ArtifactHeader, check_fingerprint, load_artifact, save_artifact
from pisces_cli.errors import UsageError

if TYPE_CHECKING:
    from pisces_cli.ot.maps import TransportMap

OT_MAP_SCHEMA = "pisces.ot_map"


def save_ot_map_artifact(
    path: str | Path, transport_map: TransportMap, dim: int, header: ArtifactHeader
) -> Path:
    """Write ``transport_map`` (embedding width ``dim``) with ``header`` (schema forced to ``pisces.ot_map``)."""
    import torch

    tensors = {name: t for name, t in transport_map.state_dict().items()}
    tensors["dims"] = torch.tensor([dim, dim], dtype=torch.int64)
    header.schema = OT_MAP_SCHEMA
    header.extra = {**header.extra, "map": transport_map.config()}
    header.tensors = {
        **{name: "map parameter" for name in tensors if name != "dims"},
        "dims": "[input_dim, output_dim] of the map",
        **header.tensors,
    }
    return save_artifact(path, tensors, header)


def load_ot_map_artifact(
    path: str | Path,
    *,
    encoder_fingerprint: dict[str, Any] | None = None,
    dim: int | None = None,
) -> tuple[TransportMap, ArtifactHeader]:
    """Load a map; refuse (UsageError, exit 2) another encoder's map or a dimension mismatch."""
    from pisces_cli.ot.maps import map_from_state

    tensors, header = load_artifact(path, expect_schema=OT_MAP_SCHEMA)
    if encoder_fingerprint is not None:
        check_fingerprint(
            header.fingerprints.get("encoder"), encoder_fingerprint, what="encoder", source=str(path)
        )
    dims = tensors.pop("dims", None)
    if dim is not None and dims is not None and int(dims[0]) != dim:
        raise UsageError(
            f"{path}: the OT map takes {int(dims[0])}-d embeddings but the encoder gives {dim}-d"
        )
    config = header.extra.get("map")
    if not isinstance(config, dict):
        raise UsageError(f"{path}: header has no map config (extra.map)")
    transport_map = map_from_state(config, tensors)
    if dim is not None:
        _check_map_dims(transport_map, dim, path)
    return transport_map, header


def _check_map_dims(transport_map: TransportMap, dim: int, path: str | Path) -> None:
    """Refuse a map whose own tensors do not take and give ``dim``-d embeddings (``dims`` may not say so)."""
    import torch

    try:
        out = transport_map(torch.zeros(1, dim))
    except RuntimeError as exc:
        raise UsageError(f"{path}: the OT map's tensors do not take {dim}-d embeddings ({exc})") from exc
    if tuple(out.shape) != (1, dim):
        raise UsageError(
            f"{path}: the OT map gives {out.shape[-1]}-d outputs but the encoder's embeddings are {dim}-d"
        )
