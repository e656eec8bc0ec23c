"""CLIP-Adapter: logits against a hand computation of the reference's forward, gradients, presets, I/O, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

import vlprompt as vp
from dept_reference import dept_loss
from numerics import assert_fp32_close
from vlprompt.cli import main
from vlprompt.errors import ConfigError
from vlprompt.methods.clip_adapter import CLIPAdapterConfig
from vlprompt.presets import resolve_preset

NAMES = ["red circle", "green_square", "blue triangle"]
TEMPLATE = "a photo of a {}, a type of shape."


@pytest.fixture()
def model(tiny_bb):
    torch.manual_seed(0)
    return vp.build_method("clip-adapter", tiny_bb, NAMES, template=TEMPLATE)


def _hand_logits(bb, model, images: torch.Tensor, ratio: float) -> torch.Tensor:
    """The reference's CustomCLIP.forward, written out: adapter mix on the raw CLIP image feature, frozen
    hand-template text features (class names with underscores as spaces), CLIP's logit scale."""
    clip = bb.model
    img = clip.encode_image(images)
    w1, w2 = model.adapter[0].weight, model.adapter[2].weight
    a = torch.clamp(torch.clamp(img @ w1.t(), min=0) @ w2.t(), min=0)
    mixed = ratio * a + (1 - ratio) * img
    tok = bb.tokenize([TEMPLATE.format(n.replace("_", " ")) for n in NAMES])
    text = clip.encode_text(tok)
    mixed = mixed / mixed.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return clip.logit_scale.exp() * mixed @ text.t()


def test_defaults_and_shapes(tiny_bb, model):
    cfg = CLIPAdapterConfig()
    assert (cfg.ratio, cfg.reduction) == (0.2, 4)
    d = tiny_bb.embed_dim
    assert model.adapter[0].weight.shape == (d // 4, d) and model.adapter[2].weight.shape == (d, d // 4)
    assert model.adapter[0].bias is None and model.adapter[2].bias is None
    assert sum(p.numel() for p in model.trainable_parameters()) == 2 * d * (d // 4)
    assert model.uses_image_features and model.plan.steps == "image-features"


@pytest.mark.parametrize("ratio", [0.2, 0.6])
def test_logits_equal_the_reference_formula(tiny_bb, ratio):
    torch.manual_seed(3)
    m = vp.build_method("clip-adapter", tiny_bb, NAMES, template=TEMPLATE, ratio=ratio)
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ours = m(images)
        ref = _hand_logits(tiny_bb, m, images, ratio)
        plain = vp.build_method("zeroshot", tiny_bb, NAMES, template=TEMPLATE)(images)
    assert_fp32_close(ours, ref)
    assert not torch.allclose(ours, plain, atol=1e-3)  # the adapter does something


def test_ratio_zero_is_zero_shot_clip(tiny_bb):
    images = torch.randn(2, 3, 64, 64)
    m = vp.build_method("clip-adapter", tiny_bb, NAMES, template=TEMPLATE, ratio=0.0)
    with torch.no_grad():
        zs = vp.build_method("zeroshot", tiny_bb, NAMES, template=TEMPLATE)(images)
        assert_fp32_close(m(images), zs)


def test_gradients_reach_only_the_adapter(tiny_bb, model):
    torch.manual_seed(2)
    feats = tiny_bb.encode_image(torch.randn(4, 3, 64, 64)).detach()
    labels = torch.tensor([0, 1, 2, 0])
    out = model.train_outputs({"features": feats, "labels": labels})
    assert torch.equal(out["image"], feats)  # the frozen feature: what evaluation hands logits_from_features
    out["loss"].backward()
    for p in model.adapter.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_bb.parameters())
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.adapter.parameters()}


def test_refusals(tiny_bb):
    with pytest.raises(ConfigError, match="ratio"):
        vp.build_method("clip-adapter", tiny_bb, NAMES, ratio=1.5)
    with pytest.raises(ConfigError, match="reduction"):
        vp.build_method("clip-adapter", tiny_bb, NAMES, reduction=0)
    with pytest.raises(ConfigError, match="template"):
        vp.build_method("clip-adapter", tiny_bb, NAMES, template="no slot")


def test_presets():
    paper = resolve_preset("clip-adapter", "paper", shots=16, dataset="oxford_pets")
    assert paper["train"] == {"batch_size": 32, "lr": 0.002, "epochs": 200}
    assert resolve_preset("clip-adapter", "paper", shots=1, dataset="x")["train"]["epochs"] == 50
    ref = resolve_preset("clip-adapter", "reference", shots=16, dataset="x")
    assert ref["train"]["precision"] == "fp32" and ref["train"]["feature_views"] == 0


def test_fit_save_load_round_trip(tiny_bb, shapes_root, cache_dir, tmp_path):
    task = vp.load_dataset("imagefolder", shapes_root, shots=4, seed=1)
    vp.seed_everything(1)
    model = vp.build_method("clip-adapter", tiny_bb, task.classnames, template=TEMPLATE)
    before = [p.detach().clone() for p in model.trainable_parameters()]
    res = vp.fit(model, task, epochs=2, lr=0.002, batch_size=4, cache_dir=cache_dir, run_dir=str(tmp_path / "run"))
    assert math.isfinite(res["final_loss"]) and 0 <= res["acc"] <= 100
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, model.trainable_parameters(), strict=True))
    loaded = vp.load_prompt(tmp_path / "run", tiny_bb)
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.prompt_state_dict().items(), loaded.prompt_state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
    assert vp.evaluate(loaded, task.test, cache_dir=cache_dir) == pytest.approx(res["acc"])


def test_dept_wraps_clip_adapter(tiny_bb, shapes_root, cache_dir):
    task = vp.load_dataset("imagefolder", shapes_root, shots=4, seed=1, subsample="base")
    vp.seed_everything(1)
    model = vp.build_method("clip-adapter+dept", tiny_bb, task.classnames)
    feats = tiny_bb.encode_image(torch.randn(4, 3, 64, 64)).detach()
    labels = torch.tensor([0, 1, 2, 0])
    out = model.train_outputs({"features": feats, "labels": labels})
    expected = dept_loss(model, model.inner.logits_from_features(feats), feats, model.inner.class_features, labels,
                         weight=0.7)
    assert_fp32_close(out["loss"], expected)
    res = vp.fit(model, task, epochs=1, lr=0.002, batch_size=4, cache_dir=cache_dir)
    assert math.isfinite(res["final_loss"]) and res["method"] == "clip-adapter+dept"


def test_cli_methods_and_one_epoch_train(shapes_root, cache_dir, tmp_path, capsys):
    assert main(["methods", "clip-adapter"]) in (None, 0)
    out = capsys.readouterr().out
    assert "ratio = 0.2   [float]" in out and "reduction = 4   [int]" in out and "paper:" in out
    run = tmp_path / "run"
    assert main(["train", "--method", "clip-adapter", "--dataset", "imagefolder", "--root", str(shapes_root),
                 "--shots", "4", "--out", str(run), "--epochs", "1", "--batch-size", "4", "--lr", "0.002",
                 "--cache-dir", cache_dir]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == "clip-adapter" and results["epochs"] == 1
    assert main(["train", "--method", "clip-adapter", "--dataset", "imagefolder", "--root", str(shapes_root),
                 "--out", str(tmp_path / "bad"), "-o", "ratio=2"]) == 2
