"""PiscesReward on a tiny random CLIP: values against hand computations, gradients, batching, map artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pisces_cli.errors import UsageError
from pisces_cli.ot import TokenOTSettings
from pisces_cli.rewards import PiscesReward, load_ot_map_artifact, save_ot_map_artifact

CAPTIONS = [
    "a red cat",
    "the big dog runs quickly on the grass",
    "a bird flies over the water",
    "a small blue car drives slowly on the road and a person walks",
]
TOKEN_OT = TokenOTSettings(max_iter=60, tol=1e-6, check_every=5)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from pisces_cli.encoders.registry import load_encoder
    from pisces_cli.encoders.tiny_clip import save_tiny_clip

    directory = save_tiny_clip(tmp_path_factory.mktemp("tiny") / "enc", "clip", seed=0)
    return load_encoder("clip", str(directory))


@pytest.fixture(scope="module")
def gaussian_map(encoder):
    from pisces_cli.ot.maps import fit_gaussian_map

    gen = torch.Generator().manual_seed(1)
    dim = encoder.embed_dim
    x = torch.randn(64, dim, generator=gen)
    y = torch.randn(64, dim, generator=gen) @ torch.randn(dim, dim, generator=gen) * 0.3 + 1.0
    return fit_gaussian_map(x, y, normalization="l2", ridge=1e-3)


@pytest.fixture(scope="module")
def neural_map(encoder):
    from pisces_cli.ot.maps import NeuralMap, OTMapNet

    torch.manual_seed(2)
    return NeuralMap(OTMapNet(encoder.embed_dim, encoder.embed_dim, 16), normalization="l2")


def pixels(batch: int, frames: int = 4, side: int = 40, seed: int = 0) -> torch.Tensor:
    """Raw pixels ``[B, T, 3, H, W]`` in [0, 1] (not square, not the encoder size: preprocessing resizes)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, side, side + 8, generator=gen)


def hand_cosines(reward: PiscesReward, raw: torch.Tensor, captions: list[str], tmap) -> tuple:
    """(mapped cosine, raw cosine) computed from the encoder outputs without the reward module."""
    with torch.no_grad():
        clips = reward.preprocess(raw)
        video = reward.encoder.encode_video(clips).global_embedding.double()
        text = reward.encoder.encode_text(captions).global_embedding.double()
        raw_cos = (video * text).sum(-1) / (video.norm(dim=-1) * text.norm(dim=-1))
        if tmap is None:
            return raw_cos, raw_cos
        mapped = tmap(F.normalize(text.float(), dim=-1)).double()  # the map's l2 input convention, by hand
        mapped_cos = (video * mapped).sum(-1) / (video.norm(dim=-1) * mapped.norm(dim=-1))
    return mapped_cos, raw_cos


@pytest.mark.parametrize("map_kind", ["none", "gaussian", "neural"])
def test_shapes_ranges_and_hand_values(encoder, gaussian_map, neural_map, map_kind):
    tmap = {"none": None, "gaussian": gaussian_map, "neural": neural_map}[map_kind]
    weights = {"quality": 0.7, "semantic": 1.3}
    reward = PiscesReward(encoder, ot_map=tmap, weights=weights, token_ot=TOKEN_OT, with_no_ot_semantic=True)
    raw = pixels(len(CAPTIONS))
    with torch.no_grad():
        out = reward(raw, CAPTIONS)
    batch = len(CAPTIONS)
    for name in ("quality", "quality_no_ot", "semantic", "semantic_no_ot", "total"):
        value = getattr(out, name)
        assert value.shape == (batch,), name
        assert torch.isfinite(value).all(), name
    for name in ("quality", "quality_no_ot", "semantic", "semantic_no_ot"):
        assert (getattr(out, name).abs() <= 1.0 + 1e-6).all(), name
    torch.testing.assert_close(out.total, 0.7 * out.quality + 1.3 * out.semantic)
    mapped_cos, raw_cos = hand_cosines(reward, raw, CAPTIONS, tmap)
    torch.testing.assert_close(out.quality.double(), mapped_cos, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.quality_no_ot.double(), raw_cos, atol=1e-5, rtol=0)
    if tmap is None:
        torch.testing.assert_close(out.quality, out.quality_no_ot)
    else:  # a random map really changes the quality reward
        assert (out.quality - out.quality_no_ot).abs().max() > 1e-3
    # plan: [B, L, M], non-negative, zero on non-lexical rows; token strings align with its rows
    geometry = out.geometry
    assert out.plan is not None and out.plan.shape[0] == batch
    assert out.plan.shape[2] == geometry.num_tokens == 4 * geometry.grid_h * geometry.grid_w
    assert (out.plan >= 0).all()
    assert out.plan[~out.lexical_mask].abs().max() == 0
    assert all(len(tokens) == out.plan.shape[1] for tokens in out.token_strings)
    assert set(out.columns()) == {"quality", "quality_no_ot", "semantic", "semantic_no_ot", "total"}


