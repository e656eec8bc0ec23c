"""KgCoOp: the loss against its formula, the frozen targets, the init phrase."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vlprompt as vp
from vlprompt.errors import ConfigError
from vlprompt.methods.kgcoop import kg_loss

NAMES = ["red circle", "green_square", "blue triangle"]
TEMPLATE = "a centered satellite photo of {}."


def _open_clip_features(bb, texts: list[str]) -> torch.Tensor:
    """open_clip's own text tower (all 77 positions), normalised: no vlprompt seam."""
    with torch.no_grad():
        return F.normalize(bb.model.encode_text(bb.tokenize(texts)), dim=-1)


def test_kg_loss_on_hand_built_tensors():
    # class 0: same direction (cos 1), class 1: orthogonal (cos 0), class 2: 60 degrees (cos 0.5)
    w = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0]])
    w_clip = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.5, math.sqrt(3) / 2, 0.0]])
    assert kg_loss(w, w_clip).item() == pytest.approx(1 - (1 + 0 + 0.5) / 3)
    # paper form: mean squared distance of the normalised vectors = 2 - 2 cos = 2 * code form
    torch.manual_seed(0)
    a, b = torch.randn(7, 16), torch.randn(7, 16)
    paper = (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).square().sum(-1).mean()
    assert paper.item() == pytest.approx(2 * kg_loss(a, b).item(), rel=1e-5)
    assert kg_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)


def test_train_outputs_follow_the_formula(tiny_bb):
    torch.manual_seed(0)
    model = vp.build_method("kgcoop", tiny_bb, NAMES, weight=8.0, template=TEMPLATE)
    with torch.no_grad():
        model.ctx.add_(0.05 * torch.randn_like(model.ctx))  # move away from the template's features
    feats = torch.randn(4, tiny_bb.embed_dim)
    labels = torch.tensor([0, 1, 2, 0])
    out = model.train_outputs({"features": feats, "labels": labels})
    # independent: w from the model's text features, w_clip from open_clip, CE from the logits formula
    w = model.text_features().detach()
    w_clip = _open_clip_features(tiny_bb, [TEMPLATE.format(n.replace("_", " ")) for n in NAMES])
    kg = 1 - (w * w_clip).sum(-1).mean()
    logits = tiny_bb.logit_scale * F.normalize(feats, dim=-1) @ w.t()
    ce = F.cross_entropy(logits, labels)
    assert out["kg"].item() == pytest.approx(kg.item(), abs=1e-5)
    assert out["kg"].item() > 1e-4
    assert out["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(ce.item() + 8.0 * kg.item(), rel=1e-5)
    out["loss"].backward()
    assert model.ctx.grad is not None and model.ctx.grad.abs().sum() > 0
    plain = vp.build_method("kgcoop", tiny_bb, NAMES, weight=0.0, template=TEMPLATE)
    o2 = plain.train_outputs({"features": feats, "labels": labels})
    assert torch.equal(o2["loss"], o2["ce"])


def test_targets_are_zero_shot_features_of_the_template(tiny_bb):
    model = vp.build_method("kgcoop", tiny_bb, NAMES, template=TEMPLATE)
    zs = vp.build_method("zeroshot", tiny_bb, NAMES, template=TEMPLATE)
    ref = _open_clip_features(tiny_bb, [TEMPLATE.format(n.replace("_", " ")) for n in NAMES])
    assert torch.allclose(model.clip_text_features, zs.text_features(), atol=1e-6)
    assert torch.allclose(model.clip_text_features, ref, atol=1e-5)
    assert "clip_text_features" not in model.state_dict()  # not persistent, never saved
    new = ["yellow star", "purple cross"]
    model.set_classnames(new)
    assert torch.allclose(model.clip_text_features, _open_clip_features(tiny_bb, [TEMPLATE.format(n) for n in new]),
                          atol=1e-5)
    # init "a photo of a" and template "a photo of a {}." give the template's features: L_kg = 0
    default = vp.build_method("kgcoop", tiny_bb, NAMES)
    assert default.config.weight == 8.0 and default.config.n_ctx == 4
    out = default.train_outputs({"features": torch.randn(2, tiny_bb.embed_dim), "labels": torch.tensor([0, 1])})
    assert out["kg"].item() == pytest.approx(0.0, abs=1e-5)


def test_init_phrase_is_honoured(tiny_bb):
    phrase = "a centered satellite photo of"
    model = vp.build_method("kgcoop", tiny_bb, NAMES, ctx_init=phrase, template=TEMPLATE)
    tok = tiny_bb.tokenize([phrase])
    n = int(tok.argmax()) - 1
    with torch.no_grad():
        expected = tiny_bb.model.token_embedding(tok)[0, 1 : 1 + n]
    assert model.ctx.shape == (n, tiny_bb.text_width)
    assert torch.equal(model.ctx.detach(), expected)
    # with this phrase the initial prompts are the template itself, so w starts on w_clip
    assert kg_loss(model.text_features(), model.clip_text_features).item() == pytest.approx(0.0, abs=1e-5)
    rand = vp.build_method("kgcoop", tiny_bb, NAMES, ctx_init="", n_ctx=3)
    assert rand.ctx.shape == (3, tiny_bb.text_width)


def test_bad_options(tiny_bb):
    with pytest.raises(ConfigError, match="exactly one"):
        vp.build_method("kgcoop", tiny_bb, NAMES, template="a photo")
    with pytest.raises(ConfigError, match="weight"):
        vp.build_method("kgcoop", tiny_bb, NAMES, weight=-1.0)


def test_fp16_targets_are_the_reference_second_clip(tiny_bb):
    """KgCoOp's reference encodes the targets with a CLIP built in fp16 and never cast back."""
    import copy

    names = ["a", "b_c", "d"]
    ours = vp.build_method("kgcoop", tiny_bb, names, target_precision="fp16")
    half = copy.deepcopy(tiny_bb).half()
    texts = [f"a photo of a {n.replace('_', ' ')}." for n in names]
    with torch.no_grad():
        ref = F.normalize(half.model.encode_text(half.tokenize(texts)), dim=-1).float()
    assert ours.clip_text_features.dtype == torch.float32
    assert torch.allclose(ours.clip_text_features, ref, atol=2e-3, rtol=0)
    fp32 = vp.build_method("kgcoop", tiny_bb, names)
    assert not torch.equal(ours.clip_text_features, fp32.clip_text_features)  # fp16 rounding
    assert next(tiny_bb.parameters()).dtype == torch.float32  # the backbone itself is untouched
