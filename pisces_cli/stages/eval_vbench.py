"""``pisces eval --vbench``: run the installed ``vbench`` package on a folder and aggregate its output.

Nothing is downloaded: VBench fetches missing weights with ``wget`` at run time, so before anything runs
:func:`plan_vbench_run` checks the package, the optional modules and every weight file the chosen
dimensions need under ``$VBENCH_CACHE_DIR`` (default ``~/.cache/vbench``, or ``eval.vbench_cache``),
and stops with a UsageError naming each missing piece and how to install it — never partial results.

Mode (docs/vbench.md §5):

- ``vbench_standard`` when every video is named ``{prompt}-{i}.ext`` (i in 0..4) after a prompt of the
  VBench suite; dimensions default to those whose prompt lists the videos cover;
- ``custom_input`` otherwise, with the folder's prompt mapping passed as ``prompt_list``; only the
  dimensions VBench accepts without auxiliary labels are allowed;
- the VBench-Long variants (``long_vbench_standard`` / ``long_custom_input``, module
  ``vbench2_beta_long``) when any video lasts 5.0 s or more, as VBench's FAQ requires.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import PiscesRuntimeError, UsageError

if TYPE_CHECKING:
    from pisces_cli.config import Recipe
    from pisces_cli.io.prompts import VideoItem

LONG_VIDEO_SECONDS = 5.0
RUN_NAME = "pisces"

# Files VBench loads with ``local=True`` for each dimension, relative to its cache root.
WEIGHTS: dict[str, tuple[str, ...]] = {
    "subject_consistency": (
        "dino_model/facebookresearch_dino_main",
        "dino_model/dino_vitbase16_pretrain.pth",
    ),
    "background_consistency": ("clip_model/ViT-B-32.pt",),
    "temporal_flickering": (),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
    "aesthetic_quality": ("clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
    "object_class": ("grit_model/grit_b_densecap_objectdet.pth",),
    "multiple_objects": ("grit_model/grit_b_densecap_objectdet.pth",),
    "human_action": ("umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth",),
    "color": ("grit_model/grit_b_densecap_objectdet.pth",),
    "spatial_relationship": ("grit_model/grit_b_densecap_objectdet.pth",),
    "scene": ("caption_model/tag2text_swin_14m.pth",),
    "appearance_style": ("clip_model/ViT-B-32.pt",),
    "temporal_style": ("ViCLIP/ViClip-InternVid-10M-FLT.pth", "ViCLIP/bpe_simple_vocab_16e6.txt.gz"),
    "overall_consistency": ("ViCLIP/ViClip-InternVid-10M-FLT.pth", "ViCLIP/bpe_simple_vocab_16e6.txt.gz"),
}
GRIT_DIMENSIONS = frozenset({"object_class", "multiple_objects", "color", "spatial_relationship"})
# Dimensions VBench's custom_input mode accepts (it rejects those needing auxiliary_info labels).
CUSTOM_DIMENSIONS = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "dynamic_degree",
    "aesthetic_quality",
    "imaging_quality",
    "temporal_style",
    "overall_consistency",
)
INSTALL_HINT = (
    "install VBench with `pip install vbench` (it pins torch/CUDA, transformers==4.33.2 and numpy<2: use a "
    "separate environment), detectron2 from git for the GRiT dimensions, and place the weights under the "
    "cache root (see docs/vbench.md §5, 'What is downloaded at runtime')"
)
_VBENCH_NAME = re.compile(r"^(?P<prompt>.+)-(?P<index>[0-4])\.(mp4|gif)$")


@dataclass
class VBenchPlan:
    """What :func:`run_vbench` will run: mode, dimensions, folder, prompts and cache root."""

    mode: str
    dimensions: list[str]
    videos_dir: Path
    cache_dir: Path
    prompt_list: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    long: bool = False
    notes: list[str] = field(default_factory=list)


def cache_root(recipe: Recipe) -> Path:
    """``eval.vbench_cache``, else ``$VBENCH_CACHE_DIR``, else ``~/.cache/vbench``."""
    spec = recipe.eval.vbench_cache or os.environ.get("VBENCH_CACHE_DIR") or "~/.cache/vbench"
    return Path(spec).expanduser()


def _module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing_requirements(dimensions: list[str], cache_dir: Path, *, long: bool) -> list[str]:
    """Human-readable list of what is missing to run ``dimensions`` offline (empty when all is there)."""
    missing = []
    if not _module_present("vbench"):
        missing.append("Python package 'vbench' (pip install vbench)")
    if long and not _module_present("vbench2_beta_long"):
        missing.append(
            "module 'vbench2_beta_long' (VBench-Long, for videos >= 5 s: install the VBench repository, "
            "git clone https://github.com/Vchitect/VBench && pip install -e VBench)"
        )
    if GRIT_DIMENSIONS & set(dimensions) and not _module_present("detectron2"):
        missing.append(
            "Python package 'detectron2' (pip install 'git+https://github.com/facebookresearch/detectron2.git')"
        )
    seen = set()
    for dimension in dimensions:
        for relative in WEIGHTS[dimension]:
            if relative in seen:
                continue
            seen.add(relative)
            if not (cache_dir / relative).exists():
                missing.append(f"{cache_dir / relative} (needed by {dimension})")
    return missing


def choose_mode(items: list[VideoItem], suite_dimensions: dict[str, tuple[str, ...]]) -> tuple[str, set[str]]:
    """``("vbench_standard", covered dimensions)`` when every file is ``{VBench prompt}-{0..4}.ext`` in one
    flat folder with one extension, else ``("custom_input", set())``."""
    covered: set[str] = set()
    extensions = set()
    for item in items:
        match = _VBENCH_NAME.match(item.key)
        if match is None or "/" in item.key or match.group("prompt") not in suite_dimensions:
            return "custom_input", set()
        extensions.add(Path(item.key).suffix.lower())
        covered.update(suite_dimensions[match.group("prompt")])
    if len(extensions) != 1:
        return "custom_input", set()
    return "vbench_standard", covered


def plan_vbench_run(recipe: Recipe, root: Path, items: list[VideoItem], suite: str | None) -> VBenchPlan:
    """Pick the mode and dimensions and check every requirement (UsageError listing what is missing)."""
    from pisces_cli.evaluation.prompt_suites import load_suite
    from pisces_cli.evaluation.vbench_aggregate import canonical_dimension_name
    from pisces_cli.io.prompts import prompt_from_filename
    from pisces_cli.io.video import probe

    requested = [canonical_dimension_name(d) for d in recipe.eval.vbench_dimensions]
    good = [it for it in items if it.error is None]
    bad = [it.key for it in items if it.error is not None]
    if bad:
        raise UsageError(
            f"--vbench: {len(bad)} video(s) have no usable prompt (e.g. {bad[0]!r}); VBench needs all"
        )
    if not good:
        raise UsageError(f"--vbench: no usable video with a prompt in {root}")
    suite_dimensions: dict[str, tuple[str, ...]] = {}
    for prompt in load_suite("vbench"):
        suite_dimensions[prompt.text] = tuple(
            dict.fromkeys(suite_dimensions.get(prompt.text, ()) + prompt.dimensions)
        )
    mode, covered = choose_mode(good, suite_dimensions)
    notes = []
    if mode == "vbench_standard":
        dimensions = requested or [d for d in WEIGHTS if d in covered]
        if suite and not suite.lower().startswith("vbench"):
            notes.append(f"file names match VBench prompts although the recipe's suite is {suite!r}")
    else:
        unsupported = [d for d in requested if d not in CUSTOM_DIMENSIONS]
        if unsupported:
            raise UsageError(
                f"eval.vbench_dimensions: {', '.join(unsupported)} need VBench's standard prompts "
                f"({{prompt}}-{{0..4}}.mp4 names from the vbench suite); custom prompts support: "
                f"{', '.join(CUSTOM_DIMENSIONS)}"
            )
        dimensions = requested or list(CUSTOM_DIMENSIONS)
    if "temporal_flickering" in dimensions:
        notes.append(
            "VBench's temporal_flickering is meant for static-filtered videos (its static_filter.py)"
        )
    longest = max(probe(it.source, name=it.key).duration_s for it in good)
    long = longest >= LONG_VIDEO_SECONDS
    if long:
        mode = "long_" + mode
        notes.append(f"longest video {longest:.2f} s >= {LONG_VIDEO_SECONDS} s: VBench-Long ({mode})")
    cache_dir = cache_root(recipe)
    missing = missing_requirements(dimensions, cache_dir, long=long)
    if missing:
        raise UsageError(
            "--vbench cannot run offline; missing:\n  - "
            + "\n  - ".join(missing)
            + f"\nTo fix: {INSTALL_HINT}. "
            "Nothing was evaluated; run without --vbench for the built-in metrics."
        )
    prompt_list = {it.key: str(it.prompt) for it in good} if "custom" in mode else {}
    if mode == "long_custom_input" and any(prompt_from_filename(k) != p for k, p in prompt_list.items()):
        notes.append("VBench-Long's long_custom_input takes prompts from file names, not the prompt mapping")
    return VBenchPlan(mode, dimensions, root, cache_dir, prompt_list, [it.key for it in good], long, notes)


def _long_kwargs() -> dict[str, Any]:
    """VBench-Long's evaluate() settings as its own eval_long.py sets them outside its dev mode."""
    import vbench2_beta_long  # type: ignore[import-not-found]

    configs = Path(vbench2_beta_long.__file__).parent / "configs"
    return {
        "sb_clip2clip_feat_extractor": "dino",
        "bg_clip2clip_feat_extractor": "clip",
        "imaging_quality_preprocessing_mode": "longer",
        "clip_length_config": "clip_length_mix.yaml",
        "w_inclip": 1.0,
        "w_clip2clip": 0.0,
        "use_semantic_splitting": False,
        "slow_fast_eval_config": str(configs / "slow_fast_params.yaml"),
        "dev_flag": False,
        "static_filter_flag": False,
        "num_of_samples_per_prompt": 5,
    }


