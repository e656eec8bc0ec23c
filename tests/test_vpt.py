"""VPT-shallow / VPT-deep: layout, deep replacement vs hand-built sequences, gradients, fit end to end."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vlprompt as vp
from numerics import assert_fp32_close
from vlprompt.errors import ConfigError
from vlprompt.methods.vpt import HEAD_BIAS, prompt_init_bound

NAMES = ["red circle", "green square", "blue triangle"]
TINY = "timm:vit_tiny_patch16_224"
TINY_KW = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}


@pytest.fixture(scope="module")
def timm_bb():
    return vp.load_backbone(TINY, model_kwargs=TINY_KW)


def _timm_reference(bb, model, images: torch.Tensor, deep: bool) -> torch.Tensor:
    """VPT by hand with timm's modules: [CLS; P_0; E_0], overwrite slots 1..p before each block."""
    m = bb.model
    p = model.config.num_tokens
    x = m._pos_embed(m.patch_embed(images))
    b = x.shape[0]
    x = torch.cat([x[:, :1], model.prompt.expand(b, -1, -1), x[:, 1:]], dim=1)
    x = m.norm_pre(x)
    for i, block in enumerate(m.blocks):
        if deep and i >= 1:
            x = torch.cat([x[:, :1], model.deep_prompt[i - 1].expand(b, -1, -1), x[:, 1 + p:]], dim=1)
        x = block(x)
    cls = m.norm(x)[:, 0]
    return cls @ model.head.weight.t() + model.head.bias


def _clip_reference(bb, model, images: torch.Tensor, deep: bool) -> torch.Tensor:
    """The same on open_clip's ViT modules (conv1, class/positional embedding, ln_pre, resblocks, ln_post, proj)."""
    feat = _clip_feature(bb, model, images, deep)
    return feat @ model.head.weight.t() + model.head.bias


def _clip_feature(bb, model, images: torch.Tensor, deep: bool) -> torch.Tensor:
    """The prompted, projected CLS feature of open_clip's ViT built by hand."""
    v = bb.model.visual
    p = model.config.num_tokens
    x = v.conv1(images).flatten(2).transpose(1, 2)
    b = x.shape[0]
    x = torch.cat([v.class_embedding.expand(b, 1, -1), x], dim=1) + v.positional_embedding
    x = torch.cat([x[:, :1], model.prompt.expand(b, -1, -1), x[:, 1:]], dim=1)
    x = v.ln_pre(x)
    assert v.transformer.batch_first
    for i, block in enumerate(v.transformer.resblocks):
        if deep and i >= 1:
            x = torch.cat([x[:, :1], model.deep_prompt[i - 1].expand(b, -1, -1), x[:, 1 + p:]], dim=1)
        x = block(x)
    return v.ln_post(x[:, 0]) @ v.proj


def test_config_defaults_and_init(timm_bb):
    shallow = vp.build_method("vpt-shallow", timm_bb, NAMES)
    deep = vp.build_method("vpt-deep", timm_bb, NAMES)
    assert (shallow.config.num_tokens, shallow.config.dropout) == (5, 0.0)
    assert (deep.config.num_tokens, deep.config.dropout) == (5, 0.1)
    assert prompt_init_bound(16, 768) == pytest.approx(0.0625)
    bound = prompt_init_bound(8, 32)
    assert shallow.prompt.shape == (5, 32) and not hasattr(shallow, "deep_prompt")
    assert deep.deep_prompt.shape == (2, 5, 32)  # one per block after the first
    assert deep.prompt.abs().max() <= bound and deep.deep_prompt.abs().max() <= bound
    assert torch.all(shallow.head.bias == HEAD_BIAS) and HEAD_BIAS == pytest.approx(-math.log(99))
    assert not shallow.training  # built in eval mode
    assert vp.build_method("vpt-deep", timm_bb, NAMES, num_tokens=50, dropout=0.0).prompt.shape == (50, 32)
    with pytest.raises(ConfigError, match="num_tokens"):
        vp.build_method("vpt-shallow", timm_bb, NAMES, num_tokens=0)


@pytest.mark.parametrize("method, option", [("vpt-shallow", "num_tokens"), ("vpt-deep", "num_tokens"),
                                            ("e2vpt", "num_tokens"), ("e2vpt", "num_kv_tokens")])
