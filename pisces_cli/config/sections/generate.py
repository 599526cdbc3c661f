"""Recipe section ``generate``: sampling videos from the (fine-tuned) generator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pisces_cli.config.schema import Count, InputPath, LocalPath, NonNegativeFloat, PositiveFloat, Range, Seed


@dataclass
class GenerateSection:
    """``prompts``: a .txt (one per line) / .jsonl file or a bundled suite name (e.g. ``vbench``).

    Each prompt gets ``videos_per_prompt`` videos named ``{prompt}-{index}.mp4`` (VBench convention),
    seeds ``seeds[i]`` (or ``seed + i`` when ``seeds`` is empty). ``crf`` is the H.264 quality (18 visually
    lossless; 0 lossless — use 0 when generated videos must decode to identical pixels on every run).
    ``sampler``: ``scheduler`` (the checkpoint's own scheduler, as its diffusers pipeline samples: UniPC for Wan,
    flow-match Euler for HunyuanVideo) or ``euler`` (the Euler ODE over the shifted σ grid). ``shift`` null = the
    checkpoint's scheduler config.
    """

    prompts: InputPath | None = None
    output: LocalPath = "${output_dir}/videos"
    adapter: LocalPath | None = None
    videos_per_prompt: Count = 1
    seeds: list[Seed] = field(default_factory=list)
    num_frames: Count = 33
    height: Count = 480
    width: Count = 848
    steps: Count = 50
    guidance: NonNegativeFloat | None = 6.0
    shift: PositiveFloat | None = None
    sampler: Literal["scheduler", "euler"] = "scheduler"
    fps: PositiveFloat = 24.0
    crf: Annotated[int, Range(low=0, high=51)] = 18
    batch_size: Count = 1
    negative_prompt: str | None = None
    vae_tiling: bool = True

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.seeds and len(self.seeds) != self.videos_per_prompt:
            problems.append(("seeds", f"give {self.videos_per_prompt} seeds (videos_per_prompt) or none"))
        return problems
