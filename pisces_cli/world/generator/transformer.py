"""A Wan transformer that predicts the clean clip and reports the flow-matching velocity.

Small pixel-space denoisers cannot represent the full-dimensional noise of a patch, so predicting the velocity
``v = eps - x0`` directly leaves noise in the samples; predicting the clean data ``x0`` (a low-dimensional
target) works with a narrow network. :class:`WorldWanTransformer` runs the ordinary
:class:`~diffusers.WanTransformer3DModel` as an ``x0`` predictor and converts its output to the velocity the
pisces backbone interface expects (docs/backbones.md: ``x_sigma = sigma eps + (1 - sigma) x0``)::

    v = (x_sigma - x0_hat) / max(sigma, SIGMA_FLOOR),   sigma = timestep / 1000

so an Euler step to ``sigma = 0`` lands exactly on ``x0_hat``. The class lives in this module, which
``model_index.json`` names as the component's library, so ``WanPipeline.from_pretrained`` (and therefore
``load_backbone``) loads it like any diffusers model.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin, WanTransformer3DModel  # noqa: F401 - ModelMixin lets diffusers load this module
from diffusers.models.modeling_outputs import Transformer2DModelOutput

#: Smallest sigma used in the velocity conversion (the sampling grids stop well above it before sigma = 0).
SIGMA_FLOOR = 1e-3


class WorldWanTransformer(WanTransformer3DModel):
    """``WanTransformer3DModel`` whose network predicts ``x0``; ``forward`` returns the velocity (see module)."""

    def predict_clean(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
        attention_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """``x0_hat [B, C, F, h, w]`` from noisy latents, ``timestep [B]`` (= 1000 sigma) and text ``[B, L, D]``."""
        return super().forward(
            hidden_states=hidden_states,
            timestep=timestep,
            encoder_hidden_states=encoder_hidden_states,
            encoder_hidden_states_image=encoder_hidden_states_image,
            return_dict=False,
            attention_kwargs=attention_kwargs,
        )[0]

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict | None = None,
    ):
        """Velocity ``(x_sigma - x0_hat) / max(sigma, SIGMA_FLOOR)`` ``[B, C, F, h, w]``; ``timestep`` is ``[B]``."""
        clean = self.predict_clean(
            hidden_states,
            timestep,
            encoder_hidden_states,
            encoder_hidden_states_image=encoder_hidden_states_image,
            attention_kwargs=attention_kwargs,
        )
        sigma = (timestep.to(torch.float32) / 1000.0).clamp_min(SIGMA_FLOOR)
        sigma = sigma.view(-1, *([1] * (hidden_states.ndim - 1)))
        velocity = ((hidden_states.float() - clean.float()) / sigma).to(clean.dtype)
        if not return_dict:
            return (velocity,)
        return Transformer2DModelOutput(sample=velocity)
