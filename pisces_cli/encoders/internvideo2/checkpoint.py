"""Load the released InternVideo2-Stage2 checkpoint and our safetensors export, refusing partial loads.

Released file: ``InternVideo2-stage2_1b-224p-f4.pt`` (a DeepSpeed save; weights under ``"module"``, else
``"model"``, else the raw dict). It is read with ``torch.load(map_location="cpu", weights_only=True)`` — an
explicit import; the default format of pisces is our export (``config.json`` + ``model.safetensors``).

Key mapping (released key → :class:`InternVideo2Stage2` parameter):

=====================================================  =====================================================
released key                                           our parameter
=====================================================  =====================================================
``vision_encoder.cls_token``                           ``vision_encoder.cls_token``
``vision_encoder.pos_embed``                           ``vision_encoder.pos_embed`` (kept at T₀ frames)
``vision_encoder.img_pos_embed``                       ``vision_encoder.img_pos_embed``
``vision_encoder.patch_embed.proj.{weight,bias}``      same name
``vision_encoder.blocks.{i}.norm1.weight``             same name (also ``norm2.weight``)
``vision_encoder.blocks.{i}.attn.qkv.weight``          same name (no bias)
``vision_encoder.blocks.{i}.attn.{q,k}_norm.weight``   same name
``vision_encoder.blocks.{i}.attn.proj.{weight,bias}``  same name
``vision_encoder.blocks.{i}.ls{1,2}.gamma``            same name
``vision_encoder.blocks.{i}.mlp.fc{1,2}.{weight,bias}``  same name
``vision_encoder.clip_projector.norm1_{q,k,v}.*``      same name
``vision_encoder.clip_projector.cross_attn.{q,k,v}.weight``  same name
``vision_encoder.clip_projector.cross_attn.{q,k,v}_bias``    same name
``vision_encoder.clip_projector.cross_attn.proj.*``    same name
``text_encoder.bert.embeddings.*``                     ``text_encoder.embeddings.*``
``text_encoder.bert.encoder.layer.{i}.*``              ``text_encoder.encoder.layer.{i}.*`` (incl. ``crossattention``)
``vision_proj.*``, ``text_proj.*``, ``itm_head.*``     same name
=====================================================  =====================================================

So the mapping is: strip ``bert.`` after ``text_encoder.``; keep everything else. Ignored (dropped before the
strict check, exactly this set): ``vision_encoder.clip_decoder.*``, ``vision_encoder.final_clip_decoder.*``,
``vision_encoder.clip_pos_embed``, ``vision_encoder.clip_img_pos_embed``, ``text_encoder.cls.*``, ``temp``,
``text_encoder.bert.embeddings.position_ids``. Any other missing, unexpected or mis-shaped key raises
:class:`~pisces_cli.errors.UsageError` listing them.

The loader and ``pisces validate --weights`` share these rules: :func:`read_released_weights` (wrapper,
ignore set, key mapping; memory-mapped for the preflight) and :func:`check_mapped_weights` (the strict
key/shape comparison at the file's own frame count, before any interpolation).

``pos_embed`` frame change (the reference loader's ``interpolate_pos_embed_internvideo2``): CLS row kept; patch
rows ``[1, T₀·g², C]`` viewed as ``[g², C, T₀]`` and resized linearly (``align_corners=False``) to ``T``; then, only
if the grid differs, bicubic per frame. Computed in fp32 and cast back to the stored dtype. The loaders keep the
checkpoint's own T₀-frame table (``config.vision.pos_embed_frames = T₀``, the stored tensor also as
``vision_encoder.source_pos_embed``) and the vision encoder interpolates it to each clip's frame count on first
use: every frame count is interpolated once, from the checkpoint's table (never 4 → 8 → 9).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from pisces_cli.encoders.internvideo2.config import InternVideo2Config
from pisces_cli.encoders.internvideo2.model import CONFIG_FILE, WEIGHTS_FILE, InternVideo2Stage2
from pisces_cli.errors import UsageError, torch_load_reason
from pisces_cli.io.weight_check import KeyCheck, compare_shapes

POS_EMBED_KEY = "vision_encoder.pos_embed"
IGNORED_PREFIXES = (
    "vision_encoder.clip_decoder.",
    "vision_encoder.final_clip_decoder.",
    "text_encoder.cls.",
)
IGNORED_KEYS = frozenset(
    {
        "vision_encoder.clip_pos_embed",
        "vision_encoder.clip_img_pos_embed",
        "temp",
        "text_encoder.bert.embeddings.position_ids",
    }
)


def is_ignored_released_key(key: str) -> bool:
    """True for the released keys a native loader drops (distillation decoders, MLM head, temp, position_ids)."""
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def map_released_key(key: str) -> str:
    """Released key → our parameter name (``text_encoder.bert.`` → ``text_encoder.``; others unchanged)."""
    prefix = "text_encoder.bert."
    return "text_encoder." + key[len(prefix) :] if key.startswith(prefix) else key


def interpolate_pos_embed(pos_embed: Tensor, orig_frames: int, new_frames: int, new_grid: int) -> Tensor:
    """Resize a ``[1, 1 + T₀·g₀², C]`` position embedding to ``[1, 1 + T·g², C]`` (CLS kept).

    Temporal: linear, ``align_corners=False`` on the ``[g₀², C, T₀]`` layout. Spatial (only if g₀ ≠ g): bicubic,
    ``align_corners=False``, per frame. Returns the input unchanged when nothing differs.
    """
    _, rows, channels = pos_embed.shape
    patch_rows = rows - 1
    if orig_frames < 1 or patch_rows % orig_frames:
        raise UsageError(f"pos_embed with {rows} rows does not hold {orig_frames} frames plus a CLS row")
    orig_grid = math.isqrt(patch_rows // orig_frames)
    if orig_grid * orig_grid * orig_frames != patch_rows:
        raise UsageError(f"pos_embed with {rows} rows is not 1 + {orig_frames}·g² for a square grid")
    if orig_frames == new_frames and orig_grid == new_grid:
        return pos_embed
    stored_dtype = pos_embed.dtype
    cls_row = pos_embed[:, :1]
    patches = pos_embed[:, 1:].float().reshape(orig_frames, orig_grid * orig_grid, channels)
    if orig_frames != new_frames:
        by_time = patches.permute(1, 2, 0)  # [g², C, T₀]
        by_time = F.interpolate(by_time, size=new_frames, mode="linear", align_corners=False)
        patches = by_time.permute(2, 0, 1)  # [T, g², C]
    if orig_grid != new_grid:
        grid = patches.reshape(new_frames, orig_grid, orig_grid, channels).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
        patches = grid.permute(0, 2, 3, 1)
    patches = patches.reshape(1, new_frames * new_grid * new_grid, channels).to(stored_dtype)
    return torch.cat([cls_row, patches], dim=1)


def frames_in_pos_embed(pos_embed: Tensor, grid_size: int, source: str) -> int:
    """Frame count T₀ of a ``[1, 1 + T₀·g², C]`` position embedding with the model's grid."""
    patch_rows = pos_embed.shape[1] - 1
    per_frame = grid_size * grid_size
    if pos_embed.ndim != 3 or patch_rows < per_frame or patch_rows % per_frame:
        raise UsageError(
            f"{source}: {POS_EMBED_KEY} has shape {tuple(pos_embed.shape)}, expected [1, 1 + T·{per_frame}, C]"
        )
    return patch_rows // per_frame


