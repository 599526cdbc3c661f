"""One small interface for every text→video transport map.

A :class:`TransportMap` sends text embeddings ``x [B, D]`` towards the distribution of real-video
embeddings ``y [B, D]``. Three methods exist:

* ``neural``   — a learned :class:`~pisces_cli.ot.maps.networks.OTMapNet` (Neural OT, method.md §2.3);
* ``gaussian`` — the closed-form Monge map between Gaussian fits of the two clouds;
* ``identity`` — no transport (the paper's "No OT" ablation).

Every map records its input normalisation convention (``"l2"`` or ``"none"``). The same convention is
applied to the training clouds when fitting and by :meth:`TransportMap.apply` at use time, which fixes
the reference's mismatch (trained on raw text features, applied to L2-normalised ones; method.md §2.7).

A map serialises to ``(config, tensors)``: a JSON-able dict and a flat ``{name: Tensor}`` dict suitable
for safetensors; :func:`map_from_state` rebuilds it. :func:`save_map`/:func:`load_map` store the pair
as ``<dir>/map.safetensors`` + ``<dir>/map.json``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pisces_cli.atomic import atomic_write_json, atomic_write_safetensors
from pisces_cli.errors import UsageError
from pisces_cli.ot.maps.networks import OTMapNet, dims_from_state_dict
from pisces_cli.ot.maps.state_io import read_safetensors

NORMALIZATIONS = ("l2", "none")
MAP_METHODS = ("neural", "gaussian", "identity")
MAP_FORMAT_VERSION = 1


def normalize_embeddings(x: torch.Tensor, normalization: str) -> torch.Tensor:
    """Apply an input convention to embeddings ``x [B, D]``.

    ``"l2"`` divides every row by its Euclidean norm (``F.normalize``, eps 1e-12); ``"none"`` returns
    ``x`` unchanged. Raises :class:`UsageError` for any other name.
    """
    if normalization == "l2":
        return F.normalize(x, dim=-1)
    if normalization == "none":
        return x
    raise UsageError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


class TransportMap(ABC):
    """A map ``T: [B, D_in] → [B, D_out]`` together with its input convention.

    Attributes:
        method: ``"neural"``, ``"gaussian"`` or ``"identity"``.
        normalization: input convention, ``"l2"`` or ``"none"``.
    """

    method: str

    def __init__(self, normalization: str):
        normalize_embeddings(torch.zeros(1, 1), normalization)  # validates the name
        self.normalization = normalization

    @abstractmethod
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Map inputs ``x [B, D_in]`` that already follow :attr:`normalization` to ``[B, D_out]``."""

    @property
    def dims(self) -> tuple[int, int] | None:
        """``(D_in, D_out)``, or None for a map that takes any width (identity)."""
        return None

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse (UsageError) inputs that are not ``[B, D_in]`` for this map: no silent broadcasting."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise UsageError(
                f"{self.method} OT map: expected a floating tensor [B, D], got {type(x).__name__}"
            )
        width = None if self.dims is None else self.dims[0]
        if x.ndim != 2 or (width is not None and x.shape[1] != width):
            expected = "[B, D]" if width is None else f"[B, {width}]"
            raise UsageError(
                f"{self.method} OT map: expected text embeddings {expected}, got shape {tuple(x.shape)}"
            )

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise raw embeddings ``x [B, D_in]`` per :attr:`normalization`, then map them."""
        self.check_input(x)
        return self(normalize_embeddings(x, self.normalization))

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that, with :meth:`config`, rebuild the map (flat names, safetensors-ready)."""

    def config(self) -> dict[str, Any]:
        """JSON-able description: method, normalisation, format version (+ method specifics)."""
        return {
            "format_version": MAP_FORMAT_VERSION,
            "method": self.method,
            "normalization": self.normalization,
        }


class IdentityMap(TransportMap):
    """``T(x) = x`` exactly (the "No OT" ablation)."""

    method = "identity"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}


