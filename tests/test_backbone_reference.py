"""Adapters against independent references: the diffusers pipelines themselves and hand-written formulas."""

from __future__ import annotations

import re

import pytest
import torch

from pisces_cli.backbones.registry import detect_family, load_backbone
from pisces_cli.backbones.sampling import generate, initial_noise
from pisces_cli.backbones.tiny import save_tiny_hunyuan, save_tiny_wan
from pisces_cli.errors import UsageError

PROMPTS = ["dance monkey", "a red car"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_reference")
    return {
        "hunyuan": save_tiny_hunyuan(root / "hunyuan", seed=1),
        "wan2.1": save_tiny_wan(root / "wan21", seed=1),
        "wan2.2-a14b": save_tiny_wan(root / "a14b", seed=1, variant="2.2-a14b"),
    }


def _pipeline_frames(adapter, noise, frames, size, steps, guidance, output_type="pt"):
    """The backbone's diffusers pipeline run unchanged (its own scheduler) from ``noise``."""
    pipeline = adapter.pipeline
    pipeline.set_progress_bar_config(disable=True)
    kwargs = {"prompt_template": adapter.prompt_template} if adapter.family == "hunyuan_video" else {}
    with torch.no_grad():
        return pipeline(
            prompt=PROMPTS,
            num_frames=frames,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=noise.clone(),
            max_sequence_length=adapter.max_sequence_length,
            output_type=output_type,
            **kwargs,
        ).frames.float()


@pytest.mark.parametrize("name", ["hunyuan", "wan2.1", "wan2.2-a14b"])
def test_backbone_generate_matches_the_unmodified_diffusers_pipeline(dirs, name):
    """Default sampler = the checkpoint's own scheduler: UniPC (flow shift 3) for Wan, flow-match Euler for
    HunyuanVideo; with the same noise the pipeline, untouched, gives the same frames."""
    adapter = load_backbone(str(dirs[name]))
    expected_scheduler = "FlowMatchEulerDiscreteScheduler" if name == "hunyuan" else "UniPCMultistepScheduler"
    assert type(adapter.pipeline.scheduler).__name__ == expected_scheduler
    frames, size, steps, guidance = 9, 16, 4, 4.5
    seeds = [7, 8]
    ours = generate(
        adapter,
        PROMPTS,
        num_frames=frames,
        height=size,
        width=size,
        steps=steps,
        seeds=seeds,
        guidance=guidance,
    )
    noise = initial_noise(adapter, seeds, frames, size, size)
    reference = _pipeline_frames(adapter, noise, frames, size, steps, guidance)
    assert reference.shape == ours.shape
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
    # the denoised latents too (the tiny VAE flattens differences in pixels)
    from pisces_cli.backbones.sampling import sample_latents

    latents = sample_latents(adapter, adapter.encode_prompts(PROMPTS), noise, steps=steps, guidance=guidance)
    reference_latents = _pipeline_frames(adapter, noise, frames, size, steps, guidance, output_type="latent")
    torch.testing.assert_close(latents, reference_latents, atol=1e-4, rtol=0)


def test_backbone_wan_euler_sampler_is_a_different_solver_on_request(dirs):
    """``sampler="euler"`` stays available: the Euler ODE over sigma_grid(steps, checkpoint shift)."""
    from pisces_cli.backbones.sampling import sample_latents
    from pisces_cli.backbones.schedule import sigma_grid
    from pisces_cli.backbones.sde import euler_step

    adapter = load_backbone(str(dirs["wan2.1"]))
    assert adapter.scheduler_shift() == 3.0
    embeds = adapter.encode_prompts(PROMPTS[:1])
    noise = initial_noise(adapter, [1], 5, 16, 16)
    euler = sample_latents(adapter, embeds, noise, steps=3, guidance=4.0, sampler="euler")
    unipc = sample_latents(adapter, embeds, noise, steps=3, guidance=4.0)
    assert (euler - unipc).abs().max() > 1e-2
    latents = noise
    grid = sigma_grid(3, 3.0).tolist()
    with torch.no_grad():
        for sigma, sigma_next in zip(grid[:-1], grid[1:]):
            velocity = adapter.predict_velocity(latents, sigma, embeds, guidance=4.0)
            latents = euler_step(velocity, latents, sigma, sigma_next)
    torch.testing.assert_close(euler, latents)
    with pytest.raises(UsageError, match="sampler"):
        generate(adapter, PROMPTS[:1], num_frames=5, height=16, width=16, steps=2, sampler="ddim")


def test_backbone_generate_shift_overrides_the_scheduler_config(dirs):
    from pisces_cli.backbones.sampling import checkpoint_scheduler, describe_sampler

    adapter = load_backbone(str(dirs["wan2.1"]))
    scheduler = checkpoint_scheduler(adapter, 5.0)
    assert scheduler.config.flow_shift == 5.0 and adapter.pipeline.scheduler.config.flow_shift == 3.0
    assert "UniPCMultistepScheduler" in describe_sampler(adapter, "scheduler", None)
    assert "shift 5" in describe_sampler(adapter, "euler", 5.0)


def test_backbone_hunyuan_passes_guidance_times_1000_and_timestep_1000_sigma(dirs):
    adapter = load_backbone(str(dirs["hunyuan"]))
    seen = {}

    def capture(module, args, kwargs):
        seen.update(guidance=kwargs["guidance"].clone(), timestep=kwargs["timestep"].clone())

    adapter.transformer.register_forward_pre_hook(capture, with_kwargs=True)
    embeds = adapter.encode_prompts(PROMPTS)
    latents = torch.randn(2, *adapter.latent_shape(5, 16, 16))
    with torch.no_grad():
        adapter.predict_velocity(latents, torch.tensor([0.25, 0.7]), embeds, guidance=4.5)
    torch.testing.assert_close(seen["guidance"], torch.tensor([4500.0, 4500.0]))
    torch.testing.assert_close(seen["timestep"], torch.tensor([250.0, 700.0]))


def test_backbone_wan_cfg_and_expert_routing(dirs):
    adapter = load_backbone(str(dirs["wan2.2-a14b"]))
    assert adapter.variant == "2.2-a14b" and adapter.boundary_ratio == 0.875
    embeds = adapter.encode_prompts(PROMPTS, negative_prompt="blurry")
    latents = torch.randn(2, *adapter.latent_shape(5, 16, 16), generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.9, 0.5])  # t = 900 ≥ 875 → high-noise expert; t = 500 → low-noise expert
    scale = 3.0
    with torch.no_grad():
        ours = adapter.predict_velocity(latents, sigmas, embeds, guidance=scale)
        for row, model in ((0, adapter.transformer), (1, adapter.transformer_2)):
            t = (1000 * sigmas[row : row + 1]).float()
            cond = model(latents[row : row + 1], t, embeds.embeds[row : row + 1], return_dict=False)[0]
            uncond = model(
                latents[row : row + 1], t, embeds.negative.embeds[row : row + 1], return_dict=False
            )[0]
            torch.testing.assert_close(
                ours[row : row + 1], uncond + scale * (cond - uncond), atol=1e-6, rtol=1e-5
            )
        # guidance 1 (or use_cfg off) is the plain conditional prediction
        adapter.use_cfg = False
        plain = adapter.predict_velocity(latents[:1], sigmas[:1], embeds.select([0]), guidance=scale)
        direct = adapter.transformer(latents[:1], 1000 * sigmas[:1], embeds.embeds[:1], return_dict=False)[0]
    torch.testing.assert_close(plain, direct)


