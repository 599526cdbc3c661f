"""Neural OT (Korotin-style min-max with quadratic cost) on cached embeddings (method.md §2.3).

Notation: x ~ text embeddings ``[N, D]``, y ~ real-video embeddings ``[M, D]`` (unpaired: the
objective only sees the two distributions), T = :class:`OTMapNet`, f = :class:`PotentialNet`, and

    c(x, z) = mean_d (z_d − x_d)²            (``F.mse_loss``: mean over batch and dims = ‖z − x‖²/D).

One **outer step**:

1. ``t_iters`` T steps, each on a fresh x batch, f frozen:
   ``L_T = mse_weight · c(x, T(x)) − mean_B f(T(x))``.
2. One f step on a fresh (x, y) batch pair, T frozen and ``T(x)`` computed under ``no_grad``:
   ``L_f = mean_B f(T(x)) − mean_B f(y)`` (real and fake in one concatenated forward, as for DDP).

Both steps clip the gradient norm to ``grad_clip``; optimisers are Adam (L2 ``weight_decay``); each
net has a CosineAnnealingLR (``T_max = max_steps``, ``eta_min = eta_min_ratio · lr``) stepped once per
outer step. Batches are drawn with replacement from the cached clouds by a generator seeded from
``(seed + rank, step, phase)`` only, so a run is reproducible, resumes exactly, and ranks draw
different batches. Nothing here encodes video.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pisces_cli.errors import UsageError
from pisces_cli.ot.maps.networks import DEFAULT_HIDDEN_DIM, OTMapNet, PotentialNet
from pisces_cli.ot.maps.state_io import join_optimizer_state, split_optimizer_state
from pisces_cli.ot.maps.transport import NORMALIZATIONS, NeuralMap, normalize_embeddings


@dataclass
class NeuralOTConfig:
    """Hyper-parameters of Neural OT; defaults are the paper setting (reference CLI, method.md §2.4).

    Attributes:
        hidden_dim: hidden width of T (the reference trainer's ``ot-hidden``).
        potential_hidden_dim: hidden width of f (the reference trainer's ``f-hidden``).
        lr_map / lr_potential: Adam learning rates of T and f.
        weight_decay: Adam L2 weight decay (both nets).
        grad_clip: max gradient norm per step (both nets).
        mse_weight: weight of the transport cost in L_T.
        t_iters: T steps per f step (each on a fresh batch).
        max_steps: number of outer steps; also the cosine schedules' T_max.
        batch_size: samples per batch per rank.
        eta_min_ratio: cosine floor as a fraction of the initial lr.
        seed: base seed (network init uses ``seed``; batches use ``seed + rank``).
        normalization: input convention, ``"l2"`` or ``"none"``, applied to x and y when fitting and
            recorded with the map so :meth:`TransportMap.apply` uses the same one.
        knn_k: k of the mutual-kNN validation metric.
    """

    hidden_dim: int = DEFAULT_HIDDEN_DIM
    potential_hidden_dim: int = DEFAULT_HIDDEN_DIM
    lr_map: float = 1e-4
    lr_potential: float = 1e-4
    weight_decay: float = 1e-10
    grad_clip: float = 1.0
    mse_weight: float = 1.0
    t_iters: int = 10
    max_steps: int = 160_000
    batch_size: int = 128
    eta_min_ratio: float = 0.05
    seed: int = 0
    normalization: str = "l2"
    knn_k: int = 10

    def validate(self) -> NeuralOTConfig:
        """Raise :class:`UsageError` naming the first invalid field; returns ``self``."""
        positive_ints = ("hidden_dim", "potential_hidden_dim", "t_iters", "max_steps", "batch_size", "knn_k")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"neural OT config '{name}' must be a positive integer, got {value!r}")
        for name in ("lr_map", "lr_potential", "grad_clip"):
            if not float(getattr(self, name)) > 0:
                raise UsageError(f"neural OT config '{name}' must be > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "mse_weight"):
            if float(getattr(self, name)) < 0:
                raise UsageError(f"neural OT config '{name}' must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= float(self.eta_min_ratio) <= 1:
            raise UsageError(
                f"neural OT config 'eta_min_ratio' must be in [0, 1], got {self.eta_min_ratio!r}"
            )
        if self.normalization not in NORMALIZATIONS:
            raise UsageError(
                f"neural OT config 'normalization' must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-able field dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NeuralOTConfig:
        """Build from a dict; unknown keys raise :class:`UsageError` listing the valid ones."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown neural OT config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**values).validate()


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") else module


def batch_generator(seed: int, step: int, phase: int) -> torch.Generator:
    """CPU generator seeded from ``(seed, step, phase)`` through numpy's SeedSequence (stateless draws)."""
    state = np.random.SeedSequence([seed, step, phase]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator()
    generator.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return generator


class NeuralOTTrainer:
    """Owns T, f, their optimisers and schedules, and the cached training clouds.

    Args:
        x_train: text embeddings ``[N, D]`` (raw; normalised here per ``config.normalization``).
        y_train: video embeddings ``[M, D]`` (raw; same convention).
        config: :class:`NeuralOTConfig`.
        device: where nets and clouds live (default: ``x_train.device``).
        rank: process rank (batch seeds use ``seed + rank``).
        distributed: wrap both nets in ``DistributedDataParallel`` (needs an initialised process group).

    ``step`` counts completed outer steps; :meth:`train_step` runs the next one.
    """

    def __init__(
        self,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        config: NeuralOTConfig,
        *,
        device: torch.device | str | None = None,
        rank: int = 0,
        distributed: bool = False,
    ):
        config.validate()
        if x_train.ndim != 2 or y_train.ndim != 2 or x_train.shape[1] != y_train.shape[1]:
            raise UsageError(
                f"neural OT needs x [N, D] and y [M, D] with equal D; got {tuple(x_train.shape)}, {tuple(y_train.shape)}"
            )
        if x_train.shape[0] < 1 or y_train.shape[0] < 1:
            raise UsageError("neural OT needs non-empty training clouds")
        self.config = config
        self.rank = rank
        self.device = torch.device(device) if device is not None else x_train.device
        self.x_train = normalize_embeddings(x_train.detach().float(), config.normalization).to(self.device)
        self.y_train = normalize_embeddings(y_train.detach().float(), config.normalization).to(self.device)
        dim = x_train.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.map_net = OTMapNet(dim, dim, config.hidden_dim).to(self.device)
            self.potential_net = PotentialNet(dim, config.potential_hidden_dim).to(self.device)
        self.map_opt = torch.optim.Adam(
            self.map_net.parameters(), lr=config.lr_map, weight_decay=config.weight_decay
        )
        self.potential_opt = torch.optim.Adam(
            self.potential_net.parameters(), lr=config.lr_potential, weight_decay=config.weight_decay
        )
        self.map_sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.map_opt, T_max=config.max_steps, eta_min=config.eta_min_ratio * config.lr_map
        )
        self.potential_sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.potential_opt, T_max=config.max_steps, eta_min=config.eta_min_ratio * config.lr_potential
        )
        self.map_model: nn.Module = self.map_net
        self.potential_model: nn.Module = self.potential_net
        if distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.map_model = DistributedDataParallel(self.map_net, device_ids=device_ids)
            self.potential_model = DistributedDataParallel(self.potential_net, device_ids=device_ids)
        self.step = 0

    # ------------------------------------------------------------------ batches
    def _draw(self, cloud: torch.Tensor, phase: int) -> torch.Tensor:
        generator = batch_generator(self.config.seed + self.rank, self.step, phase)
        indices = torch.randint(cloud.shape[0], (self.config.batch_size,), generator=generator)
        return cloud[indices.to(cloud.device)]

    # ------------------------------------------------------------------ one outer step
    def train_step(self) -> dict[str, float]:
        """Run outer step ``self.step + 1``; returns its losses.

        Returns ``{"loss_map": mean L_T over the t_iters steps, "transport_cost": mean c(x, T(x)),
        "loss_potential": L_f, "lr_map", "lr_potential"}`` (lrs used in this step).
        """
        config = self.config
        lr_map = self.map_opt.param_groups[0]["lr"]
        lr_potential = self.potential_opt.param_groups[0]["lr"]
        self.map_net.train()
        self.potential_net.train()

        self.potential_net.requires_grad_(False)
        loss_map_sum = torch.zeros((), device=self.device)
        cost_sum = torch.zeros((), device=self.device)
        for phase in range(config.t_iters):
            x = self._draw(self.x_train, phase)
            transported = self.map_model(x)
            cost = F.mse_loss(transported, x)
            loss_map = config.mse_weight * cost - self.potential_net(transported).mean()
            self.map_opt.zero_grad(set_to_none=True)
            loss_map.backward()
            torch.nn.utils.clip_grad_norm_(self.map_net.parameters(), config.grad_clip)
            self.map_opt.step()
            loss_map_sum += loss_map.detach()
            cost_sum += cost.detach()
        self.potential_net.requires_grad_(True)

        x = self._draw(self.x_train, config.t_iters)
        y = self._draw(self.y_train, config.t_iters + 1)
        with torch.no_grad():
            transported = self.map_net(x)
        scores = self.potential_model(torch.cat([transported, y]))
        loss_potential = scores[: x.shape[0]].mean() - scores[x.shape[0] :].mean()
        self.potential_opt.zero_grad(set_to_none=True)
        loss_potential.backward()
        torch.nn.utils.clip_grad_norm_(self.potential_net.parameters(), config.grad_clip)
        self.potential_opt.step()

        self.map_sched.step()
        self.potential_sched.step()
        self.step += 1
        values = torch.stack(
            [loss_map_sum / config.t_iters, cost_sum / config.t_iters, loss_potential.detach()]
        )
        loss_map_mean, cost_mean, loss_potential_value = values.cpu().tolist()
        return {
            "loss_map": loss_map_mean,
            "transport_cost": cost_mean,
            "loss_potential": loss_potential_value,
            "lr_map": float(lr_map),
            "lr_potential": float(lr_potential),
        }

    # ------------------------------------------------------------------ maps and state
    def transport_map(self) -> NeuralMap:
        """A frozen CPU copy of the current T as a :class:`NeuralMap` (training is unaffected)."""
        net = OTMapNet(*_dims_args(self.map_net))
        net.load_state_dict(
            {name: tensor.detach().cpu() for name, tensor in self.map_net.state_dict().items()}
        )
        return NeuralMap(net, self.config.normalization)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor needed to resume: ``map.*``, ``potential.*``, ``map_opt.*``, ``potential_opt.*``, ``rng.torch``."""
        tensors = {f"map.{name}": tensor for name, tensor in self.map_net.state_dict().items()}
        tensors.update(
            {f"potential.{name}": tensor for name, tensor in self.potential_net.state_dict().items()}
        )
        map_opt_tensors, _ = split_optimizer_state("map_opt", self.map_opt.state_dict())
        potential_opt_tensors, _ = split_optimizer_state("potential_opt", self.potential_opt.state_dict())
        tensors.update(map_opt_tensors)
        tensors.update(potential_opt_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        return tensors

    def state_meta(self) -> dict[str, Any]:
        """JSON-able rest of the state: step, config, optimiser param groups, scheduler states."""
        _, map_opt_meta = split_optimizer_state("map_opt", self.map_opt.state_dict())
        _, potential_opt_meta = split_optimizer_state("potential_opt", self.potential_opt.state_dict())
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "map_opt": map_opt_meta,
            "potential_opt": potential_opt_meta,
            "map_sched": _jsonable_sched(self.map_sched.state_dict()),
            "potential_sched": _jsonable_sched(self.potential_sched.state_dict()),
        }

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore what :meth:`state_tensors` and :meth:`state_meta` saved (strict)."""
        saved_config = meta["config"]
        current_config = self.config.to_dict()
        differing = sorted(key for key in current_config if saved_config.get(key) != current_config[key])
        if differing:
            details = ", ".join(
                f"{key}: saved {saved_config.get(key)!r} vs now {current_config[key]!r}" for key in differing
            )
            raise UsageError(f"cannot resume: neural OT config differs from the saved state ({details})")

        def section(prefix: str) -> dict[str, torch.Tensor]:
            return {
                name[len(prefix) + 1 :]: tensor
                for name, tensor in tensors.items()
                if name.startswith(prefix + ".")
            }

        self.map_net.load_state_dict(section("map"), strict=True)
        self.potential_net.load_state_dict(section("potential"), strict=True)
        self.map_opt.load_state_dict(join_optimizer_state("map_opt", tensors, meta["map_opt"]))
        self.potential_opt.load_state_dict(
            join_optimizer_state("potential_opt", tensors, meta["potential_opt"])
        )
        self.map_sched.load_state_dict(meta["map_sched"])
        self.potential_sched.load_state_dict(meta["potential_sched"])
        if "rng.torch" in tensors:
            torch.set_rng_state(tensors["rng.torch"])
        self.step = int(meta["step"])


def _dims_args(net: OTMapNet) -> tuple[int, int, int]:
    return net.dims.input_dim, net.dims.output_dim, net.dims.hidden_dim


def _jsonable_sched(state: dict[str, Any]) -> dict[str, Any]:
    return {key: (list(value) if isinstance(value, tuple) else value) for key, value in state.items()}
