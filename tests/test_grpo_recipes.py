"""The bundled GRPO recipes load, validate and carry the documented settings."""

from __future__ import annotations

import pytest

from pisces_cli.config import load_recipe

EXPECTED = {
    # recipe: (eta, sampling_steps, shift, num_generations) — DanceGRPO's scripts, backbones.md §6.3
    "hunyuan_grpo": (0.25, 16, 5.0, 12),
    "wan_grpo": (0.3, 20, 3.0, 12),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_grpo_recipe_loads_with_documented_settings(name):
    recipe = load_recipe(name, []).recipe
    finetune = recipe.finetune
    grpo = finetune.grpo
    assert finetune.algorithm == "grpo"
    assert finetune.data.prompts
    assert (grpo.eta, grpo.sampling_steps, grpo.shift, grpo.num_generations) == EXPECTED[name]
    assert grpo.clip_range == 0.2 and grpo.timestep_fraction == 0.6 and grpo.adv_clip == 5.0
    assert grpo.check() == [] and finetune.check() == []
    assert finetune.lora.dropout == 0.0


def test_grpo_recipe_overrides_apply():
    recipe = load_recipe(
        "hunyuan_grpo", ["finetune.grpo.clip_range=1.0e-4", "finetune.grpo.beta=0.04"]
    ).recipe
    assert recipe.finetune.grpo.clip_range == pytest.approx(1e-4)
    assert recipe.finetune.grpo.beta == pytest.approx(0.04)
