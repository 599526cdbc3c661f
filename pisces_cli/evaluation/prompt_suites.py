"""Prompt suites for evaluation: the shipped benchmark lists and local prompt files.

Suite names accepted by :func:`load_suite`:

* ``"vbench"`` — VBench's standard suite, all 946 entries of ``VBench_full_info.json`` (944 distinct
  prompts; two appear under two dimensions), in file order, with their dimensions and auxiliary_info;
* ``"vbench:<dimension>"`` — the entries whose dimension list contains ``<dimension>`` (underscores or
  spaces), e.g. ``"vbench:subject_consistency"`` (72 prompts);
* ``"moviegenbench"`` — a SUBSET: the first 100 of the 1003 Movie Gen Video Bench prompts;
* a path to a local ``.txt`` (one prompt per line; blank lines and lines starting with ``#`` skipped),
  ``.jsonl`` (one object per line with ``prompt`` / ``prompt_en`` / ``text``, optional ``dimension``
  or ``dimensions`` and ``auxiliary_info``) or ``.json`` file (a list of such objects, e.g. a VBench
  full-info file).

Sources and licences of the shipped files: ``pisces_cli/data/prompts/SOURCES.txt``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pisces_cli.errors import UsageError
from pisces_cli.evaluation.vbench_aggregate import DIMENSION_BY_KEY, canonical_dimension_name
from pisces_cli.io.jsonl import iter_jsonl
from pisces_cli.textfile import read_text

_DATA_PACKAGE = "pisces_cli.data.prompts"
_VBENCH_FILE = "vbench_full_info.json"
_MOVIEGEN_FILE = "moviegenbench_first100.txt"


@dataclass(frozen=True)
class Prompt:
    """One prompt of a suite.

    Attributes:
        text: the prompt string, exactly as in the source (VBench matches file names on it).
        dimensions: VBench dimension keys the prompt serves (empty outside VBench).
        auxiliary_info: VBench's labels parsed from the prompt (object, color, scene, ...), or None.
    """

    text: str
    dimensions: tuple[str, ...] = field(default=())
    auxiliary_info: dict[str, Any] | None = None


_SUITE_DESCRIPTIONS = {
    "vbench": "VBench standard suite: 946 entries / 944 distinct prompts over 16 dimensions (vbench 0.1.5)",
    "moviegenbench": "Movie Gen Video Bench, first 100 of 1003 prompts (subset; CC-BY-NC 4.0)",
}


def list_suites() -> dict[str, str]:
    """Built-in suite names -> one-line descriptions, including every ``vbench:<dimension>``."""
    suites = dict(_SUITE_DESCRIPTIONS)
    counts: dict[str, int] = {}
    for prompt in _vbench_prompts():
        for dimension in prompt.dimensions:
            counts[dimension] = counts.get(dimension, 0) + 1
    for dimension in DIMENSION_BY_KEY:
        suites[f"vbench:{dimension}"] = f"VBench prompts for {dimension} ({counts.get(dimension, 0)} prompts)"
    return suites


def _read_data_text(filename: str) -> str:
    return resources.files(_DATA_PACKAGE).joinpath(filename).read_text(encoding="utf-8")


def _prompt_from_record(record: Any, where: str) -> Prompt:
    if not isinstance(record, dict):
        raise UsageError(f"{where}: expected an object with a 'prompt' field, got {type(record).__name__}")
    text = next((record[key] for key in ("prompt", "prompt_en", "text") if key in record), None)
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"{where}: expected a non-empty string under 'prompt', 'prompt_en' or 'text'")
    dimensions = record.get("dimensions", record.get("dimension", ()))
    if isinstance(dimensions, str):
        dimensions = [dimensions]
    if not isinstance(dimensions, list | tuple) or not all(isinstance(d, str) for d in dimensions):
        raise UsageError(f"{where}: 'dimension' must be a string or a list of strings")
    auxiliary_info = record.get("auxiliary_info")
    if auxiliary_info is not None and not isinstance(auxiliary_info, dict):
        raise UsageError(f"{where}: 'auxiliary_info' must be an object")
    return Prompt(text=text, dimensions=tuple(dimensions), auxiliary_info=auxiliary_info)


def _vbench_prompts() -> list[Prompt]:
    records = json.loads(_read_data_text(_VBENCH_FILE))
    return [_prompt_from_record(r, f"{_VBENCH_FILE} entry {i}") for i, r in enumerate(records)]


def _text_prompts(text: str) -> list[Prompt]:
    lines = (line.strip() for line in text.splitlines())
    return [Prompt(text=line) for line in lines if line and not line.startswith("#")]


def _load_path(path: Path) -> list[Prompt]:
    if not path.is_file():
        raise UsageError(
            f"prompt suite {str(path)!r} is neither a built-in suite ({', '.join(_SUITE_DESCRIPTIONS)}, "
            "vbench:<dimension>) nor an existing file"
        )
    suffix = path.suffix.lower()
    text = read_text(path)
    if suffix == ".txt":
        prompts = _text_prompts(text)
    elif suffix == ".jsonl":
        prompts = [_prompt_from_record(record, f"{path}: line {n}") for n, record in iter_jsonl(path)]
    elif suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(records, list):
            raise UsageError(f"{path}: expected a JSON list of prompt objects")
        prompts = [_prompt_from_record(r, f"{path}: entry {i}") for i, r in enumerate(records)]
    else:
        raise UsageError(f"{path}: expected a .txt, .jsonl or .json prompt file")
    if not prompts:
        raise UsageError(f"{path}: contains no prompts")
    return prompts


def load_suite(name: str | Path) -> list[Prompt]:
    """Prompts of a built-in suite or a local file (see the module docstring for the accepted names).

    Raises:
        UsageError: unknown suite or dimension (with a suggestion), missing or malformed file.
    """
    if isinstance(name, str):
        lowered = name.strip().lower()
        if lowered == "vbench":
            return _vbench_prompts()
        if lowered.startswith("vbench:"):
            dimension = canonical_dimension_name(name.split(":", 1)[1])
            return [p for p in _vbench_prompts() if dimension in p.dimensions]
        if lowered == "moviegenbench":
            return _text_prompts(_read_data_text(_MOVIEGEN_FILE))
    return _load_path(Path(name))