def stage_videos(plan: VBenchPlan, staging: Path) -> Path:
    """A folder holding only symlinks to the plan's videos, under their own names.

    VBench takes the file extension from the first entry ``os.listdir`` returns and VBench-Long writes
    its clip folders into the videos folder; a folder of videos only avoids both (a ``prompts.jsonl`` or
    ``manifest.json`` listed first would make VBench look for ``{prompt}-{i}.jsonl`` and find nothing).
    """
    staging.mkdir(parents=True, exist_ok=True)
    for key in plan.files:
        link = staging / key
        target = (plan.videos_dir / key).resolve()
        if link.is_symlink() and link.resolve() == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    return staging


def run_vbench(plan: VBenchPlan, output: Path, recipe: Recipe) -> dict[str, Any]:
    """Run VBench (or VBench-Long) per ``plan`` into ``output`` and aggregate its results file exactly.

    VBench reads the videos through :func:`stage_videos` in a temporary folder (removed afterwards), so
    neither its clip folders nor the links end up inside the videos folder, where a later ``pisces eval``
    or ``pisces score`` would find them; its per-video records therefore name the temporary paths.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pisces-vbench-") as staging:
        return _run_vbench(plan, output, recipe, stage_videos(plan, Path(staging) / "videos"))


def _run_vbench(plan: VBenchPlan, output: Path, recipe: Recipe, videos: Path) -> dict[str, Any]:
    import torch

    from pisces_cli.evaluation.vbench_aggregate import aggregate_vbench_files
    from pisces_cli.runtime import stage_device

    os.environ["VBENCH_CACHE_DIR"] = str(plan.cache_dir)
    output.mkdir(parents=True, exist_ok=True)
    results = output / f"{RUN_NAME}_eval_results.json"
    results.unlink(missing_ok=True)  # never aggregate a stale file from an earlier run
    device = stage_device(recipe.runtime)
    if device.type != "cuda":
        plan.notes.append(f"VBench ran on {device}; it is written for CUDA (fp16 CLIP, AMT on 'cuda')")
    try:
        if plan.long:
            from vbench2_beta_long import VBenchLong as runner_class  # type: ignore[import-not-found]

            kwargs = _long_kwargs()
        else:
            from vbench import VBench as runner_class  # type: ignore[import-not-found]

            kwargs = {"imaging_quality_preprocessing_mode": "longer"}
        import vbench  # type: ignore[import-not-found]

        full_info = Path(vbench.__file__).parent / "VBench_full_info.json"
        runner = runner_class(torch.device(device), str(full_info), str(output))
        runner.evaluate(
            videos_path=str(videos),
            name=RUN_NAME,
            prompt_list=plan.prompt_list if plan.mode == "custom_input" else [],
            dimension_list=plan.dimensions,
            local=True,
            mode=plan.mode,
            **kwargs,
        )
    except Exception as error:  # VBench's own failures: report them as a runtime failure
        raise PiscesRuntimeError(f"vbench ({plan.mode}) failed: {type(error).__name__}: {error}") from error
    if not results.is_file():
        raise PiscesRuntimeError(f"vbench finished without writing {results}")
    aggregate = aggregate_vbench_files(results)
    return {
        "mode": plan.mode,
        "dimensions": plan.dimensions,
        "results_file": str(results),
        "notes": plan.notes,
        **aggregate.to_dict(),
    }
