"""Recipe section ``finetune``: post-training by reward backprop (+ consistency distillation) or GRPO.

Field names follow diffusers' training scripts and TRL's GRPO vocabulary where they exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pisces_cli.config.schema import (
    Count,
    InputPath,
    LocalPath,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    Range,
    Seed,
)


@dataclass
class LoraSection:
    """peft LoRA on the transformer. ``targets``: a preset (``attn``, ``attn_mlp``) or module-name regexes."""

    enabled: bool = True
    rank: Count = 256
    alpha: PositiveFloat = 32.0
    dropout: Annotated[float, Range(low=0, high=1, high_open=True)] = 0.0
    targets: list[str] = field(default_factory=lambda: ["attn_mlp"])
    init: Literal["default", "gaussian"] = "default"

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.rank < 1:
            problems.append(("rank", f"must be >= 1, got {self.rank}"))
        if not 0 <= self.dropout < 1:
            problems.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        if not self.targets:
            problems.append(("targets", "must name at least one preset or module pattern"))
        return problems


@dataclass
class FlowScheduleSection:
    """The shifted flow-matching σ grid of training: σ(u) = s·u / (1 + (s−1)·u)."""

    shift: PositiveFloat = 17.0
    euler_steps: Count = 50

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.shift <= 0:
            problems.append(("shift", f"must be > 0, got {self.shift}"))
        if self.euler_steps < 1:
            problems.append(("euler_steps", f"must be >= 1, got {self.euler_steps}"))
        return problems


@dataclass
class ConsistencySection:
    """Consistency distillation against the teacher (= the model with its adapters disabled)."""

    weight: NonNegativeFloat = 1.0
    huber_c: PositiveFloat = 0.001


@dataclass
class VaeSection:
    decode_checkpointing: bool = True
    tiling: bool = False


@dataclass
class GrpoSection:
    """GRPO over SDE rollouts (Flow-GRPO / DanceGRPO style), TRL vocabulary.

    ``eta`` noise scale of the SDE step; ``num_generations`` samples per prompt (a group);
    ``scale_rewards`` group | batch | none; ``clip_range`` PPO ratio clip ε; ``adv_clip`` advantage clip;
    ``timestep_fraction`` share of the rollout steps trained per sample; ``beta`` KL weight to the
    reference policy (the adapter-disabled model); ``sampling_steps`` SDE steps per rollout;
    ``num_iterations`` optimizer steps reusing one rollout (TRL's name); ``chunk_size`` samples per model
    call (bounds memory; null = a whole group); ``sanity_check`` asserts ratio == 1 before the first
    update (``sanity_prompts`` or the first training prompt).
    """

    num_generations: Annotated[int, Range(low=2)] = 8
    eta: PositiveFloat = 0.3
    noise_schedule: Literal["constant", "flow_grpo"] = "constant"
    sampling_steps: Annotated[int, Range(low=2)] = 16
    shift: PositiveFloat = 5.0
    guidance: NonNegativeFloat | None = None
    shared_noise: bool = True
    scale_rewards: Literal["group", "batch", "none"] = "group"
    clip_range: Annotated[float, Range(low=0, high=1, low_open=True, high_open=True)] = 0.2
    adv_clip: PositiveFloat = 5.0
    timestep_fraction: Annotated[float, Range(low=0, high=1, low_open=True)] = 0.6
    beta: NonNegativeFloat = 0.0
    consistency_weight: NonNegativeFloat = 0.0
    num_iterations: Count = 1
    chunk_size: Count | None = None
    sanity_check: bool = True
    sanity_prompts: list[str] | None = None

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.num_generations < 2:
            problems.append(("num_generations", f"a group needs >= 2 samples, got {self.num_generations}"))
        if self.eta <= 0:
            problems.append(("eta", f"GRPO needs stochastic rollouts: eta must be > 0, got {self.eta}"))
        if self.num_iterations < 1:
            problems.append(("num_iterations", f"must be >= 1, got {self.num_iterations}"))
        if self.chunk_size is not None and self.chunk_size < 1:
            problems.append(("chunk_size", f"must be >= 1 or null, got {self.chunk_size}"))
        if self.sampling_steps < 2:
            problems.append(("sampling_steps", f"must be >= 2, got {self.sampling_steps}"))
        if not 0 < self.clip_range < 1:
            problems.append(("clip_range", f"must be in (0, 1), got {self.clip_range}"))
        if not 0 < self.timestep_fraction <= 1:
            problems.append(("timestep_fraction", f"must be in (0, 1], got {self.timestep_fraction}"))
        if self.beta < 0:
            problems.append(("beta", f"must be >= 0, got {self.beta}"))
        return problems


@dataclass
class ValidationSection:
    """Validation during training: every ``every`` optimizer steps (0 = off), sample the ``prompts`` (empty = the
    first ``num_prompts`` training prompts) with fixed seeds ``seed + i`` and the current adapters, in ``steps``
    sampling steps at the training geometry, the way ``generate`` samples (``generate.sampler``, ``shift``,
    ``guidance``, ``fps``); score them with the reward; log ``validation/*`` and write the videos under
    ``{finetune.output}/validation/step-N/``."""

    every: NonNegativeInt = 0
    prompts: list[str] = field(default_factory=list)
    num_prompts: Count = 2
    seed: Seed = 0
    steps: Count = 30


@dataclass
class FinetuneDataSection:
    """Training data: ``prompts`` (txt/jsonl, reward-only training) or videos with captions
    (``videos`` folder / ``manifest``) encoded to latents on the fly or read from ``latents`` (a cache
    written by this stage)."""

    prompts: InputPath | None = None
    videos: LocalPath | None = None
    manifest: LocalPath | None = None
    latents: LocalPath | None = None

    def check(self) -> list[tuple[str, str]]:
        given = [k for k in ("prompts", "videos", "manifest", "latents") if getattr(self, k)]
        if not given:
            return [("", "set one of prompts, videos, manifest, latents")]
        if len([k for k in given if k != "latents"]) > 1:
            return [("", f"give only one of prompts, videos, manifest (got {', '.join(given)})")]
        return []


@dataclass
class FinetuneSection:
    """Post-train the generator with the PISCES rewards (the ``reward`` section) — see README."""

    algorithm: Literal["backprop", "grpo"] = "backprop"
    output: LocalPath = "${output_dir}/finetune"
    data: FinetuneDataSection = field(default_factory=lambda: FinetuneDataSection(prompts="prompts.txt"))
    max_steps: Count = 256
    batch_size: Count = 1
    gradient_accumulation_steps: Count = 32
    learning_rate: PositiveFloat = 1e-6
    weight_decay: NonNegativeFloat = 1e-3
    adam_betas: list[Annotated[float, Range(low=0, high=1, high_open=True)]] = field(
        default_factory=lambda: [0.9, 0.999]
    )
    adam_eps: PositiveFloat = 1e-8
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = "constant"
    lr_warmup_steps: NonNegativeInt = 0
    max_grad_norm: PositiveFloat = 1.0
    # bf16 autocast by default; fp16 (autocast, generator or reward) in the gradient path trains with a gradient
    # scaler; reward_dtype: the reward encoder's dtype in training (null = models.encoder.dtype); see
    # pisces_cli/training/precision.py
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
    reward_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    gradient_checkpointing: bool = True
    full_finetune: bool = False
    lora: LoraSection = field(default_factory=LoraSection)
    num_frames: Count = 33
    height: Count = 480
    width: Count = 848
    guidance: NonNegativeFloat | None = 6.0
    # prompt-only data (no latents): x0 sampled by the frozen base model ("teacher", prompt_x0_steps Euler
    # steps) or training from pure noise at sigma = 1 ("noise"); see pisces_cli/training/backprop.py
    prompt_x0: Literal["teacher", "noise"] = "teacher"
    prompt_x0_steps: Count = 8
    # encode every training caption once at start-up, then move the text encoders to CPU (the paper trains
    # from precomputed prompt embeddings; saves ~16 GB of GPU memory for HunyuanVideo's Llama encoder)
    offload_text_encoders: bool = True
    schedule: FlowScheduleSection = field(default_factory=FlowScheduleSection)
    consistency: ConsistencySection = field(default_factory=ConsistencySection)
    vae: VaeSection = field(default_factory=VaeSection)
    grpo: GrpoSection = field(default_factory=GrpoSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    checkpointing_steps: Count = 64
    checkpoints_total_limit: Count | None = 4
    resume: InputPath | None = "latest"
    log_every: Count = 1
    report_to: list[Literal["jsonl", "tensorboard", "wandb"]] = field(default_factory=lambda: ["jsonl"])
    max_nan_steps: Count = 5
    distributed: Literal["ddp", "fsdp"] = "ddp"

    def check(self) -> list[tuple[str, str]]:
        problems = []
        for name in (
            "max_steps",
            "batch_size",
            "gradient_accumulation_steps",
            "checkpointing_steps",
            "log_every",
            "max_nan_steps",
            "num_frames",
            "height",
            "width",
            "prompt_x0_steps",
        ):
            if getattr(self, name) < 1:
                problems.append((name, f"must be >= 1, got {getattr(self, name)}"))
        if self.learning_rate <= 0:
            problems.append(("learning_rate", f"must be > 0, got {self.learning_rate}"))
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            problems.append(("adam_betas", f"must be two numbers in [0, 1), got {self.adam_betas}"))
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            problems.append(("checkpoints_total_limit", "must be >= 1 or null"))
        if self.full_finetune and self.lora.enabled:
            problems.append(
                ("full_finetune", "full fine-tuning and lora.enabled are exclusive; set lora.enabled=false")
            )
        if not self.full_finetune and not self.lora.enabled:
            problems.append(("lora.enabled", "nothing to train: enable lora or set full_finetune=true"))
        if self.algorithm == "grpo" and self.data.prompts is None:
            problems.append(("data.prompts", "GRPO trains from prompts: set finetune.data.prompts"))
        return problems
