"""timm Swin backbone: equals timm's forward, window prompts against a per-window hand computation, VPT on it."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import vlprompt as vp
from numerics import assert_fp32_close
from vlprompt.backbones.base import VisualPrompts
from vlprompt.errors import CheckpointError, ConfigError

NAME = "timm:swin_tiny_patch4_window7_224"
#: 8×8 stage-1 grid in 2×2 windows of 4×4 (block 1 shifted, so the shift mask is exercised), 2 stages.
KW = {"img_size": 32, "window_size": 4, "embed_dim": 16, "depths": (2, 2), "num_heads": (2, 4)}
NAMES = ["red circle", "green square", "blue triangle"]


@pytest.fixture(scope="module")
def swin_bb():
    bb = vp.load_backbone(NAME, model_kwargs=KW, seed=0)
    with torch.no_grad():  # non-zero relative position biases, so dropping them for prompts matters
        for n, p in bb.model.named_parameters():
            if "relative_position_bias_table" in n:
                p.normal_(0, 0.5)
    return bb


def test_equals_timm_and_zero_prompts(swin_bb):
    images = torch.randn(2, 3, 32, 32)
    m = swin_bb.model
    with torch.no_grad():
        ref = m.forward_head(m.forward_features(images), pre_logits=True)
        assert_fp32_close(swin_bb.encode_image(images), ref)
        assert_fp32_close(m(images), ref)
        # zero prompt tokens through the prompted window path
        zero = swin_bb.encode_image(images, VisualPrompts(tokens=torch.zeros(0, 16), layout="after_cls"))
        assert_fp32_close(zero, ref)
    assert swin_bb.embed_dim == 32 and swin_bb.vision_width == 16 and swin_bb.n_vision_layers == 4


def _hand_block(block, x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Swin block with prompts, by explicit loops over images and windows (no batching tricks)."""
    b, h, w, c = x.shape
    ws, sh = block.window_size, block.shift_size
    attn = block.attn
    heads = attn.num_heads
    hx = torch.roll(block.norm1(x), shifts=(-sh[0], -sh[1]), dims=(1, 2))
    hp = block.norm1(p)
    bias = attn._get_rel_pos_bias()[0]  # (heads, A, A)
    # shift mask rebuilt from the region labels of the shifted grid, as in the Swin paper
    img = torch.zeros(h, w)
    cnt = 0
    for hs in (slice(0, -ws[0]), slice(-ws[0], -sh[0]), slice(-sh[0], None)):
        for wsl in (slice(0, -ws[1]), slice(-ws[1], -sh[1]), slice(-sh[1], None)):
            img[hs, wsl] = cnt
            cnt += 1
    out_x = torch.zeros_like(hx)
    out_p = torch.zeros_like(p)
    n_win = (h // ws[0]) * (w // ws[1])
    for i in range(b):
        for r in range(0, h, ws[0]):
            for s in range(0, w, ws[1]):
                win = hx[i, r:r + ws[0], s:s + ws[1]].reshape(-1, c)
                lab = img[r:r + ws[0], s:s + ws[1]].reshape(-1) if any(sh) else torch.zeros(ws[0] * ws[1])
                t = torch.cat([hp[i], win])
                n_p = hp.shape[1]
                q, k, v = attn.qkv(t).reshape(len(t), 3, heads, -1).permute(1, 2, 0, 3)
                logits = q @ k.transpose(-1, -2) * attn.scale
                add = torch.zeros(heads, len(t), len(t))
                add[:, n_p:, n_p:] = bias + torch.where(lab[:, None] == lab[None, :], 0.0, -100.0)
                o = (logits + add).softmax(-1) @ v
                o = attn.proj(o.transpose(0, 1).reshape(len(t), -1))
                out_p[i] += o[:n_p] / n_win
                out_x[i, r:r + ws[0], s:s + ws[1]] = o[n_p:].reshape(ws[0], ws[1], c)
    x = x + torch.roll(out_x, shifts=sh, dims=(1, 2))
    p = p + out_p
    return x + block.mlp(block.norm2(x)), p + block.mlp(block.norm2(p))


def test_window_prompts_equal_hand_computation(swin_bb):
    torch.manual_seed(1)
    m = swin_bb.model
    images = torch.randn(2, 3, 32, 32)
    tokens = torch.randn(3, 16)
    with torch.no_grad():
        x = m.patch_embed(images)
        p = tokens.expand(2, -1, -1)
        for block in m.layers[0].blocks:
            x, p = _hand_block(block, x, p)
        ref = m.forward_head(m.norm(m.layers[1](x)), pre_logits=True)
        ours = swin_bb.encode_image(images, VisualPrompts(tokens=tokens, layout="after_cls"))
        plain = swin_bb.encode_image(images)
    assert_fp32_close(ours, ref)
    assert not torch.allclose(ours, plain, atol=1e-3)


def test_vpt_shallow_and_linear_probe_on_swin(swin_bb):
    torch.manual_seed(2)
    model = vp.build_method("vpt-shallow", swin_bb, NAMES, num_tokens=3)
    assert model.prompt.shape == (3, 16) and model.head.in_features == 32
    out = model.loss({"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 0])})
    out["loss"].backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {"prompt", "head.weight", "head.bias"}
    assert all(p.grad is None for p in swin_bb.parameters())
    probe = vp.build_method("linear-probe", swin_bb, NAMES)
    feats = swin_bb.encode_image(torch.randn(6, 3, 32, 32))
    probe.fit_features((feats, torch.tensor([0, 1, 2, 0, 1, 2])), (feats, torch.tensor([0, 1, 2, 0, 1, 2])))
    assert probe(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    for name in ("vpt-deep", "e2vpt"):
        with pytest.raises(ConfigError, match="on Swin use vpt-shallow"):
            vp.build_method(name, swin_bb, NAMES)
    with pytest.raises(ConfigError, match="shallow window prompts only"):
        swin_bb.encode_image(torch.randn(1, 3, 32, 32),
                             VisualPrompts(tokens=torch.zeros(1, 16), deep={1: torch.zeros(1, 16)}))


def test_swin_state_dict_round_trip_and_errors(tmp_path):
    torch.manual_seed(3)
    ref = timm.create_model(NAME[5:], pretrained=False, num_classes=7, **KW).eval()
    torch.save({"model": ref.state_dict()}, tmp_path / "swin.pth")
    bb = vp.load_backbone(NAME, weights=tmp_path / "swin.pth", trust_checkpoint=True, model_kwargs=KW)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_fp32_close(bb.encode_image(images), ref.forward_head(ref.forward_features(images), True))
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("layers.1.blocks.1.")}
    torch.save({"model": sd}, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: layers\.1\.blocks\.1\."):
        vp.load_backbone(NAME, weights=tmp_path / "cut.pth", trust_checkpoint=True, model_kwargs=KW)
    assert F.normalize(bb.encode_image(images, normalize=True), dim=-1).shape == (2, 32)
