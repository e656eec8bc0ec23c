"""timm ViT backbone: seams vs timm's own forward, key/value attention, local weight loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vlprompt as vp
from numerics import assert_fp32_close
from vlprompt.backbones.base import KVPrompt, VisualPrompts
from vlprompt.backbones.blocks import is_timm_block, timm_block_forward
from vlprompt.errors import CheckpointError, ConfigError

TINY = "timm:vit_tiny_patch16_224"
TINY_KW = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}
#: qk-norm, layer scale, a register token, no positional embedding for the prefix tokens
TINY_VARIANT_KW = {**TINY_KW, "qk_norm": True, "init_values": 0.1, "reg_tokens": 1, "no_embed_class": True}


def _tiny(seed: int = 0, **extra):
    return vp.load_backbone(TINY, model_kwargs={**TINY_KW, **extra}, seed=seed)


@pytest.fixture(scope="module")
def vit_b16():
    return vp.load_backbone("timm:vit_base_patch16_224.augreg_in21k")


def test_vit_b16_equals_timm(vit_b16):
    bb = vit_b16
    assert (bb.embed_dim, bb.vision_width, bb.n_vision_layers, bb.patch_size, bb.image_size) == (768, 768, 12, 16, 224)
    torch.manual_seed(1)
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = bb.encode_image(images, return_tokens=True)
        ref_tokens = bb.model.forward_features(images)
        ref_pooled = bb.model(images)
    assert_fp32_close(out.pooled, ref_pooled)
    assert_fp32_close(out.pooled, ref_tokens[:, 0])  # CLS after the final norm
    assert_fp32_close(out.tokens, ref_tokens[:, 1:])


@pytest.mark.parametrize("extra", [{}, TINY_VARIANT_KW], ids=["plain", "qknorm-ls-reg"])
def test_tiny_equals_timm_and_empty_prompts_change_nothing(extra):
    bb = _tiny(**extra)
    torch.manual_seed(2)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = bb.model(images)
        assert_fp32_close(bb.encode_image(images), ref)
        empty_kv = {i: KVPrompt(torch.zeros(0, 32), torch.zeros(0, 32)) for i in range(3)}
        assert_fp32_close(bb.encode_image(images, VisualPrompts(kv=empty_kv)), ref)


@pytest.mark.parametrize("extra", [{}, TINY_VARIANT_KW], ids=["plain", "qknorm-ls-reg"])
def test_timm_block_adapter_equals_block(extra):
    bb = _tiny(**extra)
    x = torch.randn(2, 7, 32)
    for block in bb.model.blocks:
        assert is_timm_block(block)
        with torch.no_grad():
            assert_fp32_close(timm_block_forward(block, x), block(x))


def test_kv_prompts_against_hand_attention():
    """softmax(Q [K_p; K]^T / sqrt(d_h)) [V_p; V] per head, with the block's own weights."""
    bb = _tiny()
    block = bb.model.blocks[0]
    torch.manual_seed(3)
    x = torch.randn(2, 6, 32)
    kp, vp_ = torch.randn(4, 32), torch.randn(4, 32)
    with torch.no_grad():
        ours = timm_block_forward(block, x, kv=KVPrompt(kp, vp_))
        a = block.attn
        h = block.norm1(x)
        w_q, w_k, w_v = a.qkv.weight.chunk(3)
        b_q, b_k, b_v = a.qkv.bias.chunk(3)
        q, k, v = h @ w_q.t() + b_q, h @ w_k.t() + b_k, h @ w_v.t() + b_v
        outs = []
        for head in range(2):
            sl = slice(16 * head, 16 * (head + 1))
            kk = torch.cat([kp[None, :, sl].expand(2, -1, -1), k[..., sl]], dim=1)
            vv = torch.cat([vp_[None, :, sl].expand(2, -1, -1), v[..., sl]], dim=1)
            att = (q[..., sl] @ kk.transpose(1, 2) / 4.0).softmax(-1)
            outs.append(att @ vv)
        y = x + a.proj(torch.cat(outs, dim=-1))
        ref = y + block.mlp(block.norm2(y))
    assert_fp32_close(ours, ref)
    # the same prompts through encode_image reach block 0 only
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = bb.encode_image(images)
        prompted = bb.encode_image(images, VisualPrompts(kv={0: KVPrompt(kp, vp_)}))
    assert not torch.allclose(plain, prompted)


def test_image_normalisation_follows_the_weights(tiny_bb):
    from vlprompt.data.transforms import CLIP_MEAN, CLIP_STD, image_norm, transform_id

    bb = _tiny()
    assert image_norm(bb) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # timm's pretrained config of this model
    assert image_norm(tiny_bb) == (CLIP_MEAN, CLIP_STD)
    assert transform_id("test", 32, *image_norm(bb)) != transform_id("test", 32)


