"""Recipe section ``score``: rewards for a folder of videos."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ScoreSection:
    """``output: null`` writes to ``VIDEOS_DIR/pisces-scores/``."""

    output: str | None = None
    batch_size: int = 4
    report: bool = False
    force: bool = False
    bootstrap_samples: int = 2000

    def check(self) -> list[tuple[str, str]]:
        if self.batch_size < 1:
            return [("batch_size", f"must be >= 1, got {self.batch_size}")]
        return []
