"""Configuration of the native InternVideo2-Stage2 model (vision ViT, BERT text/fusion encoder, heads).

Sizes (docs/internvideo2.md §1.1, §2.1): :meth:`InternVideo2Config.stage2_1b` is the released
``InternVideo2-stage2_1b-224p-f4`` model, :meth:`InternVideo2Config.tiny` the test model (docs/internvideo2.md §6).
The config is stored next to the weights as JSON (``config.json``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pisces_cli.errors import UsageError

GELU_APPROXIMATIONS = ("tanh", "none")


@dataclass
class VisionConfig:
    """Vision encoder (``PretrainInternVideo2``) sizes.

    ``num_frames`` is the frame count clips are sampled at (the encoder's preprocessing); ``pos_embed_frames`` the
    frame count of the stored temporal position embedding ``pos_embed`` (``[1, 1 + grid² · pos_embed_frames,
    embed_dim]``: the checkpoint's own table, 4 for the released model; None = ``num_frames``). Any other frame
    count is interpolated from that table when a clip of that length arrives. ``gelu_approximate`` is the MLP
    activation (``"tanh"``: the fused-MLP path the checkpoint was trained with; ``"none"``: exact erf GELU).
    """

    img_size: int = 224
    patch_size: int = 14
    tubelet_size: int = 1
    in_chans: int = 3
    embed_dim: int = 1408
    depth: int = 40
    num_heads: int = 16
    mlp_ratio: float = 48 / 11
    qk_normalization: bool = True
    norm_eps: float = 1e-6
    attn_pool_num_heads: int = 16
    clip_embed_dim: int = 768
    num_frames: int = 4
    gelu_approximate: str = "tanh"
    pos_embed_frames: int | None = None

    @property
    def table_frames(self) -> int:
        """Frames held by the stored ``pos_embed`` (``pos_embed_frames``, else ``num_frames``)."""
        return self.pos_embed_frames if self.pos_embed_frames is not None else self.num_frames

    @property
    def grid_size(self) -> int:
        """Patches per image side (224 / 14 = 16)."""
        return self.img_size // self.patch_size

    @property
    def patches_per_frame(self) -> int:
        """grid² patch tokens per frame (256 for the 1B model)."""
        return self.grid_size**2

    @property
    def mlp_hidden_dim(self) -> int:
        """MLP width, ``int(embed_dim · mlp_ratio)`` (6144 for the 1B model)."""
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass
class TextConfig:
    """BERT-large text/fusion encoder sizes; layers ``>= fusion_layer`` cross-attend to video tokens
    of width ``encoder_width`` (the vision ``embed_dim``)."""

    vocab_size: int = 30522
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    fusion_layer: int = 19
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    encoder_width: int = 1408

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class InternVideo2Config:
    """Whole Stage-2 model: ``vision``, ``text`` and the projection width ``embed_dim`` of
    ``vision_proj`` / ``text_proj``."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 512

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def stage2_1b(cls, num_frames: int = 4) -> InternVideo2Config:
        """The released 1B model (224 px, patch 14, 40 blocks of width 1408; BERT-large, fusion from 19)."""
        return cls(vision=VisionConfig(num_frames=num_frames), text=TextConfig(), embed_dim=512)

    @classmethod
    def tiny(cls, num_frames: int = 4) -> InternVideo2Config:
        """The test model (16×16 grid kept, widths 64/32, 3 ViT blocks, 4 BERT layers)."""
        vision = VisionConfig(
            img_size=32,
            patch_size=2,
            embed_dim=64,
            depth=3,
            num_heads=4,
            attn_pool_num_heads=4,
            clip_embed_dim=32,
            num_frames=num_frames,
        )
        text = TextConfig(
            hidden_size=32,
            num_layers=4,
            num_heads=4,
            intermediate_size=64,
            fusion_layer=2,
            encoder_width=64,
        )
        return cls(vision=vision, text=text, embed_dim=16)

    def with_num_frames(self, num_frames: int, pos_embed_frames: int | None = None) -> InternVideo2Config:
        """A copy that samples clips of ``num_frames`` frames and stores a ``pos_embed`` of ``pos_embed_frames``
        frames (None: ``num_frames``)."""
        vision = dataclasses.replace(self.vision, num_frames=num_frames, pos_embed_frames=pos_embed_frames)
        return InternVideo2Config(
            vision=vision, text=dataclasses.replace(self.text), embed_dim=self.embed_dim
        )

    def validate(self) -> None:
        """Raise :class:`UsageError` when sizes are inconsistent."""
        v, t = self.vision, self.text
        problems = []
        if v.img_size % v.patch_size:
            problems.append(f"vision.img_size {v.img_size} is not a multiple of patch_size {v.patch_size}")
        if v.embed_dim % v.num_heads:
            problems.append(f"vision.embed_dim {v.embed_dim} is not a multiple of num_heads {v.num_heads}")
        if v.embed_dim % v.attn_pool_num_heads:
            problems.append(
                f"vision.embed_dim {v.embed_dim} is not a multiple of attn_pool_num_heads {v.attn_pool_num_heads}"
            )
        if v.tubelet_size != 1:
            problems.append(f"vision.tubelet_size must be 1 (got {v.tubelet_size})")
        if v.num_frames < 1:
            problems.append(f"vision.num_frames must be >= 1 (got {v.num_frames})")
        if v.pos_embed_frames is not None and v.pos_embed_frames < 1:
            problems.append(f"vision.pos_embed_frames must be >= 1 (got {v.pos_embed_frames})")
        if v.gelu_approximate not in GELU_APPROXIMATIONS:
            problems.append(
                f"vision.gelu_approximate must be one of {GELU_APPROXIMATIONS} (got {v.gelu_approximate!r})"
            )
        if t.hidden_size % t.num_heads:
            problems.append(f"text.hidden_size {t.hidden_size} is not a multiple of num_heads {t.num_heads}")
        if not 0 <= t.fusion_layer <= t.num_layers:
            problems.append(f"text.fusion_layer {t.fusion_layer} is outside [0, {t.num_layers}]")
        if t.encoder_width != v.embed_dim:
            problems.append(f"text.encoder_width {t.encoder_width} must equal vision.embed_dim {v.embed_dim}")
        if problems:
            raise UsageError("invalid InternVideo2 config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {
            "vision": dataclasses.asdict(self.vision),
            "text": dataclasses.asdict(self.text),
            "embed_dim": self.embed_dim,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> InternVideo2Config:
        """Build from :meth:`to_dict` output; unknown or missing keys raise :class:`UsageError`."""
        try:
            vision = _build(VisionConfig, data["vision"], f"{source}: vision")
            text = _build(TextConfig, data["text"], f"{source}: text")
            embed_dim = int(data["embed_dim"])
        except (KeyError, TypeError) as error:
            raise UsageError(f"{source}: expected keys 'vision', 'text', 'embed_dim' ({error})") from error
        extra = set(data) - {"vision", "text", "embed_dim"}
        if extra:
            raise UsageError(f"{source}: unknown keys {sorted(extra)}")
        return cls(vision=vision, text=text, embed_dim=embed_dim)

    def save_json(self, path: str | os.PathLike[str]) -> None:
        """Write the config atomically as indented JSON."""
        from pisces_cli.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load_json(cls, path: str | os.PathLike[str]) -> InternVideo2Config:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise UsageError(f"{path}: config file not found") from error
        except json.JSONDecodeError as error:
            raise UsageError(f"{path}: not valid JSON ({error})") from error
        return cls.from_dict(data, source=str(path))


def _build(kind: type, data: Any, source: str) -> Any:
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(data) - names
    if unknown:
        raise UsageError(f"{source}: unknown keys {sorted(unknown)}; expected a subset of {sorted(names)}")
    return kind(**data)