def test_token_counts_are_bounded_before_anything_is_built(method, option, timm_bb, monkeypatch):
    """A typo or a tampered prompt.json (10**9 tokens) stops at the Config, before any tensor exists."""
    from vlprompt.methods.vpt import MAX_PROMPT_TOKENS

    def no_tensor(*args, **kwargs):
        raise AssertionError("a tensor was allocated")

    monkeypatch.setattr(torch, "empty", no_tensor)
    monkeypatch.setattr(torch, "zeros", no_tensor)
    for n in (MAX_PROMPT_TOKENS + 1, 10**9):
        with pytest.raises(ConfigError, match=rf"{option} must be in \[\d, {MAX_PROMPT_TOKENS}\].*got {n}"):
            vp.build_method(method, timm_bb, NAMES, **{option: n})
    monkeypatch.undo()
    assert vp.build_method(method, timm_bb, NAMES, **{option: 200}) is not None  # VPT's largest grid value


def test_shallow_layout_after_cls(timm_bb):
    """The first block sees 1 CLS + p prompts + patches, with the prompts right after CLS, unchanged."""
    torch.manual_seed(0)
    model = vp.build_method("vpt-shallow", timm_bb, NAMES, num_tokens=4)
    seen = []
    hook = timm_bb.model.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    images = torch.randn(2, 3, 32, 32)
    try:
        with torch.no_grad():
            model(images)
    finally:
        hook.remove()
    x = seen[0]
    assert x.shape == (2, 1 + 4 + 16, 32)
    assert torch.equal(x[0, 1:5], model.prompt.detach())  # no positional embedding on the prompts
    with torch.no_grad():
        cls_and_patches = timm_bb.model._pos_embed(timm_bb.model.patch_embed(images))
    assert torch.allclose(x[:, :1], cls_and_patches[:, :1]) and torch.allclose(x[:, 5:], cls_and_patches[:, 1:])


@pytest.mark.parametrize("name", ["vpt-shallow", "vpt-deep"])
def test_logits_equal_hand_built_timm(timm_bb, name):
    torch.manual_seed(1)
    model = vp.build_method(name, timm_bb, NAMES, num_tokens=3)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model(images)
        ref = _timm_reference(timm_bb, model, images, deep=model.deep)
    assert_fp32_close(ours, ref)
    if model.deep:  # the deep prompts matter: the previous outputs at the prompt slots are discarded
        with torch.no_grad():
            shallow_ref = _timm_reference(timm_bb, model, images, deep=False)
        assert not torch.allclose(ours, shallow_ref, atol=1e-4)


@pytest.mark.parametrize("name", ["vpt-shallow", "vpt-deep"])
def test_logits_equal_hand_built_clip(tiny_bb, name):
    torch.manual_seed(2)
    model = vp.build_method(name, tiny_bb, NAMES, num_tokens=2)
    assert model.head.in_features == tiny_bb.embed_dim  # projected CLS on CLIP (documented)
    images = torch.randn(2, 3, tiny_bb.image_size, tiny_bb.image_size)
    with torch.no_grad():
        ours = model(images)
        ref = _clip_reference(tiny_bb, model, images, deep=model.deep)
    assert_fp32_close(ours, ref)


