"""VBench Total / Quality / Semantic scores from per-dimension results.

Reproduces VBench's ``scripts/cal_final_score.py`` (constants from ``scripts/constant.py``; see
``docs/vbench.md`` §3). For each of the 16 text-to-video dimensions with raw aggregate r_d (a fraction):

    n_d      = (r_d - Min_d) / (Max_d - Min_d)          (no clipping: n_d may leave [0, 1])
    Quality  = sum_{d in Q} w_d n_d / sum_{d in Q} w_d   (= .../6.5; w = 0.5 for dynamic degree, else 1)
    Semantic = sum_{d in S} w_d n_d / sum_{d in S} w_d   (= .../9)
    Total    = (4 Quality + 1 Semantic) / 5

A dimension absent from the input counts as raw 0, as VBench does, and is reported by name.

Inputs accepted by :func:`load_dimension_scores`:

* VBench's ``*_eval_results.json``: ``{dimension: [aggregate, [per-video records]]}``;
* a plain JSON object ``{dimension: score}``;
* a CSV with rows ``dimension,score`` (an optional header row is skipped).

Scores may be fractions (all values <= 1) or percentages (some value > 1, all <= 100); the detected
scale is stated in the result. Dimension names may use underscores or spaces.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pisces_cli.errors import UsageError
from pisces_cli.textfile import read_text

Group = Literal["quality", "semantic"]
Scale = Literal["fraction", "percent"]


@dataclass(frozen=True)
class DimensionSpec:
    """VBench's normalisation bounds and weight of one dimension (raw scores as fractions)."""

    key: str
    group: Group
    min_raw: float
    max_raw: float
    weight: float


# The one table of VBench T2V aggregation constants (scripts/constant.py, unchanged since 2024-06-28).
VBENCH_DIMENSIONS: tuple[DimensionSpec, ...] = (
    DimensionSpec("subject_consistency", "quality", 0.1462, 1.0, 1.0),
    DimensionSpec("background_consistency", "quality", 0.2615, 1.0, 1.0),
    DimensionSpec("temporal_flickering", "quality", 0.6293, 1.0, 1.0),
    DimensionSpec("motion_smoothness", "quality", 0.706, 0.9975, 1.0),
    DimensionSpec("dynamic_degree", "quality", 0.0, 1.0, 0.5),
    DimensionSpec("aesthetic_quality", "quality", 0.0, 1.0, 1.0),
    DimensionSpec("imaging_quality", "quality", 0.0, 1.0, 1.0),
    DimensionSpec("object_class", "semantic", 0.0, 1.0, 1.0),
    DimensionSpec("multiple_objects", "semantic", 0.0, 1.0, 1.0),
    DimensionSpec("human_action", "semantic", 0.0, 1.0, 1.0),
    DimensionSpec("color", "semantic", 0.0, 1.0, 1.0),
    DimensionSpec("spatial_relationship", "semantic", 0.0, 1.0, 1.0),
    DimensionSpec("scene", "semantic", 0.0, 0.8222, 1.0),
    DimensionSpec("appearance_style", "semantic", 0.0009, 0.2855, 1.0),
    DimensionSpec("temporal_style", "semantic", 0.0, 0.364, 1.0),
    DimensionSpec("overall_consistency", "semantic", 0.0, 0.364, 1.0),
)
QUALITY_WEIGHT = 4.0
SEMANTIC_WEIGHT = 1.0

DIMENSION_BY_KEY: dict[str, DimensionSpec] = {spec.key: spec for spec in VBENCH_DIMENSIONS}


@dataclass(frozen=True)
class DimensionScore:
    """One dimension's contribution. ``raw`` is a fraction; ``weighted = weight * normalised``."""

    name: str
    group: Group
    raw: float
    normalised: float
    weight: float
    weighted: float
    missing: bool


