"""The public Python API: PISCES rewards, OT maps, token OT and artifacts inside your own trainer.

Every name here is re-exported at the package top (``pisces_cli.load_reward``, ...) and listed in
``pisces_cli.__all__``; that list is the whole public surface (README, "Python API"). Everything else in
``pisces_cli`` is private and may change in any release.

Typical use::

    import pisces_cli

    reward = pisces_cli.load_reward("my_recipe.yaml", "reward.weights.semantic=0.5", device="cuda")
    out = reward(pixels, prompts)          # pixels [B, T, 3, H, W] in [0, 1]; prompts: list of B strings
    loss = -out["total"].mean()            # out["quality"], out["semantic"], out["quality_no_ot"]: [B] each
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisces_cli.errors import UsageError
from pisces_cli.ot.settings import TokenOTSettings

if TYPE_CHECKING:
    import torch

    from pisces_cli.artifacts import ArtifactHeader
    from pisces_cli.encoders.base import EncoderBackend
    from pisces_cli.ot.maps import TransportMap
    from pisces_cli.rewards.module import PiscesReward

__all__ = ["build_reward", "load_encoder", "load_ot_map", "load_reward", "save_ot_map"]

#: the paper's token-OT settings, the default of :func:`build_reward`.
PAPER_TOKEN_OT = TokenOTSettings()


def _device(device: str | torch.device | None, fallback: str = "auto") -> torch.device:
    """``device`` resolved (errors name the ``device`` argument), or ``runtime.device`` ``fallback`` when None."""
    from pisces_cli.runtime import resolve_device

    if device is None:
        return resolve_device(fallback)
    return resolve_device(str(device), key="device")


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``dtype`` as a torch dtype: a name or one of the float dtypes an encoder runs in (else UsageError)."""
    import torch

    from pisces_cli.runtime import resolve_dtype

    if dtype is None:
        return None
    if isinstance(dtype, str):
        try:
            return resolve_dtype(dtype)
        except KeyError:
            pass
    elif dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        return dtype
    raise UsageError(
        f"dtype must be 'float32', 'bfloat16', 'float16' or one of those torch dtypes (or torch.float64), "
        f"got {dtype!r}"
    )


def load_reward(
    recipe: str | Path, *overrides: str, device: str | torch.device | None = None
) -> PiscesReward:
    """The reward module a recipe describes, ready to call as ``reward(videos, prompts)``.

    Args:
        recipe: a bundled recipe name (``pisces ls``) or the path of a YAML recipe.
        *overrides: recipe overrides exactly as on the command line, e.g. ``"reward.ot_map=runs/ot/ot_map.safetensors"``,
            ``"reward.token_ot.enabled=false"`` or ``"~reward.ot_map"``.
        device: where the encoder runs (``"cuda"``, ``"cuda:1"``, ``"cpu"``, a ``torch.device``); ``None``
            uses the recipe's ``runtime.device`` (``auto``: this process's GPU when there is one, else CPU).

    Returns:
        A :class:`~pisces_cli.rewards.module.PiscesReward` built from ``models.encoder`` and ``reward.*``
        (OT map, weights, token-OT settings, crop).

    Raises:
        UsageError: an invalid recipe or override, a missing encoder path or OT map, or an OT map fit on
            another encoder or of another width.
    """
    from pisces_cli.config import load_recipe
    from pisces_cli.rewards.build import build_reward as build_from_recipe
    from pisces_cli.rewards.build import load_encoder_from_recipe

    for override in overrides:
        if not isinstance(override, str):
            raise UsageError(
                f"load_reward: each override is one string argument such as 'reward.weights.semantic=0.5', "
                f"got {type(override).__name__} {override!r} (unpack a list with *overrides)"
            )
    resolved = load_recipe(str(recipe), list(overrides))
    encoder = load_encoder_from_recipe(resolved.recipe, _device(device, resolved.recipe.runtime.device))
    reward, _ = build_from_recipe(resolved.recipe, encoder)
    return reward


