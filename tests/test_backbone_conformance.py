"""One conformance suite run against every backbone adapter on tiny random-weight checkpoints.

The tiny checkpoints are saved as diffusers-format directories and loaded through ``from_pretrained``,
exactly like real ones.
"""

from __future__ import annotations

import pytest
import torch

from pisces_cli.backbones import decode as decode_module
from pisces_cli.backbones.lora import (
    adapters_disabled,
    apply_lora,
    enable_full_finetune,
    load_lora,
    lora_parameters,
    read_lora_metadata,
    save_backbone_lora,
    save_lora,
)
from pisces_cli.backbones.registry import load_backbone
from pisces_cli.backbones.sampling import generate
from pisces_cli.backbones.tiny import save_tiny_hunyuan, save_tiny_wan
from pisces_cli.errors import PiscesRuntimeError, UsageError

# 5 frames = 2 latent frames (enough to exercise the causal VAE caches); 16x16 (32x32 for the x16 Wan 2.2-5B VAE).
FRAMES = 5
PROMPTS = ["dance monkey", "a red car"]
# Per-sample σ chosen so the Wan 2.2 A14B batch uses both experts (boundary 0.875).
SIGMAS = torch.tensor([0.95, 0.4])

BACKBONES = {
    "hunyuan": lambda path: save_tiny_hunyuan(path, seed=0),
    "wan2.1": lambda path: save_tiny_wan(path, seed=0, variant="2.1"),
    "wan2.2-a14b": lambda path: save_tiny_wan(path, seed=0, variant="2.2-a14b"),
    "wan2.2-ti2v-5b": lambda path: save_tiny_wan(path, seed=0, variant="2.2-ti2v-5b"),
}


@pytest.fixture(scope="module")
def checkpoint_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_backbones")
    return {name: build(root / name) for name, build in BACKBONES.items()}


@pytest.fixture(params=list(BACKBONES))
def backbone(request, checkpoint_dirs):
    """(name, checkpoint dir, freshly loaded fp32 CPU adapter)."""
    path = checkpoint_dirs[request.param]
    return request.param, path, load_backbone(str(path))


def _size(adapter) -> int:
    return adapter.size_multiple if adapter.size_multiple >= 16 else 16


