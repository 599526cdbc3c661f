"""Recipe section ``eval``: evaluate a folder of generated videos (``pisces eval``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pisces_cli.config.schema import Count, InputPath, LocalPath


@dataclass
class EvalSection:
    """Settings of ``pisces eval VIDEOS_DIR``.

    ``output: null`` writes to ``VIDEOS_DIR/pisces-eval/``. ``prompts`` names the prompt suite the
    videos were made from (``vbench``, ``vbench:<dimension>``, ``moviegenbench`` or a file); null uses
    ``generate.prompts``. eval.json reports which of its prompts have no video.

    Metric toggles: ``rewards`` (PISCES quality/semantic/total and the no-OT cosine),
    ``consistency`` (subject/background consistency from the encoder's frame features),
    ``flicker`` (temporal flickering), ``dynamic_degree`` (Farnebäck proxy).
    ``vbench: true`` (or ``--vbench``) also runs the installed ``vbench`` package on
    ``vbench_dimensions`` (empty = every dimension the chosen mode supports), with weights looked up
    under ``vbench_cache`` (null: ``$VBENCH_CACHE_DIR`` or ``~/.cache/vbench``). ``bootstrap_samples``:
    resamples of the 95 % CI of every aggregate.
    """

    output: LocalPath | None = None
    prompts: InputPath | None = None
    batch_size: Count = 4
    rewards: bool = True
    consistency: bool = True
    flicker: bool = True
    dynamic_degree: bool = True
    vbench: bool = False
    vbench_dimensions: list[str] = field(default_factory=list)
    vbench_cache: LocalPath | None = None
    bootstrap_samples: Count = 2000
