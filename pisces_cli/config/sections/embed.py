"""Recipe section ``embed``: cached video/text embeddings for ``fit-ot``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EmbedSection:
    """Write sharded embedding artifacts (``text_cls``, ``video_cls``; optionally token features)."""

    output: str = "${output_dir}/embeddings"
    batch_size: int = 8
    shard_size: int = 1024
    save_tokens: bool = False
    limit: int | None = None

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.batch_size < 1:
            problems.append(("batch_size", f"must be >= 1, got {self.batch_size}"))
        if self.shard_size < 1:
            problems.append(("shard_size", f"must be >= 1, got {self.shard_size}"))
        if self.limit is not None and self.limit < 1:
            problems.append(("limit", f"must be >= 1, got {self.limit}"))
        return problems
