"""Turn the recipe's ``data`` section (or a folder argument) into a list of video items."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import UsageError

if TYPE_CHECKING:
    from pisces_cli.config import Recipe
    from pisces_cli.io.prompts import FolderListing, VideoItem


def listing_from_recipe(
    recipe: Recipe,
    videos_dir: str | None = None,
    *,
    exclude: Sequence[str | Path] = (),
    prompts_from_names: bool | None = None,
) -> FolderListing:
    """Items (and, for a folder or tar shards, the skipped entries) of ``videos_dir`` if given, else of ``data.videos`` /
    ``data.manifest`` / ``data.shards``.

    ``exclude``: folders left out of a folder listing (the run's own output folder).
    ``prompts_from_names``: overrides ``data.prompts_from_names`` when not None.
    """
    from pisces_cli.io.prompts import FolderListing, list_prompted_folder, list_tar_shards, read_manifest

    data = recipe.data
    from_names = data.prompts_from_names if prompts_from_names is None else prompts_from_names
    folder, key = (videos_dir, "VIDEOS_DIR") if videos_dir is not None else (data.videos, "data.videos")
    if folder:
        if not Path(folder).is_dir():
            raise UsageError(f"{key}: {folder} is not a folder")
        return list_prompted_folder(
            folder,
            prompt_source=data.prompt_source,
            prompts_from_names=from_names,
            exclude=exclude,
            mapping_file=data.prompts,
        )
    if data.manifest:
        if not Path(data.manifest).is_file():
            raise UsageError(f"data.manifest: {data.manifest} does not exist")
        return FolderListing(read_manifest(data.manifest), [], [])
    if data.shards:
        return list_tar_shards(data.shards)
    raise UsageError("no input videos: set data.videos, data.manifest or data.shards in the recipe")


def items_from_recipe(recipe: Recipe, videos_dir: str | None = None) -> list[VideoItem]:
    """The items of :func:`listing_from_recipe`."""
    return listing_from_recipe(recipe, videos_dir).items


def encoder_loader(
    recipe: Recipe, encoder: Any, items: Sequence[VideoItem], *, num_frames: int, batch_size: int, crop: str
) -> Any:
    """The decoding ``DataLoader`` of ``items`` for ``encoder``: its preprocessing, the recipe's fps,
    workers and seed (``crop``: the stage's crop key, ``reward.crop`` or ``data.crop``)."""
    from pisces_cli.io.dataset import make_loader
    from pisces_cli.io.preprocess import Preprocessing

    prep = encoder.preprocessing
    return make_loader(
        items,
        num_frames=num_frames,
        frame_rate=recipe.data.fps,
        preprocessing=Preprocessing(
            size=prep.size, mean=prep.mean, std=prep.std, interpolation=prep.interpolation
        ),
        batch_size=batch_size,
        num_workers=recipe.runtime.num_workers,
        crop=crop,  # type: ignore[arg-type]
        seed=recipe.seed,
        decode_timeout_s=recipe.runtime.decode_timeout_s,
    )
