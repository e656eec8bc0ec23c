"""DePT plug-in: loss and fusion formulas on hand-built tensors, LR groups, class-set handling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vlprompt as vp
from dept_reference import dept_loss, film
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.schedule import build_optimizer, set_epoch_lr
from vlprompt.errors import ConfigError
from vlprompt.methods.dept import fuse_logits

NAMES = ["red circle", "green square", "blue triangle"]


def test_fusion_rules_on_hand_built_logits():
    itm = torch.tensor([[10.0, 20.0, 30.0]])
    cat = torch.tensor([[3.0, 1.0, 0.0]])
    assert torch.allclose(fuse_logits(itm, cat, 0.7, "logits"), 0.3 * itm + 0.7 * cat)
    probs = fuse_logits(itm, cat, 0.7, "probs")
    assert torch.allclose(probs, 0.7 * cat.softmax(-1) + 0.3 * itm.softmax(-1))
    assert torch.allclose(probs.sum(-1), torch.ones(1))
    assert torch.equal(fuse_logits(itm, cat, 0.7, "cat"), cat)


def test_loss_equals_formula(tiny_bb):
    torch.manual_seed(0)
    model = vp.build_method("coop+dept", tiny_bb, NAMES, n_ctx=2, dept_weight=0.7)
    with torch.no_grad():  # make FiLM non-trivial
        model.film_img.gamma.normal_()
        model.film_text.beta.normal_()
    feats = torch.randn(4, tiny_bb.embed_dim)
    y = torch.tensor([2, 0, 1, 2])
    out = model.train_outputs({"features": feats, "labels": y})
    with torch.no_grad():
        text = model.inner.raw_text_features()
        itm = tiny_bb.logit_scale * F.normalize(feats, dim=-1) @ F.normalize(text, dim=-1).t()
        expected = dept_loss(model, itm, feats, text, y, weight=0.7)
        z_img = film(feats, model.film_img) @ model.head.weight.t() + model.head.bias
    assert torch.allclose(out["loss"], expected, atol=1e-5)
    # evaluation on the base classes fuses logits; on other classes only the ITM head is used
    with torch.no_grad():
        fused = model.logits_from_features(feats)
        assert torch.allclose(fused, 0.3 * itm + 0.7 * z_img, atol=1e-4)
        model.set_classnames(["purple cross", "yellow star"])
        new = model.logits_from_features(feats)
        ref_text = F.normalize(model.inner.raw_text_features(), dim=-1)
        assert torch.allclose(new, tiny_bb.logit_scale * F.normalize(feats, dim=-1) @ ref_text.t(), atol=1e-4)
    with pytest.raises(ConfigError):
        model.train_outputs({"features": feats, "labels": y})
    # a subset of the training classes (ImageNet-A/-R of ImageNet) keeps the head, rows sliced
    with torch.no_grad():
        model.set_classnames([NAMES[2], NAMES[0]])
        sub = model.logits_from_features(feats)
        sub_text = F.normalize(model.inner.raw_text_features(), dim=-1)
        sub_itm = tiny_bb.logit_scale * F.normalize(feats, dim=-1) @ sub_text.t()
        assert torch.allclose(sub, 0.3 * sub_itm + 0.7 * z_img[:, [2, 0]], atol=1e-4)


def test_wrapped_regulariser_is_kept(tiny_bb):
    """DePT adds (loss - ce) of the wrapped method, e.g. KgCoOp's knowledge term, unchanged."""
    torch.manual_seed(0)
    model = vp.build_method("coop+dept", tiny_bb, NAMES, n_ctx=2)
    feats = torch.randn(3, tiny_bb.embed_dim)
    y = torch.tensor([0, 1, 2])
    inner_train_outputs = model.inner.train_outputs

    def with_extra(batch):
        out = inner_train_outputs(batch)
        return {**out, "loss": out["ce"] + 5.0}

    model.inner.train_outputs = with_extra
    plain = model.train_outputs({"features": feats, "labels": y})["loss"]
    model.inner.train_outputs = inner_train_outputs
    assert torch.allclose(plain - model.train_outputs({"features": feats, "labels": y})["loss"], torch.tensor(5.0))


def test_head_learning_rate_multiplier_and_warmup(tiny_bb):
    model = vp.build_method("coop+dept", tiny_bb, NAMES, n_ctx=2)
    cfg = TrainConfig(epochs=10, lr=0.0035)
    opt = build_optimizer(model.param_groups(cfg.lr), cfg)
    set_epoch_lr(opt, cfg, 0)
    assert [g["lr"] for g in opt.param_groups] == [1e-5, 1e-5]  # Dassl warm-up: every group at 1e-5
    set_epoch_lr(opt, cfg, 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0035)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.0035 * 6.5)
    head_params = {id(p) for p in [*model.head.parameters(), *model.film_img.parameters(),
                                   *model.film_text.parameters()]}
    assert {id(p) for p in opt.param_groups[1]["params"]} == head_params
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(model.inner.ctx)}


def test_parameter_count_and_options(tiny_bb):
    model = vp.build_method("coop+dept", tiny_bb, NAMES, n_ctx=2)
    d = tiny_bb.embed_dim
    dept_params = sum(p.numel() for p in model.trainable_parameters()) - model.inner.ctx.numel()
    assert dept_params == 2 * 2 * d + (d + 1) * len(NAMES)  # two FiLMs + Linear(d, n_base)
    with pytest.raises(ConfigError, match="dept_weightt"):
        vp.build_method("coop+dept", tiny_bb, NAMES, dept_weightt=0.5)
    with pytest.raises(ConfigError, match="no prompts"):
        vp.build_method("zeroshot+dept", tiny_bb, NAMES)
    with pytest.raises(ConfigError, match="unknown plug-in"):
        vp.build_method("coop+dpt", tiny_bb, NAMES)


def test_fit_and_reload_for_new_classes(tiny_bb, shapes_root, cache_dir, tmp_path):
    task = vp.load_dataset("imagefolder", shapes_root, shots=4, seed=1, subsample="base")
    model = vp.build_method("coop+dept", tiny_bb, task.classnames, n_ctx=2, dept_fusion="probs")
    res = vp.fit(model, task, epochs=2, batch_size=4, cache_dir=cache_dir, run_dir=str(tmp_path / "run"))
    assert res["method"] == "coop+dept" and 0 <= res["acc"] <= 100
    new = vp.load_dataset("imagefolder", shapes_root, subsample="new")
    loaded = vp.load_prompt(tmp_path / "run", tiny_bb, classnames=new.classnames)
    assert loaded.dept.dept_fusion == "probs" and not loaded.head_active
    base = vp.load_prompt(tmp_path / "run", tiny_bb)
    assert base.head_active
    assert vp.evaluate(base, task.test, cache_dir=cache_dir) == pytest.approx(res["acc"])
