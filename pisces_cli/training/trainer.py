"""The fine-tuning trainer shared by every algorithm (``finetune.algorithm``): setup → train → save.

It owns the model and its LoRA (or full) weights, AdamW and the lr schedule, gradient accumulation (through the
algorithm's ``train_step``), clipping, NaN handling, checkpoints/resume, logging and the distributed layout.
The maths of a step live in the algorithm (:mod:`pisces_cli.training.algorithm`).

Distributed: launched by ``torchrun`` / ``accelerate launch`` (RANK/WORLD_SIZE set), every rank trains on its
own micro-batches; the trainable gradients are averaged with one flat ``all_reduce`` after the accumulation (the
result DDP with ``no_sync`` during accumulation gives, and it stays correct around the teacher pass that disables
the adapters). ``finetune.distributed: fsdp`` (LoRA only) additionally shards the frozen base weights of every
transformer block with FSDP2 (``fully_shard``, the LoRA parameters ignored), cutting their memory by the world
size. Only rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pisces_cli.errors import PiscesRuntimeError, UsageError
from pisces_cli.training.algorithm import TrainContext, TrainingAlgorithm

if TYPE_CHECKING:
    from pisces_cli.backbones.base import BackboneAdapter, PromptEmbeds
    from pisces_cli.config import ResolvedRecipe

FAMILY_BY_BACKBONE = {"hunyuan": "hunyuan_video", "wan": "wan"}
PROMPT_CACHE_SIZE = 4096


@dataclass
class FinetuneSummary:
    """What a run did: the step reached, the last checkpoint, the last logged metrics."""

    output: Path
    step: int
    checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    skipped_steps: int = 0
    resumed_from: Path | None = None
    overflow_steps: int = 0


def lora_pattern(adapter: BackboneAdapter, targets: list[str]) -> str:
    """One regex for peft from ``lora.targets``: presets (``attn``, ``attn_mlp``) expand to the adapter's
    block-exact patterns; anything else is taken as a module-name regex."""
    from pisces_cli.backbones.base import LORA_PRESETS

    parts = [adapter.lora_target_modules(t) if t in LORA_PRESETS else t for t in targets]
    return parts[0] if len(parts) == 1 else "|".join(f"(?:{p})" for p in parts)


def concat_embeds(rows: list[PromptEmbeds]) -> PromptEmbeds:
    """Stack single-prompt :class:`PromptEmbeds` rows into one batch."""
    from pisces_cli.backbones.base import PromptEmbeds

    first = rows[0]

    def cat(name: str):
        return None if getattr(first, name) is None else torch.cat([getattr(r, name) for r in rows])

    negative = None if first.negative is None else concat_embeds([r.negative for r in rows])
    return PromptEmbeds(embeds=cat("embeds"), mask=cat("mask"), pooled=cat("pooled"), negative=negative)


class PromptCache:
    """``prompts → PromptEmbeds`` on the training device, each prompt encoded once (no grad).

    Rows are kept on CPU. Until :meth:`freeze` the cache is an LRU of ``size`` prompts; after
    ``precompute(all prompts)`` + ``freeze()`` it holds every prompt and never calls the text encoders again
    (they can then live on CPU).
    """

    def __init__(self, adapter: BackboneAdapter, size: int = PROMPT_CACHE_SIZE) -> None:
        self.adapter = adapter
        self.size = size
        self.frozen = False
        self.rows: OrderedDict[str, PromptEmbeds] = OrderedDict()

    def _encode(self, prompts: list[str]) -> None:
        if self.frozen:
            raise PiscesRuntimeError(
                f"prompt {prompts[0]!r} was not pre-encoded and the text encoders are offloaded"
            )
        encoded = self.adapter.encode_prompts(prompts).to("cpu")
        for index, prompt in enumerate(prompts):
            self.rows[prompt] = encoded.select([index])

    def precompute(self, prompts: list[str], batch_size: int = 16) -> None:
        """Encode every distinct prompt of ``prompts`` (in chunks of ``batch_size``) and keep them all."""
        unique = [p for p in dict.fromkeys(prompts) if p not in self.rows]
        self.size = max(self.size, len(self.rows) + len(unique))
        for start in range(0, len(unique), batch_size):
            self._encode(unique[start : start + batch_size])

    def freeze(self) -> None:
        self.frozen = True

    def __call__(self, prompts: list[str]) -> PromptEmbeds:
        missing = list(dict.fromkeys(p for p in prompts if p not in self.rows))
        if missing:
            self._encode(missing)
        for prompt in prompts:
            self.rows.move_to_end(prompt)
        batch = concat_embeds([self.rows[p] for p in prompts]).to(self.adapter.device)
        while len(self.rows) > self.size:
            self.rows.popitem(last=False)
        return batch


BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "blocks")


#: why FSDP is refused for a generator with two experts (Wan 2.2 A14B).
FSDP_TWO_EXPERTS = (
    "finetune.distributed=fsdp cannot shard a generator with two experts (Wan 2.2 A14B: transformer and "
    "transformer_2): each rank picks the expert by its own sample's timestep, so the ranks' weight gathers would "
    "not line up; use finetune.distributed=ddp"
)


def _has_two_experts(generator_path: str | None) -> bool:
    """Whether the diffusers folder's ``model_index.json`` lists a ``transformer_2`` (read without loading)."""
    import json

    index = Path(generator_path or "") / "model_index.json"
    try:
        entry = json.loads(index.read_text(encoding="utf-8")).get("transformer_2")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(entry, list) and any(entry)


