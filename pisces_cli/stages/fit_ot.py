"""``pisces fit-ot``: fit, judge and ship the distributional OT map T (text → real-video embeddings).

Reads the ``pisces.embeddings`` artifact written by ``embed`` (``text_cls``, ``video_cls``) and splits the
pairs three ways (seeded, :func:`split_pairs`): a training split, a *selection* split that picks the neural
checkpoint to ship (``fit_ot.select``), and a *report* split whose metrics are the ones reported, so a
reported number never comes from the rows that chose the map. It fits ``neural`` / ``gaussian`` /
``identity`` in the recipe's normalisation convention and writes into ``fit_ot.output``:

- ``ot_map.safetensors`` (schema ``pisces.ot_map``: method, dims, normalisation, report-split metrics,
  selection-split metrics, the split sizes, the encoder fingerprint of the data) — the map the reward uses;
- for ``neural``: ``ot_map_best_mknn.safetensors``, ``ot_map_best_spearman.safetensors``,
  ``ot_map_last.safetensors`` and the resumable training state in ``state/``;
- ``report.md`` with PNG plots (metric curves; pairwise-distance densities before/after).

``--import FILE.pt`` converts the reference implementation's released map instead.

One folder holds one fit: a fit (or an import) into a folder holding the outputs of another method is
refused, and with ``--force`` the earlier outputs are removed first, so a folder never mixes two fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import UsageError
from pisces_cli.preflight import check_stage

if TYPE_CHECKING:
    import torch

    from pisces_cli.config import ResolvedRecipe

EMBEDDINGS_SCHEMA = "pisces.embeddings"

#: every file and folder ``fit-ot`` writes into ``fit_ot.output`` (what ``--force`` removes; nothing else).
FIT_OUTPUTS = (
    "ot_map.safetensors",
    "ot_map_best_mknn.safetensors",
    "ot_map_best_spearman.safetensors",
    "ot_map_last.safetensors",
    "report.md",
    "curves.png",
    "distances.png",
    "state",
)
#: outputs only a neural fit writes (they identify an interrupted one that has no ``ot_map.safetensors`` yet).
_NEURAL_ONLY = ("state", "ot_map_last.safetensors", "ot_map_best_mknn.safetensors", "curves.png")
SPLIT_RULE = (
    "seeded permutation of the N embedded pairs; the first H = min(val_max, max(6, round(val_fraction * N)), "
    "N - 2) rows are held out: the first floor(H / 2) form the selection split (it picks the shipped neural "
    "checkpoint), the others the report split (its metrics are the ones reported); the remaining rows train"
)


@dataclass
class FitSummary:
    """``metrics``: the shipped map's metrics on the report split (``report_size`` held-out pairs)."""

    output: Path
    method: str
    metrics: dict[str, float]
    train_size: int
    report_size: int
    step: int | None = None
    #: True when the folder already held this very fit (same settings and embeddings) and nothing was redone.
    nothing_to_do: bool = False
    #: what the reader of the metrics must know (e.g. a split too small for mutual kNN to tell maps apart)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FitSplits:
    """Row indices ``[n]`` of the three splits of the embedded pairs (see :data:`SPLIT_RULE`)."""

    train: torch.Tensor
    selection: torch.Tensor
    report: torch.Tensor

    def describe(self, seed: int) -> dict[str, Any]:
        """What the artifact header records about the splits (sizes, seed, rule)."""
        return {
            "seed": seed,
            "train": len(self.train),
            "selection": len(self.selection),
            "report": len(self.report),
            "rule": SPLIT_RULE,
        }