def released_state_dict(raw: object, source: str) -> dict[str, Tensor]:
    """The weights of a released checkpoint object: ``raw["module"]``, else ``raw["model"]``, else ``raw``."""
    if not isinstance(raw, Mapping):
        raise UsageError(f"{source}: expected a dict checkpoint, got {type(raw).__name__}")
    for wrapper in ("module", "model"):
        if wrapper in raw and isinstance(raw[wrapper], Mapping):
            raw = raw[wrapper]
            break
    weights = {key: value for key, value in raw.items() if isinstance(value, Tensor)}
    skipped = sorted(key for key, value in raw.items() if not isinstance(value, Tensor))
    if skipped:
        raise UsageError(f"{source}: non-tensor entries in the weights: {skipped[:10]}")
    return weights


def expected_shapes(config: InternVideo2Config) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor of :class:`InternVideo2Stage2` for ``config`` (built on the meta device)."""
    with torch.device("meta"):
        model = InternVideo2Stage2(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def check_mapped_weights(
    state_dict: Mapping[str, Tensor], config: InternVideo2Config, source: str
) -> tuple[KeyCheck, int]:
    """The strict check every load applies, on shapes only (tensors may be memory-mapped; nothing is read).

    ``state_dict`` is under our names (:func:`read_released_weights` or an export). ``pos_embed``'s frame count
    T₀ is read off the file and the model of ``config`` at T₀ frames is compared key by key (interpolation to
    other frame counts happens after this check). Returns ``(check, T₀)``; T₀ is ``config.vision.num_frames``
    when the file has no ``pos_embed`` (then reported missing).
    """
    if POS_EMBED_KEY in state_dict:
        frames = frames_in_pos_embed(state_dict[POS_EMBED_KEY], config.vision.grid_size, source)
    else:
        frames = config.vision.num_frames
    shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
    return compare_shapes(expected_shapes(config.with_num_frames(frames)), shapes), frames


def refuse_partial_load(check: KeyCheck, source: str) -> None:
    """Raise :class:`UsageError` listing the missing, unexpected and mis-shaped keys of a failed check."""
    if not check.ok:
        raise UsageError(f"{source}: refusing a partial InternVideo2 load; {check.describe(limit=10**9)}")


def build_from_state_dict(
    config: InternVideo2Config,
    state_dict: Mapping[str, Tensor],
    dtype: torch.dtype | None,
    device: torch.device | str,
    source: str,
    use_checkpoint: bool = False,
) -> InternVideo2Stage2:
    """Strictly load ``state_dict`` (our names, ``pos_embed`` already at ``config.vision.num_frames``).

    The model is built on the meta device and the tensors are assigned, so no random init is spent.
    Returns the model in eval mode with frozen parameters, cast to ``dtype`` (None: keep the stored dtype)
    on ``device``.
    """
    with torch.device("meta"):
        model = InternVideo2Stage2(config, use_checkpoint=use_checkpoint)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
    refuse_partial_load(compare_shapes(expected, shapes), source)
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    model = model.to(device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


def read_released_weights(path: str | os.PathLike[str], *, mmap: bool = False) -> dict[str, Tensor]:
    """The weights of a released ``.pt`` under our names: wrapper taken, ignored keys dropped, keys mapped.

    ``mmap=True`` memory-maps the file (``torch.load(mmap=True, weights_only=True)``): tensors are views of the
    file and nothing is read until touched, so a multi-GB checkpoint is checked in milliseconds. Files in
    torch's legacy (non-zip) format cannot be mapped and are read whole.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise UsageError(f"{source}: InternVideo2 checkpoint not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as error:
        if not (mmap and "zipfile" in str(error)):
            raise UsageError(
                f"{source}: cannot read as a weights-only torch checkpoint ({torch_load_reason(error)})"
            ) from error
        return read_released_weights(path, mmap=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad input file
        raise UsageError(
            f"{source}: cannot read as a weights-only torch checkpoint ({torch_load_reason(error)})"
        ) from error
    weights = released_state_dict(raw, source)
    return {
        map_released_key(key): value for key, value in weights.items() if not is_ignored_released_key(key)
    }


def load_internvideo2(
    path: str | os.PathLike[str],
    config: InternVideo2Config | None = None,
    num_frames: int | None = None,
    dtype: torch.dtype | None = torch.float32,
    device: torch.device | str = "cpu",
    use_checkpoint: bool = False,
) -> InternVideo2Stage2:
    """Load the released ``.pt`` (e.g. ``InternVideo2-stage2_1b-224p-f4.pt``) into :class:`InternVideo2Stage2`.

    ``config`` defaults to :meth:`InternVideo2Config.stage2_1b`; ``num_frames`` (the frame count clips are sampled
    at) defaults to the config's (4, the checkpoint's own); ``pos_embed`` keeps the checkpoint's table and other
    frame counts are interpolated from it per clip. Refuses partial loads (see module docstring).
    """
    mapped = read_released_weights(path)
    config = config or InternVideo2Config.stage2_1b()
    return _load_mapped(mapped, config, num_frames, dtype, device, str(path), use_checkpoint)


def _load_mapped(
    state_dict: dict[str, Tensor],
    config: InternVideo2Config,
    num_frames: int | None,
    dtype: torch.dtype | None,
    device: torch.device | str,
    source: str,
    use_checkpoint: bool,
) -> InternVideo2Stage2:
    """Build the model with ``pos_embed`` kept at the checkpoint's own frame count; ``num_frames`` (default:
    ``config.vision.num_frames``) is the frame count clips are sampled at."""
    check, stored_frames = check_mapped_weights(state_dict, config, source)
    refuse_partial_load(check, source)
    target_frames = config.vision.num_frames if num_frames is None else num_frames
    if target_frames < 1:
        raise UsageError(f"num_frames must be >= 1, got {target_frames}")
    stored_table = state_dict[POS_EMBED_KEY]
    model = build_from_state_dict(
        config.with_num_frames(target_frames, pos_embed_frames=stored_frames),
        state_dict,
        dtype,
        device,
        source,
        use_checkpoint,
    )
    model.vision_encoder.source_pos_embed = stored_table.detach().to("cpu").clone()
    return model


def load_pretrained_dir(
    directory: str | os.PathLike[str],
    num_frames: int | None = None,
    dtype: torch.dtype | None = torch.float32,
    device: torch.device | str = "cpu",
    use_checkpoint: bool = False,
) -> InternVideo2Stage2:
    """Load our export (``config.json`` + ``model.safetensors``); ``num_frames`` (default: the export's) is the frame
    count clips are sampled at, interpolated from the stored table on use. Strict like :func:`load_internvideo2`."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = InternVideo2Config.load_json(directory / CONFIG_FILE)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise UsageError(f"{weights_path}: weights file not found")
    try:
        state_dict = load_file(str(weights_path), device="cpu")
    except Exception as error:  # noqa: BLE001 - a corrupt file is bad input
        raise UsageError(f"{weights_path}: cannot read safetensors ({error})") from error
    return _load_mapped(state_dict, config, num_frames, dtype, device, str(weights_path), use_checkpoint)


def convert_released_checkpoint(
    path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    config: InternVideo2Config | None = None,
    dtype: torch.dtype = torch.float32,
) -> InternVideo2Stage2:
    """Convert the released ``.pt`` to our export (``config.json`` + ``model.safetensors``) in ``dtype``, keeping
    the checkpoint's own frame count so later loads interpolate from the original ``pos_embed``."""
    model = load_internvideo2(path, config=config, dtype=dtype)
    model.save_pretrained(output_dir)
    return model
