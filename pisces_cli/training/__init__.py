"""Post-training: one trainer (LoRA/full, optimizer, checkpoints, logs) and pluggable algorithms.

Modules: ``algorithm`` (the trainer ↔ algorithm contract), ``trainer`` (setup / train / save, DDP and FSDP2),
``backprop`` (the paper's reward backprop + consistency distillation), ``grpo`` (GRPO over SDE rollouts),
``losses``, ``data`` (prompts, the latents cache, deterministic batches), ``checkpoint`` (slim adapter +
resumable state, no pickle), ``metrics_log`` (JSONL / console / TensorBoard / W&B), ``memory`` (peak memory and
the ``--dry-run`` estimate). Nothing here is imported by ``pisces --help``.
"""