def split_pairs(n: int, fraction: float, cap: int, seed: int) -> FitSplits:
    """Split ``n`` pairs into train / selection / report by :data:`SPLIT_RULE` (needs at least 8 pairs)."""
    import torch

    if n < 8:
        raise UsageError(
            f"fit-ot needs at least 8 embedded pairs (2 to train, 3 to select the map, 3 to report its "
            f"metrics), found {n}"
        )
    held = min(cap, max(6, round(fraction * n)), n - 2)
    if held < 6:
        raise UsageError(f"fit_ot.val_max is {cap}; at least 6 pairs must be held out (3 select, 3 report)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    half = held // 2
    return FitSplits(train=order[held:], selection=order[:half], report=order[half:held])


def _fit_kind(out_dir: Path) -> str | None:
    """Whose outputs ``out_dir`` holds: a method name, ``import``, ``unknown``, or None when it holds none."""
    from pisces_cli.artifacts import read_header

    present = [name for name in FIT_OUTPUTS if (out_dir / name).exists()]
    if not present:
        return None
    if (out_dir / "ot_map.safetensors").is_file():
        extra = read_header(out_dir / "ot_map.safetensors").extra
        if "imported_from" in extra:
            return "import"
        method = extra.get("method") or extra.get("map", {}).get("method")
        if method:
            return str(method)
    if any(name in present for name in _NEURAL_ONLY):
        return "neural"
    return "unknown"


def claim_output_folder(out_dir: Path, kind: str, *, force: bool) -> None:
    """Make ``out_dir`` ready for the outputs of a ``kind`` fit (a method name, or ``import``).

    Outputs of another kind are refused (UsageError, exit 2) unless ``force``; with ``force`` every earlier
    output is removed first. Either way the folder never mixes two fits' maps, plots and state. Only the
    names in :data:`FIT_OUTPUTS` are touched; other files in the folder are left alone.
    """
    import shutil

    previous = _fit_kind(out_dir)
    if previous is None or (previous == kind and not force):
        return
    present = [name for name in FIT_OUTPUTS if (out_dir / name).exists()]
    if not force:
        earlier = "an import" if previous == "import" else f"a {previous} fit"
        new = "an import" if kind == "import" else f"a {kind} fit"
        raise UsageError(
            f"fit_ot.output: {out_dir} holds the outputs of {earlier} ({', '.join(present)}); {new} there "
            "would leave a folder mixing two fits. Pass --force to replace them, or set fit_ot.output to "
            "another folder"
        )
    for name in present:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()


def _header(
    resolved: ResolvedRecipe, encoder_fp: dict[str, Any] | None, metrics: dict[str, float], extra: dict
):
    from pisces_cli.artifacts import ArtifactHeader

    return ArtifactHeader(
        schema="pisces.ot_map",
        stage="fit-ot",
        recipe_hash=resolved.hash,
        recipe=resolved.data,
        fingerprints={"encoder": encoder_fp} if encoder_fp else {},
        metrics=metrics,
        extra=extra,
    )


def fit_key(resolved: ResolvedRecipe) -> dict[str, Any]:
    """Everything that changes what ``fit-ot`` writes: the ``fit_ot`` settings, the seed, the pisces version
    and a signature (name, size, mtime of every file) of the embeddings folder, read without opening a file.

    Recorded in ``ot_map.safetensors``; a re-run whose key matches has nothing to do (and leaves the map's
    bytes, hence every score/eval folder keyed on its hash, untouched).
    """
    import json

    from pisces_cli import __version__
    from pisces_cli.stages.run_key import files_signature

    settings = {k: v for k, v in resolved.data["fit_ot"].items() if k not in ("output", "embeddings")}
    key = {
        "fit_ot": settings,
        "seed": resolved.recipe.seed,
        "embeddings": files_signature([Path(resolved.recipe.fit_ot.embeddings)]),
        "pisces_version": __version__,
    }
    return json.loads(json.dumps(key))  # as the JSON header will give it back


def finished_fit(out_dir: Path, key: dict[str, Any], method: str) -> FitSummary | None:
    """The summary of the fit already in ``out_dir`` when it was made under ``key`` and is complete, else None."""
    from pisces_cli.artifacts import read_header

    path = out_dir / "ot_map.safetensors"
    if not path.is_file() or not (out_dir / "report.md").is_file():
        return None
    try:
        header = read_header(path)
    except UsageError:
        return None  # a damaged map is refit
    if header.stage != "fit-ot" or header.extra.get("fit_key") != key or header.extra.get("method") != method:
        return None
    splits = header.extra.get("splits", {})
    return FitSummary(
        out_dir,
        method,
        dict(header.metrics),
        int(splits.get("train", 0)),
        int(splits.get("report", 0)),
        header.extra.get("step"),
        nothing_to_do=True,
        notes=[str(note) for note in header.extra.get("notes") or []],
    )


def trivial_knn_notes(splits: FitSplits, knn_k: int, select: str | None) -> list[str]:
    """Notes for the held-out splits on which mutual kNN cannot tell maps apart.

    With ``N`` pairs, k is capped at ``N − 1``: when ``knn_k ≥ N − 1`` every other pair is a neighbour in
    both clouds, so ``mknn_before`` and ``mknn_after`` are 1 for any map. ``select``: the neural
    checkpoint rule (``mknn_after`` then ties on every checkpoint and the first evaluated one ships)."""
    notes = []
    for name, rows in (("selection", splits.selection), ("report", splits.report)):
        size = len(rows)
        if knn_k < size - 1:
            continue
        note = (
            f"mknn_before and mknn_after on the {name} split are 1 for any map: with {size} pairs and "
            f"fit_ot.neural.knn_k = {knn_k} every other pair is a neighbour (hold out at least {knn_k + 2} "
            "pairs per split with fit_ot.val_fraction / val_max, or lower fit_ot.neural.knn_k)"
        )
        if name == "selection" and select == "mknn_after":
            note += "; select: mknn_after ties on every checkpoint, so the first evaluated one ships"
        notes.append(note)
    return notes


def _data_key(keys: list[str], splits: FitSplits, encoder_fp: dict[str, Any] | None) -> dict[str, Any]:
    """What a resumed neural fit must share with its saved state: the encoder and the rows of its splits."""
    import hashlib

    def digest(index: torch.Tensor) -> str:
        rows = "\n".join(keys[i] for i in index.tolist())
        return hashlib.sha256(rows.encode()).hexdigest()[:16]

    return {
        "encoder": encoder_fp or {},
        "train_rows": digest(splits.train),
        "selection_rows": digest(splits.selection),
    }


def run_fit_ot(
    resolved: ResolvedRecipe, *, console: Any = None, resume: bool = True, force: bool = False
) -> FitSummary:
    """Fit the map of ``resolved`` and write the artifacts (see the module docstring).

    ``resume``: continue a neural fit from ``state/`` (same settings, encoder and split rows only).
    ``force``: replace the outputs of an earlier fit in ``fit_ot.output`` (needed when they are of another
    method or an import).
    """
    check_stage("fit-ot", resolved)
    recipe = resolved.recipe
    section = recipe.fit_ot
    out_dir = Path(section.output)
    emb_dir = Path(section.embeddings)
    if not emb_dir.is_dir():
        raise UsageError(f"fit_ot.embeddings: {emb_dir} is not a folder (run `pisces embed` first)")
    key = fit_key(resolved)
    if resume and not force:
        done = finished_fit(out_dir, key, section.method)
        if done is not None:
            return done
    from pisces_cli.artifacts import load_sharded
    from pisces_cli.ot.maps import (
        IdentityMap,
        NeuralOTConfig,
        fit_gaussian_map,
        fit_neural_map,
        load_map,
        map_metrics,
        normalize_embeddings,
        write_fit_report,
    )
    from pisces_cli.rewards.ot_map_artifact import save_ot_map_artifact
    from pisces_cli.runtime import barrier, init_distributed, seed_everything, stage_device
    from pisces_cli.stages.progress import progress_bar

    ctx = init_distributed(timeout_s=None)  # DDP training: every rank steps together
    seed_everything(recipe.seed)
    tensors, keys, header = load_sharded(
        emb_dir, expect_schema=EMBEDDINGS_SCHEMA, names=["text_cls", "video_cls"]
    )
    x_all, y_all = tensors["text_cls"].float(), tensors["video_cls"].float()
    if x_all.shape != y_all.shape:
        raise UsageError(
            f"{emb_dir}: text_cls {tuple(x_all.shape)} and video_cls {tuple(y_all.shape)} differ"
        )
    encoder_fp = header.fingerprints.get("encoder")
    splits = split_pairs(x_all.shape[0], section.val_fraction, section.val_max, recipe.seed)
    if ctx.is_main:
        claim_output_folder(out_dir, section.method, force=force)
    barrier()
    x_train, y_train = x_all[splits.train], y_all[splits.train]
    x_sel, y_sel = x_all[splits.selection], y_all[splits.selection]
    x_rep, y_rep = x_all[splits.report], y_all[splits.report]
    dim = int(x_all.shape[1])
    norm = section.normalize
    knn_k = section.neural.knn_k
    extra_common: dict[str, Any] = {
        "splits": splits.describe(recipe.seed),
        "embeddings": str(emb_dir),
        "normalization": norm,
        "embed_dim": dim,
    }

    def metrics_on(x: torch.Tensor, y: torch.Tensor, tmap: Any) -> dict[str, float]:
        """Mutual kNN before/after and distance Spearman of ``tmap`` on one held-out split."""
        return map_metrics(
            normalize_embeddings(x, norm), normalize_embeddings(y, norm), tmap.apply(x), k=knn_k
        )

    history: list[dict[str, Any]] = []
    step = None
    if section.method == "neural":
        neural = section.neural
        config = NeuralOTConfig(
            hidden_dim=neural.hidden_dim,
            potential_hidden_dim=neural.hidden_dim,
            lr_map=neural.lr_map,
            lr_potential=neural.lr_potential,
            weight_decay=neural.weight_decay,
            grad_clip=neural.grad_clip,
            mse_weight=neural.mse_weight,
            t_iters=neural.t_iters,
            max_steps=neural.max_steps,
            batch_size=neural.batch_size,
            eta_min_ratio=neural.lr_min_ratio,
            seed=recipe.seed,
            normalization=norm,
            knn_k=neural.knn_k,
        ).validate()
        device = stage_device(recipe.runtime)
        with progress_bar(
            console if ctx.is_main else None, "fit-ot (neural)", total=neural.max_steps
        ) as advance:
            last = {"step": 0}

            def on_progress(
                step_now: int, losses: dict[str, float], metrics: dict[str, float] | None
            ) -> None:
                fields = {
                    "loss_T": losses.get("loss_map", float("nan")),
                    "loss_f": losses.get("loss_potential", float("nan")),
                }
                if metrics:  # the selection split's metrics (the report split is never looked at here)
                    fields.update(
                        {f"sel_{k}": v for k, v in metrics.items() if k in ("mknn_after", "spearman")}
                    )
                advance(step_now - last["step"], **fields)
                last["step"] = step_now

            try:
                result = fit_neural_map(
                    x_train.to(device),
                    y_train.to(device),
                    x_sel.to(device),
                    y_sel.to(device),
                    config,
                    out_dir / "state",
                    resume=resume,
                    on_progress=on_progress,
                    eval_every=neural.eval_every,
                    device=device,
                    data_key=_data_key(keys, splits, encoder_fp),
                )
            except UsageError as error:
                if "cannot resume" not in str(error) or "--fresh" in str(error):
                    raise
                raise UsageError(
                    f"{error}; pass --fresh to fit from the start with the new settings, or restore them"
                ) from None
        if not ctx.is_main:  # rank 0 alone writes the candidates, the map and the report
            return FitSummary(out_dir, "neural", {}, len(splits.train), len(splits.report), result.step)
        history, step = result.history, result.step
        candidates = {"last": result.transport_map}
        for metric in ("mknn_after", "spearman"):
            if metric in result.best:
                candidates[metric] = load_map(result.best[metric]["path"])
        for name, tmap in candidates.items():
            label = {"last": "last", "mknn_after": "best_mknn", "spearman": "best_spearman"}[name]
            extra = {
                **extra_common,
                "method": "neural",
                "candidate": name,
                "step": step,
                "selection_metrics": metrics_on(x_sel, y_sel, tmap),
            }
            save_ot_map_artifact(
                out_dir / f"ot_map_{label}.safetensors",
                tmap,
                dim,
                _header(resolved, encoder_fp, metrics_on(x_rep, y_rep, tmap), extra),
            )
        chosen_name = section.select if section.select in candidates else "last"
        transport_map = candidates[chosen_name]
        extra_common["selected_by"] = chosen_name
        extra_common["selected_step"] = result.best[chosen_name]["step"] if chosen_name != "last" else step
        extra_common["selection_metrics"] = metrics_on(x_sel, y_sel, transport_map)
    elif section.method == "gaussian":
        transport_map = fit_gaussian_map(x_train, y_train, normalization=norm, ridge=section.gaussian.ridge)
    else:
        transport_map = IdentityMap(norm)
    if not ctx.is_main:  # every rank computed the same map; rank 0 alone writes it (one writer per file)
        return FitSummary(out_dir, section.method, {}, len(splits.train), len(splits.report), step)
    metrics = metrics_on(x_rep, y_rep, transport_map)
    notes = trivial_knn_notes(splits, knn_k, section.select if section.method == "neural" else None)
    extra_common["notes"] = notes
    save_ot_map_artifact(
        out_dir / "ot_map.safetensors",
        transport_map,
        dim,
        _header(
            resolved,
            encoder_fp,
            metrics,
            {**extra_common, "method": section.method, "step": step, "fit_key": key},
        ),
    )
    write_fit_report(
        out_dir,
        history,
        normalize_embeddings(x_rep, norm),
        normalize_embeddings(y_rep, norm),
        transport_map.apply(x_rep),
        metrics,
        title=f"OT map fit report ({section.method})",
        splits=splits.describe(recipe.seed),
        selection_metrics=extra_common.get("selection_metrics"),
        selected=(extra_common["selected_by"], extra_common["selected_step"])
        if "selected_by" in extra_common
        else None,
        notes=notes,
    )
    return FitSummary(
        out_dir, section.method, metrics, len(splits.train), len(splits.report), step, notes=notes
    )


def run_import(
    resolved: ResolvedRecipe, source: str, *, console: Any = None, force: bool = False
) -> FitSummary:
    """Convert the reference implementation's released map (a ``.pt``) into ``ot_map.safetensors``.

    The map is tied to ``models.encoder`` (its fingerprint is recorded) and uses ``fit_ot.normalize``
    as its input convention — ``l2`` reproduces how the reference applies its map at reward time.
    ``force``: replace the outputs of an earlier fit in ``fit_ot.output`` (refused otherwise).
    """
    from pisces_cli.ot.maps import NeuralMap, import_reference_map
    from pisces_cli.rewards.build import load_encoder_from_recipe
    from pisces_cli.rewards.ot_map_artifact import save_ot_map_artifact
    from pisces_cli.runtime import dist_context, resolve_device

    recipe = resolved.recipe
    if not Path(source).is_file():
        raise UsageError(f"--import: {source} does not exist")
    state_dict, dims = import_reference_map(source)
    transport_map = NeuralMap.from_state_dict(state_dict, recipe.fit_ot.normalize)
    encoder_fp = None
    if recipe.models.encoder.path:
        encoder = load_encoder_from_recipe(recipe, resolve_device("cpu"))
        if encoder.embed_dim != dims.input_dim:
            raise UsageError(
                f"--import: the map takes {dims.input_dim}-d inputs but models.encoder gives {encoder.embed_dim}-d"
            )
        encoder_fp = encoder.fingerprint()
    else:
        raise UsageError("--import needs models.encoder.path set, so the imported map is tied to its encoder")
    out = Path(recipe.fit_ot.output) / "ot_map.safetensors"
    if not dist_context().is_main:  # under torchrun rank 0 alone writes the imported map
        return FitSummary(out.parent, "neural (imported)", {}, 0, 0)
    claim_output_folder(out.parent, "import", force=force)
    save_ot_map_artifact(
        out,
        transport_map,
        dims.input_dim,
        _header(
            resolved,
            encoder_fp,
            {},
            {
                "imported_from": str(source),
                "normalization": recipe.fit_ot.normalize,
                "method": "neural",
                "hidden_dim": dims.hidden_dim,
            },
        ),
    )
    return FitSummary(out.parent, "neural (imported)", {}, 0, 0)