def test_semantic_no_ot_is_mean_lexical_token_cosine(encoder):
    """Without token OT the semantic reward is the mean cosine over lexical × video tokens (by hand)."""
    reward = PiscesReward(encoder, token_ot=None)
    raw = pixels(2, seed=5)
    captions = CAPTIONS[:2]
    with torch.no_grad():
        out = reward(raw, captions)
        video = encoder.encode_video(reward.preprocess(raw)).tokens.double()
        text = encoder.encode_text(captions)
    for b in range(2):
        rows = F.normalize(text.tokens[b][text.lexical_mask[b]].double(), dim=-1)
        cols = F.normalize(video[b], dim=-1)
        expected = (rows @ cols.T).mean()
        assert float(out.semantic[b]) == pytest.approx(float(expected), abs=1e-5)


def test_identity_map_equals_no_map_and_l2_invariance(encoder):
    """An identity map (l2 input) only rescales the text vector: cosine unchanged."""
    from pisces_cli.ot.maps import IdentityMap

    raw = pixels(3, seed=2)
    with torch.no_grad():
        plain = PiscesReward(encoder, weights={"semantic": 0.0})(raw, CAPTIONS[:3])
        ident = PiscesReward(encoder, ot_map=IdentityMap("l2"), weights={"semantic": 0.0})(raw, CAPTIONS[:3])
    torch.testing.assert_close(ident.quality, plain.quality, atol=1e-6, rtol=0)
    torch.testing.assert_close(ident.quality, ident.quality_no_ot, atol=1e-6, rtol=0)


@pytest.mark.parametrize("component", ["quality", "semantic"])
def test_gradients_reach_pixels(encoder, gaussian_map, component):
    weights = (
        {"quality": 1.0, "semantic": 0.0} if component == "quality" else {"quality": 0.0, "semantic": 1.0}
    )
    reward = PiscesReward(encoder, ot_map=gaussian_map, weights=weights, token_ot=TOKEN_OT)
    raw = pixels(2, seed=3).requires_grad_(True)
    out = reward(raw, CAPTIONS[:2])
    value = getattr(out, component)
    assert value.requires_grad
    (grad,) = torch.autograd.grad(value.sum(), raw)
    assert grad.shape == raw.shape and torch.isfinite(grad).all()
    # every video's pixels get a gradient from its own reward only
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0
    (own,) = torch.autograd.grad(getattr(reward(raw, CAPTIONS[:2]), component)[0], raw)
    assert own[0].abs().sum() > 0 and own[1].abs().sum() == 0
    # diagnostics stay detached
    assert not out.quality_no_ot.requires_grad
    assert out.plan is None if component == "quality" else not out.plan.requires_grad


