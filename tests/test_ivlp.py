"""IVLP: text and image features against block-by-block open_clip computations of the reference's prompt
insertion, independence of the two prompt sets, language-only variant, presets, I/O, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import vlprompt as vp
from dept_reference import dept_loss
from numerics import assert_fp32_close
from vlprompt.cli import main
from vlprompt.errors import ConfigError
from vlprompt.methods.ivlp import IVLPConfig
from vlprompt.presets import resolve_preset

NAMES = ["red circle", "green_square", "blue triangle"]
DEPTH_T, DEPTH_V = 3, 4  # tiny-clip: 3 text / 4 vision blocks; different depths: the towers are independent


def _build(bb, **opts):
    torch.manual_seed(0)
    m = vp.build_method("ivlp", bb, NAMES, **{"prompt_depth_text": DEPTH_T, "prompt_depth_vision": DEPTH_V, **opts})
    with torch.no_grad():  # P_0 starts as "a photo"; move it so the check does not depend on the init
        m.ctx.add_(0.1 * torch.randn_like(m.ctx))
    return m


@pytest.fixture()
def model(tiny_bb):
    return _build(tiny_bb)


def _hand_text(bb, model, name: str, depth: int) -> torch.Tensor:
    """Reference VLPromptLearner + TextEncoder: "<ctx_init> <name>." with positions 1..n replaced by P_0,
    then (ResidualAttentionBlock_IVLP, text layer i >= 1, i < depth) by that block's own P_i."""
    m, n = bb.model, model.n_ctx
    tok = bb.tokenize([f"a photo of a {name.replace('_', ' ')}."])
    eot = int(tok.argmax())
    x = m.token_embedding(tok).clone()
    x = torch.cat([x[:, :1], model.ctx.unsqueeze(0), x[:, 1 + n :]], dim=1)
    x = x + m.positional_embedding
    for i, blk in enumerate(m.transformer.resblocks):
        if 1 <= i < depth:
            x = torch.cat([x[:, :1], model.deep_text_ctx[i - 1].unsqueeze(0), x[:, 1 + n :]], dim=1)
        x = blk(x, attn_mask=m.attn_mask)
    return m.ln_final(x)[0, eot] @ m.text_projection


def _hand_image(bb, model, images: torch.Tensor, depth: int) -> torch.Tensor:
    """Reference VisionTransformer: [CLS, patches] + pos-emb, VPT appended, ln_pre; before block i >= 1
    (i < depth) the last n_v tokens are dropped and that block's own VPT appended; CLS → ln_post → proj."""
    v, b = bb.model.visual, images.shape[0]
    n = model.visual_ctx.shape[0]
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(b, 1, -1), x], dim=1) + v.positional_embedding
    x = torch.cat([x, model.visual_ctx.expand(b, -1, -1)], dim=1)
    x = v.ln_pre(x)
    for i, blk in enumerate(v.transformer.resblocks):
        if 1 <= i < depth:
            x = torch.cat([x[:, :-n], model.deep_visual_ctx[i - 1].expand(b, -1, -1)], dim=1)
        x = blk(x)
    return v.ln_post(x[:, 0]) @ v.proj


def test_defaults_and_shapes(tiny_bb, model):
    cfg = IVLPConfig()
    assert (cfg.n_ctx_text, cfg.n_ctx_vision, cfg.ctx_init, cfg.prompt_depth_text, cfg.prompt_depth_vision) == (
        2, 2, "a photo of a", 12, 12)
    w, vw = tiny_bb.text_width, tiny_bb.vision_width
    fresh = vp.build_method("ivlp", tiny_bb, NAMES, prompt_depth_text=DEPTH_T, prompt_depth_vision=DEPTH_V)
    tok = tiny_bb.tokenize(["a photo of a"])
    with torch.no_grad():
        assert torch.equal(fresh.ctx.detach(), tiny_bb.model.token_embedding(tok)[0, 1:3])  # "a photo"
    assert model.deep_text_ctx.shape == (DEPTH_T - 1, 2, w)
    assert model.visual_ctx.shape == (2, vw) and model.deep_visual_ctx.shape == (DEPTH_V - 1, 2, vw)
    for p in (fresh.deep_text_ctx, fresh.visual_ctx, fresh.deep_visual_ctx):
        assert abs(float(p.detach().std()) - 0.02) < 0.006
    assert sum(p.numel() for p in model.trainable_parameters()) == DEPTH_T * 2 * w + DEPTH_V * 2 * vw
    assert model.plan.steps == "images" and not model.uses_image_features


