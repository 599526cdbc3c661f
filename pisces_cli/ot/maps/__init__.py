"""Distributional transport maps T: text-embedding space → real-video-embedding space (``pisces fit-ot``).

Public API:

* Networks: :class:`OTMapNet`, :class:`PotentialNet`, :class:`MapDims` (reference state-dict layout).
* Maps: :class:`TransportMap` (``__call__``, ``apply``, ``state_dict``, ``config``), :class:`NeuralMap`,
  :class:`GaussianMap`, :class:`IdentityMap`, :func:`fit_gaussian_map`, :func:`map_from_state`,
  :func:`save_map`, :func:`load_map`, :func:`normalize_embeddings`.
* Neural OT: :class:`NeuralOTConfig`, :class:`NeuralOTTrainer`, :func:`fit_neural_map`, :class:`FitResult`.
* Metrics: :func:`mutual_knn`, :func:`distance_spearman`, :func:`map_metrics`.
* Import / report: :func:`import_reference_map`, :func:`write_fit_report`.
"""

from __future__ import annotations

from pisces_cli.ot.maps.fit import BEST_METRICS, FitResult, fit_neural_map, load_last_state
from pisces_cli.ot.maps.gaussian import DEFAULT_RIDGE, fit_gaussian_map, gaussian_monge_matrix
from pisces_cli.ot.maps.metrics import distance_spearman, map_metrics, mutual_knn
from pisces_cli.ot.maps.networks import DEFAULT_HIDDEN_DIM, REFERENCE_KEYS, MapDims, OTMapNet, PotentialNet
from pisces_cli.ot.maps.neural import NeuralOTConfig, NeuralOTTrainer
from pisces_cli.ot.maps.reference import extract_reference_state_dict, import_reference_map
from pisces_cli.ot.maps.report import write_fit_report
from pisces_cli.ot.maps.transport import (
    MAP_METHODS,
    NORMALIZATIONS,
    GaussianMap,
    IdentityMap,
    NeuralMap,
    TransportMap,
    load_map,
    map_from_state,
    normalize_embeddings,
    save_map,
)

__all__ = [
    "BEST_METRICS",
    "DEFAULT_HIDDEN_DIM",
    "DEFAULT_RIDGE",
    "MAP_METHODS",
    "NORMALIZATIONS",
    "REFERENCE_KEYS",
    "FitResult",
    "GaussianMap",
    "IdentityMap",
    "MapDims",
    "NeuralMap",
    "NeuralOTConfig",
    "NeuralOTTrainer",
    "OTMapNet",
    "PotentialNet",
    "TransportMap",
    "distance_spearman",
    "extract_reference_state_dict",
    "fit_gaussian_map",
    "fit_neural_map",
    "gaussian_monge_matrix",
    "import_reference_map",
    "load_last_state",
    "load_map",
    "map_from_state",
    "map_metrics",
    "mutual_knn",
    "normalize_embeddings",
    "save_map",
    "write_fit_report",
]