def test_gradient_matches_finite_difference(encoder, gaussian_map):
    """d total / d pixel agrees with a central difference (float64 encoder; the module returns float32)."""
    enc64 = encoder.to("cpu", torch.float64)
    try:
        reward = PiscesReward(
            enc64, ot_map=gaussian_map, weights={"quality": 1.0, "semantic": 0.5}, token_ot=None
        )
        raw = pixels(1, frames=2, side=32, seed=4).double().requires_grad_(True)
        (grad,) = torch.autograd.grad(reward(raw, CAPTIONS[:1]).total.sum(), raw)
        direction = torch.randn(raw.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        step = 1e-3
        with torch.no_grad():
            plus = reward(raw + step * direction, CAPTIONS[:1]).total.sum()
            minus = reward(raw - step * direction, CAPTIONS[:1]).total.sum()
        numeric = float((plus - minus) / (2 * step))
        assert float((grad * direction).sum()) == pytest.approx(numeric, rel=1e-3, abs=1e-6)
    finally:
        encoder.to("cpu", torch.float32)


def test_batched_semantic_equals_one_at_a_time(encoder, gaussian_map):
    """Captions of different lengths pad differently in a batch; each row's rewards must not change."""
    reward = PiscesReward(encoder, ot_map=gaussian_map, token_ot=TOKEN_OT, with_no_ot_semantic=True)
    raw = pixels(len(CAPTIONS), seed=6)
    lengths = {len(encoder.encode_text([c]).token_strings[0]) for c in CAPTIONS}
    assert len(lengths) == len(CAPTIONS)  # really different lengths
    with torch.no_grad():
        batched = reward(raw, CAPTIONS)
        singles = [reward(raw[i : i + 1], [c]) for i, c in enumerate(CAPTIONS)]
    for name in ("quality", "quality_no_ot", "semantic", "semantic_no_ot", "total"):
        stacked = torch.cat([getattr(s, name) for s in singles])
        torch.testing.assert_close(getattr(batched, name), stacked, atol=1e-5, rtol=0, msg=name)
    for i, single in enumerate(singles):
        length = single.plan.shape[1]
        torch.testing.assert_close(batched.plan[i, :length], single.plan[0], atol=1e-6, rtol=0)
        assert batched.plan[i, length:].abs().max() == 0 if batched.plan.shape[1] > length else True


def test_zero_semantic_weight_skips_semantic(encoder, monkeypatch):
    reward = PiscesReward(encoder, weights={"quality": 2.0, "semantic": 0.0}, token_ot=TOKEN_OT)
    calls = []
    original = encoder.semantic_reward
    monkeypatch.setattr(encoder, "semantic_reward", lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.no_grad():
        out = reward(pixels(2), CAPTIONS[:2])
    assert calls == [] and out.semantic is None and out.plan is None
    torch.testing.assert_close(out.total, 2.0 * out.quality)
    assert set(out.components()) == {"quality"} and "semantic" not in out.columns()
    # asking for the no-OT diagnostic computes it, but a zero weight still keeps it out of the total
    diag = PiscesReward(
        encoder, weights={"quality": 2.0, "semantic": 0.0}, token_ot=TOKEN_OT, with_no_ot_semantic=True
    )
    with torch.no_grad():
        out2 = diag(pixels(2), CAPTIONS[:2])
    assert len(calls) == 2 and out2.semantic is not None
    torch.testing.assert_close(out2.total, 2.0 * out2.quality)


def test_mismatched_batch_is_refused(encoder):
    from pisces_cli.errors import UsageError

    with pytest.raises(UsageError, match=r"2 video\(s\) but 1 caption\(s\)"):
        PiscesReward(encoder)(pixels(2), CAPTIONS[:1])


def _header(fingerprint: dict) -> object:
    from pisces_cli.artifacts import ArtifactHeader

    return ArtifactHeader(schema="x", stage="fit-ot", fingerprints={"encoder": dict(fingerprint)})


@pytest.mark.parametrize("kind", ["gaussian", "neural"])
def test_map_artifact_round_trip(encoder, gaussian_map, neural_map, tmp_path: Path, kind):
    tmap = gaussian_map if kind == "gaussian" else neural_map
    path = save_ot_map_artifact(
        tmp_path / "ot_map.safetensors", tmap, encoder.embed_dim, _header(encoder.fingerprint())
    )
    loaded, header = load_ot_map_artifact(
        path, encoder_fingerprint=encoder.fingerprint(), dim=encoder.embed_dim
    )
    assert header.schema == "pisces.ot_map" and header.extra["map"]["method"] == kind
    x = torch.randn(5, encoder.embed_dim, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(loaded.apply(x), tmap.apply(x))
    assert [p.name for p in tmp_path.iterdir()] == ["ot_map.safetensors"]  # atomic write: no tmp left


def test_map_artifact_refuses_other_encoder_or_dim(encoder, gaussian_map, tmp_path: Path):
    path = save_ot_map_artifact(
        tmp_path / "m.safetensors", gaussian_map, encoder.embed_dim, _header(encoder.fingerprint())
    )
    other = {**encoder.fingerprint(), "weights_sha256": "0" * 64}
    with pytest.raises(UsageError, match="weights_sha256"):
        load_ot_map_artifact(path, encoder_fingerprint=other, dim=encoder.embed_dim)
    with pytest.raises(
        UsageError, match=f"{encoder.embed_dim}-d embeddings but the encoder gives {encoder.embed_dim + 1}-d"
    ):
        load_ot_map_artifact(path, encoder_fingerprint=encoder.fingerprint(), dim=encoder.embed_dim + 1)
    bare = save_ot_map_artifact(tmp_path / "bare.safetensors", gaussian_map, encoder.embed_dim, _header({}))
    with pytest.raises(UsageError, match="no encoder fingerprint"):
        load_ot_map_artifact(bare, encoder_fingerprint=encoder.fingerprint())


def test_map_of_another_tiny_encoder_is_refused(encoder, gaussian_map, tmp_path: Path):
    """A real second checkpoint (other seed) has another weights hash: its map is refused."""
    from pisces_cli.encoders.registry import load_encoder
    from pisces_cli.encoders.tiny_clip import save_tiny_clip

    other = load_encoder("clip", str(save_tiny_clip(tmp_path / "enc", "clip", seed=1)))
    path = save_ot_map_artifact(
        tmp_path / "m.safetensors", gaussian_map, other.embed_dim, _header(other.fingerprint())
    )
    with pytest.raises(UsageError, match="different encoder"):
        load_ot_map_artifact(path, encoder_fingerprint=encoder.fingerprint(), dim=encoder.embed_dim)


def test_map_whose_tensors_do_not_fit_the_dim_is_refused(encoder, tmp_path: Path):
    """``dims`` is written from the caller's ``dim``; the loader also checks the map's own tensors."""
    from pisces_cli.ot.maps import NeuralMap, OTMapNet, fit_gaussian_map

    dim = encoder.embed_dim
    small = fit_gaussian_map(torch.randn(20, dim - 4), torch.randn(20, dim - 4))
    path = save_ot_map_artifact(tmp_path / "a.safetensors", small, dim, _header(encoder.fingerprint()))
    with pytest.raises(UsageError, match=f"do not take {dim}-d embeddings"):
        load_ot_map_artifact(path, encoder_fingerprint=encoder.fingerprint(), dim=dim)
    wide = NeuralMap(OTMapNet(dim, dim + 3, 8), normalization="l2")
    path = save_ot_map_artifact(tmp_path / "b.safetensors", wide, dim, _header(encoder.fingerprint()))
    with pytest.raises(UsageError, match=f"gives {dim + 3}-d outputs"):
        load_ot_map_artifact(path, encoder_fingerprint=encoder.fingerprint(), dim=dim)
    loaded, _ = load_ot_map_artifact(path)  # no dim given: nothing to check against
    assert loaded.apply(torch.randn(2, dim)).shape == (2, dim + 3)