def test_text_and_image_features_and_logits_equal_independent_computation(tiny_bb, model):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        text = model.raw_text_features()
        ref_text = torch.stack([_hand_text(tiny_bb, model, n, DEPTH_T) for n in NAMES])
        img = model.encode_images(images)
        ref_img = _hand_image(tiny_bb, model, images, DEPTH_V)
        logits = model(images)
        ref_logits = tiny_bb.model.logit_scale.exp() * F.normalize(ref_img, dim=-1) @ F.normalize(ref_text, dim=-1).t()
        plain = tiny_bb.encode_image(images)
    assert_fp32_close(text, ref_text)
    assert_fp32_close(img, ref_img)
    assert_fp32_close(logits, ref_logits)
    assert not torch.allclose(img, plain, atol=1e-3)  # the visual prompts do something


@pytest.mark.parametrize("share_prefix", [True, False])
def test_shallower_vision_and_full_text_path(tiny_bb, share_prefix):
    m = _build(tiny_bb, prompt_depth_text=2, prompt_depth_vision=1, n_ctx_vision=3, share_prefix=share_prefix)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_fp32_close(m.raw_text_features(), torch.stack([_hand_text(tiny_bb, m, n, 2) for n in NAMES]))
        assert_fp32_close(m.encode_images(images), _hand_image(tiny_bb, m, images, 1))


def test_language_only_keeps_the_image_tower_frozen(tiny_bb):
    m = _build(tiny_bb, n_ctx_text=4, n_ctx_vision=0, prompt_depth_vision=0)
    assert m.visual_ctx is None and m.plan.steps == "image-features" and m.uses_image_features
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m.encode_images(images), tiny_bb.encode_image(images))
        assert_fp32_close(m.raw_text_features(), torch.stack([_hand_text(tiny_bb, m, n, DEPTH_T) for n in NAMES]))
    feats = tiny_bb.encode_image(images).detach()
    out = m.train_outputs({"features": feats, "labels": torch.tensor([0, 1])})
    out["loss"].backward()
    assert m.ctx.grad.abs().sum() > 0 and m.deep_text_ctx.grad.abs().sum() > 0


def test_gradients_reach_each_tower_only_through_its_own_prompts(tiny_bb, model):
    torch.manual_seed(2)
    images = torch.randn(4, 3, 64, 64)
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        text = model.text_features()
    F.cross_entropy(model(images, text), labels).backward()  # text branch detached: no coupling to the text
    assert model.ctx.grad is None and model.deep_text_ctx.grad is None
    assert model.visual_ctx.grad.abs().sum() > 0
    assert all(model.deep_visual_ctx.grad[k].abs().sum() > 0 for k in range(DEPTH_V - 1))
    model.zero_grad(set_to_none=True)
    out = model.train_outputs({"images": images, "labels": labels})
    out["loss"].backward()
    for p in (model.ctx, model.deep_text_ctx, model.visual_ctx, model.deep_visual_ctx):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_bb.parameters())
    with pytest.raises(ConfigError, match="cached image features"):
        model.train_outputs({"features": torch.randn(4, tiny_bb.embed_dim), "labels": labels})


def test_refusals(tiny_bb):
    rn = vp.load_backbone("tiny-clip-rn")
    with pytest.raises(ConfigError, match="ViT"):
        vp.build_method("ivlp", rn, NAMES, prompt_depth_text=1, prompt_depth_vision=1)
    with pytest.raises(ConfigError, match="prompt_depth_text=12 exceeds"):
        vp.build_method("ivlp", tiny_bb, NAMES)
    with pytest.raises(ConfigError, match="prompt_depth_vision=5 exceeds"):
        vp.build_method("ivlp", tiny_bb, NAMES, prompt_depth_text=1, prompt_depth_vision=5)
    with pytest.raises(ConfigError, match="prompt_depth_text must be >= 1"):
        vp.build_method("ivlp", tiny_bb, NAMES, prompt_depth_text=0)
    with pytest.raises(ConfigError, match="n_ctx_vision must be >= 1"):
        vp.build_method("ivlp", tiny_bb, NAMES, prompt_depth_text=1, prompt_depth_vision=1, n_ctx_vision=0)
    with pytest.raises(ConfigError, match="exceeds the 4 tokens"):
        vp.build_method("ivlp", tiny_bb, NAMES, n_ctx_text=5, prompt_depth_text=1, prompt_depth_vision=1)


def test_parameter_count_on_vit_b16_dims_and_presets():
    bb = vp.load_backbone("ViT-B-16")  # random weights; only shapes matter
    m = vp.build_method("ivlp", bb, NAMES)
    assert sum(p.numel() for p in m.trainable_parameters()) == 12 * 2 * 512 + 12 * 2 * 768 == 30_720
    paper = resolve_preset("ivlp", "paper")
    assert paper["train"] == {"epochs": 5, "batch_size": 4, "lr": 0.0035}
    assert paper["method"]["prompt_depth_text"] == paper["method"]["prompt_depth_vision"] == 12
    lang = resolve_preset("ivlp", "paper-language")
    assert lang["method"]["prompt_depth_vision"] == 0 and lang["train"]["lr"] == 0.0025
    assert resolve_preset("ivlp", "reference")["train"]["precision"] == "fp16-gpu"


