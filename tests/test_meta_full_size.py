"""Full-size models of every shipped preset, built on the meta device (no memory): parameter counts, LoRA targets
and the ``--dry-run`` plan against numbers computed here from the architecture formulas.

The formulas count each layer by hand (``lin(i, o) = i·o + o`` for a Linear with bias); they do not call the
code under test. Presets: InternVideo2-Stage2 1B (the reward model), HunyuanVideo (``recipes/hunyuan.yaml``),
Wan 2.1 T2V 1.3B (``recipes/wan.yaml``) and 14B (the recipe's documented override).
"""

from __future__ import annotations

import re

import pytest
import torch

GIB = 1024**3


def lin(inputs: int, outputs: int, bias: bool = True) -> int:
    """Parameters of a Linear layer."""
    return inputs * outputs + (outputs if bias else 0)


# ------------------------------------------------------------------------------------------ InternVideo2 1B


def internvideo2_1b_parameters(frames: int = 4) -> dict[str, int]:
    """InternVideo2-Stage2 1B: ViT (d 1408, 40 blocks, MLP 6144, patch 14, 16×16 grid), attention-pooling head to
    768, BERT-large (h 1024, 24 layers, 4096 MLP, vocab 30522, cross-attention to width 1408 from layer 19)."""
    d, mlp, depth, grid, patch = 1408, 6144, 40, 16, 14
    block = 4 * d + lin(d, 3 * d, bias=False) + lin(d, d) + 2 * d + lin(d, mlp) + lin(mlp, d)
    # norm1, norm2, q_norm, k_norm (weights only) + qkv (no bias) + proj + ls1, ls2 + fc1 + fc2
    pooling = 3 * 2 * d + 3 * lin(d, d, bias=False) + 3 * d + lin(d, 768)
    vision = (
        lin(3 * patch * patch, d)  # patch embedding (Conv3d 1×14×14)
        + d  # cls token
        + (1 + grid * grid * frames) * d  # pos_embed
        + (1 + grid * grid) * d  # img_pos_embed
        + depth * block
        + pooling
    )
    h, layers, fusion, vocab = 1024, 24, 19, 30522
    embeddings = vocab * h + 512 * h + 2 * h + 2 * h
    layer = 4 * lin(h, h) + 2 * h + lin(h, 4 * h) + lin(4 * h, h) + 2 * h
    cross = lin(h, h) + 2 * lin(d, h) + lin(h, h) + 2 * h
    text = embeddings + layers * layer + (layers - fusion) * cross
    heads = lin(768, 512) + lin(h, 512) + lin(h, 2)
    return {"block": block, "vision": vision, "text": text, "heads": heads}


def test_internvideo2_1b_on_meta_matches_the_formulas() -> None:
    from pisces_cli.encoders.internvideo2 import InternVideo2Config, InternVideo2Stage2

    expected = internvideo2_1b_parameters(frames=8)
    with torch.device("meta"):
        model = InternVideo2Stage2(InternVideo2Config.stage2_1b(num_frames=8))

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert count(model.vision_encoder.blocks[0]) == expected["block"]
    assert count(model.vision_encoder) == expected["vision"]
    assert count(model.text_encoder) == expected["text"]
    assert count(model.vision_proj) + count(model.text_proj) + count(model.itm_head) == expected["heads"]
    assert count(model) == sum(v for k, v in expected.items() if k != "block")


# ------------------------------------------------------------------------------------------ generators

