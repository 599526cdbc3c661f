"""The public Python API (``pisces_cli.__all__``) and the README's Python API examples, run on tiny models."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pisces_cli

ROOT = Path(__file__).parents[1]
CAPTIONS = ["a red cat", "the big dog runs quickly on the grass"]
FAST_TOKEN_OT = pisces_cli.TokenOTSettings(max_iter=40, tol=1e-6, check_every=5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny CLIP checkpoint, an OT map fit on it (written through the API) and a recipe using both."""
    from pisces_cli.encoders.tiny_clip import save_tiny_clip

    root = tmp_path_factory.mktemp("api")
    encoder_dir = save_tiny_clip(root / "encoder", "clip", seed=0)
    encoder = pisces_cli.load_encoder("clip", encoder_dir, device="cpu")
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(48, encoder.embed_dim, generator=generator)
    y = torch.randn(48, encoder.embed_dim, generator=generator) + 0.5
    ot_map = pisces_cli.fit_gaussian_map(x, y, normalization="l2", ridge=1e-3)
    map_path = pisces_cli.save_ot_map(root / "ot" / "ot_map.safetensors", ot_map, encoder=encoder)
    recipe = root / "recipe.yaml"
    recipe.write_text(
        "runtime: {device: cpu}\n"
        f"models: {{encoder: {{backend: clip, path: {encoder_dir}}}}}\n"
        "reward:\n  ot_map: null\n  weights: {quality: 0.5, semantic: 2.0}\n"
        "  token_ot: {max_iter: 40, tol: 1.0e-6, check_every: 5}\n"
    )
    return {"root": root, "encoder_dir": encoder_dir, "encoder": encoder, "map": map_path, "recipe": recipe}


def pixels(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 4, 3, 40, 48, generator=torch.Generator().manual_seed(seed))