def load_encoder(
    backend: str,
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **options: Any,
) -> EncoderBackend:
    """Load a frozen reward encoder.

    Args:
        backend: ``"clip"`` (CLIP, SigLIP, SigLIP2 checkpoints in Hugging Face format), ``"internvideo2"``
            (the released InternVideo2-Stage2 file; pass ``tokenizer_dir=`` a local ``bert-large-uncased``)
            or ``"world"`` (the synthetic-world encoder).
        path: the local checkpoint (directory or file); nothing is downloaded.
        device: where it runs (``None``: the GPU when there is one, else CPU).
        dtype: parameter dtype, ``"float32"``/``"bfloat16"``/``"float16"`` or a ``torch.dtype`` (``None``:
            the checkpoint's).
        **options: backend options (internvideo2: ``tokenizer_dir``, ``num_frames``).
    """
    from pisces_cli.encoders.registry import load_encoder as load_backend
    from pisces_cli.runtime import quiet_model_loading

    quiet_model_loading()
    from pisces_cli.runtime import check_reduced_precision

    where, torch_dtype = _device(device), _dtype(dtype)
    if torch_dtype is not None:
        check_reduced_precision(torch_dtype, where, "dtype")
    return load_backend(backend, str(path), device=where, dtype=torch_dtype, **options)


def build_reward(
    encoder: str | EncoderBackend,
    encoder_path: str | Path | None = None,
    *,
    ot_map: str | Path | TransportMap | None = None,
    weights: Mapping[str, float] | None = None,
    token_ot: TokenOTSettings | None = PAPER_TOKEN_OT,
    crop: str = "center",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    encoder_options: Mapping[str, Any] | None = None,
    with_no_ot_semantic: bool = False,
) -> PiscesReward:
    """The reward module from explicit parts, without a recipe.

    Args:
        encoder: a backend name (then ``encoder_path`` is its checkpoint, see :func:`load_encoder`) or an
            encoder already loaded with :func:`load_encoder`.
        encoder_path: the checkpoint when ``encoder`` is a backend name.
        ot_map: an ``ot_map.safetensors`` written by ``pisces fit-ot`` (refused when fit on another
            encoder or of another width), a :class:`~pisces_cli.ot.maps.TransportMap`, or ``None`` for no
            OT map (then ``quality`` equals ``quality_no_ot``).
        weights: ``{"quality": w_q, "semantic": w_s}`` of ``total = w_q·quality + w_s·semantic``
            (default 1 and 1); a zero semantic weight skips the semantic reward.
        token_ot: the token-level OT settings of the semantic reward (default: the paper's,
            :class:`TokenOTSettings`); ``None`` computes the semantic reward without the OT prior.
        crop: ``"center"`` (deterministic) or ``"random"`` crop when preprocessing pixels.
        device, dtype, encoder_options: passed to :func:`load_encoder` when ``encoder`` is a name; with a
            loaded encoder, a ``device`` or ``dtype`` other than the encoder's (and any option) is refused.
        with_no_ot_semantic: also compute ``semantic_no_ot`` (the semantic reward without the prior).

    Returns:
        A :class:`~pisces_cli.rewards.module.PiscesReward`.
    """
    from pisces_cli.encoders.base import EncoderBackend
    from pisces_cli.ot.maps import TransportMap
    from pisces_cli.rewards.build import load_map_for_encoder
    from pisces_cli.rewards.module import PiscesReward

    if isinstance(encoder, EncoderBackend):
        if encoder_path is not None:
            raise UsageError(
                "build_reward: give encoder_path only with a backend name, not with a loaded encoder"
            )
        _check_loaded_encoder(encoder, device, dtype, encoder_options)
        backend = encoder
    elif isinstance(encoder, str):
        if encoder_path is None:
            raise UsageError(f"build_reward: encoder {encoder!r} needs encoder_path (its local checkpoint)")
        backend = load_encoder(
            encoder, encoder_path, device=device, dtype=dtype, **dict(encoder_options or {})
        )
    else:
        raise UsageError(
            f"build_reward: encoder must be a backend name or a loaded encoder, got {type(encoder)}"
        )
    weights = _checked_weights(weights)
    if crop not in ("center", "random"):
        raise UsageError(f"build_reward: crop must be 'center' or 'random', got {crop!r}")
    if token_ot is not None and not isinstance(token_ot, TokenOTSettings):
        raise UsageError(
            f"build_reward: token_ot must be a pisces_cli.TokenOTSettings or None, got {type(token_ot).__name__}"
        )
    if ot_map is None or isinstance(ot_map, TransportMap):
        transport_map = ot_map
        if ot_map is not None and ot_map.dims is not None and ot_map.dims != (backend.embed_dim,) * 2:
            raise UsageError(
                f"build_reward: the OT map is {ot_map.dims[0]} -> {ot_map.dims[1]} wide but the encoder's "
                f"embeddings are {backend.embed_dim} wide"
            )
    elif isinstance(ot_map, (str, Path)):
        transport_map, _ = load_map_for_encoder(ot_map, backend, what="ot_map")
    else:
        raise UsageError(
            f"build_reward: ot_map must be a path, a TransportMap or None, got {type(ot_map).__name__}"
        )
    return PiscesReward(
        backend,
        ot_map=transport_map,
        weights=weights,
        token_ot=None if token_ot is None else token_ot.validate(),
        crop=crop,
        with_no_ot_semantic=with_no_ot_semantic,
    )


