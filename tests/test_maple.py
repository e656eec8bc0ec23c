"""MaPLe: text and image features against block-by-block open_clip computations, coupling, limits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vlprompt as vp
from numerics import assert_fp32_close
from vlprompt.errors import ConfigError
from vlprompt.methods.maple import MaPLeConfig

NAMES = ["red circle", "green_square", "blue triangle"]
DEPTH = 3  # tiny-clip: 3 text / 4 vision blocks


@pytest.fixture()
def model(tiny_bb):
    torch.manual_seed(0)
    m = vp.build_method("maple", tiny_bb, NAMES, prompt_depth=DEPTH)
    with torch.no_grad():  # P_0 starts as "a photo"; move it so the check does not depend on the init
        m.ctx.add_(0.1 * torch.randn_like(m.ctx))
    return m


def _hand_text(bb, model, name: str) -> torch.Tensor:
    """"a photo of a <name>." with positions 1..n overwritten by P_0, then by P_k before block k."""
    m, n = bb.model, model.n_ctx
    tok = bb.tokenize([f"a photo of a {name.replace('_', ' ')}."])
    eot = int(tok.argmax())
    x = m.token_embedding(tok).clone()
    x[:, 1 : 1 + n] = model.ctx
    x = x + m.positional_embedding
    for i, blk in enumerate(m.transformer.resblocks):
        if 1 <= i < DEPTH:
            x = x.clone()
            x[:, 1 : 1 + n] = model.deep_ctx[i - 1]
        x = blk(x, attn_mask=m.attn_mask)
    return m.ln_final(x)[0, eot] @ m.text_projection


def _hand_image(bb, model, images: torch.Tensor) -> torch.Tensor:
    """[CLS, patches] + pos-emb, V_0 = F_0(P_0) appended, ln_pre, last n tokens = F_k(P_k) before block k."""
    v, n, b = bb.model.visual, model.n_ctx, images.shape[0]
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(b, 1, -1), x], dim=1) + v.positional_embedding
    x = torch.cat([x, model.couplings[0](model.ctx).expand(b, -1, -1)], dim=1)
    x = v.ln_pre(x)
    for i, blk in enumerate(v.transformer.resblocks):
        if 1 <= i < DEPTH:
            x = torch.cat([x[:, :-n], model.couplings[i](model.deep_ctx[i - 1]).expand(b, -1, -1)], dim=1)
        x = blk(x)
    return v.ln_post(x[:, 0]) @ v.proj


def test_defaults_and_shapes(tiny_bb):
    cfg = MaPLeConfig()
    assert (cfg.n_ctx, cfg.ctx_init, cfg.prompt_depth) == (2, "a photo of a", 9)
    m = vp.build_method("maple", tiny_bb, NAMES, prompt_depth=DEPTH)
    w, vw = tiny_bb.text_width, tiny_bb.vision_width
    assert m.ctx.shape == (2, w) and m.deep_ctx.shape == (DEPTH - 1, 2, w)
    assert len(m.couplings) == DEPTH
    tok = tiny_bb.tokenize(["a photo of a"])
    with torch.no_grad():
        assert torch.equal(m.ctx.detach(), tiny_bb.model.token_embedding(tok)[0, 1:3])  # "a photo"
    assert abs(float(m.deep_ctx.detach().std()) - 0.02) < 0.005
    assert sum(p.numel() for p in m.trainable_parameters()) == 2 * w + (DEPTH - 1) * 2 * w + DEPTH * (w * vw + vw)
    assert not m.uses_image_features


def test_text_features_equal_independent_computation(tiny_bb, model):
    with torch.no_grad():
        ours = model.raw_text_features()
        ref = torch.stack([_hand_text(tiny_bb, model, n) for n in NAMES])
    assert_fp32_close(ours, ref)


def test_image_features_equal_independent_computation(tiny_bb, model):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.encode_images(images)
        ref = _hand_image(tiny_bb, model, images)
        plain = tiny_bb.encode_image(images)
    assert_fp32_close(ours, ref)
    assert not torch.allclose(ours, plain, atol=1e-3)  # the prompts do something


def test_forward_reuses_given_text_features(tiny_bb, model):
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        text = model.eval_text_features()
        expected = model(images)

        def fail():
            raise AssertionError("text re-encoded")

        model.raw_text_features = fail
        got = model(images, text)
    assert torch.allclose(got, expected, atol=1e-6)


def test_image_loss_reaches_couplings_and_text_prompts(tiny_bb, model):
    torch.manual_seed(2)
    images = torch.randn(4, 3, 64, 64)
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        text = model.text_features()
    F.cross_entropy(model(images, text), labels).backward()  # the text branch is detached
    for k, layer in enumerate(model.couplings):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0, k
    assert model.ctx.grad.abs().sum() > 0  # through F_0 only
    assert all(model.deep_ctx.grad[k].abs().sum() > 0 for k in range(DEPTH - 1))  # through F_k
    model.zero_grad()
    out = model.train_outputs({"images": images, "labels": labels})
    assert set(out) >= {"image", "text", "logits", "ce", "loss"} and torch.equal(out["loss"], out["ce"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.train_outputs({"images": images, "labels": labels})
    low_loss, loss = float(low["loss"].detach()), float(out["loss"].detach())
    assert math.isfinite(low_loss) and abs(low_loss - loss) < 0.1
    with pytest.raises(ConfigError, match="cached image features"):
        model.train_outputs({"features": torch.randn(4, tiny_bb.embed_dim), "labels": labels})


def test_refusals(tiny_bb):
    rn = vp.load_backbone("tiny-clip-rn")
    with pytest.raises(ConfigError, match="ViT"):
        vp.build_method("maple", rn, NAMES, prompt_depth=1)
    with pytest.raises(ConfigError, match="prompt_depth=4 exceeds"):
        vp.build_method("maple", tiny_bb, NAMES, prompt_depth=4)
    with pytest.raises(ConfigError, match="prompt_depth"):
        vp.build_method("maple", tiny_bb, NAMES, prompt_depth=0)
    with pytest.raises(ConfigError, match="exceeds the 4 tokens"):
        vp.build_method("maple", tiny_bb, NAMES, n_ctx=5, prompt_depth=2)
    rand = vp.build_method("maple", tiny_bb, NAMES, n_ctx=5, ctx_init="", prompt_depth=2)
    assert rand.ctx.shape == (5, tiny_bb.text_width) and rand.text_features().shape == (3, tiny_bb.embed_dim)


def test_parameter_count_on_vit_b16_dims():
    bb = vp.load_backbone("ViT-B-16")  # random weights; only shapes matter
    m = vp.build_method("maple", bb, NAMES)
    assert sum(p.numel() for p in m.trainable_parameters()) == 1_024 + 8_192 + 9 * 393_984 == 3_555_072


def test_one_epoch_fit_reads_images(tiny_bb, shapes_root, cache_dir):
    task = vp.load_dataset("imagefolder", shapes_root, shots=4, seed=1)
    vp.seed_everything(1)
    model = vp.build_method("maple", tiny_bb, task.classnames, prompt_depth=2)
    before = [p.detach().clone() for p in model.trainable_parameters()]
    res = vp.fit(model, task, epochs=1, lr=0.0035, batch_size=4, precision="fp32", feature_views=2,
                 cache_dir=cache_dir)
    assert res["feature_views"] is None  # the image path: cached views do not apply
    assert res["trainable_params"] == sum(p.numel() for p in before)
    assert math.isfinite(res["final_loss"]) and 0 <= res["acc"] <= 100
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, model.trainable_parameters(), strict=True))


def test_prompt_depth_beyond_the_backbone_fails_before_the_data_is_loaded(tiny_bb, tmp_path, monkeypatch):
    from vlprompt.errors import ConfigError
    from vlprompt.protocols import runs

    def no_data(*a, **k):
        raise AssertionError("the dataset was loaded before the depth check")

    monkeypatch.setattr(runs, "load_dataset", no_data)
    monkeypatch.setattr(runs, "_BACKBONES", {("tiny-clip", None, False, "cpu"): tiny_bb})
    top = min(tiny_bb.n_text_layers, tiny_bb.n_vision_layers)
    for method in ("maple", "dapt", "dapt-g"):
        spec = runs.RunSpec(method, "imagefolder", str(tmp_path), out=str(tmp_path / method), device="cpu",
                            method_options={"prompt_depth": 9})
        with pytest.raises(ConfigError, match=f"set prompt_depth to at most {top} .CLI: -o prompt_depth={top}."):
            runs.train_run(spec)
