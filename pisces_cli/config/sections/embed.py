"""Recipe section ``embed``: cached video/text embeddings for ``fit-ot``."""

from __future__ import annotations

from dataclasses import dataclass

from pisces_cli.config.schema import Count, LocalPath


@dataclass
class EmbedSection:
    """Write sharded embedding artifacts (``text_cls``, ``video_cls``; optionally token features)."""

    output: LocalPath = "${output_dir}/embeddings"
    batch_size: Count = 8
    shard_size: Count = 1024
    save_tokens: bool = False
    limit: Count | None = None