@dataclass(frozen=True)
class VBenchAggregate:
    """VBench scores. ``total``/``quality``/``semantic`` are percentages (VBench's fraction x 100)."""

    total: float
    quality: float
    semantic: float
    dimensions: tuple[DimensionScore, ...]
    missing: tuple[str, ...]
    input_scale: Scale
    warnings: tuple[str, ...] = field(default=())
    sources: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view; per-dimension entries keyed by dimension name."""
        return {
            "total": self.total,
            "quality": self.quality,
            "semantic": self.semantic,
            "scores_unit": "percent",
            "input_scale": self.input_scale,
            "missing": list(self.missing),
            "warnings": list(self.warnings),
            "sources": list(self.sources),
            "dimensions": {
                d.name: {k: v for k, v in asdict(d).items() if k != "name"} for d in self.dimensions
            },
        }

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=indent)


def canonical_dimension_name(name: str) -> str:
    """Map ``"Subject Consistency"``, ``"subject-consistency"`` ... to the key ``"subject_consistency"``.

    Raises:
        UsageError: the name is not one of the 16 VBench T2V dimensions (with a "did you mean").
    """
    key = _normalise_key(name)
    if key in DIMENSION_BY_KEY:
        return key
    raise UsageError(f"unknown VBench dimension {name!r}{_suggestion(key)}")


def _normalise_key(name: str) -> str:
    """Lower case; spaces, hyphens and underscores all become single underscores."""
    return "_".join(str(name).strip().lower().replace("-", " ").replace("_", " ").split())


def _suggestion(key: str) -> str:
    close = difflib.get_close_matches(key, list(DIMENSION_BY_KEY), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (known: {', '.join(DIMENSION_BY_KEY)})"


def _canonicalise_all(scores: Mapping[str, float], source: str) -> dict[str, float]:
    """Canonical keys for every entry; all unknown names are reported together."""
    unknown: list[str] = []
    canonical: dict[str, float] = {}
    for name, value in scores.items():
        key = _normalise_key(name)
        if key not in DIMENSION_BY_KEY:
            unknown.append(f"{name!r}{_suggestion(key).split(' (known')[0]}")
            continue
        if key in canonical:
            raise UsageError(f"{source}: dimension {key!r} is given twice")
        canonical[key] = value
    if unknown:
        raise UsageError(
            f"{source}: unknown VBench dimension(s): {'; '.join(unknown)} "
            f"(known: {', '.join(DIMENSION_BY_KEY)})"
        )
    return canonical


def detect_scale(values: Iterable[float]) -> Scale:
    """``"fraction"`` if every value is <= 1; ``"percent"`` if some value is > 1 and all are <= 100.

    Raises:
        UsageError: a value below 0, above 100 or not finite.
    """
    values = list(values)
    for value in values:
        if not math.isfinite(value):
            raise UsageError(f"dimension scores must be finite numbers, got {value}")
        if value < 0:
            raise UsageError(
                f"dimension scores must be >= 0 (VBench scores are fractions or percentages), got {value}"
            )
    if all(v <= 1.0 for v in values):
        return "fraction"
    if all(v <= 100.0 for v in values):
        return "percent"
    raise UsageError(
        f"dimension scores must be fractions (<= 1) or percentages (<= 100); got a maximum of {max(values)}"
    )


def _as_score(value: Any, where: str) -> float:
    """A score from a number, a numeric string or VBench's ``[aggregate, per-video list]``."""
    if isinstance(value, list | tuple):
        if not value:
            raise UsageError(f"{where}: expected [aggregate, per-video list], got an empty list")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UsageError(f"{where}: expected a number or [aggregate, per-video list], got {value!r}")
    try:
        return float(value)
    except ValueError as exc:
        raise UsageError(f"{where}: {value!r} is not a number") from exc


class _RepeatedKey(ValueError):
    """A JSON object that gives one key twice (its ``args[0]``)."""


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = next((key for key in keys if keys.count(key) > 1), None)
    if repeated is not None:
        raise _RepeatedKey(repeated)
    return dict(pairs)