def shard_frozen_weights(
    adapter: BackboneAdapter, trainable: set[torch.nn.Parameter], device: torch.device
) -> int:
    """FSDP2 ``fully_shard`` of every transformer block and of each transformer root over all ranks.

    Only the frozen base weights are sharded (all-gathered block by block in forward); the LoRA parameters are
    ``ignored_params``: they stay whole on every rank and their gradients are averaged by the trainer like in
    ddp, so checkpoints and the teacher pass (adapters disabled) work unchanged. Returns the sharded modules.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if len(adapter.transformers()) > 1:
        raise UsageError(FSDP_TWO_EXPERTS)
    # diffusers blocks return views; the gradients were checked equal to the unsharded model's
    # (tests/test_finetune_ddp.py), so torch's generic warning about in-place ops on them is noise here.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    count = 0
    for module in adapter.transformers().values():
        # FSDP2 all-gathers one dtype per group: parameters kept in another dtype than the bulk (e.g. Wan's
        # fp32 norms / time embedder next to bf16 weights) stay whole, like the LoRA.
        dtypes = Counter(p.dtype for p in module.parameters() if p not in trainable)
        bulk = dtypes.most_common(1)[0][0] if dtypes else None
        unsharded = trainable | {p for p in module.parameters() if p.dtype != bulk}
        for list_name in BLOCK_LISTS:
            for block in getattr(module, list_name, None) or []:
                fully_shard(block, mesh=mesh, ignored_params=unsharded & set(block.parameters()))
                count += 1
        fully_shard(module, mesh=mesh, ignored_params=unsharded & set(module.parameters()))
        count += 1
    return count


def offload_text_encoders(adapter: BackboneAdapter) -> None:
    """Move the pipeline's text encoders to CPU (after every training prompt was encoded)."""
    for name in ("text_encoder", "text_encoder_2"):
        module = getattr(adapter.pipeline, name, None)
        if module is not None:
            module.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def quiet_diffusers() -> None:
    """Silence diffusers' per-component loading bars and info logs (pisces shows its own progress)."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()


def reward_contents(encoder: Any, ot_map: str | None) -> dict[str, str | None]:
    """What the reward's files hold, for the training key: the encoder's weights hash (from its fingerprint,
    computed when it loaded) and the OT map's SHA-256 (a small file)."""
    from pisces_cli.encoders.fingerprint import hash_weight_files

    return {
        "encoder_weights_sha256": encoder.fingerprint().get("weights_sha256"),
        "ot_map_sha256": hash_weight_files([ot_map]) if ot_map else None,
    }