@pytest.mark.parametrize("name", ["vpt-shallow", "vpt-deep"])
def test_only_prompts_and_head_get_gradients(timm_bb, name):
    model = vp.build_method(name, timm_bb, NAMES)
    model.train()
    assert not timm_bb.training and not timm_bb.model.training
    out = model.loss({"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 0])})
    out["loss"].backward()
    named = {n for n, p in model.named_parameters() if p.grad is not None}
    expected = {"prompt", "head.weight", "head.bias"} | ({"deep_prompt"} if model.deep else set())
    assert named == expected
    assert {n for n, _ in model.named_parameters() if not n.startswith("backbone.")} == expected
    assert all(p.grad is None and not p.requires_grad for p in timm_bb.parameters())
    assert set(model.prompt_state_dict()) == expected


def test_prompt_dropout_only_in_training(timm_bb):
    torch.manual_seed(3)
    model = vp.build_method("vpt-deep", timm_bb, NAMES, dropout=0.5)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(images), model(images)
        assert torch.equal(a, b)
        model.train()
        c = model(images)
    assert not torch.allclose(a, c)


def test_classnames_and_plugins(timm_bb):
    model = vp.build_method("vpt-shallow", timm_bb, NAMES)
    assert model.eval_text_features() is None
    model.set_classnames(["a", "b", "c"])  # same count: a relabelling
    with pytest.raises(ConfigError, match="reset_head"):
        model.set_classnames(["a", "b"])
    prompt = model.prompt.detach().clone()
    model.reset_head(["a", "b"])
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2)
    assert torch.equal(model.prompt.detach(), prompt)
    with pytest.raises(ConfigError, match="classifier='text'"):
        vp.build_method("vpt-deep+dept", timm_bb, NAMES)
    with pytest.raises(ConfigError, match="text tower"):
        vp.build_method("vpt-deep", timm_bb, NAMES, classifier="text")
    with pytest.raises(ConfigError, match="classifier"):
        vp.build_method("vpt-deep", timm_bb, NAMES, classifier="mlp")
    resnet = vp.load_backbone("RN50")
    with pytest.raises(ConfigError, match="ViT image tower"):
        vp.build_method("vpt-shallow", resnet, NAMES)


@pytest.mark.parametrize("which", ["tiny-clip", "timm-tiny"])
def test_fit_end_to_end(which, tiny_bb, timm_bb, shapes_root, cache_dir, tmp_path):
    bb = tiny_bb if which == "tiny-clip" else timm_bb
    task = vp.load_dataset("imagefolder", shapes_root, shots=2, seed=1)
    model = vp.build_method("vpt-deep", bb, task.classnames, num_tokens=2)
    run = tmp_path / "run"
    res = vp.fit(model, task, run_dir=str(run), epochs=2, batch_size=4, lr=0.1, precision="fp32",
                 cache_dir=cache_dir, progress=False)
    assert res["method"] == "vpt-deep" and 0.0 <= res["acc"] <= 100.0
    assert res["trainable_params"] == sum(p.numel() for p in model.trainable_parameters())
    assert res["feature_views"] is None
    loaded = vp.load_prompt(run, bb)
    images = torch.randn(2, 3, bb.image_size, bb.image_size)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(images), model(images), atol=1e-6)
    assert vp.evaluate(loaded, task.test, precision="fp32", cache_dir=cache_dir) == pytest.approx(res["acc"])
    assert F.softmax(loaded(images), -1).shape == (2, len(task.classnames))


def _template_features(bb, names: list[str], template: str = "a photo of a {}.") -> torch.Tensor:
    """open_clip's own encode_text on the tokenised hand template, normalised."""
    with torch.no_grad():
        text = bb.model.encode_text(bb.tokenize([template.format(n) for n in names]))
    return F.normalize(text, dim=-1)


@pytest.mark.parametrize("name", ["vpt-shallow", "vpt-deep"])
def test_text_classifier_equals_zero_shot_head_formula(tiny_bb, name):
    """classifier='text': logits = logit_scale · cos(prompted CLS feature, frozen template text)."""
    torch.manual_seed(4)
    model = vp.build_method(name, tiny_bb, NAMES, num_tokens=2, classifier="text")
    assert model.head is None and model.has_text_side
    assert {n for n, _ in model.named_parameters() if not n.startswith("backbone.")} == (
        {"prompt", "deep_prompt"} if model.deep else {"prompt"})
    images = torch.randn(2, 3, tiny_bb.image_size, tiny_bb.image_size)
    with torch.no_grad():
        ours = model(images, model.eval_text_features())
        feat = F.normalize(_clip_feature(tiny_bb, model, images, deep=model.deep), dim=-1)
        ref = 100.0 * feat @ _template_features(tiny_bb, NAMES).t()
    assert ours.shape == (2, 3) and torch.allclose(ours, ref, atol=1e-4, rtol=1e-5)
    model.set_classnames(["purple cross", "yellow star"])  # any class set: base → new
    with torch.no_grad():
        new = model(images)
        ref_new = 100.0 * feat @ _template_features(tiny_bb, ["purple cross", "yellow star"]).t()
    assert torch.allclose(new, ref_new, atol=1e-4, rtol=1e-5)


