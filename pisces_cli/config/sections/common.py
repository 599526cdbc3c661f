"""Shared recipe sections: runtime, models and data."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pisces_cli.config.schema import Count, InputPath, LocalPath, NonNegativeInt, PositiveFloat

Dtype = Literal["float32", "bfloat16", "float16"]
#: what ``runtime.device`` may be (the machine's devices are checked when a stage resolves it)
DEVICE_SPEC = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


@dataclass
class RuntimeSection:
    """Where and how stages run.

    ``device: auto`` picks CUDA when available (the local rank's GPU under torchrun), else CPU.
    ``num_workers``: decode processes (0: one, without read-ahead; videos are always decoded outside the
    main process, so a crashing decoder costs one video). ``decode_timeout_s``: seconds one video may take
    to decode before its process is killed and the video gets an error row (null: no limit).
    """

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "dtype": "runtime.dtype was removed (no code read it): precision is set per model with "
        "models.generator.dtype and models.encoder.dtype, and for training with finetune.mixed_precision "
        "and finetune.reward_dtype; delete this key",
    }

    device: str = "auto"
    num_workers: NonNegativeInt = 2
    decode_timeout_s: PositiveFloat | None = 300.0
    allow_tf32: bool = False

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if not DEVICE_SPEC.fullmatch(self.device):
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
    path: InputPath | None = None
    tokenizer: InputPath | None = None
    dtype: Dtype = "float32"
    num_frames: Count | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class GeneratorModel:
    """The text-to-video generator (a diffusers-format directory or hub id)."""

    backbone: Literal["hunyuan", "wan"] = "hunyuan"
    path: InputPath | None = None
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
    (WebDataset ``.tar`` files: a glob or a brace list). ``prompts_from_names: true`` lets a folder
    video with no prompt file take its file name (minus a ``-<digits>`` index) as its prompt; by
    default only VBench-style names ``{prompt}-{index}.mp4`` in a folder without prompt files do.
    """

    videos: LocalPath | None = None
    prompts: LocalPath | None = None
    prompt_source: Literal["auto", "mapping", "sidecar", "filename"] = "auto"
    prompts_from_names: bool = False
    manifest: LocalPath | None = None
    shards: LocalPath | None = None
    num_frames: Count | None = None
    fps: PositiveFloat | None = None
    crop: Literal["center", "random"] = "center"

    def check(self) -> list[tuple[str, str]]:
        problems = []
        given = [k for k in ("videos", "manifest", "shards") if getattr(self, k)]
        if len(given) > 1:
            problems.append(("", f"give only one of videos, manifest, shards (got {', '.join(given)})"))
        return problems