def test_fit_save_load_round_trip(tiny_bb, shapes_root, cache_dir, tmp_path):
    task = vp.load_dataset("imagefolder", shapes_root, shots=4, seed=1)
    vp.seed_everything(1)
    model = vp.build_method("ivlp", tiny_bb, task.classnames, prompt_depth_text=2, prompt_depth_vision=2)
    before = [p.detach().clone() for p in model.trainable_parameters()]
    res = vp.fit(model, task, epochs=1, lr=0.0035, batch_size=4, precision="fp32", cache_dir=cache_dir,
                 run_dir=str(tmp_path / "run"))
    assert math.isfinite(res["final_loss"]) and 0 <= res["acc"] <= 100
    assert all(not torch.equal(a, p.detach()) for a, p in zip(before, model.trainable_parameters(), strict=True))
    loaded = vp.load_prompt(tmp_path / "run", tiny_bb)
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.prompt_state_dict().items(), loaded.prompt_state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))


def test_dept_wraps_ivlp(tiny_bb, shapes_root, cache_dir):
    task = vp.load_dataset("imagefolder", shapes_root, shots=4, seed=1, subsample="base")
    vp.seed_everything(1)
    model = vp.build_method("ivlp+dept", tiny_bb, task.classnames, prompt_depth_text=2, prompt_depth_vision=2)
    assert model.plan == model.inner.plan
    images = torch.randn(4, 3, 64, 64)
    labels = torch.tensor([0, 1, 2, 0])
    out = model.train_outputs({"images": images, "labels": labels})
    with torch.no_grad():
        img = model.inner.encode_images(images)
        expected = dept_loss(model, model.inner.logits_from_features(img), img, model.inner.raw_text_features(),
                             labels, weight=0.7)
    assert_fp32_close(out["loss"].detach(), expected)
    res = vp.fit(model, task, epochs=1, lr=0.0035, batch_size=4, precision="fp32", cache_dir=cache_dir)
    assert math.isfinite(res["final_loss"]) and res["method"] == "ivlp+dept"


def test_cli_methods_and_one_epoch_train(shapes_root, cache_dir, tmp_path, capsys):
    assert main(["methods", "ivlp"]) in (None, 0)
    out = capsys.readouterr().out
    assert "prompt_depth_vision = 12   [int]" in out and "n_ctx_text = 2   [int]" in out and "paper-language:" in out
    run = tmp_path / "run"
    assert main(["train", "--method", "ivlp", "--dataset", "imagefolder", "--root", str(shapes_root),
                 "--shots", "4", "--out", str(run), "--epochs", "1", "--batch-size", "4", "--lr", "0.0035",
                 "--cache-dir", cache_dir, "-o", "prompt_depth_text=3", "-o", "prompt_depth_vision=4"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == "ivlp" and results["epochs"] == 1
    capsys.readouterr()
    assert main(["train", "--method", "ivlp", "--dataset", "imagefolder", "--root", str(shapes_root),
                 "--out", str(tmp_path / "bad")]) == 2  # depth 12 on tiny-clip
    assert "prompt_depth_text=12 exceeds" in capsys.readouterr().err


def test_language_only_trains_on_cached_features_and_round_trips(tiny_bb, shapes_root, cache_dir, tmp_path):
    task = vp.load_dataset("imagefolder", shapes_root, shots=4, seed=1)
    vp.seed_everything(1)
    model = vp.build_method("ivlp", tiny_bb, task.classnames, n_ctx_text=4, n_ctx_vision=0, prompt_depth_text=3,
                            prompt_depth_vision=0)
    res = vp.fit(model, task, epochs=1, lr=0.0025, batch_size=4, feature_views=2, cache_dir=cache_dir,
                 run_dir=str(tmp_path / "run"))
    assert res["feature_views"] == 2 and math.isfinite(res["final_loss"])  # the cached-feature path
    loaded = vp.load_prompt(tmp_path / "run", tiny_bb)
    assert loaded.visual_ctx is None and set(loaded.prompt_state_dict()) == {"ctx", "deep_text_ctx"}
    assert torch.equal(loaded.deep_text_ctx, model.deep_text_ctx)
    assert vp.evaluate(loaded, task.test, cache_dir=cache_dir) == pytest.approx(res["acc"])
