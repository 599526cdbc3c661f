"""Recipe section ``score``: rewards for a folder of videos."""

from __future__ import annotations

from dataclasses import dataclass

from pisces_cli.config.schema import Count, LocalPath


@dataclass
class ScoreSection:
    """``output: null`` writes to ``VIDEOS_DIR/pisces-scores/``."""

    output: LocalPath | None = None
    batch_size: Count = 4
    report: bool = False
    force: bool = False
    bootstrap_samples: Count = 2000
