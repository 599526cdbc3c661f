"""What a file or folder pisces wrote is, for ``pisces inspect``.

Stage artifacts carry a pisces header (:mod:`pisces_cli.artifacts`). The other files pisces writes are
in formats other tools read, so they keep those formats and are recognised here by name and place:

- a fine-tuning checkpoint ``checkpoint-N/`` (:mod:`pisces_cli.training.checkpoint`): the LoRA for
  diffusers (``pytorch_lora_weights*.safetensors``), the same LoRA for peft (``adapter_model.safetensors`` +
  ``adapter_config.json``), ``pisces_lora.json``, a fully fine-tuned ``transformer/``, and the resumable
  ``training_state/`` (``trainable.safetensors``, ``optimizer.safetensors``, ``state.json``);
- the fit-ot training state ``ot/state/`` (:mod:`pisces_cli.ot.maps.fit`): ``last/`` (``trainer-N.safetensors``,
  ``map.safetensors`` + ``map.json``, ``state.json``) and ``best_<metric>/`` (``map.*``, ``metrics.json``);
- a finetune output folder holding ``checkpoint-N/`` folders;
- the plain-text outputs of the stages, by name (:data:`NAMED_OUTPUTS`: ``scores.jsonl``, ``summary.json``, ...).

:func:`identify` returns a :class:`KnownFile` (what it is, facts read from its JSON, the safetensors file
whose tensors to list) or ``None``. Malformed JSON never raises: its facts say it is unreadable.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pisces_cli.backbones.lora_files import DIFFUSERS_WEIGHT_NAMES, METADATA_FILE
from pisces_cli.stages.generate import MANIFEST_SCHEMA as GENERATED_VIDEOS_SCHEMA
from pisces_cli.training.checkpoint_layout import CHECKPOINT_PATTERN, STATE_DIR, checkpoint_dirs

__all__ = ["KnownFile", "identify"]

_TRAINER_STATE = re.compile(r"^trainer-(\d+)\.safetensors$")
#: a rank's part of a stage output under torchrun: ``scores.rank1.jsonl``, ``manifest.rank0.json``, ...
_RANK_FILE = re.compile(r"^(scores|videos|heatmaps|errors|manifest|summary)\.rank(\d+)(\.jsonl|\.json)$")


@dataclass
class KnownFile:
    """A recognised file or folder: ``what`` it is (one sentence), ``facts`` and the tensors file to list."""

    kind: str
    what: str
    facts: dict[str, Any] = field(default_factory=dict)
    tensors: Path | None = None
    contents: list[str] = field(default_factory=list)


def _json_facts(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Top-level scalars of a JSON object file (only ``keys`` when given); never raises."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {path.name: "unreadable (not JSON)"}
    if not isinstance(data, dict):
        return {path.name: f"unexpected content (a {type(data).__name__}, expected an object)"}
    wanted = keys if keys is not None else tuple(data)
    return {
        key: data[key]
        for key in wanted
        if key in data and (data[key] is None or isinstance(data[key], (str, int, float, bool, list)))
    }


def _files_below(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _checkpoint_root(path: Path) -> Path | None:
    """The ``checkpoint-N`` folder holding ``path`` (or ``path`` itself), if any."""
    for folder in (path, *path.parents):
        if folder.is_dir() and (
            CHECKPOINT_PATTERN.match(folder.name)
            or (folder / METADATA_FILE).is_file()
            or (folder / STATE_DIR / "state.json").is_file()
        ):
            return folder
    return None


def _checkpoint_facts(root: Path) -> dict[str, Any]:
    facts: dict[str, Any] = {"checkpoint": str(root)}
    if (root / METADATA_FILE).is_file():
        facts.update(
            _json_facts(
                root / METADATA_FILE,
                ("step", "backbone", "algorithm", "rank", "alpha", "components", "recipe_hash"),
            )
        )
    state = root / STATE_DIR / "state.json"
    if state.is_file():
        facts.update(
            {
                f"training_state.{k}": v
                for k, v in _json_facts(state, ("format_version", "step", "world_size", "max_steps")).items()
            }
        )
    return facts


def _in_checkpoint(path: Path) -> KnownFile | None:
    root = _checkpoint_root(path if path.is_dir() else path.parent)
    if root is None:
        return None
    facts = _checkpoint_facts(root)
    name = path.name
    if path.is_dir():
        if path == root:
            return KnownFile(
                "finetune.checkpoint",
                "a pisces fine-tuning checkpoint: the LoRA (diffusers and peft formats) and the state to resume",
                facts,
                contents=_files_below(root),
            )
        if name == STATE_DIR:
            return KnownFile(
                "finetune.training_state", "the resumable training state of a fine-tuning checkpoint", facts
            )
        return None
    component = next((c for c, weights in DIFFUSERS_WEIGHT_NAMES.items() if weights == name), None)
    if component is not None:
        return KnownFile(
            "finetune.lora_diffusers",
            f"LoRA weights of the {component}, diffusers format (pipeline.load_lora_weights(checkpoint folder))",
            facts,
            path,
        )
    if name == "adapter_model.safetensors":
        return KnownFile(
            "finetune.lora_peft",
            "LoRA weights, peft format (PeftModel.from_pretrained; settings in adapter_config.json)",
            facts,
            path,
        )
    if name == "adapter_config.json":
        return KnownFile(
            "finetune.lora_peft_config",
            "peft LoRA settings of adapter_model.safetensors",
            {**facts, **_json_facts(path, ("r", "lora_alpha", "peft_type"))},
        )
    if name == METADATA_FILE:
        return KnownFile("finetune.lora_metadata", "pisces' description of the checkpoint's LoRA", facts)
    if path.parent.name == STATE_DIR:
        what = {
            "trainable.safetensors": "the trainable parameters (fp32) to resume fine-tuning",
            "optimizer.safetensors": "the optimizer state and torch RNG to resume fine-tuning",
            "state.json": "step, optimizer groups, scheduler, RNG and counters to resume fine-tuning",
        }.get(name)
        if what is not None:
            return KnownFile(
                f"finetune.training_state.{path.stem}",
                what,
                facts,
                path if path.suffix == ".safetensors" else None,
            )
    if path.suffix == ".safetensors" and path.parent.name.startswith("transformer"):
        return KnownFile(
            "finetune.full_transformer",
            f"the fully fine-tuned {path.parent.name} (diffusers save_pretrained format)",
            facts,
            path,
        )
    return None


def _ot_state_root(path: Path) -> Path | None:
    """The fit-ot ``state`` folder holding ``path`` (it has ``last/state.json``), if any."""
    for folder in (path, *path.parents):
        if (folder / "last" / "state.json").is_file():
            return folder
    return None


def _in_ot_state(path: Path) -> KnownFile | None:
    root = _ot_state_root(path if path.is_dir() else path.parent)
    if root is None:
        return None
    facts: dict[str, Any] = {"state": str(root)}
    facts.update(
        {
            f"last.{k}": v
            for k, v in _json_facts(
                root / "last" / "state.json", ("step", "world_size", "tensor_file")
            ).items()
        }
    )
    if path.is_dir():
        if path == root:
            return KnownFile(
                "fit_ot.state",
                "the resumable training state of a neural OT map fit (`pisces fit-ot`)",
                facts,
                contents=_files_below(root),
            )
        if path.parent == root and (path.name == "last" or path.name.startswith("best_")):
            return KnownFile("fit_ot.state_part", _ot_part(path.name), facts)
        return None
    where = path.parent.name
    match = _TRAINER_STATE.match(path.name)
    if match and where == "last":
        return KnownFile(
            "fit_ot.trainer_state",
            f"neural OT trainer state at step {int(match.group(1))} (networks, optimizers, schedulers) to resume fit-ot",
            facts,
            path,
        )
    if path.name in ("map.safetensors", "map.json") and (where == "last" or where.startswith("best_")):
        part = _ot_part(where)
        facts.update({f"map.{k}": v for k, v in _json_facts(path.parent / "map.json").items()})
        return KnownFile(
            "fit_ot.map",
            f"the transport map of {part}",
            facts,
            path if path.suffix == ".safetensors" else None,
        )
    if path.name == "metrics.json" and where.startswith("best_"):
        return KnownFile(
            "fit_ot.best_metrics", f"held-out metrics of {_ot_part(where)}", {**facts, **_json_facts(path)}
        )
    if path.name == "state.json" and where == "last":
        return KnownFile(
            "fit_ot.state_meta", "step, settings, best metrics and history to resume fit-ot", facts
        )
    return None


def _ot_part(name: str) -> str:
    if name == "last":
        return "the latest fit-ot step (resume point)"
    return f"the best fit-ot step by held-out {name.removeprefix('best_')}"


def _finetune_output(path: Path) -> KnownFile | None:
    found = checkpoint_dirs(path) if path.is_dir() else []
    if not found:
        return None
    steps = [step for step, _ in found]
    return KnownFile(
        "finetune.output",
        "a pisces fine-tuning output folder",
        {"checkpoints": [folder.name for _, folder in found], "latest_step": steps[-1]},
    )


#: Plain-text outputs of the stages, by file name.
NAMED_OUTPUTS: dict[str, str] = {
    "scores.jsonl": "per-video rewards written by `pisces score` (one JSON row per video)",
    "scores.csv": "per-video rewards written by `pisces score` (the scores.jsonl table as CSV)",
    "summary.json": "the summary of a `pisces score` or `pisces embed` run (counts, means with 95 % CIs)",
    "settings.json": "the run key of a `pisces score` or `pisces eval` output folder: every setting its rows "
    "were made with (a re-run under another key is refused)",
    "heatmaps.jsonl": "the top words' OT-plan mass per frame and patch of each scored video (`score --report` "
    "draws report.html from it)",
    "videos.jsonl": "per-video rows of `pisces eval` (resumable; eval.json is built from them)",
    "failed.jsonl": "the videos a `pisces score` or `pisces eval` run could not use, one JSON row each with the "
    "reason",
    "report.html": "the self-contained HTML report of `pisces score --report`",
    "eval.json": "per-video metrics and aggregates written by `pisces eval`",
    "compare.json": "paired comparison of two eval runs written by `pisces eval compare`",
    "compare.html": "the HTML report of `pisces eval compare`",
    "errors.jsonl": "the videos `pisces embed` could not use, one JSON row each with the reason",
    "prompts.jsonl": "file → prompt of the videos in this folder (written by `pisces generate`)",
    "recipe.yaml": "the resolved recipe a pisces run used (absolute paths: runs from any folder)",
    "report.md": "the fit-ot report (held-out metrics, plots)",
    "metrics.jsonl": "fine-tuning metrics, one JSON row per logged step",
    "results.json": "the results of `pisces world run`",
}


def _named_output(path: Path) -> KnownFile | None:
    if path.is_dir():
        return None
    if path.name.endswith(".keys.json"):
        return KnownFile(
            "artifact.shard_keys", "the row keys of one shard of a sharded artifact (a JSON list)"
        )
    if path.name == "manifest.json":
        facts = _json_facts(path, ("schema", "complete", "num_items", "num_shards"))
        if facts.get("schema") == GENERATED_VIDEOS_SCHEMA:
            return KnownFile(
                "generate.manifest", "the settings and videos of a `pisces generate` folder", facts
            )
        return KnownFile(
            "artifact.manifest", "the manifest of a sharded artifact (inspect its folder)", facts
        )
    rank_file = _RANK_FILE.match(path.name)
    if rank_file:
        return KnownFile(
            f"output.rank.{rank_file.group(1)}",
            f"rank {rank_file.group(2)}'s part of {rank_file.group(1)}{rank_file.group(3)} under torchrun "
            "(rank 0 merges the ranks' parts)",
        )
    what = NAMED_OUTPUTS.get(path.name)
    if what is None:
        return None
    facts = _json_facts(path) if path.suffix == ".json" else {}
    return KnownFile(f"output.{path.name}", what, {k: v for k, v in facts.items() if not isinstance(v, list)})


def _generate_output(path: Path) -> KnownFile | None:
    manifest = path / "manifest.json"
    if not (path.is_dir() and manifest.is_file()):
        return None
    facts = _json_facts(manifest, ("schema", "complete"))
    if facts.get("schema") != GENERATED_VIDEOS_SCHEMA:
        return None
    videos = sorted(p.name for p in path.glob("*.mp4"))
    return KnownFile(
        "generate.output",
        "a `pisces generate` folder: the videos, prompts.jsonl (file → prompt) and manifest.json (settings)",
        {**facts, "videos": len(videos)},
    )


def identify(path: Path) -> KnownFile | None:
    """What ``path`` is among the non-artifact files and folders pisces writes; ``None`` if unknown."""
    for rule in (_in_checkpoint, _in_ot_state, _finetune_output, _generate_output, _named_output):
        known = rule(path)
        if known is not None:
            return known
    return None