def test_backbone_wan_latent_normalisation_is_per_channel(dirs):
    adapter = load_backbone(str(dirs["wan2.1"]))
    pixels = torch.rand(1, 5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    latents = adapter.encode_video(pixels)
    mean = torch.tensor(adapter.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(adapter.vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        raw = adapter.vae.encode(pixels.permute(0, 2, 1, 3, 4) * 2 - 1).latent_dist.mode()
        expected_pixels = (adapter.vae.decode(raw).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(latents, (raw - mean) / std)
    decoded = adapter.decode(latents, grad=False)
    torch.testing.assert_close(decoded, expected_pixels, atol=1e-5, rtol=1e-5)


def test_backbone_hunyuan_latents_use_scaling_factor(dirs):
    adapter = load_backbone(str(dirs["hunyuan"]))
    pixels = torch.rand(1, 5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    latents = adapter.encode_video(pixels)
    with torch.no_grad():
        raw = adapter.vae.encode(pixels.permute(0, 2, 1, 3, 4) * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(latents, raw * 0.476986)


def _linear_names(module: torch.nn.Module) -> list[str]:
    return [name for name, child in module.named_modules() if isinstance(child, torch.nn.Linear)]


def test_backbone_hunyuan_lora_targets_hit_exactly_the_block_projections(dirs):
    adapter = load_backbone(str(dirs["hunyuan"]))
    names = _linear_names(adapter.transformer)
    attn = {n for n in names if re.fullmatch(adapter.lora_target_modules("attn"), n)}
    attn_mlp = {n for n in names if re.fullmatch(adapter.lora_target_modules("attn_mlp"), n)}
    dual = "transformer_blocks.0."
    single = "single_transformer_blocks.0."
    expected_attn = {
        dual + "attn." + p
        for p in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    }
    expected_attn |= {single + "attn." + p for p in ("to_q", "to_k", "to_v")}
    assert attn == expected_attn
    expected_mlp = {
        dual + p for p in ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
    }
    expected_mlp |= {single + "proj_mlp", single + "proj_out"}
    assert attn_mlp == expected_attn | expected_mlp
    # The top-level projection, the token refiner and the AdaLN linears are never touched.
    assert "proj_out" in names and "proj_out" not in attn_mlp
    assert any(n.startswith("context_embedder.token_refiner") for n in names)
    assert not any(n.startswith("context_embedder") or "norm" in n for n in attn_mlp)


def test_backbone_wan_lora_targets(dirs):
    adapter = load_backbone(str(dirs["wan2.1"]))
    names = _linear_names(adapter.transformer)
    attn = {n for n in names if re.fullmatch(adapter.lora_target_modules("attn"), n)}
    attn_mlp = {n for n in names if re.fullmatch(adapter.lora_target_modules("attn_mlp"), n)}
    projections = ("to_q", "to_k", "to_v", "to_out.0")
    expected = {f"blocks.{i}.{a}.{p}" for i in range(2) for a in ("attn1", "attn2") for p in projections}
    assert attn == expected
    assert attn_mlp == expected | {f"blocks.{i}.ffn.net.{p}" for i in range(2) for p in ("0.proj", "2")}


def test_backbone_registry_errors(tmp_path, dirs):
    assert detect_family(dirs["hunyuan"]) == "hunyuan_video"
    assert detect_family(dirs["wan2.2-a14b"]) == "wan"
    with pytest.raises(UsageError, match="model_index.json"):
        detect_family(tmp_path)
    (tmp_path / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    with pytest.raises(UsageError, match="unsupported pipeline 'FluxPipeline'"):
        detect_family(tmp_path)


@pytest.mark.parametrize("name", ["hunyuan", "wan2.2-a14b"])
def test_backbone_grpo_recompute_gives_ratio_one(dirs, name):
    """Roll out with the SDE step in a batch of 2, re-score each transition alone: ratio = 1 in fp32."""
    from pisces_cli.backbones.schedule import sigma_grid
    from pisces_cli.backbones.sde import sde_step

    adapter = load_backbone(str(dirs[name]))
    embeds = adapter.encode_prompts(PROMPTS)
    latents = initial_noise(adapter, [1, 2], 5, 16, 16)
    grid = sigma_grid(3, adapter.default_shift)
    generator = torch.Generator().manual_seed(0)
    transitions = []
    with torch.no_grad():
        for sigma, sigma_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
            velocity = adapter.predict_velocity(latents, sigma, embeds, guidance=2.0)
            next_latents, _, _, log_prob = sde_step(
                velocity, latents, sigma, sigma_next, 0.3, generator=generator, noise_schedule="flow_grpo"
            )
            transitions.append((latents, next_latents, sigma, sigma_next, log_prob))
            latents = next_latents
        for before, after, sigma, sigma_next, old_log_prob in transitions:
            for row in range(2):
                velocity = adapter.predict_velocity(
                    before[row : row + 1], sigma, embeds.select([row]), guidance=2.0
                )
                _, _, _, new_log_prob = sde_step(
                    velocity,
                    before[row : row + 1],
                    sigma,
                    sigma_next,
                    0.3,
                    prev_sample=after[row : row + 1],
                    noise_schedule="flow_grpo",
                )
                ratio = torch.exp(new_log_prob - old_log_prob[row])
                assert abs(ratio.item() - 1.0) < 1e-6


@pytest.mark.parametrize("name", ["hunyuan", "wan2.1"])
def test_backbone_load_without_text_encoders(dirs, name):
    adapter = load_backbone(str(dirs[name]), text_encoders=False)
    with pytest.raises(UsageError, match="text_encoders=False"):
        adapter.encode_prompts(PROMPTS)
    full = load_backbone(str(dirs[name]))
    embeds = full.encode_prompts(PROMPTS)  # e.g. precomputed once, then training needs no text encoder
    latents = torch.randn(2, *adapter.latent_shape(5, 16, 16))
    with torch.no_grad():
        torch.testing.assert_close(
            adapter.predict_velocity(latents, 0.5, embeds, guidance=2.0),
            full.predict_velocity(latents, 0.5, embeds, guidance=2.0),
        )


def test_backbone_hunyuan_temporal_tiled_decode_keeps_frames_and_checkpoint_equivalence(dirs):
    """6 latent frames go through diffusers' temporal tiling (windows of 5, stride 3): 21 pixel frames."""
    adapter = load_backbone(str(dirs["hunyuan"]))
    base = torch.randn(1, *adapter.latent_shape(21, 16, 16), generator=torch.Generator().manual_seed(0)) * 0.5
    assert base.shape[2] == 6
    outputs = []
    for use_checkpoint in (False, True):
        latents = base.clone().requires_grad_(True)
        pixels = adapter.decode(latents, checkpoint=use_checkpoint)
        pixels.square().mean().backward()
        outputs.append((pixels.detach(), latents.grad))
    assert outputs[0][0].shape == (1, 21, 3, 16, 16)
    torch.testing.assert_close(outputs[1][0], outputs[0][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(outputs[1][1], outputs[0][1], atol=1e-7, rtol=1e-5)


def test_backbone_generate_rejects_bad_arguments(dirs):
    adapter = load_backbone(str(dirs["wan2.1"]))
    with pytest.raises(UsageError, match="2 seeds for 1 prompts"):
        generate(adapter, PROMPTS[:1], num_frames=5, height=16, width=16, steps=2, seeds=[1, 2])
    with pytest.raises(UsageError, match="at least one prompt"):
        generate(adapter, [], num_frames=5, height=16, width=16, steps=2)
    with pytest.raises(UsageError, match="num_frames"):
        generate(adapter, PROMPTS, num_frames=8, height=16, width=16, steps=2)
    with pytest.raises(UsageError, match="unknown backbone family"):
        load_backbone(str(dirs["wan2.1"]), family="flux")
    assert type(load_backbone(str(dirs["wan2.1"]), family="wan2.1")).__name__ == "WanAdapter"