def build_algorithm(name: str, ctx: TrainContext) -> TrainingAlgorithm:
    if name == "backprop":
        from pisces_cli.training.backprop import BackpropAlgorithm

        return BackpropAlgorithm(ctx)
    if name == "grpo":
        try:
            from pisces_cli.training.grpo import GRPOAlgorithm
        except ImportError as error:
            raise UsageError(f"finetune.algorithm=grpo is not available in this install ({error})") from error
        return GRPOAlgorithm(ctx)
    raise UsageError(f"finetune.algorithm: unknown algorithm {name!r}; expected backprop or grpo")


class Trainer:
    """One fine-tuning run of ``resolved`` (``setup()``, ``train()``, ``save_checkpoint()``, ``cleanup()``)."""

    def __init__(
        self,
        resolved: ResolvedRecipe,
        *,
        console: Any = None,
        resume: bool = True,
        max_steps: int | None = None,
    ) -> None:
        self.resolved = resolved
        self.recipe = resolved.recipe
        self.section = resolved.recipe.finetune
        self.console = console
        self.allow_resume = resume
        self.max_steps = int(max_steps if max_steps is not None else self.section.max_steps)
        self.output = Path(self.section.output)
        self.step = 0
        self.nan_streak = 0
        self.skipped_steps = 0
        self.overflow_steps = 0
        self.last_checkpoint: Path | None = None
        self.resumed_from: Path | None = None
        self.last_metrics: dict[str, float] = {}
        self.interrupt_pending = False

    # ------------------------------------------------------------------------------------------ setup
    def check_plan(self) -> None:
        """Refuse unsupported combinations before any heavy work."""
        from pisces_cli.runtime import dist_context

        if not self.recipe.models.generator.path:
            raise UsageError("models.generator.path is not set: give a diffusers-format directory or hub id")
        if (
            self.section.distributed == "fsdp"
            and dist_context().world_size > 1
            and self.section.full_finetune
        ):
            raise UsageError(
                "finetune.distributed=fsdp shards the frozen base weights of LoRA training; "
                "full fine-tuning supports ddp only"
            )
        if (
            self.section.distributed == "fsdp"
            and dist_context().world_size > 1
            and _has_two_experts(self.recipe.models.generator.path)
        ):
            raise UsageError(FSDP_TWO_EXPERTS)
        if self.max_steps < 1:
            raise UsageError(f"max steps must be >= 1, got {self.max_steps}")
        from pisces_cli.training.checkpoint import DECAYING_SCHEDULES

        if self.section.lr_scheduler in DECAYING_SCHEDULES and self.max_steps > self.section.max_steps:
            raise UsageError(
                f"--max-steps {self.max_steps} goes past finetune.max_steps={self.section.max_steps}, where the "
                f"{self.section.lr_scheduler} learning-rate schedule has decayed to 0; raise finetune.max_steps "
                "instead (the schedule's length: a new run, so also --fresh or another finetune.output)"
            )
        self._check_resume_key()

    def _check_resume_key(self) -> None:
        """Refuse a resume under other recipe settings before any model loads (the reward's file contents are
        compared once they are loaded), and ``resume: never`` into a folder holding another run's
        checkpoints."""
        from pisces_cli.runtime import dist_context
        from pisces_cli.training.checkpoint import (
            check_training_key,
            find_resume_checkpoint,
            read_training_meta,
            training_key,
        )
        from pisces_cli.training.checkpoint_layout import checkpoint_dirs

        if self.allow_resume and self.section.resume in (None, "", "never", "none"):
            earlier = [folder.name for _step, folder in checkpoint_dirs(self.output)]
            if earlier:
                raise UsageError(
                    f"finetune.resume={self.section.resume}, but {self.output} holds checkpoints of an earlier run "
                    f"({', '.join(earlier)}): a new run would write and prune (checkpoints_total_limit) among them; "
                    "pass --fresh to remove them, or set another finetune.output"
                )
        folder = find_resume_checkpoint(self.output, self.section.resume if self.allow_resume else None)
        if folder is not None:
            key = training_key(self.resolved.portable_data(), dist_context().world_size)
            check_training_key(Path(folder), read_training_meta(folder), key)

    def setup(self) -> None:
        from pisces_cli.backbones.lora import apply_lora, enable_full_finetune
        from pisces_cli.backbones.registry import load_backbone
        from pisces_cli.rewards.build import build_reward, load_encoder_from_recipe, quiet_model_loading
        from pisces_cli.runtime import init_distributed, resolve_dtype, seed_everything, stage_device
        from pisces_cli.training.data import build_training_data
        from pisces_cli.training.metrics_log import MetricsLogger
        from pisces_cli.training.precision import precision_plan
        from pisces_cli.training.validation import Validator

        self.check_plan()
        self.dist = init_distributed(timeout_s=None)  # every rank steps together: fail fast on a hang
        self.device = stage_device(self.recipe.runtime)  # runtime.allow_tf32 applied
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.precision = precision_plan(self.recipe, self.device)
        self.scaler = self.precision.grad_scaler(self.device)
        seed_everything(self.recipe.seed)  # identical LoRA initialisation on every rank
        quiet_model_loading()
        quiet_diffusers()
        generator = self.recipe.models.generator
        self.adapter = load_backbone(
            generator.path,
            family=FAMILY_BY_BACKBONE[generator.backbone],
            dtype=resolve_dtype(generator.dtype),
            device=self.device,
        )
        adapter = self.adapter
        adapter.validate_geometry(self.section.num_frames, self.section.height, self.section.width)
        extra: dict[str, Any] = {}
        self.lora_regex = None
        if not self.section.lora.enabled:  # full fine-tuning (the recipe check makes the two exclusive)
            extra["teacher_transformers"] = {
                name: copy.deepcopy(module).requires_grad_(False).eval()
                for name, module in adapter.transformers().items()
            }
            for module in adapter.transformers().values():
                enable_full_finetune(module)
        else:
            lora = self.section.lora
            self.lora_regex = lora_pattern(adapter, lora.targets)
            for module in adapter.transformers().values():
                apply_lora(
                    module,
                    rank=lora.rank,
                    alpha=lora.alpha,
                    target_modules=self.lora_regex,
                    dropout=lora.dropout,
                    init_lora_weights=True if lora.init == "default" else lora.init,
                )
                if lora.dropout > 0:
                    module.train()
        if self.section.gradient_checkpointing:
            adapter.enable_gradient_checkpointing()
        self.named_trainable = {
            f"{component}.{name}": parameter
            for component, module in adapter.transformers().items()
            for name, parameter in module.named_parameters()
            if parameter.requires_grad
        }
        if not self.named_trainable:
            raise PiscesRuntimeError("no trainable parameters after setting up LoRA / full fine-tuning")
        self._broadcast_parameters()
        if self.section.distributed == "fsdp" and self.dist.distributed:
            shard_frozen_weights(adapter, set(self.named_trainable.values()), self.device)
        seed_everything(self.recipe.seed + self.dist.rank)
        trainable = list(self.named_trainable.values())
        self.optimizer = torch.optim.AdamW(
            trainable,
            lr=self.section.learning_rate,
            betas=tuple(self.section.adam_betas),
            weight_decay=self.section.weight_decay,
            eps=self.section.adam_eps,
        )
        from diffusers.optimization import get_scheduler

        self.scheduler = get_scheduler(
            self.section.lr_scheduler,
            self.optimizer,
            num_warmup_steps=self.section.lr_warmup_steps,
            # the recipe's run length, not --max-steps (which only stops earlier): a run stopped early and
            # resumed follows the one schedule
            num_training_steps=self.section.max_steps,
        )
        encoder = load_encoder_from_recipe(self.recipe, self.device, dtype=self.precision.reward_dtype)
        self.reward, self.reward_info = build_reward(self.recipe, encoder)
        self.content_key = reward_contents(encoder, self.recipe.reward.ot_map)
        self.ctx = TrainContext(
            recipe=self.recipe,
            section=self.section,
            adapter=adapter,
            reward=self.reward,
            trainable=trainable,
            device=self.device,
            autocast_dtype=self.precision.autocast_dtype,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            encode_prompts=PromptCache(adapter),
            extra=extra,
            grad_scaler=self.scaler,
        )
        self.algorithm = build_algorithm(self.section.algorithm, self.ctx)
        self.data = build_training_data(
            self.resolved, adapter, rank=self.dist.rank, world_size=self.dist.world_size, console=self.console
        )
        self.content_key["data_sha256"] = self.data.digest()  # an edited prompt file or video folder
        self.validator = Validator(self.ctx, self.recipe.generate, self.data.prompts, self.output)
        if self.section.offload_text_encoders:
            sanity = list(getattr(self.section.grpo, "sanity_prompts", None) or [])
            self.ctx.encode_prompts.precompute(self.data.prompts + sanity + self.validator.prompts)
            self.ctx.encode_prompts.freeze()
            offload_text_encoders(adapter)
        self.logger = MetricsLogger(
            self.output / "logs",
            report_to=list(self.section.report_to),
            console=self.console,
            enabled=self.dist.is_main,
            run_name=self.recipe.name or "pisces-finetune",
            config=self.resolved.data,
        )
        self.maybe_resume()

    def training_key(self) -> dict[str, Any]:
        """The settings this run's checkpoints are keyed on: :func:`~pisces_cli.training.checkpoint.training_key`
        of the recipe plus the reward's file contents (a map refit, or an encoder replaced, at the same path)."""
        from pisces_cli.training.checkpoint import training_key

        return {
            **training_key(self.resolved.portable_data(), self.dist.world_size),
            "contents": self.content_key,
        }

    # ---------------------------------------------------------------------------------------- resume
    def maybe_resume(self) -> None:
        from pisces_cli.training.checkpoint import find_resume_checkpoint

        folder = find_resume_checkpoint(self.output, self.section.resume if self.allow_resume else None)
        if folder is None:  # step 0: every line an earlier run left belongs to steps no checkpoint holds
            dropped = self.logger.rewind(-1)
            if dropped:
                self.logger.event(0, "started_over", replaced_log_lines=dropped)
            return
        self.load_checkpoint(folder)
        self.resumed_from = folder
        dropped = self.logger.rewind(self.step)  # lines of steps the resumed run trains again
        fields = {"replaced_log_lines": dropped} if dropped else {}
        self.logger.event(self.step, "resumed", checkpoint=str(folder), **fields)

    def load_checkpoint(self, folder: Path) -> None:
        from pisces_cli.training.checkpoint import (
            check_training_key,
            load_training_state,
            optimizer_from_flat,
            restore_rng,
        )

        meta, tensors, trainable = load_training_state(folder)
        check_training_key(Path(folder), meta, self.training_key())
        if self.section.full_finetune:
            self._load_full_weights(folder)
        else:
            if trainable is None:
                raise UsageError(
                    f"{folder}: no training_state/trainable.safetensors (a full fine-tuning checkpoint?)"
                )
            missing = sorted(set(self.named_trainable) - set(trainable))
            if missing:
                raise UsageError(
                    f"{folder}: checkpoint lacks {len(missing)} trainable tensors (e.g. {missing[0]}); "
                    "was it made with other LoRA settings?"
                )
            with torch.no_grad():
                for name, parameter in self.named_trainable.items():
                    parameter.copy_(trainable[name].to(parameter.device, parameter.dtype))
        optimizer_from_flat(self.optimizer, tensors, meta["optimizer"])
        if meta.get("scheduler") is not None:
            scheduler_state = dict(meta["scheduler"])
            scheduler_state.setdefault("lr_lambdas", [None] * len(self.optimizer.param_groups))
            self.scheduler.load_state_dict(scheduler_state)
        restore_rng(tensors, meta.get("rng", {}))
        self.algorithm.load_state_dict(meta.get("algorithm", {}))
        self.step = int(meta["step"])
        self.nan_streak = int(meta.get("nan_streak", 0))
        self.skipped_steps = int(meta.get("skipped_steps", 0))
        self.overflow_steps = int(meta.get("overflow_steps", 0))
        if self.scaler is not None and meta.get("grad_scaler"):
            self.scaler.load_state_dict(meta["grad_scaler"])
        self.last_checkpoint = Path(folder)

    def _load_full_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        for component, module in self.adapter.transformers().items():
            files = sorted((Path(folder) / component).glob("*.safetensors"))
            if not files:
                raise UsageError(
                    f"{folder}/{component}: no safetensors weights to resume full fine-tuning from"
                )
            state: dict[str, torch.Tensor] = {}
            for path in files:
                state.update(load_file(str(path)))
            module.load_state_dict(state)

    # ------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, *, sync: bool = True) -> Path | None:
        """Write ``checkpoint-{step}`` (rank 0) and prune old ones; ``sync`` adds a barrier for every rank."""
        from pisces_cli.backbones.lora import save_lora
        from pisces_cli.runtime import barrier
        from pisces_cli.training.checkpoint import (
            prune_checkpoints,
            publish,
            save_training_state,
            staging_dir,
        )

        final = None
        if self.dist.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            staging = staging_dir(self.output, step)
            metadata = {
                "step": step,
                "backbone": self.adapter.family,
                "recipe_hash": self.resolved.hash,
                "algorithm": self.section.algorithm,
            }
            if self.section.full_finetune:
                for component, module in self.adapter.transformers().items():
                    module.save_pretrained(staging / component, safe_serialization=True)
                trainable = None
            else:
                lora = self.section.lora
                metadata.update({"rank": lora.rank, "alpha": lora.alpha, "target_modules": self.lora_regex})
                save_lora(
                    staging, self.adapter.transformers(), metadata, pipeline_class=type(self.adapter.pipeline)
                )
                trainable = {name: p.detach() for name, p in self.named_trainable.items()}
            save_training_state(
                staging,
                step=step,
                trainable=trainable,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                extra={
                    "algorithm": self.algorithm.state_dict(),
                    "nan_streak": self.nan_streak,
                    "skipped_steps": self.skipped_steps,
                    "overflow_steps": self.overflow_steps,
                    "grad_scaler": None if self.scaler is None else self.scaler.state_dict(),
                    "recipe_hash": self.resolved.hash,
                    "training_key": self.training_key(),
                    "world_size": self.dist.world_size,
                    "max_steps": self.section.max_steps,
                },
            )
            final = publish(staging, self.output, step)
            prune_checkpoints(self.output, self.section.checkpoints_total_limit)
            self.logger.event(step, "checkpoint", path=str(final))
        if sync:
            barrier()
        self.last_checkpoint = final or self.output / f"checkpoint-{step}"
        return final

    # ------------------------------------------------------------------------------------------ steps
    def _all_finite(self, finite: bool) -> bool:
        if not self.dist.distributed:
            return finite
        import torch.distributed as dist

        flag = torch.tensor([1.0 if finite else 0.0], device=self._comm_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0.5)

    def _comm_device(self) -> torch.device:
        import torch.distributed as dist

        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _broadcast_parameters(self) -> None:
        """Copy rank 0's trainable parameters to every rank (the start of data-parallel training)."""
        if not self.dist.distributed:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for parameter in self.named_trainable.values():
                buffer = parameter.detach().to(self._comm_device())
                dist.broadcast(buffer, src=0)
                parameter.copy_(buffer.to(parameter.device))

    def _average_gradients(self) -> None:
        """Average the trainable gradients over ranks with one flat all_reduce."""
        if not self.dist.distributed:
            return
        import torch.distributed as dist

        grads = []
        for parameter in self.named_trainable.values():
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            grads.append(parameter.grad.reshape(-1))
        flat = torch.cat(grads).to(self._comm_device())
        dist.all_reduce(flat)
        flat /= self.dist.world_size
        offset = 0
        for parameter in self.named_trainable.values():
            count = parameter.grad.numel()
            parameter.grad.copy_(
                flat[offset : offset + count].view_as(parameter.grad).to(parameter.grad.device)
            )
            offset += count

    def _average_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        if not self.dist.distributed:
            return metrics
        import torch.distributed as dist

        names = sorted(metrics)
        values = torch.tensor([metrics[n] for n in names], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(values)
        return {n: float(v) / self.dist.world_size for n, v in zip(names, values.tolist())}

    def _commit_step(
        self, step: int, finite: bool, overflow: bool, loss_finite: bool, loss_scale: float | None
    ) -> None:
        """Apply (or skip) the update of step ``step`` and advance the scaler, the schedule and the step count."""
        if finite:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
            self.nan_streak = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            if overflow:
                self.overflow_steps += 1
            if not overflow or loss_scale < 1.0:
                self.nan_streak += 1
        if self.scaler is not None and loss_finite:
            self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step = step + 1

    def train_one_step(self) -> dict[str, float]:
        """One optimizer step at ``self.step`` (or a skipped one when the loss/gradients are not finite).

        With a gradient scaler (fp16 in the gradient path) the gradients are unscaled before clipping; a step
        whose gradients overflow is skipped and the scale lowered (``scaler.update()``). Such an overflow counts
        as a non-finite step towards ``max_nan_steps`` only once the scale is below 1, where scaling can no longer
        be the cause.
        """
        from pisces_cli.runtime import hold_interrupts
        from pisces_cli.training.data import derived_seed
        from pisces_cli.training.memory import peak_memory_gb, reset_peak_memory

        start = time.perf_counter()
        reset_peak_memory(self.device)
        step = self.step
        batches = self.data.micro_batches(
            step,
            accumulation=self.section.gradient_accumulation_steps,
            batch_size=self.section.batch_size,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        generator = torch.Generator().manual_seed(derived_seed(self.recipe.seed, step, self.dist.rank))
        self.optimizer.zero_grad(set_to_none=True)
        metrics = self.algorithm.train_step(batches, step, generator)
        loss_finite = self._all_finite(math.isfinite(metrics.get("loss", math.nan)))
        loss_scale = None if self.scaler is None else float(self.scaler.get_scale())
        grad_norm = math.nan
        finite = loss_finite
        if loss_finite:
            self._average_gradients()
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.ctx.trainable, self.section.max_grad_norm))
            finite = self._all_finite(math.isfinite(grad_norm))
        overflow = self.scaler is not None and loss_finite and not finite
        lr = float(self.scheduler.get_last_lr()[0])
        metrics = self._average_metrics(metrics)  # a collective: outside the block that holds Ctrl-C
        with hold_interrupts() as held:  # update, step count and log line: all or none
            self._commit_step(step, finite, overflow, loss_finite, loss_scale)
            metrics.update(
                {
                    "grad_norm": grad_norm,
                    "lr": lr,
                    "skipped": 0.0 if finite else 1.0,
                    "skipped_steps": float(self.skipped_steps),
                    "step_time_s": time.perf_counter() - start,
                    "peak_memory_gb": peak_memory_gb(self.device),
                }
            )
            if self.scaler is not None:
                metrics["loss_scale"] = loss_scale
                metrics["overflow_steps"] = float(self.overflow_steps)
            if overflow:
                self.logger.event(
                    self.step,
                    "overflow_step_skipped",
                    loss_scale=loss_scale,
                    next_loss_scale=float(self.scaler.get_scale()),
                    overflow_steps=self.overflow_steps,
                )
            elif not finite:
                self.logger.event(
                    self.step,
                    "nan_step_skipped",
                    loss=metrics.get("loss"),
                    grad_norm=grad_norm,
                    in_a_row=self.nan_streak,
                )
            if self.step % self.section.log_every == 0 or self.step == self.max_steps:
                self.logger.log(self.step, metrics)
        self.interrupt_pending = held.received  # Ctrl-C during the block: train() stops after it
        return metrics

    def train(self) -> FinetuneSummary:
        """Run from ``self.step`` to ``max_steps``; Ctrl-C or SIGTERM saves a checkpoint of the last finished step,
        then raises KeyboardInterrupt."""
        from pisces_cli.runtime import sigterm_as_interrupt

        if self.dist.is_main and self.console is not None:
            self.console.print(
                f"[bold]finetune[/] {self.section.algorithm} · {self.adapter.family} · "
                f"{sum(p.numel() for p in self.ctx.trainable):,} trainable params · {len(self.data)} items · "
                f"world {self.dist.world_size} · steps {self.step}→{self.max_steps}"
            )
            if self.resumed_from is not None and self.step >= self.max_steps:
                self.console.print(
                    f"[yellow]nothing to train:[/] {self.resumed_from} is already at step {self.step} (max steps "
                    f"{self.max_steps}); raise finetune.max_steps to train on, or pass --fresh to start over"
                )
        before = self.algorithm.before_training()
        if before:
            self.logger.log(self.step, before)
        self.logger.start_live()
        with sigterm_as_interrupt():  # a preemption saves a checkpoint like Ctrl-C
            try:
                while self.step < self.max_steps:
                    self.last_metrics = self.train_one_step()
                    if self.interrupt_pending:
                        raise KeyboardInterrupt
                    if self.nan_streak >= self.section.max_nan_steps:
                        kept = self.last_checkpoint or "none (no checkpoint was written yet)"
                        self.logger.event(self.step, "stopped_on_nan", in_a_row=self.nan_streak)
                        raise PiscesRuntimeError(
                            f"{self.nan_streak} non-finite steps in a row (finetune.max_nan_steps="
                            f"{self.section.max_nan_steps}); stopped. Last good checkpoint: {kept}"
                        )
                    periodic = self.step % self.section.checkpointing_steps == 0 and self.nan_streak == 0
                    if periodic or self.step == self.max_steps:
                        self.save_checkpoint(self.step)
                    # after the checkpoint: a failed validation loses no step
                    if self.validator.due(self.step):
                        self.validate()
            except KeyboardInterrupt:
                self.logger.event(self.step, "interrupted")
                if self.last_checkpoint is None or not self.last_checkpoint.name.endswith(f"-{self.step}"):
                    self.save_checkpoint(self.step, sync=False)
                raise
            finally:
                self.logger.close()
        return FinetuneSummary(
            output=self.output,
            step=self.step,
            checkpoint=self.last_checkpoint,
            metrics=self.last_metrics,
            skipped_steps=self.skipped_steps,
            resumed_from=self.resumed_from,
            overflow_steps=self.overflow_steps,
        )

    def validate(self) -> dict[str, float]:
        """Run the validation at the current step (every rank samples; rank 0 scores, writes and logs).

        Validation only watches the run: if it fails (out of memory while sampling, a full disk, ...) the
        failure is logged as a ``validation_failed`` event and printed, and training goes on.
        """
        try:
            metrics, videos = self.validator.run(self.step, is_main=self.dist.is_main)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # noqa: BLE001 - any failure of the side job, reported, not fatal
            reason = f"{type(error).__name__}: {error}"
            self.logger.event(self.step, "validation_failed", reason=reason)
            if self.console is not None:
                self.console.print(
                    f"[yellow]validation at step {self.step} failed[/] ({reason}); training goes on"
                )
            return {}
        if metrics:
            self.logger.log_validation(self.step, metrics, videos, fps=self.recipe.generate.fps)
        return metrics

    def cleanup(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
