"""Recipe section ``generate``: sampling videos from the (fine-tuned) generator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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

    prompts: str | None = None
    output: str = "${output_dir}/videos"
    adapter: str | None = None
    videos_per_prompt: int = 1
    seeds: list[int] = field(default_factory=list)
    num_frames: int = 33
    height: int = 480
    width: int = 848
    steps: int = 50
    guidance: float | None = 6.0
    shift: float | None = None
    sampler: Literal["scheduler", "euler"] = "scheduler"
    fps: float = 24.0
    crf: int = 18
    batch_size: int = 1
    negative_prompt: str | None = None
    vae_tiling: bool = True

    def check(self) -> list[tuple[str, str]]:
        problems = []
        for name in ("videos_per_prompt", "num_frames", "height", "width", "steps", "batch_size"):
            if getattr(self, name) < 1:
                problems.append((name, f"must be >= 1, got {getattr(self, name)}"))
        if not 0 <= self.crf <= 51:
            problems.append(("crf", f"libx264 quality must be in 0..51 (0 = lossless), got {self.crf}"))
        if self.fps <= 0:
            problems.append(("fps", f"must be > 0, got {self.fps}"))
        if self.seeds and len(self.seeds) != self.videos_per_prompt:
            problems.append(("seeds", f"give {self.videos_per_prompt} seeds (videos_per_prompt) or none"))
        return problems