def _noisy_latents(adapter, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(
        batch, *adapter.latent_shape(FRAMES, _size(adapter), _size(adapter)), generator=generator
    )


def _attach_lora(adapter, *, rank: int = 4, alpha: float = 8.0, preset: str = "attn_mlp") -> None:
    torch.manual_seed(123)
    for module in adapter.transformers().values():
        apply_lora(
            module,
            rank=rank,
            alpha=alpha,
            target_modules=adapter.lora_target_modules(preset),
            init_lora_weights=False,
        )


def test_backbone_shapes(backbone):
    name, _, adapter = backbone
    embeds = adapter.encode_prompts(PROMPTS)
    assert len(embeds) == 2
    if name == "hunyuan":
        assert embeds.mask is not None and embeds.pooled is not None
        assert embeds.mask.dtype == torch.int64
        # Right padding: every mask row is 1…1 0…0 (non-increasing), and the prompts differ in length.
        assert bool((embeds.mask[:, 1:] <= embeds.mask[:, :-1]).all())
        assert embeds.mask[0].sum() != embeds.mask[1].sum()
        assert embeds.pooled.shape == (2, 8)
    else:
        assert embeds.mask is None and embeds.negative is not None
        assert embeds.negative.embeds.shape == embeds.embeds.shape
        # Zero padding after the prompt: the last row of a short prompt is exactly zero, the first is not.
        assert bool((embeds.embeds[0, -1] == 0).all()) and bool(embeds.embeds[0, 0].abs().sum() > 0)
    latents = _noisy_latents(adapter)
    velocity = adapter.predict_velocity(latents, SIGMAS, embeds)
    assert velocity.shape == latents.shape and torch.isfinite(velocity).all()
    pixels = adapter.decode(latents, grad=False)
    assert pixels.shape == (2, FRAMES, 3, _size(adapter), _size(adapter))
    assert pixels.min() >= 0 and pixels.max() <= 1
    encoded = adapter.encode_video(pixels)
    assert encoded.shape == latents.shape
    assert adapter.num_pixel_frames(latents.shape[2]) == FRAMES


def test_backbone_generate_is_deterministic_per_seed(backbone):
    _, _, adapter = backbone
    size = _size(adapter)
    geometry = {"num_frames": FRAMES, "height": size, "width": size, "steps": 2, "guidance": 3.0}
    pair = generate(adapter, PROMPTS, seeds=[3, 4], **geometry)
    assert pair.shape == (2, FRAMES, 3, size, size)
    assert pair.dtype == torch.float32 and pair.min() >= 0 and pair.max() <= 1
    assert torch.equal(pair, generate(adapter, PROMPTS, seeds=[3, 4], **geometry))
    # The second video depends on its own seed only, not on its batch neighbour.
    swapped = generate(adapter, PROMPTS[::-1], seeds=[4, 3], **geometry)
    torch.testing.assert_close(swapped[0], pair[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(pair[0], pair[1])


def test_backbone_pixel_loss_reaches_every_lora_weight_and_no_vae_weight(backbone):
    _, _, adapter = backbone
    _attach_lora(adapter)
    adapter.enable_gradient_checkpointing()
    embeds = adapter.encode_prompts(PROMPTS)
    latents = _noisy_latents(adapter)
    velocity = adapter.predict_velocity(latents, SIGMAS, embeds, guidance=3.0)
    predicted_x0 = latents - SIGMAS.view(-1, 1, 1, 1, 1) * velocity
    pixels = adapter.decode(predicted_x0, grad=True, checkpoint=True)
    (pixels - 0.5).square().mean().backward()
    lora = {
        f"{component}.{key}": p
        for component, module in adapter.transformers().items()
        for key, p in lora_parameters(module).items()
    }
    assert lora and any("lora_A" in key for key in lora) and any("lora_B" in key for key in lora)
    missing = [key for key, p in lora.items() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing
    assert all(p.dtype == torch.float32 for p in lora.values())
    assert all(p.grad is None for p in adapter.vae.parameters())
    base = [
        p
        for module in adapter.transformers().values()
        for key, p in module.named_parameters()
        if "lora_" not in key
    ]
    assert all(p.grad is None and not p.requires_grad for p in base)


def test_backbone_teacher_equals_fresh_base_model(backbone):
    _, path, adapter = backbone
    embeds = adapter.encode_prompts(PROMPTS)
    latents = _noisy_latents(adapter)
    _attach_lora(adapter)
    with torch.no_grad():
        student = adapter.predict_velocity(latents, SIGMAS, embeds, guidance=3.0)
        with adapters_disabled(adapter.transformers()):
            teacher = adapter.predict_velocity(latents, SIGMAS, embeds, guidance=3.0)
        student_again = adapter.predict_velocity(latents, SIGMAS, embeds, guidance=3.0)
        fresh = load_backbone(str(path))
        base = fresh.predict_velocity(latents, SIGMAS, fresh.encode_prompts(PROMPTS), guidance=3.0)
    assert torch.equal(teacher, base)
    assert not torch.allclose(student, base)
    assert torch.equal(student, student_again)
    assert all(
        p.requires_grad
        for module in adapter.transformers().values()
        for p in lora_parameters(module).values()
    )
    with pytest.raises(PiscesRuntimeError, match="no_grad"), adapters_disabled(adapter.transformers()):
        pass


def test_backbone_decoder_checkpointing_matches_plain_decode(backbone, monkeypatch):
    name, _, adapter = backbone
    calls = []
    real_checkpoint = decode_module.torch_checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(decode_module, "torch_checkpoint", counting_checkpoint)
    base = _noisy_latents(adapter, seed=5) * 0.5
    results = {}
    for use_checkpoint in (False, True):
        latents = base.clone().requires_grad_(True)
        pixels = adapter.decode(latents, grad=True, checkpoint=use_checkpoint)
        weights = torch.linspace(0, 1, pixels.numel()).view_as(pixels)
        (pixels * weights).sum().backward()
        results[use_checkpoint] = (pixels.detach(), latents.grad.clone())
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results[True][1], results[False][1], atol=1e-6, rtol=1e-5)
    assert results[True][1].abs().sum() > 0
    if name == "hunyuan":
        assert adapter.vae.decoder.gradient_checkpointing
    else:
        assert len(calls) == base.shape[2]  # one checkpointed call per latent frame


def test_backbone_lora_round_trip_through_load_lora_weights(backbone, tmp_path):
    name, path, adapter = backbone
    embeds = adapter.encode_prompts(PROMPTS)
    latents = _noisy_latents(adapter)
    _attach_lora(adapter, rank=4, alpha=8.0)
    with torch.no_grad():
        expected = adapter.predict_velocity(latents, SIGMAS, embeds, guidance=3.0)
    save_backbone_lora(tmp_path / "lora", adapter, {"backbone": name, "rank": 4})
    assert read_lora_metadata(tmp_path / "lora")["backbone"] == name
    assert not [p for p in (tmp_path / "lora").iterdir() if p.name.startswith(".tmp")]

    fresh = load_backbone(str(path))
    load_lora(tmp_path / "lora", fresh)
    for module in fresh.transformers().values():
        assert module.peft_config["pisces"].lora_alpha == 8
    with torch.no_grad():
        loaded = fresh.predict_velocity(latents, SIGMAS, fresh.encode_prompts(PROMPTS), guidance=3.0)
    torch.testing.assert_close(loaded, expected, atol=1e-6, rtol=1e-6)


def test_backbone_lora_loads_with_peft(backbone, tmp_path):
    from peft import PeftModel

    name, path, adapter = backbone
    embeds = adapter.encode_prompts(PROMPTS)
    latents = _noisy_latents(adapter)
    _attach_lora(adapter, rank=4, alpha=8.0)
    with torch.no_grad():
        expected = adapter.predict_velocity(latents, SIGMAS, embeds, guidance=3.0)
    save_lora(tmp_path / "lora", adapter.transformers(), {}, pipeline_class=type(adapter.pipeline))
    fresh = load_backbone(str(path))
    PeftModel.from_pretrained(fresh.transformer, str(tmp_path / "lora"))
    if fresh.transformer_2 is not None:
        PeftModel.from_pretrained(fresh.transformer_2, str(tmp_path / "lora" / "transformer_2"))
    with torch.no_grad():
        loaded = fresh.predict_velocity(latents, SIGMAS, fresh.encode_prompts(PROMPTS), guidance=3.0)
    torch.testing.assert_close(loaded, expected, atol=1e-6, rtol=1e-6)


def test_backbone_load_lora_scale_zero_is_the_base_model(backbone, tmp_path):
    _, path, adapter = backbone
    latents = _noisy_latents(adapter)
    _attach_lora(adapter)
    save_lora(tmp_path / "lora", adapter.transformers(), {}, pipeline_class=type(adapter.pipeline))
    base = load_backbone(str(path))
    muted = load_backbone(str(path))
    load_lora(tmp_path / "lora", muted, scale=0.0)
    with torch.no_grad():
        expected = base.predict_velocity(latents, SIGMAS, base.encode_prompts(PROMPTS), guidance=3.0)
        got = muted.predict_velocity(latents, SIGMAS, muted.encode_prompts(PROMPTS), guidance=3.0)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    with pytest.raises(UsageError, match="sigma must lie in"):
        muted.predict_velocity(latents, torch.tensor([1.5, 0.5]), muted.encode_prompts(PROMPTS))


def test_backbone_full_finetune_makes_every_weight_trainable(backbone):
    _, _, adapter = backbone
    count = enable_full_finetune(adapter.transformer)
    assert count == sum(p.numel() for p in adapter.transformer.parameters())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in adapter.transformer.parameters())


def test_backbone_geometry_validation(backbone):
    name, _, adapter = backbone
    with pytest.raises(UsageError, match="num_frames must be 4k\\+1"):
        adapter.latent_shape(10, 32, 32)
    with pytest.raises(UsageError, match="height must be a positive multiple"):
        adapter.latent_shape(FRAMES, 32 + adapter.size_multiple // 2, 32)
    with pytest.raises(UsageError, match="LoRA target preset"):
        adapter.lora_target_modules("everything")
    channels, latent_frames, latent_height, latent_width = adapter.latent_shape(17, 64, 32)
    assert (latent_frames, latent_height * adapter.spatial_factor, latent_width * adapter.spatial_factor) == (
        5,
        64,
        32,
    )
    assert channels == adapter.latent_channels
    assert adapter.num_pixel_frames(5) == 17
