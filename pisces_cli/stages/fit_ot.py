"""``pisces fit-ot``: fit, judge and ship the distributional OT map T (text → real-video embeddings).

Reads the ``pisces.embeddings`` artifact written by ``embed`` (``text_cls``, ``video_cls``), splits a
held-out set (seeded), fits ``neural`` / ``gaussian`` / ``identity`` in the recipe's normalisation
convention, and writes into ``fit_ot.output``:

- ``ot_map.safetensors`` (schema ``pisces.ot_map``: method, dims, normalisation, held-out metrics,
  the encoder fingerprint of the data) — the map the reward uses;
- for ``neural``: ``ot_map_best_mknn.safetensors``, ``ot_map_best_spearman.safetensors``,
  ``ot_map_last.safetensors`` and the resumable training state in ``state/``;
- ``report.md`` with PNG plots (metric curves; pairwise-distance densities before/after).

``--import FILE.pt`` converts the reference implementation's released map instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import UsageError
from pisces_cli.preflight import check_stage

if TYPE_CHECKING:
    import torch

    from pisces_cli.config import ResolvedRecipe

EMBEDDINGS_SCHEMA = "pisces.embeddings"


@dataclass
class FitSummary:
    output: Path
    method: str
    metrics: dict[str, float]
    train_size: int
    val_size: int
    step: int | None = None


def split_train_val(n: int, fraction: float, cap: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded permutation split: ``V = min(cap, max(2, round(fraction·n)))`` held-out rows."""
    import torch

    if n < 4:
        raise UsageError(f"fit-ot needs at least 4 embedded pairs, found {n}")
    val = min(cap, max(2, round(fraction * n)), n - 2)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val:], order[:val]


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


def run_fit_ot(resolved: ResolvedRecipe, *, console: Any = None, resume: bool = True) -> FitSummary:
    """Fit the map of ``resolved`` and write the artifacts (see module docstring)."""
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
    from pisces_cli.runtime import init_distributed, resolve_device, seed_everything
    from pisces_cli.stages.progress import progress_bar

    check_stage("fit-ot", resolved)
    recipe = resolved.recipe
    section = recipe.fit_ot
    ctx = init_distributed()
    seed_everything(recipe.seed)
    out_dir = Path(section.output)
    emb_dir = Path(section.embeddings)
    if not emb_dir.is_dir():
        raise UsageError(f"fit_ot.embeddings: {emb_dir} is not a folder (run `pisces embed` first)")
    tensors, keys, header = load_sharded(
        emb_dir, expect_schema=EMBEDDINGS_SCHEMA, names=["text_cls", "video_cls"]
    )
    x_all, y_all = tensors["text_cls"].float(), tensors["video_cls"].float()
    if x_all.shape != y_all.shape:
        raise UsageError(
            f"{emb_dir}: text_cls {tuple(x_all.shape)} and video_cls {tuple(y_all.shape)} differ"
        )
    encoder_fp = header.fingerprints.get("encoder")
    train_idx, val_idx = split_train_val(x_all.shape[0], section.val_fraction, section.val_max, recipe.seed)
    x_train, y_train = x_all[train_idx], y_all[train_idx]
    x_val, y_val = x_all[val_idx], y_all[val_idx]
    dim = int(x_all.shape[1])
    norm = section.normalize
    extra_common = {
        "train_size": len(train_idx),
        "val_size": len(val_idx),
        "embeddings": str(emb_dir),
        "normalization": norm,
        "embed_dim": dim,
    }
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
        device = resolve_device(recipe.runtime.device)
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
                if metrics:
                    fields.update({k: v for k, v in metrics.items() if k in ("mknn_after", "spearman")})
                advance(step_now - last["step"], **fields)
                last["step"] = step_now

            result = fit_neural_map(
                x_train.to(device),
                y_train.to(device),
                x_val.to(device),
                y_val.to(device),
                config,
                out_dir / "state",
                resume=resume,
                on_progress=on_progress,
                eval_every=neural.eval_every,
                device=device,
            )
        if not ctx.is_main:
            return FitSummary(out_dir, "neural", {}, len(train_idx), len(val_idx), result.step)
        history, step = result.history, result.step
        candidates = {"last": result.transport_map}
        for metric in ("mknn_after", "spearman"):
            if metric in result.best:
                candidates[metric] = load_map(result.best[metric]["path"])
        for name, tmap in candidates.items():
            label = {"last": "last", "mknn_after": "best_mknn", "spearman": "best_spearman"}[name]
            m = map_metrics(
                normalize_embeddings(x_val, norm),
                normalize_embeddings(y_val, norm),
                tmap.apply(x_val),
                k=neural.knn_k,
            )
            save_ot_map_artifact(
                out_dir / f"ot_map_{label}.safetensors",
                tmap,
                dim,
                _header(resolved, encoder_fp, m, {**extra_common, "selected_by": name, "step": step}),
            )
        chosen_name = section.select if section.select in candidates else "last"
        transport_map = candidates[chosen_name]
        extra_common["selected_by"] = chosen_name
    elif section.method == "gaussian":
        transport_map = fit_gaussian_map(x_train, y_train, normalization=norm, ridge=section.gaussian.ridge)
    else:
        transport_map = IdentityMap(norm)
    knn_k = section.neural.knn_k
    tx_val = transport_map.apply(x_val)
    x_val_n, y_val_n = normalize_embeddings(x_val, norm), normalize_embeddings(y_val, norm)
    metrics = map_metrics(x_val_n, y_val_n, tx_val, k=knn_k)
    save_ot_map_artifact(
        out_dir / "ot_map.safetensors",
        transport_map,
        dim,
        _header(resolved, encoder_fp, metrics, {**extra_common, "method": section.method, "step": step}),
    )
    write_fit_report(
        out_dir, history, x_val_n, y_val_n, tx_val, metrics, title=f"OT map fit report ({section.method})"
    )
    return FitSummary(out_dir, section.method, metrics, len(train_idx), len(val_idx), step)


def run_import(resolved: ResolvedRecipe, source: str, *, console: Any = None) -> FitSummary:
    """Convert the reference implementation's released map (a ``.pt``) into ``ot_map.safetensors``.

    The map is tied to ``models.encoder`` (its fingerprint is recorded) and uses ``fit_ot.normalize``
    as its input convention — ``l2`` reproduces how the reference applies its map at reward time.
    """
    from pisces_cli.ot.maps import NeuralMap, import_reference_map
    from pisces_cli.rewards.build import load_encoder_from_recipe
    from pisces_cli.rewards.ot_map_artifact import save_ot_map_artifact
    from pisces_cli.runtime import resolve_device

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