HUNYUAN = {"d": 24 * 128, "head": 128, "dual": 20, "single": 40, "refiner": 2, "text": 4096, "pooled": 768}
WAN = {
    "1.3B": {"d": 12 * 128, "ffn": 8960, "layers": 30, "path": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"},
    "14B": {"d": 40 * 128, "ffn": 13824, "layers": 40, "path": "Wan-AI/Wan2.1-T2V-14B-Diffusers"},
}


def hunyuan_parameters() -> int:
    """HunyuanVideo 13B: d 3072 (24 heads × 128), 20 dual- and 40 single-stream blocks, MLP 4d, patch 2×2, 16
    latent channels, Llama text width 4096, CLIP pooled width 768, sinusoidal embeddings of width 256."""
    d, head, f, channels, freq = HUNYUAN["d"], HUNYUAN["head"], 4 * HUNYUAN["d"], 16, 256
    embedder = lambda width: lin(width, d) + lin(d, d)  # noqa: E731 - linear_1 → SiLU → linear_2
    refiner_block = 2 * 2 * d + 4 * lin(d, d) + lin(d, f) + lin(f, d) + lin(d, 2 * d)
    context = embedder(freq) + embedder(HUNYUAN["text"]) + lin(HUNYUAN["text"], d)
    context += HUNYUAN["refiner"] * refiner_block
    conditioning = (
        embedder(freq) + embedder(HUNYUAN["pooled"]) + embedder(freq)
    )  # timestep, pooled text, guidance
    dual = 2 * lin(d, 6 * d) + 4 * head + 8 * lin(d, d) + 2 * (lin(d, f) + lin(f, d))
    single = lin(d, 3 * d) + 2 * head + 3 * lin(d, d) + lin(d, f) + lin(d + f, d)
    patches = channels * 1 * 2 * 2
    return (
        lin(patches, d)  # x_embedder (Conv3d 1×2×2)
        + context
        + conditioning
        + HUNYUAN["dual"] * dual
        + HUNYUAN["single"] * single
        + lin(d, 2 * d)  # norm_out
        + lin(d, patches)  # proj_out
    )


def wan_parameters(d: int, ffn: int, layers: int) -> int:
    """Wan 2.1: width d (heads × 128), FFN width, 16 latent channels, patch 1×2×2, UMT5 text width 4096."""
    channels, freq, text = 16, 256, 4096
    block = 6 * d + 2 * (4 * lin(d, d) + 2 * d) + 2 * d + lin(d, ffn) + lin(ffn, d)
    # modulation table, self- and cross-attention (q, k, v, out + RMS norms of q and k), cross-attn norm, FFN
    conditioning = lin(freq, d) + lin(d, d) + lin(d, 6 * d) + lin(text, d) + lin(d, d)
    patches = channels * 1 * 2 * 2
    return 2 * d + lin(patches, d) + conditioning + layers * block + lin(d, patches)


def hunyuan_lora(rank: int, *, mlp_in_singles: bool) -> tuple[int, int]:
    """(modules, LoRA parameters) of the ``attn`` preset (dual: 8 projections d→d; single: q, k, v) plus, when
    asked, the single blocks' proj_mlp (d→4d) and proj_out (5d→d) as in ``recipes/hunyuan.yaml``."""
    d = HUNYUAN["d"]
    modules = HUNYUAN["dual"] * 8 + HUNYUAN["single"] * 3
    params = modules * rank * 2 * d
    if mlp_in_singles:
        modules += HUNYUAN["single"] * 2
        params += HUNYUAN["single"] * rank * ((d + 4 * d) + (5 * d + d))
    return modules, params


def wan_lora(rank: int, d: int, ffn: int, layers: int) -> tuple[int, int]:
    """(modules, LoRA parameters) of ``attn_mlp``: per block 8 attention projections d→d and the FFN's two."""
    return layers * 10, layers * rank * (8 * 2 * d + 2 * (d + ffn))


def matched_linears(model: torch.nn.Module, pattern: str) -> int:
    regex = re.compile(pattern)
    return sum(
        1
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and regex.fullmatch(name)
    )


def adapter_pattern(family: str, targets: list[str]) -> str:
    from pisces_cli.backbones.registry import adapter_class
    from pisces_cli.training.trainer import lora_pattern

    return lora_pattern(object.__new__(adapter_class(family)), targets)


def test_hunyuan_on_meta_matches_the_formulas() -> None:
    from diffusers import HunyuanVideoTransformer3DModel

    from pisces_cli.config import load_recipe
    from pisces_cli.training.memory import lora_parameter_count

    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel()  # diffusers' defaults are the released 13B model
    assert sum(p.numel() for p in model.parameters()) == hunyuan_parameters()
    recipe = load_recipe("hunyuan").recipe
    pattern = adapter_pattern("hunyuan_video", recipe.finetune.lora.targets)
    modules, params = hunyuan_lora(recipe.finetune.lora.rank, mlp_in_singles=True)
    assert matched_linears(model, pattern) == modules == 360
    assert (
        lora_parameter_count(dict(model.config), "hunyuan_video", pattern, recipe.finetune.lora.rank)
        == params
    )
    attn_only = adapter_pattern("hunyuan_video", ["attn"])
    assert matched_linears(model, attn_only) == hunyuan_lora(64, mlp_in_singles=False)[0]
    # the top-level proj_out and the token refiner are never targets
    assert not re.fullmatch(pattern, "proj_out")
    assert not re.fullmatch(pattern, "context_embedder.token_refiner.refiner_blocks.0.attn.to_q")


@pytest.mark.parametrize("size", ["1.3B", "14B"])
def test_wan_on_meta_matches_the_formulas(size: str) -> None:
    from diffusers import WanTransformer3DModel

    from pisces_cli.config import load_recipe
    from pisces_cli.training.memory import KNOWN_HUB_MODELS, lora_parameter_count

    arch = WAN[size]
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(KNOWN_HUB_MODELS[arch["path"]]["transformer"])
    assert sum(p.numel() for p in model.parameters()) == wan_parameters(
        arch["d"], arch["ffn"], arch["layers"]
    )
    recipe = load_recipe("wan", [f"models.generator.path={arch['path']}"]).recipe
    rank = recipe.finetune.lora.rank
    pattern = adapter_pattern("wan", recipe.finetune.lora.targets)
    modules, params = wan_lora(rank, arch["d"], arch["ffn"], arch["layers"])
    assert matched_linears(model, pattern) == modules
    assert lora_parameter_count(dict(model.config), "wan", pattern, rank) == params


@pytest.mark.parametrize(
    ("recipe_name", "overrides", "world", "expected_transformer", "expected_lora"),
    [
        ("hunyuan", [], 8, hunyuan_parameters(), hunyuan_lora(256, mlp_in_singles=True)[1]),
        ("wan", [], 1, wan_parameters(1536, 8960, 30), wan_lora(256, 1536, 8960, 30)[1]),
        (
            "wan",
            [f"models.generator.path={WAN['14B']['path']}"],
            8,
            wan_parameters(5120, 13824, 40),
            wan_lora(256, 5120, 13824, 40)[1],
        ),
    ],
)
def test_dry_run_plan_of_the_presets(
    recipe_name: str, overrides: list[str], world: int, expected_transformer: int, expected_lora: int
) -> None:
    """The plan's weight, trainable and optimizer parts follow from the parameter counts: bf16 transformer
    weights (÷ world under FSDP), fp32 LoRA master weights, and 4 + 8 bytes of gradient and AdamW moments."""
    from pisces_cli.config import load_recipe
    from pisces_cli.training.memory import estimate_step_memory

    recipe = load_recipe(recipe_name, overrides).recipe
    family = {"hunyuan": "hunyuan_video", "wan": "wan"}[recipe.models.generator.backbone]
    pattern = adapter_pattern(family, recipe.finetune.lora.targets)
    plan = estimate_step_memory(recipe, family, pattern, world_size=world)
    sharded = world if recipe.finetune.distributed == "fsdp" else 1
    assert plan.parts["weights:transformer"] == expected_transformer * 2 / sharded
    assert plan.parts["trainable_fp32"] == expected_lora * 4
    assert plan.parts["gradients_and_adamw"] == expected_lora * 12
    fixed = plan.parts["weights:transformer"] + 16 * expected_lora
    assert plan.total > fixed  # activations and the VAE come on top
