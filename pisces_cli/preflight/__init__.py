"""Preflight: prove in seconds, before any GPU work, that a recipe's files load and its outputs can be written.

``pisces validate RECIPE --weights [--stage STAGE]`` runs :func:`run_preflight` (every check, no weight loaded
into memory) and prints one row per check with its recipe key; every stage calls :func:`check_stage` first
(the millisecond part: paths, config files, the OT map header, writable outputs). Modules: ``report`` (rows),
``paths`` (local path / hub cache / writable), ``encoder`` (reward encoder, tokenizer, OT map), ``generator``
(diffusers folder against the backbone adapter), ``outputs`` (writable folders, disk estimates), ``devices``
(GPUs against the world size, the memory plan), ``run`` (what each stage needs).

This package sits at the stages level: it imports rewards, encoders, backbones, training, config and io, and
only the CLI and the stages import it.
"""

from __future__ import annotations

from pisces_cli.preflight.report import Check, PreflightReport, Status
from pisces_cli.preflight.run import STAGES, StageInputs, check_stage, run_preflight

__all__ = ["STAGES", "Check", "PreflightReport", "StageInputs", "Status", "check_stage", "run_preflight"]
