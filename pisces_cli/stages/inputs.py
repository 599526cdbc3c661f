"""Turn the recipe's ``data`` section (or a folder argument) into a list of video items."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pisces_cli.errors import UsageError

if TYPE_CHECKING:
    from pisces_cli.config import Recipe
    from pisces_cli.io.prompts import VideoItem


def items_from_recipe(recipe: Recipe, videos_dir: str | None = None) -> list[VideoItem]:
    """Items of ``videos_dir`` if given, else of ``data.videos`` / ``data.manifest`` / ``data.shards``."""
    from pisces_cli.io.prompts import collect_prompted_videos, read_manifest, read_tar_shards

    data = recipe.data
    if videos_dir is not None:
        return _folder(videos_dir, data.prompt_source, collect_prompted_videos, "VIDEOS_DIR")
    if data.videos:
        return _folder(data.videos, data.prompt_source, collect_prompted_videos, "data.videos")
    if data.manifest:
        if not Path(data.manifest).is_file():
            raise UsageError(f"data.manifest: {data.manifest} does not exist")
        return read_manifest(data.manifest)
    if data.shards:
        return read_tar_shards(data.shards)
    raise UsageError("no input videos: set data.videos, data.manifest or data.shards in the recipe")


def _folder(folder: str, prompt_source: str, collect, key: str) -> list[VideoItem]:
    if not Path(folder).is_dir():
        raise UsageError(f"{key}: {folder} is not a folder")
    return collect(folder, prompt_source=prompt_source)  # type: ignore[arg-type]
