"""Equivalence tests: vlprompt's seams vs open_clip's own forward passes."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch

from numerics import assert_fp32_close
from vlprompt.backbones.base import KVPrompt, VisualPrompts
from vlprompt.backbones.blocks import attention_with_kv
from vlprompt.backbones.clip import ClipBackbone
from vlprompt.backbones.configs import register_configs
from vlprompt.errors import ConfigError

register_configs()
TEXTS = ["a photo of a cat.", "a centered satellite photo of Annual Crop Land.", "x", "a " * 30 + "dog."]


def _make(arch: str) -> ClipBackbone:
    torch.manual_seed(0)
    model = open_clip.create_model(arch)
    return ClipBackbone(model, open_clip.get_tokenizer(arch), name=arch)


@pytest.fixture(scope="module", params=["ViT-B-16", "RN50"])
def real_arch(request):
    return _make(request.param)


@pytest.fixture(scope="module")
def tiny():
    return _make("tiny-clip")


def test_text_tower_equals_open_clip(real_arch):
    bb = real_arch
    tok = bb.tokenize(TEXTS)
    with torch.no_grad():
        ours = bb.encode_text(bb.embed(tok), bb.eot_index(tok))
        ref = bb.model.encode_text(tok)
    assert_fp32_close(ours, ref)


def test_image_tower_equals_open_clip(real_arch):
    bb = real_arch
    torch.manual_seed(1)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = bb.encode_image(images)
        ref = bb.model.encode_image(images)
    assert_fp32_close(ours, ref)


def test_truncation_identity(tiny):
    """Features of a short prompt do not change with the padded length that is run."""
    tok = tiny.tokenize(TEXTS)
    eot = tiny.eot_index(tok)
    with torch.no_grad():
        emb = tiny.embed(tok)
        batched = tiny.encode_text(emb, eot)  # runs to the longest EOT of the batch
        for i in range(len(TEXTS)):
            alone = tiny.encode_text(emb[i : i + 1], eot[i : i + 1])  # runs to its own EOT
            full = tiny.model.encode_text(tok[i : i + 1])  # runs all 77 positions
            assert_fp32_close(alone, full)
            assert_fp32_close(batched[i : i + 1], full)
    assert int(eot.max()) + 1 < tiny.context_length


def test_deep_text_prompts_replace_positions(tiny):
    """Deep prompts equal running the blocks by hand with the positions overwritten."""
    torch.manual_seed(2)
    tok = tiny.tokenize(["X X a photo of a cat."])
    eot = tiny.eot_index(tok)
    deep = {1: torch.randn(2, tiny.text_width), 2: torch.randn(2, tiny.text_width)}
    m = tiny.model
    with torch.no_grad():
        ours = tiny.encode_text(tiny.embed(tok), eot, deep_prompts=deep)
        x = m.token_embedding(tok) + m.positional_embedding
        for i, blk in enumerate(m.transformer.resblocks):
            if i in deep:
                x = x.clone()
                x[:, 1:3] = deep[i]
            x = blk(x, attn_mask=m.attn_mask)
        ref = m.ln_final(x)[0, eot[0]] @ m.text_projection
    assert_fp32_close(ours[0], ref)


def test_zero_visual_prompts_and_empty_kv_change_nothing(tiny):
    torch.manual_seed(3)
    images = torch.randn(2, 3, 64, 64)
    w = tiny.vision_width
    empty_kv = {i: KVPrompt(torch.zeros(0, w), torch.zeros(0, w)) for i in range(tiny.n_vision_layers)}
    with torch.no_grad():
        ref = tiny.model.encode_image(images)
        assert_fp32_close(tiny.encode_image(images, VisualPrompts()), ref)
        assert_fp32_close(tiny.encode_image(images, VisualPrompts(kv=empty_kv)), ref)


def test_visual_prompt_layouts_and_tokens(tiny):
    torch.manual_seed(4)
    images = torch.randn(2, 3, 64, 64)
    w = tiny.vision_width
    n_patches = (64 // 8) ** 2
    for layout in ("append", "after_cls"):
        p = VisualPrompts(tokens=torch.randn(3, w), layout=layout, deep={1: torch.randn(3, w)})
        out = tiny.encode_image(images, p, return_tokens=True)
        assert out.pooled.shape == (2, tiny.embed_dim)
        assert out.tokens.shape == (2, n_patches, w)
        out.pooled.sum()  # forward works with prompts
    with pytest.raises(ConfigError):
        tiny.encode_image(images, VisualPrompts(deep={1: torch.randn(3, w)}))


def test_kv_attention_matches_independent_formula():
    torch.manual_seed(5)
    d, heads, b, length, n_p = 16, 2, 3, 5, 4
    attn = torch.nn.MultiheadAttention(d, heads, batch_first=True)
    h = torch.randn(b, length, d)
    kv = KVPrompt(torch.randn(n_p, d), torch.randn(n_p, d))
    ours = attention_with_kv(attn, h, kv, None)
    q, k, v = torch.nn.functional.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    k = torch.cat([kv.key.expand(b, -1, -1), k], 1)
    v = torch.cat([kv.value.expand(b, -1, -1), v], 1)
    dh = d // heads
    outs = []
    for i in range(heads):
        sl = slice(i * dh, (i + 1) * dh)
        a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(dh), dim=-1)
        outs.append(a @ v[..., sl])
    ref = attn.out_proj(torch.cat(outs, -1))
    assert torch.allclose(ours, ref, atol=1e-5)


def test_resnet_refuses_visual_prompts(real_arch):
    if real_arch.is_vit:
        pytest.skip("ViT")
    with pytest.raises(ConfigError, match="ViT"):
        real_arch.encode_image(torch.randn(1, 3, 224, 224), VisualPrompts(tokens=torch.randn(2, 8)))