def test_import_is_light_and_every_public_name_resolves():
    code = (
        "import sys, pisces_cli; "
        "assert 'torch' not in sys.modules, 'import pisces_cli imported torch'; "
        "names = [n for n in pisces_cli.__all__ if n != '__version__']; "
        "assert set(names) <= set(dir(pisces_cli)); "
        "[getattr(pisces_cli, n) for n in names]; print(len(names))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert set(pisces_cli.__all__) == {"__version__", *pisces_cli._PUBLIC}
    with pytest.raises(AttributeError, match="no attribute 'not_public'"):
        pisces_cli.not_public  # noqa: B018


def test_readme_lists_every_public_name():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    for name in pisces_cli.__all__:
        assert f"`{name}" in section or f" {name}," in section or f", {name}`" in section, name


def test_build_reward_gives_a_differentiable_mapping_of_named_rewards(tiny):
    reward = pisces_cli.build_reward(
        "clip", tiny["encoder_dir"], ot_map=tiny["map"], token_ot=FAST_TOKEN_OT, device="cpu"
    )
    assert isinstance(reward, pisces_cli.PiscesReward)
    videos = pixels(len(CAPTIONS)).requires_grad_(True)
    out = reward(videos, CAPTIONS)
    assert isinstance(out, pisces_cli.RewardOutput)
    assert list(out) == ["quality", "semantic", "quality_no_ot", "total"]
    assert dict(out).keys() == out.keys() and len(out) == 4
    for name, value in out.items():
        assert value.shape == (len(CAPTIONS),), name
    assert out["quality_no_ot"].grad_fn is None
    torch.testing.assert_close(out["total"], out["quality"] + out["semantic"])
    for name in ("quality", "semantic", "total"):
        (grad,) = torch.autograd.grad(out[name].sum(), videos, retain_graph=True)
        assert grad.abs().sum() > 0, name
    assert not any(p.requires_grad for p in reward.encoder.model.parameters())  # the encoder stays frozen
    assert not (out["quality"] == out["quality_no_ot"]).all()  # the OT map is applied
    with pytest.raises(KeyError, match="semantic_no_ot"):
        out["semantic_no_ot"]  # noqa: B018


def test_preprocessed_clips_give_the_same_rewards(tiny):
    reward = pisces_cli.build_reward(tiny["encoder"], token_ot=FAST_TOKEN_OT, with_no_ot_semantic=True)
    videos = pixels(2, seed=1)
    with torch.no_grad():
        direct = reward(videos, CAPTIONS)
        clips = reward.preprocess(videos)
        again = reward.from_preprocessed(clips, CAPTIONS)
    assert "semantic_no_ot" in direct
    for name in direct:
        torch.testing.assert_close(direct[name], again[name])
    torch.testing.assert_close(direct["quality"], direct["quality_no_ot"])  # no OT map given


def test_load_reward_from_a_recipe_with_command_line_overrides(tiny):
    reward = pisces_cli.load_reward(tiny["recipe"], f"reward.ot_map={tiny['map']}", "reward.crop=center")
    assert reward.weights == {"quality": 0.5, "semantic": 2.0}
    assert reward.token_ot == FAST_TOKEN_OT
    same = pisces_cli.build_reward(
        "clip",
        tiny["encoder_dir"],
        ot_map=pisces_cli.load_ot_map(tiny["map"]),
        weights={"quality": 0.5, "semantic": 2.0},
        token_ot=FAST_TOKEN_OT,
    )
    with torch.no_grad():
        a, b = reward(pixels(2), CAPTIONS), same(pixels(2), CAPTIONS)
    for name in a:
        torch.testing.assert_close(a[name], b[name])
    assert next(reward.encoder.model.parameters()).device.type == "cpu"  # the recipe's runtime.device


def test_api_errors_name_what_is_wrong(tiny):
    with pytest.raises(pisces_cli.UsageError, match="reward.weights.quality"):
        pisces_cli.load_reward(tiny["recipe"], "reward.weights.quality=abc")
    with pytest.raises(pisces_cli.UsageError, match="ot_map: .*does not exist"):
        pisces_cli.build_reward(tiny["encoder"], ot_map=tiny["root"] / "missing.safetensors")
    with pytest.raises(pisces_cli.UsageError, match="unknown weights"):
        pisces_cli.build_reward(tiny["encoder"], weights={"qualty": 1.0})
    with pytest.raises(pisces_cli.UsageError, match="needs encoder_path"):
        pisces_cli.build_reward("clip")
    with pytest.raises(pisces_cli.UsageError, match="dim"):
        pisces_cli.save_ot_map(tiny["root"] / "x.safetensors", pisces_cli.load_ot_map(tiny["map"]))
    from pisces_cli.encoders.tiny_clip import save_tiny_clip

    other = pisces_cli.load_encoder("clip", save_tiny_clip(tiny["root"] / "other", "clip", seed=5))
    with pytest.raises(pisces_cli.UsageError, match="different encoder"):
        pisces_cli.load_ot_map(tiny["map"], encoder=other)


@pytest.mark.parametrize(
    ("make_pixels", "captions", "match"),
    [
        (
            lambda: pixels(2)[0],
            CAPTIONS,
            r"\[B, T, 3, H, W\], got shape \(4, 3, 40, 48\)",
        ),  # one video, no batch
        (lambda: pixels(2).permute(0, 1, 3, 4, 2), CAPTIONS, r"\[B, T, 3, H, W\]"),  # channels last
        (lambda: (pixels(2) * 255).to(torch.uint8), CAPTIONS, r"got a torch.uint8 tensor .*/ 255"),
        (lambda: pixels(2) * 255, CAPTIONS, r"in \[0, 1\], got values in .*divide by 255"),  # 0..255 floats
        (lambda: pixels(2) * 2 - 1, CAPTIONS, r"in \[0, 1\].*x / 2 \+ 0.5"),  # [-1, 1] (a raw VAE decode)
        (lambda: pixels(2).numpy(), CAPTIONS, "floating torch tensor.*got ndarray"),
        (lambda: pixels(2), CAPTIONS[:1], r"2 video\(s\) but 1 caption\(s\)"),
        (lambda: pixels(2), [*CAPTIONS, "x"], r"2 video\(s\) but 3 caption\(s\)"),
        (lambda: pixels(2), "ab", "got a single string 'ab'"),  # not two one-letter captions
        (lambda: pixels(1), "a red cat", "got a single string"),
        (lambda: pixels(2), ["a red cat", 3], r"caption\(s\) \[1\] are int"),
    ],
)
def test_reward_refuses_inputs_it_would_score_wrongly(tiny, make_pixels, captions, match):
    """Wrong shapes, scales, dtypes and captions are UsageErrors naming what was expected, never numbers."""
    reward = pisces_cli.build_reward(tiny["encoder"], token_ot=FAST_TOKEN_OT)
    with pytest.raises(pisces_cli.UsageError, match=match):
        reward(make_pixels(), captions)


def test_reward_takes_any_float_dtype_layout_and_batch_size(tiny):
    """fp64/fp16/bf16 and non-contiguous pixels, a batch of one and a slightly overshooting decode all score."""
    reward = pisces_cli.build_reward(tiny["encoder"], token_ot=FAST_TOKEN_OT)
    videos = pixels(2, seed=4)
    with torch.no_grad():
        base = reward(videos, CAPTIONS)
        for variant in (videos.double(), videos.transpose(3, 4).contiguous().transpose(3, 4)):
            for name in base:
                torch.testing.assert_close(reward(variant, CAPTIONS)[name], base[name], rtol=1e-4, atol=1e-5)
        for low in (torch.float16, torch.bfloat16):  # CPU has no half antialiased resize: pisces upcasts it
            torch.testing.assert_close(
                reward(videos.to(low), CAPTIONS)["total"], base["total"], atol=0.05, rtol=0
            )
        single = reward(videos[1:], CAPTIONS[1:])
        torch.testing.assert_close(single["total"], base["total"][1:], atol=1e-5, rtol=1e-5)
        overshoot = (videos * 1.1 - 0.05).requires_grad_(False)  # an unclamped decode strays a little
        assert reward(overshoot, CAPTIONS)["total"].isfinite().all()
        nan = reward(
            torch.full_like(videos, float("nan")), CAPTIONS
        )  # a diverged generator: NaN, not refused
        assert nan["total"].isnan().all()


def test_api_argument_errors_are_usage_errors(tiny):
    with pytest.raises(pisces_cli.UsageError, match="unpack a list with \\*overrides"):
        pisces_cli.load_reward(tiny["recipe"], ["reward.crop=center"])
    with pytest.raises(pisces_cli.UsageError, match="device must be .*'gpu0'"):
        pisces_cli.load_reward(tiny["recipe"], device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(pisces_cli.UsageError, match="^device='cuda': CUDA is not available"):
            pisces_cli.load_encoder("clip", tiny["encoder_dir"], device="cuda")
    for weights in ({"quality": float("nan")}, {"semantic": "1"}, {"quality": True}):
        with pytest.raises(pisces_cli.UsageError, match="must be a finite number"):
            pisces_cli.build_reward(tiny["encoder"], weights=weights)
    with pytest.raises(pisces_cli.UsageError, match="token_ot must be a pisces_cli.TokenOTSettings"):
        pisces_cli.build_reward(tiny["encoder"], token_ot={"eps": 0.1})
    with pytest.raises(pisces_cli.UsageError, match="ot_map must be a path, a TransportMap or None"):
        pisces_cli.build_reward(tiny["encoder"], ot_map=3)
    width = tiny["encoder"].embed_dim
    narrow = pisces_cli.fit_gaussian_map(torch.rand(20, width - 1), torch.rand(20, width - 1))
    with pytest.raises(pisces_cli.UsageError, match=f"{width - 1} -> {width - 1} wide.*{width} wide"):
        pisces_cli.build_reward(tiny["encoder"], ot_map=narrow)
    with pytest.raises(pisces_cli.UsageError, match=f"not {width} -> {width}"):
        pisces_cli.save_ot_map(tiny["root"] / "narrow.safetensors", narrow, encoder=tiny["encoder"])
    assert not (tiny["root"] / "narrow.safetensors").exists()
    with pytest.raises(pisces_cli.UsageError, match=rf"\[B, {width - 1}\], got shape \({width},\)"):
        narrow.apply(torch.rand(width))  # one embedding without its batch axis: no broadcasting


def test_artifacts_round_trip_through_the_api(tmp_path):
    header = pisces_cli.ArtifactHeader(schema="user.thing", stage="my-trainer", metrics={"x": 1.5})
    path = pisces_cli.save_artifact(tmp_path / "a.safetensors", {"w": torch.arange(6.0).view(2, 3)}, header)
    assert pisces_cli.read_header(path).metrics == {"x": 1.5}
    tensors, read = pisces_cli.load_artifact(path, expect_schema="user.thing")
    assert torch.equal(tensors["w"], torch.arange(6.0).view(2, 3)) and read.stage == "my-trainer"
    with pytest.raises(pisces_cli.UsageError, match="expected a 'other' artifact"):
        pisces_cli.load_artifact(path, expect_schema="other")


def test_save_artifact_takes_views_and_tensor_metrics_and_refuses_what_it_cannot_store(tmp_path):
    """Views of one tensor are stored (safetensors alone refuses shared storage); a tensor metric is stored as
    its number, not its repr; non-tensors and a plain-dict header are UsageErrors."""
    weights = torch.arange(6.0)
    header = pisces_cli.ArtifactHeader(schema="user.thing", metrics={"loss": torch.tensor(0.5)})
    path = pisces_cli.save_artifact(tmp_path / "a.safetensors", {"all": weights, "head": weights[:2]}, header)
    tensors, read = pisces_cli.load_artifact(path)
    assert torch.equal(tensors["all"], weights) and torch.equal(tensors["head"], weights[:2])
    assert read.metrics == {"loss": 0.5}
    with pytest.raises(pisces_cli.UsageError, match="'w' is a ndarray"):
        pisces_cli.save_artifact(tmp_path / "b.safetensors", {"w": weights.numpy()}, header)
    with pytest.raises(pisces_cli.UsageError, match="must be a pisces_cli.ArtifactHeader, got dict"):
        pisces_cli.save_artifact(tmp_path / "c.safetensors", {"w": weights}, {"schema": "user.thing"})
    with pytest.raises(pisces_cli.UsageError, match="metric 'curve' must be a number"):
        bad = pisces_cli.ArtifactHeader(schema="user.thing", metrics={"curve": weights})
        pisces_cli.save_artifact(tmp_path / "d.safetensors", {"w": weights}, bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


# ------------------------------------------------------------------------------------ README examples


def readme_python_blocks() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_python_api_examples_run_on_tiny_models(tiny, capsys):
    """Every Python block of the README's API section runs, with only the model paths swapped for tiny ones."""
    from pisces_cli.backbones.tiny import save_tiny_wan

    pipeline_dir = save_tiny_wan(tiny["root"] / "wan", seed=0)
    swaps = {
        '"Wan-AI/Wan2.1-T2V-1.3B-Diffusers"': repr(str(pipeline_dir)),
        '"pretrained/clip-vit-large-patch14"': repr(str(tiny["encoder_dir"])),
        '"runs/clip/ot/ot_map.safetensors"': repr(str(tiny["map"])),
        '"wan",': repr(str(tiny["recipe"])) + ",",
        "models.encoder.path=pretrained/InternVideo2-stage2_1b-224p-f4.pt": f"models.encoder.path={tiny['encoder_dir']}",
        "runs/wan/ot/ot_map.safetensors": str(tiny["map"]),
        'device="cuda"': 'device="cpu"',
    }
    blocks = readme_python_blocks()
    assert len(blocks) == 4
    code = "\n".join(blocks)
    for old, new in swaps.items():
        assert old in code, f"the README example no longer contains {old}"
        code = code.replace(old, new)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)  # noqa: S102
    logged = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 1)[0] for line in logged] == ["0", "1"]
    for key in ("'quality'", "'semantic'", "'quality_no_ot'", "'total'"):
        assert key in logged[-1]
    lora = [p for name, p in namespace["pipe"].transformer.named_parameters() if "lora" in name]
    assert lora and all(p.grad is not None for p in lora)  # the reward's gradient reached the adapter
    assert namespace["mapped"].shape == namespace["text_embeddings"].shape
    assert namespace["fused"].shape == namespace["attn"].shape
    rows = namespace["prior"].sum(-1)  # row-normalised on caption words, zero elsewhere
    lexical = namespace["lexical"][:, None, :].expand_as(rows)
    torch.testing.assert_close(rows[lexical], torch.ones_like(rows[lexical]))
    assert (rows[~lexical] == 0).all()


