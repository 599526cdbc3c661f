"""The shipped OT map: ``ot_map.safetensors`` (schema ``pisces.ot_map``).

Tensors are the map's own state (neural: the reference ``net.*`` keys; gaussian: ``mean_x``,
``mean_y``, ``matrix``) plus ``dims`` = ``[input_dim, output_dim]`` (int64). The header's ``extra.map``
holds the map config (method, normalisation, sizes) and ``fingerprints.encoder`` the encoder whose
embeddings the map was fit on; a reward refuses a map of another encoder or dimension.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.artifacts import (
    ArtifactHeader,
    check_fingerprint,
    check_schema,
    load_artifact,
    read_header,
    safetensors_header_of,
    save_artifact,
)
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


def check_ot_map_header(
    path: str | Path,
    *,
    encoder_fingerprint: dict[str, Any] | None = None,
    dim: int | None = None,
) -> tuple[ArtifactHeader, int | None]:
    """Refuse (UsageError, exit 2) a map of another encoder or width from its header and ``dims`` alone.

    Reads only the safetensors header and the two-element ``dims`` tensor, so it takes milliseconds whatever
    the map's size. Every key of ``encoder_fingerprint`` is compared (pass a fingerprint without
    ``weights_sha256`` to skip hashing the encoder). Returns the header and the map's input width (None when
    the file has no ``dims``).
    """
    header = read_header(path)
    check_schema(header, OT_MAP_SCHEMA, path)
    if encoder_fingerprint is not None:
        check_fingerprint(
            header.fingerprints.get("encoder"), encoder_fingerprint, what="encoder", source=str(path)
        )
    tensors = safetensors_header_of(path)
    input_dim = int(tensors.read_values("dims")[0]) if "dims" in tensors.tensors else None
    if dim is not None and input_dim is not None and input_dim != dim:
        raise UsageError(f"{path}: the OT map takes {input_dim}-d embeddings but the encoder gives {dim}-d")
    return header, input_dim


def load_ot_map_artifact(
    path: str | Path,
    *,
    encoder_fingerprint: dict[str, Any] | None = None,
    dim: int | None = None,
) -> tuple[TransportMap, ArtifactHeader]:
    """Load a map; refuse (UsageError, exit 2) another encoder's map or a dimension mismatch."""
    from pisces_cli.ot.maps import map_from_state

    check_ot_map_header(path, encoder_fingerprint=encoder_fingerprint, dim=dim)
    tensors, header = load_artifact(path, expect_schema=OT_MAP_SCHEMA)
    tensors.pop("dims", None)
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