def _read_one(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise UsageError(f"VBench results file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            payload = json.loads(read_text(path), object_pairs_hook=_refuse_repeated_keys)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: not valid JSON ({exc})") from exc
        except _RepeatedKey as exc:  # JSON would keep the last value without a word
            raise UsageError(f"{path}: dimension {exc.args[0]!r} is given twice") from None
        if not isinstance(payload, dict):
            raise UsageError(
                f"{path}: expected a JSON object {{dimension: score}}, got {type(payload).__name__}"
            )
        return {str(k): _as_score(v, f"{path}: key {k!r}") for k, v in payload.items()}
    if suffix == ".csv":
        scores: dict[str, float] = {}
        with io.StringIO(read_text(path), newline="") as handle:
            for row_number, row in enumerate(csv.reader(handle), start=1):
                cells = [c.strip() for c in row]
                if not any(cells) or cells[0].startswith("#"):
                    continue
                if len(cells) < 2:
                    raise UsageError(f"{path}: row {row_number}: expected 'dimension,score', got {row!r}")
                try:
                    value = float(cells[1])
                except ValueError:
                    if row_number == 1:  # header row such as "dimension,score"
                        continue
                    raise UsageError(
                        f"{path}: row {row_number}: score {cells[1]!r} is not a number"
                    ) from None
                if cells[0] in scores:
                    raise UsageError(f"{path}: dimension {cells[0]!r} is given twice")
                scores[cells[0]] = value
        return scores
    raise UsageError(f"{path}: expected a .json or .csv file of VBench dimension scores")


def load_dimension_scores(paths: str | Path | Sequence[str | Path]) -> tuple[dict[str, float], Scale]:
    """Read one or more results files and return ``({dimension_key: fraction}, input_scale)``.

    Several files (e.g. one ``*_eval_results.json`` per dimension) are merged; a dimension given twice
    is an error. The scale is detected over all values together (see :func:`detect_scale`).
    """
    path_list = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    if not path_list:
        raise UsageError("no VBench results file given")
    merged: dict[str, float] = {}
    for path in path_list:
        for key, value in _canonicalise_all(_read_one(path), str(path)).items():
            if key in merged:
                raise UsageError(f"{path}: dimension {key!r} is also given in an earlier file")
            merged[key] = value
    if not merged:
        raise UsageError(f"no dimension scores found in {', '.join(map(str, path_list))}")
    scale = detect_scale(merged.values())
    divisor = 100.0 if scale == "percent" else 1.0
    return {k: v / divisor for k, v in merged.items()}, scale


def aggregate_vbench(
    raw_scores: Mapping[str, float],
    *,
    input_scale: Scale | Literal["auto"] = "auto",
    sources: Sequence[str] = (),
) -> VBenchAggregate:
    """VBench Total / Quality / Semantic from ``{dimension: raw score}``.

    Args:
        raw_scores: dimension name (underscores or spaces) -> raw aggregate, as a fraction or percent.
        input_scale: ``"fraction"``, ``"percent"`` or ``"auto"`` (:func:`detect_scale`).
        sources: file names to record in the result.

    Returns:
        :class:`VBenchAggregate` with scores in percent; missing dimensions counted as raw 0.

    Raises:
        UsageError: unknown dimension names, non-finite values, or values above 100.
    """
    canonical = _canonicalise_all(raw_scores, "VBench scores")
    values = [float(v) for v in canonical.values()]
    scale: Scale = (detect_scale(values) if values else "fraction") if input_scale == "auto" else input_scale
    if input_scale != "auto":
        detect_scale(values)  # still rejects non-finite and > 100
    divisor = 100.0 if scale == "percent" else 1.0

    dimension_scores: list[DimensionScore] = []
    missing: list[str] = []
    for spec in VBENCH_DIMENSIONS:
        is_missing = spec.key not in canonical
        raw = 0.0 if is_missing else float(canonical[spec.key]) / divisor
        if is_missing:
            missing.append(spec.key)
        normalised = (raw - spec.min_raw) / (spec.max_raw - spec.min_raw)
        dimension_scores.append(
            DimensionScore(
                name=spec.key,
                group=spec.group,
                raw=raw,
                normalised=normalised,
                weight=spec.weight,
                weighted=spec.weight * normalised,
                missing=is_missing,
            )
        )

    def group_score(group: Group) -> float:
        members = [d for d in dimension_scores if d.group == group]
        return sum(d.weighted for d in members) / sum(d.weight for d in members)

    quality = group_score("quality")
    semantic = group_score("semantic")
    total = (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)
    warnings = tuple(
        f"dimension {key!r} is missing: counted as raw 0 (as VBench's cal_final_score.py does)"
        for key in missing
    )
    return VBenchAggregate(
        total=100.0 * total,
        quality=100.0 * quality,
        semantic=100.0 * semantic,
        dimensions=tuple(dimension_scores),
        missing=tuple(missing),
        input_scale=scale,
        warnings=warnings,
        sources=tuple(sources),
    )


def aggregate_vbench_files(paths: str | Path | Sequence[str | Path]) -> VBenchAggregate:
    """:func:`load_dimension_scores` then :func:`aggregate_vbench` (values already fractions)."""
    scores, scale = load_dimension_scores(paths)
    path_list = [paths] if isinstance(paths, str | Path) else list(paths)
    result = aggregate_vbench(scores, input_scale="fraction", sources=[str(p) for p in path_list])
    return replace(result, input_scale=scale)


def render_vbench_table(result: VBenchAggregate) -> Any:
    """A ``rich.table.Table`` of the per-dimension breakdown and the three scores (rich imported lazily)."""
    from rich.table import Table

    table = Table(title=f"VBench (input given as {result.input_scale})", show_footer=False)
    for column, justify in (
        ("dimension", "left"),
        ("group", "left"),
        ("raw %", "right"),
        ("normalised", "right"),
        ("weight", "right"),
        ("weighted", "right"),
    ):
        table.add_column(column, justify=justify, no_wrap=column == "dimension")  # type: ignore[arg-type]
    for dim in result.dimensions:
        raw = "missing (0)" if dim.missing else f"{100 * dim.raw:.2f}"
        style = "yellow" if dim.missing else None
        table.add_row(
            dim.name.replace("_", " "),
            dim.group,
            raw,
            f"{dim.normalised:.4f}",
            f"{dim.weight:g}",
            f"{dim.weighted:.4f}",
            style=style,
        )
    table.add_section()
    quality_weights = sum(s.weight for s in VBENCH_DIMENSIONS if s.group == "quality")
    semantic_weights = sum(s.weight for s in VBENCH_DIMENSIONS if s.group == "semantic")
    table.add_row(
        "Quality score", "", f"{result.quality:.2f}", "", f"/ {quality_weights:g}", "", style="bold"
    )
    table.add_row(
        "Semantic score", "", f"{result.semantic:.2f}", "", f"/ {semantic_weights:g}", "", style="bold"
    )
    table.add_row("Total score", "", f"{result.total:.2f}", "", "(4Q+S)/5", "", style="bold")
    return table
