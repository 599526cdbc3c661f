"""Recipe section ``fit_ot``: the distributional OT map T: text space -> real-video space."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pisces_cli.config.schema import Count, LocalPath, NonNegativeFloat, PositiveFloat, Probability, Range


@dataclass
class NeuralOTSection:
    """Neural OT (method.md §2.3). Defaults are the paper's."""

    hidden_dim: Count = 1024
    lr_map: PositiveFloat = 1e-4
    lr_potential: PositiveFloat = 1e-4
    weight_decay: NonNegativeFloat = 1e-10
    grad_clip: PositiveFloat = 1.0
    mse_weight: NonNegativeFloat = 1.0
    t_iters: Count = 10
    batch_size: Count = 128
    max_steps: Count = 160000
    lr_min_ratio: Probability = 0.05
    eval_every: Count = 2000
    knn_k: Count = 10


@dataclass
class GaussianOTSection:
    ridge: NonNegativeFloat = 1e-6


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
    embeddings: LocalPath = "${embed.output}"
    output: LocalPath = "${output_dir}/ot"
    val_fraction: Annotated[float, Range(low=0, high=1, low_open=True, high_open=True)] = 0.1
    val_max: Count = 1024
    select: Literal["mknn_after", "spearman", "last"] = "mknn_after"
    neural: NeuralOTSection = field(default_factory=NeuralOTSection)
    gaussian: GaussianOTSection = field(default_factory=GaussianOTSection)