def test_token_ot_prior_refuses_shapes_that_do_not_agree():
    """Used alone, the token-OT prior names the layout it expects instead of failing inside torch."""
    B, H, Q, D, F, G = 2, 2, 5, 8, 2, 2
    M = 1 + F * G * G
    query, key = torch.randn(B, Q, D), torch.randn(B, M, D)
    attn = torch.randn(B, H, Q, M).softmax(-1)
    lexical = torch.ones(B, Q, dtype=torch.bool)
    geometry = pisces_cli.video_token_geometry(F, G, G)
    settings = pisces_cli.TokenOTSettings(max_iter=20)
    prior, _ = pisces_cli.token_ot_prior(query, key, attn, lexical, geometry, settings)
    assert prior.shape == (B, H, Q, M)
    cases = [
        ((query, key, attn[:, 0], lexical, geometry, settings), r"attn \[B, H, Q, M\], got .*\(2, 5, 9\)"),
        ((query[..., :-1], key, attn, lexical, geometry, settings), "with the same D; got \\(2, 5, 7\\)"),
        ((query[:1], key, attn, lexical, geometry, settings), r"query must be \[2, 5, D\]"),
        ((query, key, attn, lexical, geometry, {"eps": 0.1}), "settings must be a TokenOTSettings"),
    ]
    for arguments, match in cases:
        with pytest.raises(pisces_cli.UsageError, match=match):
            pisces_cli.token_ot_prior(*arguments)