def test_text_side_is_refused():
    bb = _tiny()
    with pytest.raises(ConfigError, match="image-only backbone"):
        bb.tokenize(["a cat"])
    with pytest.raises(ConfigError, match="image-only backbone"):
        vp.build_method("coop", bb, ["a", "b"])


def test_unknown_timm_name():
    with pytest.raises(ConfigError, match="vit_base_patch16_224"):
        vp.load_backbone("timm:vit_bse_patch16_224")


def _images() -> torch.Tensor:
    torch.manual_seed(4)
    return torch.randn(2, 3, 32, 32)


def test_safetensors_and_pickle_state_dicts(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **TINY_KW).eval()
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    with torch.no_grad():
        ref = src.forward_head(src.forward_features(_images()), pre_logits=True)
    st = tmp_path / "vit.safetensors"
    save_file(state, str(st))
    bb = vp.load_backbone(TINY, weights=st, model_kwargs=TINY_KW)
    assert bb.weights_id.startswith("sha256:")
    with torch.no_grad():
        assert_fp32_close(bb.encode_image(_images()), ref)
    pth = tmp_path / "vit.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, pth)
    with pytest.raises(CheckpointError, match="trust"):
        vp.load_backbone(TINY, weights=pth, model_kwargs=TINY_KW)
    bb2 = vp.load_backbone(TINY, weights=pth, model_kwargs=TINY_KW, trust_checkpoint=True)
    with torch.no_grad():
        assert_fp32_close(bb2.encode_image(_images()), ref)
    # a deeper checkpoint into a shallower model: the extra keys are named
    with pytest.raises(CheckpointError, match=r"unexpected keys: blocks\.2\."):
        vp.load_backbone(TINY, weights=st, model_kwargs={**TINY_KW, "depth": 2})


def _write_google_npz(model, path, n_classes: int = 5) -> None:
    """The Google ViT .npz layout (as in ``imagenet21k_ViT-B_16.npz``), written from a timm model."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    d = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    w = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
        "pre_logits/kernel": np.zeros((d, d), np.float32),
        "pre_logits/bias": np.zeros(d, np.float32),
        "head/kernel": np.zeros((d, n_classes), np.float32),
        "head/bias": np.zeros(n_classes, np.float32),
    }
    for i in range(len(model.blocks)):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = sd[b + "norm1.weight"], sd[b + "norm1.bias"]
        w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"] = sd[b + "norm2.weight"], sd[b + "norm2.bias"]
        qkv_w = sd[b + "attn.qkv.weight"].reshape(3, heads, d // heads, d)
        qkv_b = sd[b + "attn.qkv.bias"].reshape(3, heads, d // heads)
        for j, n in enumerate(("query", "key", "value")):
            w[p + f"MultiHeadDotProductAttention_1/{n}/kernel"] = qkv_w[j].transpose(2, 0, 1)  # (D, H, d_h)
            w[p + f"MultiHeadDotProductAttention_1/{n}/bias"] = qkv_b[j]
        w[p + "MultiHeadDotProductAttention_1/out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(heads, d // heads, d)
        w[p + "MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        for r in range(2):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **w)


def test_google_npz(tmp_path):
    src = _tiny(seed=7)
    path = tmp_path / "imagenet21k_ViT-B_16.npz"
    _write_google_npz(src.model, path)
    bb = vp.load_backbone(TINY, weights=path, model_kwargs=TINY_KW, seed=8)
    with torch.no_grad():
        assert_fp32_close(bb.encode_image(_images()), src.encode_image(_images()))
    with pytest.raises(CheckpointError, match="3 blocks vs"):
        vp.load_backbone(TINY, weights=path, model_kwargs={**TINY_KW, "depth": 2})
    with pytest.raises(CheckpointError, match="embedding/kernel"):
        vp.load_backbone(TINY, weights=path, model_kwargs={**TINY_KW, "patch_size": 16})


def test_normalize_and_append_layout():
    bb = _tiny()
    images = _images()
    p = torch.randn(3, 32)
    with torch.no_grad():
        feats = bb.encode_image(images, normalize=True)
        assert torch.allclose(feats.norm(dim=-1), torch.ones(2), atol=1e-5)
        # "append": prompts after the patches; hand-built with timm's modules
        m = bb.model
        x = m._pos_embed(m.patch_embed(images))
        x = torch.cat([x, p.expand(2, -1, -1)], dim=1)
        x = m.norm(m.blocks(m.norm_pre(x)))[:, : x.shape[1] - 3]
        ref = m.forward_head(x, pre_logits=True)
        ours = bb.encode_image(images, VisualPrompts(tokens=p, layout="append"))
    assert_fp32_close(ours, ref)
    with torch.no_grad():
        normed = bb.encode_image(images, VisualPrompts(p, "append"), normalize=True)
    assert torch.allclose(F.normalize(ours, dim=-1), normed, atol=1e-6)