class GaussianMap(TransportMap):
    """Affine map ``T(x) = mean_y + (x − mean_x) @ matrix.T``.

    Attributes:
        mean_x: ``[D_in]`` source mean; mean_y: ``[D_out]`` target mean;
        matrix: ``[D_out, D_in]`` linear part A (symmetric PSD for the Gaussian Monge map).
    Built by :func:`pisces_cli.ot.maps.gaussian.fit_gaussian_map`.
    """

    method = "gaussian"

    def __init__(
        self,
        mean_x: torch.Tensor,
        mean_y: torch.Tensor,
        matrix: torch.Tensor,
        normalization: str,
        ridge: float = 0.0,
    ):
        super().__init__(normalization)
        self.mean_x = mean_x
        self.mean_y = mean_y
        self.matrix = matrix
        self.ridge = float(ridge)

    @property
    def dims(self) -> tuple[int, int]:
        return int(self.matrix.shape[1]), int(self.matrix.shape[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        matrix = self.matrix.to(device=x.device, dtype=x.dtype)
        centred = x - self.mean_x.to(device=x.device, dtype=x.dtype)
        return self.mean_y.to(device=x.device, dtype=x.dtype) + centred @ matrix.T

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean_x": self.mean_x, "mean_y": self.mean_y, "matrix": self.matrix}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "ridge": self.ridge}


class NeuralMap(TransportMap):
    """A trained :class:`OTMapNet` in eval mode, gradients off; called under ``torch.no_grad``.

    ``__call__`` casts inputs to the network's dtype/device and returns the result in the input dtype.
    """

    method = "neural"

    def __init__(self, net: OTMapNet, normalization: str):
        super().__init__(normalization)
        self.net = net.eval().requires_grad_(False)

    @property
    def dims(self) -> tuple[int, int]:
        return self.net.dims.input_dim, self.net.dims.output_dim

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.net.net[0].weight
        with torch.no_grad():
            return self.net(x.to(device=weight.device, dtype=weight.dtype)).to(x.dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().cpu().contiguous() for name, tensor in self.net.state_dict().items()}

    def config(self) -> dict[str, Any]:
        dims = self.net.dims
        return {
            **super().config(),
            "input_dim": dims.input_dim,
            "hidden_dim": dims.hidden_dim,
            "output_dim": dims.output_dim,
        }

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], normalization: str) -> NeuralMap:
        """Build from a reference-layout state dict (dims read off the tensors; strict load)."""
        dims = dims_from_state_dict(state_dict)
        net = OTMapNet(dims.input_dim, dims.output_dim, dims.hidden_dim)
        net.load_state_dict(state_dict, strict=True)
        return cls(net, normalization)


def map_from_state(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> TransportMap:
    """Rebuild a :class:`TransportMap` from :meth:`TransportMap.config` and :meth:`TransportMap.state_dict`."""
    method = config.get("method")
    normalization = config.get("normalization")
    if normalization not in NORMALIZATIONS:
        raise UsageError(
            f"map config key 'normalization' must be one of {NORMALIZATIONS}, got {normalization!r}"
        )
    if method == "identity":
        return IdentityMap(normalization)
    if method == "gaussian":
        missing = {"mean_x", "mean_y", "matrix"} - set(tensors)
        if missing:
            raise UsageError(f"gaussian map tensors missing {sorted(missing)}; found {sorted(tensors)}")
        return GaussianMap(
            tensors["mean_x"], tensors["mean_y"], tensors["matrix"], normalization, config.get("ridge", 0.0)
        )
    if method == "neural":
        try:
            return NeuralMap.from_state_dict(tensors, normalization)
        except (KeyError, RuntimeError) as error:
            raise UsageError(f"neural map tensors do not fit the reference layout: {error}") from error
    raise UsageError(f"map config key 'method' must be one of {MAP_METHODS}, got {method!r}")


def save_map(transport_map: TransportMap, directory: str | Path) -> Path:
    """Write ``map.safetensors`` and ``map.json`` (atomically) into ``directory``; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = transport_map.config()
    atomic_write_safetensors(
        directory / "map.safetensors", transport_map.state_dict(), {"method": config["method"]}
    )
    atomic_write_json(directory / "map.json", config, sort_keys=True)
    return directory


def load_map(directory: str | Path) -> TransportMap:
    """Read a map written by :func:`save_map`; raises :class:`UsageError` if files are missing or invalid."""
    directory = Path(directory)
    config_path = directory / "map.json"
    tensor_path = directory / "map.safetensors"
    if not config_path.is_file():
        raise UsageError(f"{config_path}: not found (expected a transport map written by `pisces fit-ot`)")
    config = json.loads(config_path.read_text())
    tensors = read_safetensors(tensor_path) if tensor_path.is_file() else {}
    return map_from_state(config, tensors)
