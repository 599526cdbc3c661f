"""Compare a checkpoint's tensor names and shapes with a model's, without reading tensor data.

One rule for every strict load and for ``pisces validate --weights``: a key the model has and the file
lacks is *missing*, a key the file has and the model lacks is *unexpected*, and a key both have with
different shapes is *mis-shaped*. Shapes come from safetensors headers, memory-mapped ``torch.load``
results or meta-device models, so nothing is read into memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: keys listed per category in :meth:`KeyCheck.describe` (the count is always given).
LISTED_KEYS = 20


@dataclass
class KeyCheck:
    """Differences between a file's tensors and a model's (both under the model's names)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    #: tensors and elements of the file that the model takes (for reports)
    matched_tensors: int = 0
    matched_elements: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = LISTED_KEYS) -> str:
        """``missing keys (n): [...]; unexpected keys (n): [...]; shape mismatches (n): [...]``."""
        parts = []
        for label, keys in (
            ("missing keys", self.missing),
            ("unexpected keys", self.unexpected),
            ("shape mismatches", self.mismatched),
        ):
            if keys:
                shown = keys[:limit] + ([f"... {len(keys) - limit} more"] if len(keys) > limit else [])
                parts.append(f"{label} ({len(keys)}): {shown}")
        return "; ".join(parts)


def compare_shapes(expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]]) -> KeyCheck:
    """Key-by-key comparison of ``found`` (the file) against ``expected`` (the model)."""
    expected_shapes = {key: tuple(int(s) for s in shape) for key, shape in expected.items()}
    found_shapes = {key: tuple(int(s) for s in shape) for key, shape in found.items()}
    common = set(expected_shapes) & set(found_shapes)
    mismatched = sorted(
        f"{key}: file {found_shapes[key]} vs model {expected_shapes[key]}"
        for key in common
        if found_shapes[key] != expected_shapes[key]
    )
    matched = [key for key in common if found_shapes[key] == expected_shapes[key]]
    return KeyCheck(
        missing=sorted(set(expected_shapes) - set(found_shapes)),
        unexpected=sorted(set(found_shapes) - set(expected_shapes)),
        mismatched=mismatched,
        matched_tensors=len(matched),
        matched_elements=sum(numel(expected_shapes[key]) for key in matched),
    )


def numel(shape: Sequence[int]) -> int:
    """Elements of a tensor of ``shape`` (1 for a scalar)."""
    count = 1
    for size in shape:
        count *= int(size)
    return count


def safetensors_shapes(files: Iterable[str | Path]) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in ``files`` (headers only; a name in two files keeps the last)."""
    from pisces_cli.artifacts import tensor_shapes

    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        shapes.update({name: tuple(shape) for name, (shape, _dtype) in tensor_shapes(path).items()})
    return shapes
