"""Validation during training (``finetune.validation``): fixed prompts and seeds, sampled with the current adapters.

Every ``validation.every`` optimizer steps (0 = off) :meth:`Validator.run` samples the validation prompts — prompt
``i`` with seed ``validation.seed + i``, the same noise at every validation, so successive videos differ only by
the training — in ``validation.steps`` steps at the training geometry (``finetune.num_frames`` × ``height`` ×
``width``), the way ``pisces generate`` samples (``generate.sampler``, ``shift``, ``guidance``) but with the
training prompt cache's embeddings, so with an empty negative prompt (``generate.negative_prompt`` is not used),
with the transformers in eval mode and no gradients. The reward module scores the videos. Rank 0 logs
``validation/<component>`` (mean over the prompts), ``validation/total`` and ``validation/seconds`` (the cost)
in ``logs/metrics.jsonl`` (and TensorBoard / W&B with the videos when enabled) and writes
``{finetune.output}/validation/step-N/{prompt}-0.mp4`` plus ``rewards.json`` (per-video rewards).

Under ``torchrun`` every rank samples every validation prompt (a sharded transformer needs every rank in each
forward); rank 0 scores, writes and logs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pisces_cli.training.algorithm import TrainContext

PREFIX = "validation/"


class Validator:
    """Samples and scores the validation prompts of a run (see the module docstring)."""

    def __init__(
        self, ctx: TrainContext, generate_section: Any, training_prompts: list[str], output: Path
    ) -> None:
        self.ctx = ctx
        self.section = ctx.section.validation
        self.generate = generate_section
        self.output = Path(output) / "validation"
        self.prompts = (
            list(self.section.prompts) or list(dict.fromkeys(training_prompts))[: self.section.num_prompts]
        )

    @property
    def enabled(self) -> bool:
        return self.section.every > 0 and bool(self.prompts)

    def due(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based count of finished steps) is a validation step."""
        return self.enabled and step % self.section.every == 0

    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        """Pixels ``[P, T, 3, H, W]`` in [0, 1] of the validation prompts, one sample at a time."""
        from pisces_cli.backbones.sampling import initial_noise, sample_latents
        from pisces_cli.training.algorithm import eval_mode

        section, adapter, train = self.generate, self.ctx.adapter, self.ctx.section
        videos = []
        with eval_mode(adapter):
            for index, prompt in enumerate(self.prompts):
                embeds = self.ctx.encode_prompts([prompt])
                noise = initial_noise(
                    adapter, [self.section.seed + index], train.num_frames, train.height, train.width
                )
                latents = sample_latents(
                    adapter,
                    embeds,
                    noise,
                    steps=self.section.steps,
                    shift=section.shift,
                    guidance=section.guidance,
                    sampler=section.sampler,
                )
                pixels = adapter.decode(latents, grad=False, checkpoint=False, tiling=train.vae.tiling)
                videos.append(pixels.cpu())
        return torch.cat(videos)

    @torch.no_grad()
    def score(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{component: [P], "total": [P]}`` fp32 CPU rewards of the validation videos."""
        rewards: dict[str, list[torch.Tensor]] = {}
        for index, prompt in enumerate(self.prompts):
            output = self.ctx.reward(pixels[index : index + 1].to(self.ctx.device), [prompt])
            for name, value in {**output.components(), "total": output.total}.items():
                rewards.setdefault(name, []).append(value.detach().float().reshape(-1).cpu())
        return {name: torch.cat(values) for name, values in rewards.items()}

    def run(self, step: int, *, is_main: bool = True) -> tuple[dict[str, float], torch.Tensor | None]:
        """Validate at ``step``: returns (``validation/*`` metrics, the videos) on rank 0, ``({}, None)`` elsewhere."""
        start = time.perf_counter()
        pixels = self.sample()
        if not is_main:
            return {}, None
        rewards = self.score(pixels)
        self.write(step, pixels, rewards)
        metrics = {f"{PREFIX}{name}": float(values.double().mean()) for name, values in rewards.items()}
        metrics[f"{PREFIX}seconds"] = time.perf_counter() - start
        metrics[f"{PREFIX}num_videos"] = float(len(self.prompts))
        return metrics, pixels

    def write(self, step: int, pixels: torch.Tensor, rewards: dict[str, torch.Tensor]) -> Path:
        """``validation/step-N/{prompt}-0.mp4`` per prompt and ``rewards.json``; returns the folder."""
        from pisces_cli.atomic import atomic_write_json
        from pisces_cli.io.writer import vbench_filename, write_mp4

        folder = self.output / f"step-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for index, prompt in enumerate(self.prompts):
            name = vbench_filename(prompt, 0)
            write_mp4(folder / name, pixels[index], self.generate.fps, crf=self.generate.crf)
            row = {"file": name, "prompt": prompt, "seed": self.section.seed + index}
            row.update({key: float(values[index]) for key, values in rewards.items()})
            rows.append(row)
        atomic_write_json(folder / "rewards.json", {"step": step, "videos": rows})
        return folder
