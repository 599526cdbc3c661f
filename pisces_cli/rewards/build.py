"""Build the encoder and the reward module from a resolved recipe."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import UsageError
from pisces_cli.runtime import quiet_model_loading

__all__ = [
    "build_reward",
    "encoder_num_frames",
    "encoder_options",
    "load_encoder_from_recipe",
    "load_map_for_encoder",
    "quiet_model_loading",
]

if TYPE_CHECKING:
    import torch

    from pisces_cli.config import Recipe
    from pisces_cli.encoders.base import EncoderBackend
    from pisces_cli.ot.maps import TransportMap
    from pisces_cli.rewards.module import PiscesReward


def encoder_options(recipe: Recipe) -> dict[str, Any]:
    """Backend-specific loader options from ``models.encoder`` (``tokenizer``/``num_frames`` for internvideo2)."""
    section = recipe.models.encoder
    options = dict(section.options)
    if section.backend == "internvideo2":
        if section.tokenizer:
            options.setdefault("tokenizer_dir", section.tokenizer)
        if section.num_frames:
            options.setdefault("num_frames", section.num_frames)
    elif section.tokenizer:
        raise UsageError(
            f"models.encoder.tokenizer is only used by the internvideo2 backend, not {section.backend!r}"
        )
    return options


def load_encoder_from_recipe(
    recipe: Recipe, device: torch.device, dtype: str | None = None
) -> EncoderBackend:
    """Load ``models.encoder`` (UsageError with the key path when it is not set or not found), in ``dtype``
    (a dtype name; default ``models.encoder.dtype``)."""
    import torch

    from pisces_cli.encoders.registry import load_encoder
    from pisces_cli.runtime import check_reduced_precision, resolve_dtype

    quiet_model_loading()
    section = recipe.models.encoder
    if not section.path:
        raise UsageError("models.encoder.path is not set: give a local checkpoint (directory or file)")
    if not Path(section.path).expanduser().exists():
        raise UsageError(
            f"models.encoder.path: {section.path} not found (reward encoders load from local files; pisces "
            "never downloads them: see the README section 'Real model weights')"
        )
    if section.tokenizer and not Path(section.tokenizer).expanduser().is_dir():
        raise UsageError(
            f"models.encoder.tokenizer: {section.tokenizer} is not a folder (a local bert-large-uncased copy "
            "with vocab.txt)"
        )
    torch_dtype = resolve_dtype(dtype or section.dtype)
    key = (
        "finetune.reward_dtype" if dtype and recipe.finetune.reward_dtype == dtype else "models.encoder.dtype"
    )
    check_reduced_precision(torch_dtype, torch.device(device), key)
    return load_encoder(
        section.backend, section.path, device=device, dtype=torch_dtype, **encoder_options(recipe)
    )


def encoder_num_frames(recipe: Recipe, encoder: EncoderBackend) -> int:
    """Frames per clip: ``data.num_frames``, else ``models.encoder.num_frames``, else the encoder's, else 8."""
    return recipe.data.num_frames or recipe.models.encoder.num_frames or encoder.preprocessing.num_frames or 8


def load_map_for_encoder(
    path: str | Path, encoder: EncoderBackend, *, what: str = "reward.ot_map"
) -> tuple[TransportMap, dict[str, Any]]:
    """Load the OT map artifact at ``path`` for ``encoder``; returns it with a description (path, method, metrics).

    ``what`` names the setting the path came from in the error messages. A missing file, or a map fit on
    another encoder or of another dimension, is refused (UsageError, exit 2).
    """
    from pisces_cli.rewards.ot_map_artifact import load_ot_map_artifact

    if not Path(path).is_file():
        raise UsageError(f"{what}: {path} does not exist (run `pisces fit-ot` or set {what}=null)")
    ot_map, header = load_ot_map_artifact(
        path, encoder_fingerprint=encoder.fingerprint(), dim=encoder.embed_dim
    )
    info = {
        "ot_map": str(path),
        "method": header.extra.get("map", {}).get("method"),
        "metrics": header.metrics,
    }
    return ot_map, info


def build_reward(
    recipe: Recipe,
    encoder: EncoderBackend,
    *,
    ot_map_path: str | None = None,
    use_ot_map: bool = True,
    with_no_ot_semantic: bool = False,
) -> tuple[PiscesReward, dict[str, Any]]:
    """The reward module of ``recipe`` on ``encoder``; returns it with a description of its OT map.

    ``ot_map_path`` overrides ``reward.ot_map``. A map fit on another encoder, or of another
    dimension, is refused (UsageError, exit 2).
    """
    from pisces_cli.rewards.module import PiscesReward, token_ot_settings_from_recipe

    path = ot_map_path if ot_map_path is not None else recipe.reward.ot_map
    ot_map = None
    info: dict[str, Any] = {"ot_map": None}
    if use_ot_map and path:
        ot_map, info = load_map_for_encoder(path, encoder)
    reward = PiscesReward(
        encoder,
        ot_map=ot_map,
        weights={"quality": recipe.reward.weights.quality, "semantic": recipe.reward.weights.semantic},
        token_ot=token_ot_settings_from_recipe(recipe.reward.token_ot),
        crop=recipe.reward.crop,
        with_no_ot_semantic=with_no_ot_semantic,
    )
    return reward, info
