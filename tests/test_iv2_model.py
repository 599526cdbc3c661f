"""InternVideo2-Stage2 modules against hand-written references (vision ViT, BERT text/fusion, hook, grads, dtypes)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from pisces_cli.encoders.internvideo2 import InternVideo2Config, InternVideo2Stage2
from pisces_cli.encoders.internvideo2.tiny import randomize_weights
from pisces_cli.encoders.internvideo2.vision import Attention


def micro_config(num_frames: int = 2, gelu: str = "tanh") -> InternVideo2Config:
    """The tiny config with a 4×4 grid (img 8, patch 2) to keep the reference loops fast."""
    config = InternVideo2Config.tiny(num_frames=num_frames)
    vision = dataclasses.replace(config.vision, img_size=8, gelu_approximate=gelu)
    return InternVideo2Config(vision=vision, text=config.text, embed_dim=config.embed_dim)


def randomized(config: InternVideo2Config, seed: int = 0) -> InternVideo2Stage2:
    return randomize_weights(InternVideo2Stage2(config), seed, scale=0.2)


@pytest.fixture(scope="module")
def model() -> InternVideo2Stage2:
    return randomized(micro_config())


def pixels_for(
    config: InternVideo2Config, batch: int = 2, frames: int | None = None, seed: int = 1
) -> Tensor:
    frames = config.vision.num_frames if frames is None else frames
    size = config.vision.img_size
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def caption_ids(batch: int, length: int, seed: int = 2) -> Tensor:
    ids = torch.randint(103, 30000, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0], ids[:, -1] = 101, 102
    return ids


# ---------------------------------------------------------------- naive references (explicit formulas)


def ref_rms(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def ref_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def ref_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor | None = None) -> Tensor:
    """q [B, L, D], k/v [B, M, D] → [B, L, D] with explicit softmax."""
    batch, length, dim = q.shape
    d = dim // heads
    split = lambda t: t.reshape(batch, t.shape[1], heads, d).permute(0, 2, 1, 3)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        scores = scores + mask
    out = torch.softmax(scores, dim=-1) @ split(v)
    return out.permute(0, 2, 1, 3).reshape(batch, length, dim)


def ref_vision(sd: dict[str, Tensor], config: InternVideo2Config, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Naive InternVideo2 ViT on [B, T, 3, H, W] from a state dict; patches extracted by reshaping."""
    v = config.vision
    p, g, dim = v.patch_size, v.grid_size, v.embed_dim
    batch, frames = pixels.shape[:2]
    patches = (
        pixels.reshape(batch, frames, 3, g, p, g, p)
        .permute(0, 1, 3, 5, 2, 4, 6)
        .reshape(batch, frames * g * g, -1)
    )
    weight = sd["vision_encoder.patch_embed.proj.weight"].reshape(dim, -1)
    x = patches @ weight.T + sd["vision_encoder.patch_embed.proj.bias"]
    x = torch.cat([sd["vision_encoder.cls_token"].expand(batch, 1, dim), x], dim=1)
    x = x + sd["vision_encoder.img_pos_embed" if frames == 1 else "vision_encoder.pos_embed"]
    for i in range(v.depth):
        b = f"vision_encoder.blocks.{i}."
        h = ref_rms(x, sd[b + "norm1.weight"])
        q, k, val = (h @ sd[b + "attn.qkv.weight"].T).split(dim, dim=-1)
        q, k = ref_rms(q, sd[b + "attn.q_norm.weight"]), ref_rms(k, sd[b + "attn.k_norm.weight"])
        a = ref_attention(q, k, val, v.num_heads) @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        x = x + sd[b + "ls1.gamma"] * a
        h = ref_rms(x, sd[b + "norm2.weight"])
        h = h @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"]
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
        x = x + sd[b + "ls2.gamma"] * (h @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"])
    c = "vision_encoder.clip_projector."
    ln = lambda t, n: ref_layer_norm(t, sd[c + n + ".weight"], sd[c + n + ".bias"], 1e-5)  # noqa: E731
    q = ln(x.mean(1, keepdim=True), "norm1_q") @ sd[c + "cross_attn.q.weight"].T + sd[c + "cross_attn.q_bias"]
    k = ln(x, "norm1_k") @ sd[c + "cross_attn.k.weight"].T + sd[c + "cross_attn.k_bias"]
    val = ln(x, "norm1_v") @ sd[c + "cross_attn.v.weight"].T + sd[c + "cross_attn.v_bias"]
    pooled = ref_attention(q, k, val, v.attn_pool_num_heads) @ sd[c + "cross_attn.proj.weight"].T
    return x, (pooled + sd[c + "cross_attn.proj.bias"])[:, 0]


def ref_bert_all_layers(
    sd: dict[str, Tensor], config: InternVideo2Config, ids: Tensor, mask: Tensor, x_vis: Tensor
):
    """Naive post-norm BERT over all layers (cross-attention from fusion_layer on); returns every layer output."""
    t = config.text
    eps = t.layer_norm_eps
    e = "text_encoder.embeddings."
    ln = lambda x, n: ref_layer_norm(x, sd[n + ".weight"], sd[n + ".bias"], eps)  # noqa: E731
    lin = lambda x, n: x @ sd[n + ".weight"].T + sd[n + ".bias"]  # noqa: E731
    h = sd[e + "word_embeddings.weight"][ids] + sd[e + "position_embeddings.weight"][: ids.shape[1]]
    h = ln(h + sd[e + "token_type_embeddings.weight"][0], e + "LayerNorm")
    additive = (1.0 - mask[:, None, None, :].float()) * -10000.0
    outputs = []
    for i in range(t.num_layers):
        b = f"text_encoder.encoder.layer.{i}."
        s = b + "attention."
        a = ref_attention(
            lin(h, s + "self.query"), lin(h, s + "self.key"), lin(h, s + "self.value"), t.num_heads, additive
        )
        h = ln(h + lin(a, s + "output.dense"), s + "output.LayerNorm")
        if i >= t.fusion_layer:
            c = b + "crossattention."
            q, k, val = lin(h, c + "self.query"), lin(x_vis, c + "self.key"), lin(x_vis, c + "self.value")
            h = ln(h + lin(ref_attention(q, k, val, t.num_heads), c + "output.dense"), c + "output.LayerNorm")
        f = F.gelu(lin(h, b + "intermediate.dense"))
        h = ln(h + lin(f, b + "output.dense"), b + "output.LayerNorm")
        outputs.append(h)
    return outputs


# ---------------------------------------------------------------- vision


@pytest.mark.parametrize("frames", [1, 2])
def test_iv2_vision_matches_naive_reference(model: InternVideo2Stage2, frames: int) -> None:
    config = model.config if frames == 2 else model.config
    pixels = pixels_for(config, frames=frames)
    sd = model.state_dict()
    with torch.no_grad():
        x_vis, pooled = model.encode_vision(pixels)
        ref_x, ref_pooled = ref_vision(sd, config, pixels)
    assert x_vis.shape == (2, 1 + 16 * frames, 64)
    torch.testing.assert_close(x_vis, ref_x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-4, atol=1e-4)


def test_iv2_token_order_is_cls_then_frame_major_row_major(model: InternVideo2Stage2) -> None:
    """Changing one pixel patch (frame 1, row 2, col 3) changes exactly token 1 + 1·16 + 2·4 + 3 of the embedding."""
    pixels = pixels_for(model.config)
    changed = pixels.clone()
    changed[:, 1, :, 4:6, 6:8] += 1.0  # patch size 2: row 2, col 3 of frame 1
    with torch.no_grad():
        before = model.vision_encoder.embed(pixels.permute(0, 2, 1, 3, 4))
        after = model.vision_encoder.embed(changed.permute(0, 2, 1, 3, 4))
    differs = (before - after).abs().amax(dim=(0, 2)) > 0
    assert differs.nonzero().flatten().tolist() == [1 + 16 + 2 * 4 + 3]


def test_iv2_qk_norm_covers_the_whole_width() -> None:
    config = micro_config().vision
    torch.manual_seed(0)
    attention = Attention(config).eval()
    with torch.no_grad():
        attention.q_norm.weight.uniform_(0.5, 1.5)
        attention.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 9, 64)
    dim, heads = 64, config.num_heads
    q, k, v = (x @ attention.qkv.weight.T).split(dim, dim=-1)

    def output(q_: Tensor, k_: Tensor) -> Tensor:
        return ref_attention(q_, k_, v, heads) @ attention.proj.weight.T + attention.proj.bias

    full = output(ref_rms(q, attention.q_norm.weight), ref_rms(k, attention.k_norm.weight))

    def per_head(t: Tensor, w: Tensor) -> Tensor:
        return ref_rms(t.reshape(2, 9, heads, 16), w.reshape(heads, 16)).reshape(2, 9, dim)

    wrong = output(per_head(q, attention.q_norm.weight), per_head(k, attention.k_norm.weight))
    with torch.no_grad():
        actual = attention(x)
    torch.testing.assert_close(actual, full, rtol=1e-5, atol=1e-5)
    assert (actual - wrong).abs().max() > 1e-3