def _check_loaded_encoder(
    encoder: EncoderBackend,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    encoder_options: Mapping[str, Any] | None,
) -> None:
    """A loaded encoder runs where and in what it was loaded: ``device``/``dtype`` that say otherwise, and
    loader options, are refused (UsageError) instead of being ignored."""
    wanted_dtype = _dtype(dtype)
    if wanted_dtype is not None and wanted_dtype != encoder.dtype:
        raise UsageError(
            f"build_reward: dtype={dtype!r} but the loaded encoder is {encoder.dtype}; load it in that dtype "
            "(load_encoder(..., dtype=...)) or pass the backend name and its path"
        )
    if device is not None:
        wanted = _device(device)
        loaded = encoder.device
        if wanted.type != loaded.type or (wanted.index is not None and wanted.index != loaded.index):
            raise UsageError(
                f"build_reward: device={str(device)!r} but the loaded encoder is on {loaded}; load it there "
                "(load_encoder(..., device=...)) or pass the backend name and its path"
            )
    if encoder_options:
        raise UsageError("build_reward: encoder_options apply when loading; give them with a backend name")


def _checked_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """``weights`` as ``{"quality"|"semantic": finite float}``; anything else is a UsageError."""
    import math

    checked: dict[str, float] = {}
    for name, value in dict(weights or {}).items():
        if name not in ("quality", "semantic"):
            raise UsageError(f"build_reward: unknown weights key {name!r}; expected 'quality' and 'semantic'")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UsageError(f"build_reward: weights[{name!r}] must be a finite number, got {value!r}")
        checked[name] = float(value)
    return checked


def load_ot_map(path: str | Path, *, encoder: EncoderBackend | None = None) -> TransportMap:
    """Read an ``ot_map.safetensors``; with ``encoder``, refuse a map fit on another encoder or width.

    The map's :meth:`~pisces_cli.ot.maps.TransportMap.apply` takes raw text embeddings ``[B, D]`` and
    returns mapped ones ``[B, D]`` (it applies the normalisation it was fit with first).
    """
    from pisces_cli.rewards.ot_map_artifact import load_ot_map_artifact

    transport_map, _ = load_ot_map_artifact(
        path,
        encoder_fingerprint=None if encoder is None else encoder.fingerprint(),
        dim=None if encoder is None else encoder.embed_dim,
    )
    return transport_map


def save_ot_map(
    path: str | Path,
    transport_map: TransportMap,
    *,
    dim: int | None = None,
    encoder: EncoderBackend | None = None,
    metrics: Mapping[str, float] | None = None,
) -> Path:
    """Write ``transport_map`` as an ``ot_map.safetensors`` the CLI and :func:`load_reward` read.

    Args:
        dim: the embedding width the map takes and gives (default: ``encoder.embed_dim``).
        encoder: the encoder whose embeddings the map was fit on; its fingerprint is recorded so a
            reward on another encoder refuses the map. Without it the map cannot be used by
            ``pisces score`` (which checks the fingerprint), only by :func:`build_reward`.
        metrics: numbers to record in the header (e.g. held-out mutual kNN).
    """
    from pisces_cli.artifacts import ArtifactHeader
    from pisces_cli.rewards.ot_map_artifact import OT_MAP_SCHEMA, save_ot_map_artifact

    width = dim if dim is not None else (None if encoder is None else encoder.embed_dim)
    if width is None:
        raise UsageError("save_ot_map: give dim (the embedding width) or the encoder")
    if encoder is not None and width != encoder.embed_dim:
        raise UsageError(
            f"save_ot_map: dim={width} but the encoder's embeddings are {encoder.embed_dim} wide"
        )
    if transport_map.dims is not None and transport_map.dims != (width, width):
        raise UsageError(
            f"save_ot_map: the map is {transport_map.dims[0]} -> {transport_map.dims[1]} wide, not {width} -> {width}"
        )
    header: ArtifactHeader = ArtifactHeader(
        schema=OT_MAP_SCHEMA,
        stage="python-api",
        fingerprints={} if encoder is None else {"encoder": encoder.fingerprint()},
        metrics=dict(metrics or {}),
        extra={
            "method": transport_map.method,
            "normalization": transport_map.normalization,
            "embed_dim": width,
        },
    )
    return save_ot_map_artifact(path, transport_map, width, header)
