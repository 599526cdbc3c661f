"""Shared recipe sections: runtime, models and data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Dtype = Literal["float32", "bfloat16", "float16"]


@dataclass
class RuntimeSection:
    """Where and how stages run.

    ``device: auto`` picks CUDA when available (the local rank's GPU under torchrun), else CPU.
    """

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "dtype": "runtime.dtype was removed (no code read it): precision is set per model with "
        "models.generator.dtype and models.encoder.dtype, and for training with finetune.mixed_precision "
        "and finetune.reward_dtype; delete this key",
    }

    device: str = "auto"
    num_workers: int = 2
    allow_tf32: bool = False

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.num_workers < 0:
            problems.append(("num_workers", f"must be >= 0, got {self.num_workers}"))
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            problems.append(("device", f"expected auto, cpu, cuda or cuda:N, got {self.device!r}"))
        return problems


@dataclass
class EncoderModel:
    """The frozen video-text reward model.

    ``backend`` selects the implementation; ``path`` is a local directory/file or a hub id.
    For ``internvideo2``, ``path`` is the released ``InternVideo2-stage2_1b-224p-f4.pt`` or a pisces
    export directory, and ``tokenizer`` a local ``bert-large-uncased`` directory.
    """

    backend: Literal["clip", "internvideo2", "world"] = "clip"
    path: str | None = None
    tokenizer: str | None = None
    dtype: Dtype = "float32"
    num_frames: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> list[tuple[str, str]]:
        if self.num_frames is not None and self.num_frames < 1:
            return [("num_frames", f"must be >= 1, got {self.num_frames}")]
        return []


@dataclass
class GeneratorModel:
    """The text-to-video generator (a diffusers-format directory or hub id)."""

    backbone: Literal["hunyuan", "wan"] = "hunyuan"
    path: str | None = None
    dtype: Dtype = "bfloat16"


@dataclass
class ModelsSection:
    encoder: EncoderModel = field(default_factory=EncoderModel)
    generator: GeneratorModel = field(default_factory=GeneratorModel)


@dataclass
class DataSection:
    """Input videos and captions.

    Exactly one source is used by a stage: ``videos`` (a folder, prompts from ``prompts`` /
    sidecar ``.txt`` / VBench-style names), ``manifest`` (JSONL of {video, caption}) or ``shards``
    (WebDataset ``.tar`` files: a glob or a brace list).
    """

    videos: str | None = None
    prompts: str | None = None
    prompt_source: Literal["auto", "mapping", "sidecar", "filename"] = "auto"
    manifest: str | None = None
    shards: str | None = None
    num_frames: int | None = None
    fps: float | None = None
    crop: Literal["center", "random"] = "center"

    def check(self) -> list[tuple[str, str]]:
        problems = []
        given = [k for k in ("videos", "manifest", "shards") if getattr(self, k)]
        if len(given) > 1:
            problems.append(("", f"give only one of videos, manifest, shards (got {', '.join(given)})"))
        if self.num_frames is not None and self.num_frames < 1:
            problems.append(("num_frames", f"must be >= 1, got {self.num_frames}"))
        if self.fps is not None and self.fps <= 0:
            problems.append(("fps", f"must be > 0, got {self.fps}"))
        return problems