def test_vpt_deep_dept_loss_and_fusion_formula(tiny_bb):
    """DePT's VPT row: (1−λ)·CE(itm) + λ·CE([head(FiLM_t(t_y)); head(FiLM_i(f))], [y; y]); fused eval logits."""
    torch.manual_seed(5)
    model = vp.build_method("vpt-deep+dept", tiny_bb, NAMES, num_tokens=2, classifier="text", dropout=0.0)
    with torch.no_grad():  # move FiLM / head away from identity so every term matters
        for p in (*model.film_img.parameters(), *model.film_text.parameters(), *model.head.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    images = torch.randn(4, 3, tiny_bb.image_size, tiny_bb.image_size)
    y = torch.tensor([0, 1, 2, 0])
    out = model.train_outputs({"images": images, "labels": y})
    with torch.no_grad():
        f = _clip_feature(tiny_bb, model.inner, images, deep=True)
        t = _template_features(tiny_bb, NAMES)
        itm = 100.0 * F.normalize(f, dim=-1) @ t.t()
        z_txt = model.head(t[y] * model.film_text.gamma + model.film_text.beta)
        z_img = model.head(f * model.film_img.gamma + model.film_img.beta)
        lam = 0.7
        loss = (1 - lam) * F.cross_entropy(itm, y) + lam * F.cross_entropy(torch.cat([z_txt, z_img]), torch.cat([y, y]))
        assert torch.allclose(out["loss"], loss, atol=1e-4, rtol=1e-5)
        fused = model(images, model.eval_text_features())
        assert torch.allclose(fused, (1 - lam) * itm + lam * z_img, atol=1e-4, rtol=1e-5)
    out["loss"].backward()
    named = {n for n, p in model.named_parameters() if p.grad is not None}
    assert named == {"inner.prompt", "inner.deep_prompt", "film_img.gamma", "film_img.beta",
                     "film_text.gamma", "film_text.beta", "head.weight", "head.bias"}
    model.set_classnames(["purple cross", "yellow star"])  # new classes: the ITM (text) head alone
    with torch.no_grad():
        assert model(images).shape == (4, 2)


def _reference_sgd(model, lr: float, wd: float, momentum: float) -> torch.optim.SGD:
    """VPT's ``make_optimizer`` with SGD: one group per trainable parameter, weight decay 0 for the
    head's bias (``last_layer.bias`` there: the head is ``head.last_layer``; ``head.bias`` here)."""
    groups = [{"params": [p], "lr": lr, "weight_decay": 0.0 if name == "head.bias" else wd}
              for name, p in model.named_parameters() if p.requires_grad]
    return torch.optim.SGD(groups, lr, momentum=momentum, weight_decay=wd)


@pytest.mark.parametrize("name", ["vpt-shallow", "vpt-deep", "e2vpt"])
def test_optimizer_steps_equal_the_reference_grouping(timm_bb, name):
    import copy

    from vlprompt.engine.config import TrainConfig
    from vlprompt.engine.schedule import build_optimizer

    torch.manual_seed(0)
    model = vp.build_method(name, timm_bb, NAMES, num_tokens=2)
    ref = copy.deepcopy(model)
    lr, wd = 12.5, 1e-2  # the grid's large learning rates: decay on the bias would move it visibly
    ours = build_optimizer(model.param_groups(lr), TrainConfig.from_kwargs(optimizer="sgd", lr=lr, weight_decay=wd,
                                                                           momentum=0.9))
    theirs = _reference_sgd(ref, lr, wd, 0.9)
    images = torch.randn(4, 3, timm_bb.image_size, timm_bb.image_size)
    labels = torch.tensor([0, 1, 2, 0])
    for _ in range(3):
        for m, opt in ((model, ours), (ref, theirs)):
            opt.zero_grad()
            F.cross_entropy(m(images), labels).backward()
            opt.step()
    for (_, a), (_, b) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        if a.requires_grad:
            assert_fp32_close(a, b)
    decayed = [g.get("weight_decay", wd) for g in ours.param_groups if any(p is model.head.bias for p in g["params"])]
    assert decayed == [0.0]