def test_iv2_gelu_option_switches_the_activation() -> None:
    exact = randomized(micro_config(gelu="none"))
    tanh = randomized(micro_config(gelu="tanh"))
    pixels = pixels_for(exact.config)
    with torch.no_grad():
        a, b = exact.encode_vision(pixels)[1], tanh.encode_vision(pixels)[1]
    assert 0 < (a - b).abs().max() < 0.05  # same weights, only the GELU approximation differs


def test_iv2_activation_checkpointing_keeps_values_and_gradients(model: InternVideo2Stage2) -> None:
    pixels = pixels_for(model.config, batch=1)
    grads = []
    for flag in (False, True):
        model.use_checkpoint = flag
        leaf = pixels.clone().requires_grad_(True)
        embedding = model.video_embedding(model.encode_vision(leaf)[1])
        embedding.square().sum().backward()
        grads.append((embedding.detach(), leaf.grad))
    model.use_checkpoint = False
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- text and fusion


def test_iv2_text_then_fusion_equals_naive_single_pass(model: InternVideo2Stage2) -> None:
    ids = caption_ids(2, 7)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        x_vis, _ = model.encode_vision(pixels_for(model.config))
        text_embeds = model.encode_text(ids, mask)
        fused = model.fusion(text_embeds, mask, x_vis)
        reference = ref_bert_all_layers(model.state_dict(), model.config, ids, mask, x_vis)
    torch.testing.assert_close(
        text_embeds, reference[model.config.text.fusion_layer - 1], rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(fused, reference[-1], rtol=1e-4, atol=1e-4)


def test_iv2_text_mode_matches_transformers_bert(model: InternVideo2Stage2) -> None:
    """Text mode equals Hugging Face ``BertModel`` with the same weights and fusion_layer layers."""
    from transformers import BertConfig, BertModel

    t = model.config.text
    hf_config = BertConfig(
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        num_hidden_layers=t.fusion_layer,
        num_attention_heads=t.num_heads,
        intermediate_size=t.intermediate_size,
        max_position_embeddings=t.max_position_embeddings,
        type_vocab_size=t.type_vocab_size,
        layer_norm_eps=t.layer_norm_eps,
        hidden_act="gelu",
    )
    hf = BertModel(hf_config, add_pooling_layer=False).eval()
    ours = {
        k[len("text_encoder.") :]: v for k, v in model.state_dict().items() if k.startswith("text_encoder.")
    }
    ours = {
        k: v
        for k, v in ours.items()
        if "crossattention" not in k and not k.startswith(("encoder.layer.2", "encoder.layer.3"))
    }
    missing, unexpected = hf.load_state_dict(ours, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    ids = caption_ids(2, 9)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        actual = model.encode_text(ids, mask)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_iv2_padding_does_not_change_cls_outputs(model: InternVideo2Stage2) -> None:
    ids = caption_ids(1, 6)
    padded = torch.cat([ids, torch.zeros(1, 10, dtype=torch.long)], dim=1)
    mask, padded_mask = torch.ones_like(ids), (padded != 0).long()
    with torch.no_grad():
        x_vis, _ = model.encode_vision(pixels_for(model.config, batch=1))
        short, long = model.encode_text(ids, mask), model.encode_text(padded, padded_mask)
        vtm_short = model.vtm_probability(model.fusion(short, mask, x_vis)[:, 0])
        vtm_long = model.vtm_probability(model.fusion(long, padded_mask, x_vis)[:, 0])
    torch.testing.assert_close(long[:, :6], short, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.text_embedding(long), model.text_embedding(short), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vtm_long, vtm_short, rtol=1e-5, atol=1e-6)
    # The mask matters: without it the pads change the [CLS].
    with torch.no_grad():
        unmasked = model.encode_text(padded, torch.ones_like(padded))
    assert (unmasked[:, 0] - short[:, 0]).abs().max() > 1e-3


def test_iv2_hook_called_per_fusion_layer_with_documented_shapes(model: InternVideo2Stage2) -> None:
    ids = caption_ids(2, 5)
    mask = torch.ones_like(ids)
    calls: list[tuple[int, tuple, tuple, tuple]] = []

    def identity_hook(layer: int, probs: Tensor, query_full: Tensor, key_full: Tensor) -> Tensor:
        calls.append((layer, tuple(probs.shape), tuple(query_full.shape), tuple(key_full.shape)))
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
        return probs

    with torch.no_grad():
        x_vis, _ = model.encode_vision(pixels_for(model.config))
        text_embeds = model.encode_text(ids, mask)
        plain = model.fusion(text_embeds, mask, x_vis)
        hooked = model.fusion(text_embeds, mask, x_vis, cross_attn_hook=identity_hook)
    m = 1 + 16 * 2
    assert calls == [(layer, (2, 4, 5, m), (2, 5, 32), (2, m, 32)) for layer in (2, 3)]
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-5)


def test_iv2_hook_receives_query_and_key_projections_and_its_output_is_used(
    model: InternVideo2Stage2,
) -> None:
    ids = caption_ids(1, 4)
    mask = torch.ones_like(ids)
    seen: dict[int, tuple[Tensor, Tensor]] = {}

    def cls_only_hook(layer: int, probs: Tensor, query_full: Tensor, key_full: Tensor) -> Tensor:
        seen[layer] = (query_full, key_full)
        forced = torch.zeros_like(probs)
        forced[..., 0] = 1.0  # every text token attends only to the visual CLS
        return forced

    with torch.no_grad():
        x_vis, _ = model.encode_vision(pixels_for(model.config, batch=1))
        text_embeds = model.encode_text(ids, mask)
        plain = model.fusion(text_embeds, mask, x_vis)
        hooked = model.fusion(text_embeds, mask, x_vis, cross_attn_hook=cls_only_hook)
        # Layer fusion_layer's query input is the output of its self-attention block.
        layer = model.text_encoder.encoder.layer[2]
        after_self = layer.attention(text_embeds, additive_mask=torch.zeros(1, 1, 1, 4))
        cross = layer.crossattention.self
        torch.testing.assert_close(seen[2][0], cross.query(after_self), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(seen[2][1], cross.key(x_vis), rtol=1e-5, atol=1e-5)
        # With all mass on the CLS the context is value(x_vis[:, 0]) for every text token.
        context = cross(after_self, x_vis, None, cls_only_hook, 2)
        torch.testing.assert_close(context, cross.value(x_vis[:, :1]).expand(1, 4, 32), rtol=1e-5, atol=1e-5)
    assert (hooked - plain).abs().max() > 1e-3


def test_iv2_vtm_reads_softmax_index_one(model: InternVideo2Stage2) -> None:
    fused_cls = torch.randn(3, 32, generator=torch.Generator().manual_seed(4))
    logits = model.itm_head(fused_cls)
    expected = torch.exp(logits[:, 1]) / torch.exp(logits).sum(-1)
    torch.testing.assert_close(model.vtm_probability(fused_cls), expected)


# ---------------------------------------------------------------- gradients and dtypes


def reward_value(model: InternVideo2Stage2, pixels: Tensor, kind: str, ids: Tensor, mask: Tensor) -> Tensor:
    """Global reward (cosine of projected embeddings) or fine-grained VTM probability, summed over the batch."""
    with torch.no_grad():
        text_embeds = model.encode_text(ids, mask)
    x_vis, pooled = model.encode_vision(pixels)
    if kind == "global":
        return F.cosine_similarity(model.video_embedding(pooled), model.text_embedding(text_embeds)).sum()
    return model.vtm_probability(model.fusion(text_embeds, mask, x_vis)[:, 0]).sum()


@pytest.mark.parametrize("kind", ["global", "vtm"])
def test_iv2_gradients_reach_pixels_through_both_rewards(model: InternVideo2Stage2, kind: str) -> None:
    """Autograd gradient w.r.t. pixels is non-zero and matches a central finite difference (float64 copy)."""
    model64 = randomized(micro_config()).double()
    ids = caption_ids(1, 5)
    mask = torch.ones_like(ids)
    pixels = pixels_for(model.config, batch=1).double().requires_grad_(True)
    reward_value(model64, pixels, kind, ids, mask).backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all()
    assert pixels.grad.abs().sum() > 0
    direction = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    step = 1e-4
    with torch.no_grad():
        plus = reward_value(model64, pixels + step * direction, kind, ids, mask)
        minus = reward_value(model64, pixels - step * direction, kind, ids, mask)
    numeric = float((plus - minus) / (2 * step))
    analytic = float((pixels.grad * direction).sum())
    assert abs(numeric - analytic) <= 1e-4 * max(abs(analytic), 1e-6)
    # The fp32 model gives the same gradient up to fp32 rounding.
    pixels32 = pixels.detach().float().requires_grad_(True)
    reward_value(model, pixels32, kind, ids, mask).backward()
    torch.testing.assert_close(pixels32.grad.double(), pixels.grad, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_iv2_half_precision_agrees_with_fp32(model: InternVideo2Stage2, dtype: torch.dtype) -> None:
    """bf16 / fp16 vs fp32 on the random tiny model: embeddings within cos > 0.99, VTM within 0.02."""
    half = randomized(micro_config()).to(dtype)
    ids = caption_ids(2, 6)
    mask = torch.ones_like(ids)
    pixels = pixels_for(model.config)
    outputs = []
    for m in (model, half):
        with torch.no_grad():
            x_vis, pooled = m.encode_vision(pixels)
            text_embeds = m.encode_text(ids, mask)
            vtm = m.vtm_probability(m.fusion(text_embeds, mask, x_vis)[:, 0])
            outputs.append(
                (m.video_embedding(pooled).float(), m.text_embedding(text_embeds).float(), vtm.float())
            )
    (v32, t32, p32), (v16, t16, p16) = outputs
    assert v16.dtype == torch.float32 and p16.dtype == torch.float32
    assert F.cosine_similarity(v32, v16).min() > 0.99
    assert F.cosine_similarity(t32, t16).min() > 0.99
    assert (p32 - p16).abs().max() < 0.02
