"""Preflight of the reward encoder (``models.encoder``), its tokenizer and the OT map (``reward.ot_map``).

Cheap checks read config files and headers only. Deep checks (``--weights``) also compare the checkpoint's
tensor names and shapes with the model's, exactly as the loader will: the released InternVideo2 ``.pt`` is
memory-mapped (``torch.load(mmap=True, weights_only=True)``) and checked with the loader's own mapping and
ignore rules (:func:`~pisces_cli.encoders.internvideo2.checkpoint.check_mapped_weights`); exports are read
from their safetensors headers. Nothing is loaded into memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pisces_cli.errors import UsageError
from pisces_cli.preflight.report import PreflightReport, Status, human_count

if TYPE_CHECKING:
    from pisces_cli.config import Recipe
    from pisces_cli.encoders.base import EncoderIdentity

ENCODER_KEY = "models.encoder.path"
TOKENIZER_KEY = "models.encoder.tokenizer"
OT_MAP_KEY = "reward.ot_map"
#: what the error says to look at when a model file is missing
GUIDE = "see the README section 'Real model weights'"


def check_encoder(
    recipe: Recipe, report: PreflightReport, *, deep: bool, identify: bool = True
) -> EncoderIdentity | None:
    """Rows for ``models.encoder`` (and, for InternVideo2, its tokenizer); returns the encoder's identity
    (fingerprint without the weight hash, embedding width) when the checkpoint is usable, else None.
    ``identify=False`` only checks that the checkpoint is there (imports no encoder code) and returns None."""

    section = recipe.models.encoder
    if not section.path:
        report.add(
            "reward encoder", ENCODER_KEY, Status.FAIL, f"not set: give the local checkpoint ({GUIDE})"
        )
        return None
    path = Path(section.path).expanduser()
    if not path.exists():
        report.add(
            "reward encoder",
            ENCODER_KEY,
            Status.FAIL,
            f"{section.path} not found: reward encoders load from local files only, pisces never downloads "
            f"them ({GUIDE})",
        )
        return None
    if not identify:
        report.add("reward encoder", ENCODER_KEY, Status.OK, f"{section.backend}: {path} found")
        return None
    from pisces_cli.encoders.registry import encoder_identity

    try:
        identity = encoder_identity(section.backend, str(path))
        detail = _inspect_weights(section.backend, path, deep)
    except UsageError as error:
        report.add("reward encoder", ENCODER_KEY, Status.FAIL, str(error))
        return None
    report.add("reward encoder", ENCODER_KEY, Status.OK, f"{section.backend}: {detail}")
    if section.backend == "internvideo2":
        _check_bert_tokenizer(recipe, path, report, deep)
    return identity


def _inspect_weights(backend: str, path: Path, deep: bool) -> str:
    """One line on the checkpoint; with ``deep``, its tensors checked against the model (UsageError if not)."""
    if backend == "internvideo2":
        return _internvideo2_weights(path, deep)
    if not deep:
        return f"{path} (config read)"
    from pisces_cli.encoders.fingerprint import weight_files
    from pisces_cli.io.weight_check import numel, safetensors_shapes

    files = [f for f in weight_files(path) if f.suffix == ".safetensors"]
    if not files:
        raise UsageError(f"{path}: no *.safetensors weights (pisces loads safetensors only)")
    shapes = safetensors_shapes(files)
    elements = sum(numel(shape) for shape in shapes.values())
    return f"{path}: {len(shapes)} tensors, {human_count(elements)} parameters in {len(files)} file(s)"


def _internvideo2_weights(path: Path, deep: bool) -> str:
    import torch

    from pisces_cli.encoders.internvideo2.checkpoint import (
        check_mapped_weights,
        read_released_weights,
        refuse_partial_load,
    )
    from pisces_cli.encoders.internvideo2.config import InternVideo2Config
    from pisces_cli.encoders.internvideo2.model import CONFIG_FILE, WEIGHTS_FILE
    from pisces_cli.io.weight_check import safetensors_shapes

    if path.is_dir():
        config = InternVideo2Config.load_json(path / CONFIG_FILE)
        kind = "pisces export"
    else:
        config = InternVideo2Config.stage2_1b()  # the configuration the loader builds for a released .pt
        kind = "released checkpoint"
    if not deep:
        return f"{path} ({kind})"
    if path.is_dir():
        weights_path = path / WEIGHTS_FILE
        if not weights_path.is_file():
            raise UsageError(f"{weights_path}: weights file not found")
        weights = {k: torch.empty(s, device="meta") for k, s in safetensors_shapes([weights_path]).items()}
    else:
        weights = read_released_weights(path, mmap=True)
    check, frames = check_mapped_weights(weights, config, str(path))
    refuse_partial_load(check, str(path))
    return (
        f"{path} ({kind}): {check.matched_tensors} tensors, {human_count(check.matched_elements)} parameters "
        f"match the model; pos_embed holds {frames} frame(s), interpolated to the frames of each input"
    )


def _check_bert_tokenizer(recipe: Recipe, model_path: Path, report: PreflightReport, deep: bool) -> None:
    from pisces_cli.encoders.internvideo2.backend import find_tokenizer_dir
    from pisces_cli.rewards.build import encoder_options

    section = recipe.models.encoder
    # the loader's own rule: models.encoder.options.tokenizer_dir wins over models.encoder.tokenizer
    chosen = section.options.get("tokenizer_dir")
    key = "models.encoder.options.tokenizer_dir" if chosen else TOKENIZER_KEY
    try:
        directory = find_tokenizer_dir(model_path, encoder_options(recipe).get("tokenizer_dir"))
    except UsageError as error:
        report.add("tokenizer", key, Status.FAIL, str(error))
        return
    vocab = directory / "vocab.txt"
    if not directory.is_dir() or not (vocab.is_file() or (directory / "tokenizer.json").is_file()):
        report.add(
            "tokenizer",
            key,
            Status.FAIL,
            f"{directory}: no vocab.txt or tokenizer.json (a local bert-large-uncased copy; {GUIDE})",
        )
        return
    detail = f"{directory}"
    if vocab.is_file():
        detail += f": vocab.txt with {sum(1 for _ in vocab.open(encoding='utf-8'))} tokens"
    if deep:
        from pisces_cli.encoders.internvideo2.tokenizer import check_vocabulary_fits, load_bert_tokenizer

        try:
            tokenizer = load_bert_tokenizer(directory)
        except UsageError as error:
            report.add("tokenizer", key, Status.FAIL, str(error))
            return
        try:
            check_vocabulary_fits(
                tokenizer, directory, _vocab_limit(model_path), released=not model_path.is_dir()
            )
        except UsageError as error:
            report.add("tokenizer", key, Status.FAIL, str(error))
            return
    report.add("tokenizer", key, Status.OK, detail)


def _vocab_limit(model_path: Path) -> int:
    from pisces_cli.encoders.internvideo2.config import InternVideo2Config
    from pisces_cli.encoders.internvideo2.model import CONFIG_FILE

    if model_path.is_dir():
        return InternVideo2Config.load_json(model_path / CONFIG_FILE).text.vocab_size
    return InternVideo2Config.stage2_1b().text.vocab_size


def check_ot_map(
    recipe: Recipe,
    report: PreflightReport,
    identity: EncoderIdentity | None,
    *,
    path: str | None,
    key: str,
    deep: bool,
    produced_by: str | None = None,
    compared: bool = True,
) -> None:
    """The OT map's header against the encoder: schema, width and fingerprint (with ``deep``, the encoder's
    weight hash too). ``produced_by`` names a stage of the same run that writes a missing map."""
    from pisces_cli.rewards.ot_map_artifact import check_ot_map_header

    if not path:
        report.add("OT map", key, Status.SKIP, "null: the quality reward uses no OT map")
        return
    if not Path(path).is_file():
        if produced_by:
            report.add("OT map", key, Status.SKIP, f"{path} is written by {produced_by} (not there yet)")
        else:
            report.add(
                "OT map",
                key,
                Status.FAIL,
                f"{path} does not exist (run `pisces fit-ot`, import the released map with "
                f"`pisces fit-ot --import`, or set {key}=null)",
            )
        return
    fingerprint = None
    if identity is not None:
        fingerprint = dict(identity.fingerprint)
        if deep:
            from pisces_cli.encoders.registry import encoder_identity

            full = encoder_identity(
                recipe.models.encoder.backend, recipe.models.encoder.path, weights_sha256=True
            )
            fingerprint = dict(full.fingerprint)
    try:
        header, width = check_ot_map_header(
            path, encoder_fingerprint=fingerprint, dim=None if identity is None else identity.embed_dim
        )
    except UsageError as error:
        report.add("OT map", key, Status.FAIL, str(error))
        return
    method = header.extra.get("map", {}).get("method", "?")
    if identity is None:
        why = "the encoder check failed" if compared else "compared when the encoder is loaded"
        report.add("OT map", key, Status.SKIP, f"{path}: {method} map; not compared with the encoder ({why})")
        return
    compared = "fingerprint incl. weight hash" if deep else "backend and model name"
    report.add(
        "OT map",
        key,
        Status.OK,
        f"{path}: {method} map, {width if width is not None else identity.embed_dim}-d, "
        f"fit on {identity.fingerprint['model']} ({compared} match)",
    )
