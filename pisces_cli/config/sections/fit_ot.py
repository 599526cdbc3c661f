"""Recipe section ``fit_ot``: the distributional OT map T: text space -> real-video space."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class NeuralOTSection:
    """Neural OT (method.md §2.3). Defaults are the paper's."""

    hidden_dim: int = 1024
    lr_map: float = 1e-4
    lr_potential: float = 1e-4
    weight_decay: float = 1e-10
    grad_clip: float = 1.0
    mse_weight: float = 1.0
    t_iters: int = 10
    batch_size: int = 128
    max_steps: int = 160000
    lr_min_ratio: float = 0.05
    eval_every: int = 2000
    knn_k: int = 10

    def check(self) -> list[tuple[str, str]]:
        problems = []
        for name in ("hidden_dim", "t_iters", "batch_size", "max_steps", "eval_every", "knn_k"):
            if getattr(self, name) < 1:
                problems.append((name, f"must be >= 1, got {getattr(self, name)}"))
        for name in ("lr_map", "lr_potential"):
            if getattr(self, name) <= 0:
                problems.append((name, f"must be > 0, got {getattr(self, name)}"))
        return problems


@dataclass
class GaussianOTSection:
    ridge: float = 1e-6


@dataclass
class FitOTSection:
    """Fit, judge and ship an OT map from the embeddings written by ``embed``.

    ``val_fraction`` of the pairs (at most ``val_max``, at least 6) are held out and halved: the selection
    split, on which ``select`` picks the neural checkpoint that ships as ``ot_map.safetensors`` (the best
    mutual kNN, the default; the best distance Spearman; or the last step; all three are written), and the
    report split, whose metrics are the ones reported.
    """

    method: Literal["neural", "gaussian", "identity"] = "neural"
    normalize: Literal["l2", "none"] = "l2"
    embeddings: str = "${embed.output}"
    output: str = "${output_dir}/ot"
    val_fraction: float = 0.1
    val_max: int = 1024
    select: Literal["mknn_after", "spearman", "last"] = "mknn_after"
    neural: NeuralOTSection = field(default_factory=NeuralOTSection)
    gaussian: GaussianOTSection = field(default_factory=GaussianOTSection)

    def check(self) -> list[tuple[str, str]]:
        if not 0 < self.val_fraction < 1:
            return [("val_fraction", f"must be in (0, 1), got {self.val_fraction}")]
        return []
