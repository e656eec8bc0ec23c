"""DAPT as a plug-in: ``<method>+dapt`` / ``<method>+dapt-g`` on CoOp, CoCoOp, IVLP, MaPLe (and IVLP subclasses).

Per base method, the DAPT loss is re-derived from the backbone seams and the method's raw parameters;
``dapt`` is checked to be ``maple+dapt`` (logits, loss, state-dict keys); every name trains, saves and
loads; DAPT + DePT in both orders carries the losses of both; wrong combinations fail with one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import vlprompt as vp
from numerics import assert_fp32_close
from vlprompt.backbones.base import VisualPrompts
from vlprompt.cli import main
from vlprompt.errors import ConfigError
from vlprompt.methods import list_methods, method_options
from vlprompt.methods.base import option_docs
from vlprompt.methods.dapt import BACKGROUND_CLASSES, DAPTMixin, wrap_dapt
from vlprompt.methods.ivlp import IVLP, IVLPConfig

NAMES = ["red circle", "green_square", "blue triangle"]
#: tiny-clip has 3 text / 4 vision blocks
OPTIONS = {
    "coop": {"n_ctx": 4},
    "cocoop": {},
    "ivlp": {"prompt_depth_text": 2, "prompt_depth_vision": 2},
    "maple": {"prompt_depth": 2},
}
BASES = list(OPTIONS)


def _batch(seed: int = 0, b: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 64, 64, generator=g)
    y = torch.tensor([0, 1, 2, 0, 2, 1][:b])
    mask = (torch.rand(b, 1, 64, 64, generator=g) > 0.5).float()
    return {"images": x, "labels": y, "masks": mask}


def _towers(base: str, m, bb):
    """Independent re-derivation of a method's towers: (image encoder, class text of raw image features,
    background text), from the backbone seams and the method's raw parameters."""
    if base in ("coop", "cocoop"):
        def image(x):
            return bb.encode_image(x)
        deep = None
    elif base == "ivlp":
        vp_ = VisualPrompts(tokens=m.visual_ctx, layout="append",
                            deep={k + 1: m.deep_visual_ctx[k] for k in range(m.deep_visual_ctx.shape[0])})

        def image(x):
            return bb.encode_image(x, vp_)
        deep = {k + 1: m.deep_text_ctx[k] for k in range(m.deep_text_ctx.shape[0])}
    else:  # maple: V_k = F_k(P_k)
        vp_ = VisualPrompts(tokens=m.couplings[0](m.ctx), layout="append",
                            deep={k + 1: m.couplings[k + 1](m.deep_ctx[k]) for k in range(m.deep_ctx.shape[0])})

        def image(x):
            return bb.encode_image(x, vp_)
        deep = {k + 1: m.deep_ctx[k] for k in range(m.deep_ctx.shape[0])}

    def class_text(feats):
        if base == "cocoop":  # v + π(x), π = MetaNet(f(x)/‖f(x)‖), one prompt set per image
            net = m.meta_net
            pi = net.linear2(F.relu(net.linear1(F.normalize(feats, dim=-1))))
            return torch.stack([bb.encode_text(m.prompts.assemble(m.ctx + p), m.prompts.eot_idx) for p in pi])
        return bb.encode_text(m.prompts.assemble(m.ctx), m.prompts.eot_idx, deep_prompts=deep)

    bg = bb.encode_text(m.bg_embeds, m.bg_eot, deep_prompts=deep)  # deep prompts only: as the reference's MaPLe
    return image, class_text, bg


def _matching(z_img, z_text, s):
    if z_text.dim() == 3:
        return s * torch.einsum("bd,bcd->bc", z_img, z_text)
    return s * z_img @ z_text.t()


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("schedule_epoch", [("paper", 0), ("reference", 8)])
def test_dapt_loss_rederived_on_each_base_method(tiny_bb, base, schedule_epoch):
    schedule, epoch = schedule_epoch
    torch.manual_seed(0)
    m = vp.build_method(f"{base}+dapt", tiny_bb, NAMES, dapt_loss_schedule=schedule, **OPTIONS[base])
    assert isinstance(m, DAPTMixin) and m.mask_source == "data" and m.plan.before_epoch
    m.prepare_epoch(epoch, [], torch.device("cpu"))
    batch = _batch()
    x, y, mask = batch["images"], batch["labels"], batch["masks"]
    out = m.train_outputs(batch)
    with torch.no_grad():
        image, class_text, bg = _towers(base, m, tiny_bb)
        fi, ff, fb = image(x), image(x * mask), image(x * (1 - mask))
        zi, zf, zb = (F.normalize(f, dim=-1) for f in (fi, ff, fb))
        zt = F.normalize(class_text(fi), dim=-1)
        ztb = F.normalize(bg, dim=-1)
        s = tiny_bb.logit_scale
        ce = F.cross_entropy(_matching(zi, zt, s), y)
        lv = torch.clamp((zi - zf).norm(dim=-1) - (zi - zb).norm(dim=-1) + 1.5, min=0).mean()
        lf = F.cross_entropy(_matching(zf, zt, s), y)
        lbg = s * zb @ ztb.t()
        lb = F.cross_entropy(lbg, lbg.argmax(-1))
        wv, wf, wb = (0.8, 0.1, 0.5) if schedule == "paper" else (0.0, 0.1, 0.5)
        total = ce + wv * lv + wf * lf + wb * lb
    assert out["logits"].shape == (4, 3)  # class columns only: the background prompts are not classes
    assert m.bg_embeds.shape[0] == len(BACKGROUND_CLASSES)
    assert_fp32_close(out["ce"], ce)
    assert_fp32_close(out["loss"], total)
    if wv:
        assert_fp32_close(out["loss_visual"], lv)
    assert_fp32_close(out["loss_fg"], lf)
    assert_fp32_close(out["loss_bg"], lb)
    # which terms can train: an unprompted image tower (CoOp, CoCoOp) and text without deep prompts leave
    # L_v and L_b without a trainable path; L_f always trains the text side
    prompted = base in ("ivlp", "maple")
    assert out["loss_bg"].requires_grad == prompted
    assert out["loss_fg"].requires_grad
    out["loss"].backward()
    params = m.trainable_parameters()
    assert params and all(p.grad is not None for p in params)
    assert all(p.grad is None for p in tiny_bb.parameters())


def test_dapt_is_maple_plus_dapt(tiny_bb):
    batch = _batch(1)
    for own, plug, opts, plug_opts in (
        ("dapt", "maple+dapt", {}, {}),
        ("dapt", "maple+dapt", {"loss_schedule": "reference"}, {"dapt_loss_schedule": "reference"}),
        ("dapt-g", "maple+dapt-g", {}, {}),
    ):
        torch.manual_seed(3)
        a = vp.build_method(own, tiny_bb, NAMES, prompt_depth=2, **opts)
        torch.manual_seed(3)
        b = vp.build_method(plug, tiny_bb, NAMES, prompt_depth=2, **plug_opts)
        assert list(a.state_dict()) == list(b.state_dict())
        assert list(a.prompt_state_dict()) == list(b.prompt_state_dict())
        assert all(torch.equal(a.prompt_state_dict()[k], b.prompt_state_dict()[k]) for k in a.prompt_state_dict())
        assert a.plan == b.plan
        for epoch in (0, 8):
            a.prepare_epoch(epoch, [], torch.device("cpu"))
            b.prepare_epoch(epoch, [], torch.device("cpu"))
            oa, ob = a.train_outputs(batch), b.train_outputs(batch)
            assert set(oa) == set(ob)
            assert all(torch.equal(oa[k], ob[k]) for k in oa)
        with torch.no_grad():
            assert torch.equal(a(batch["images"]), b(batch["images"]))
        if own == "dapt-g":
            assert torch.equal(a.gradcam_masks(batch["images"], batch["labels"]),
                               b.gradcam_masks(batch["images"], batch["labels"]))


_TRAIN = {"epochs": 2, "batch_size": 4, "lr": 0.0035, "precision": "fp32", "device": "cpu", "progress": False}


@pytest.mark.parametrize("name", [f"{b}+{p}" for b in BASES for p in ("dapt", "dapt-g")])
def test_every_plugin_name_trains_saves_and_loads(tmp_path, cache_dir, tiny_bb, name):
    task = vp.load_dataset("tiny/shapes", None, shots=1, seed=1, subsample="base")
    torch.manual_seed(0)
    model = vp.build_method(name, tiny_bb, task.classnames, dapt_weight_bg=0.4, **OPTIONS[name.split("+")[0]])
    result = vp.fit(model, task, run_dir=str(tmp_path / "run"), cache_dir=cache_dir, **_TRAIN)
    assert result["epochs"] == 2 and 0 <= result["acc"] <= 100
    meta = json.loads((tmp_path / "run" / "prompt.json").read_text())
    assert meta["method"] == name
    assert meta["config"]["dapt_masks"] == ("gradcam" if name.endswith("-g") else "data")
    assert meta["config"]["dapt_weight_bg"] == 0.4
    loaded = vp.load_prompt(tmp_path / "run", tiny_bb)
    assert type(loaded) is type(model) and loaded.dapt == model.dapt
    x = _batch()["images"]
    with torch.no_grad():
        model.eval()
        assert_fp32_close(loaded(x), model(x))
    assert set(loaded.prompt_state_dict()) == set(model.prompt_state_dict())


@pytest.mark.parametrize("name", ["coop+dapt+dept", "coop+dept+dapt", "maple+dapt+dept", "maple+dept+dapt"])
def test_dapt_with_dept_carries_both_losses(tiny_bb, name):
    base = name.split("+")[0]
    torch.manual_seed(0)
    model = vp.build_method(name, tiny_bb, NAMES, dept_weight=0.7, **OPTIONS[base])
    batch = _batch(2)
    out = model.train_outputs(batch)
    lam = 0.7
    dapt_terms = 0.8 * out["loss_visual"] + 0.1 * out["loss_fg"] + 0.5 * out["loss_bg"]
    assert_fp32_close(out["loss"], (1 - lam) * out["ce"] + lam * out["cat_ce"] + dapt_terms)
    assert model.mask_source == "data" and model.plan.before_epoch
    model.prepare_epoch(3, [], torch.device("cpu"))
    assert model.inner.epoch == 3  # DePT forwards the hook to the DAPT-trained method
    # both orders build the same model (same parameters, same loss)
    first, second = name.split("+")[1:]
    torch.manual_seed(0)
    other = vp.build_method(f"{base}+{second}+{first}", tiny_bb, NAMES, dept_weight=0.7, **OPTIONS[base])
    assert list(other.prompt_state_dict()) == list(model.prompt_state_dict())
    other.prepare_epoch(3, [], torch.device("cpu"))
    assert torch.equal(other.train_outputs(batch)["loss"], model.train_outputs(batch)["loss"])
    assert {"dapt_loss_schedule", "dept_weight"} <= set(model.config)


def test_dept_then_dapt_saves_and_loads(tmp_path, tiny_bb):
    model = vp.build_method("maple+dept+dapt", tiny_bb, NAMES, prompt_depth=2, dapt_loss_schedule="reference")
    vp.save_prompt(model, tmp_path / "prompt.safetensors")
    loaded = vp.load_prompt(tmp_path / "prompt.safetensors", tiny_bb)
    assert loaded.inner.dapt.loss_schedule == "reference" and loaded.dept == model.dept
    x = _batch()["images"]
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("name, fragment", [
    ("maple+dapt+dapt-g", "can be applied once"),
    ("dapt+dapt", "can be applied once"),
    ("dapt-g+dept+dapt", "can be applied once"),
    ("vpt-deep+dapt", "applies to coop, cocoop"),
    ("zeroshot+dapt-g", "applies to coop, cocoop"),
    ("clip-adapter+dapt", "applies to coop, cocoop"),
])
def test_wrong_combinations_fail_with_one_line(tiny_bb, name, fragment):
    opts = {"prompt_depth": 2} if name.startswith(("maple", "dapt")) else {}
    with pytest.raises(ConfigError, match=fragment) as info:
        vp.build_method(name, tiny_bb, NAMES, **opts)
    assert "\n" not in str(info.value)


def test_plugin_options_listing_and_docs(tiny_bb, capsys):
    assert "+dapt" in list_methods() and "+dapt-g" in list_methods()
    assert main(["methods"]) in (None, 0)
    listed = capsys.readouterr().out
    assert "+dapt" in listed and "+dapt-g" in listed
    opts = method_options("coop+dapt-g")
    assert opts["dapt_masks"][1] == "gradcam" and method_options("coop+dapt")["dapt_masks"][1] == "data"
    docs = option_docs("cocoop+dapt-g")
    assert "Grad-CAM" in docs["dapt_masks"] and "triplet" in docs["dapt_weight_visual"]
    # +dapt-g takes the dapt_* options too; a wrong value is one clear error
    m = vp.build_method("coop+dapt-g", tiny_bb, NAMES, dapt_loss_schedule="reference")
    assert m.dapt.loss_schedule == "reference" and m.dapt.masks == "gradcam" and m.mask_source == "model"
    with pytest.raises(ConfigError, match="dapt_loss_schedule"):
        vp.build_method("coop+dapt", tiny_bb, NAMES, dapt_loss_schedule="mixed")
    with pytest.raises(ConfigError, match="unknown option"):
        vp.build_method("coop+dapt", tiny_bb, NAMES, loss_schedule="reference")  # unprefixed: only for `dapt`


@pytest.mark.parametrize("base", ["coop", "cocoop"])
def test_gradcam_masks_on_an_unprompted_image_tower(tiny_bb, base):
    task = vp.load_dataset("tiny/shapes", None, shots=1, seed=1)
    model = vp.build_method(f"{base}+dapt-g", tiny_bb, task.classnames, **OPTIONS[base])
    model.prepare_epoch(0, task.train, torch.device("cpu"))
    masks = model.epoch_masks()
    assert set(masks.arrays) == set(range(len(task.train)))
    assert any(a.max() > 0 for a in masks.arrays.values())


@dataclass(frozen=True)
class _RegConfig(IVLPConfig):
    reg: float = 0.5


class _RegularisedIVLP(IVLP):
    """A PromptSRC-like IVLP subclass with a regulariser of its own (not registered)."""

    name = "ivlp-reg"
    Config = _RegConfig

    def train_outputs(self, batch):
        out = super().train_outputs(batch)
        extra = self.config.reg * self.visual_ctx.pow(2).sum()
        return {**out, "reg": extra, "loss": out["loss"] + extra}


def test_an_ivlp_subclass_keeps_its_own_loss_under_dapt(tiny_bb):
    torch.manual_seed(0)
    inner = _RegularisedIVLP(tiny_bb, NAMES, _RegConfig(prompt_depth_text=2, prompt_depth_vision=2))
    model = wrap_dapt(inner, dapt_weight_fg=0.2)
    assert isinstance(model, _RegularisedIVLP) and isinstance(model, DAPTMixin)
    assert model.config.reg == 0.5 and model.config.dapt_weight_fg == 0.2
    out = model.train_outputs(_batch())
    dapt_terms = 0.8 * out["loss_visual"] + 0.2 * out["loss_fg"] + 0.5 * out["loss_bg"]
    assert_fp32_close(out["loss"], out["ce"] + out["reg"] + dapt_terms)


def test_plugin_presets_and_plans(tiny_bb):
    from vlprompt.presets import resolve_preset

    ref = resolve_preset("maple+dapt-g", "reference")
    assert ref["method"]["dapt_loss_schedule"] == "reference" and ref["method"]["dapt_gradcam_batch_size"] == 50
    assert ref["method"]["prompt_depth"] == resolve_preset("maple", "reference")["method"]["prompt_depth"]
    assert not any(k.startswith("dapt_") for k in resolve_preset("coop+dapt", "paper")["method"])
    own = resolve_preset("dapt", "reference")["method"]  # `dapt` keeps its own, unprefixed table
    assert own["loss_schedule"] == "reference" and not any(k.startswith("dapt_") for k in own)
    assert "dapt_loss_schedule" not in resolve_preset("dapt+dept", "reference")["method"]
    # an unprompted image tower keeps evaluating on cached features; the steps read images and masks
    lang = vp.build_method("ivlp+dapt", tiny_bb, NAMES, prompt_depth_text=2, prompt_depth_vision=0)
    assert lang.plan.steps == "images+masks" and lang.plan.image_features and lang.mask_source == "data"
    assert vp.build_method("maple+dapt", tiny_bb, NAMES, prompt_depth=2).plan == vp.build_method(
        "dapt", tiny_bb, NAMES, prompt_depth=2).plan


# ----------------------------------------------------------------------------- PromptSRC (an IVLP subclass)
_PSRC = {"prompt_depth_text": 2, "prompt_depth_vision": 2}


@pytest.mark.parametrize("name", ["promptsrc+dapt", "promptsrc+dapt-g"])
def test_promptsrc_keeps_its_self_regulation_under_dapt(tiny_bb, name):
    """PromptSRC's CE and SCL terms are unchanged by the plug-in; DAPT's terms, re-derived from IVLP's towers
    (PromptSRC's prompts are IVLP's), are added with DAPT's paper weights."""
    batch = _batch(3)
    x, y, mask = batch["images"], batch["labels"], batch["masks"]
    torch.manual_seed(0)
    plain = vp.build_method("promptsrc", tiny_bb, NAMES, **_PSRC)
    torch.manual_seed(0)
    m = vp.build_method(name, tiny_bb, NAMES, **_PSRC)
    assert isinstance(m, DAPTMixin) and m.plan.after_epoch and m.plan.after_training  # GPA hooks kept
    assert m.plan.steps == "images+masks" and m.plan.before_epoch
    assert m.mask_source == ("model" if name.endswith("-g") else "data")
    ref, out = plain.train_outputs({"images": x, "labels": y}), m.train_outputs(batch)
    for key in ("ce", "scl_text", "scl_image", "scl_logits"):
        assert_fp32_close(out[key], ref[key])
    with torch.no_grad():
        image, class_text, bg = _towers("ivlp", m, tiny_bb)
        zi, zf, zb = (F.normalize(image(v), dim=-1) for v in (x, x * mask, x * (1 - mask)))
        zt, ztb = F.normalize(class_text(None), dim=-1), F.normalize(bg, dim=-1)
        s = tiny_bb.logit_scale
        lv = torch.clamp((zi - zf).norm(dim=-1) - (zi - zb).norm(dim=-1) + 1.5, min=0).mean()
        lf = F.cross_entropy(s * zf @ zt.t(), y)
        lbg = s * zb @ ztb.t()
        lb = F.cross_entropy(lbg, lbg.argmax(-1))
    assert_fp32_close(out["loss_visual"], lv)
    assert_fp32_close(out["loss_fg"], lf)
    assert_fp32_close(out["loss_bg"], lb)
    assert_fp32_close(out["loss"], ref["loss"] + 0.8 * lv + 0.1 * lf + 0.5 * lb)


@pytest.mark.parametrize("name", ["promptsrc+dapt", "promptsrc+dapt-g", "promptsrc+dapt+dept"])
def test_promptsrc_plugin_names_train_save_and_load(tmp_path, cache_dir, tiny_bb, name):
    task = vp.load_dataset("tiny/shapes", None, shots=1, seed=1, subsample="base")
    torch.manual_seed(0)
    model = vp.build_method(name, tiny_bb, task.classnames, **_PSRC)
    result = vp.fit(model, task, run_dir=str(tmp_path / "run"), cache_dir=cache_dir, **_TRAIN)
    assert result["epochs"] == 2 and 0 <= result["acc"] <= 100
    assert json.loads((tmp_path / "run" / "prompt.json").read_text())["method"] == name
    loaded = vp.load_prompt(tmp_path / "run", tiny_bb)
    assert type(loaded) is type(model)
    x = _batch()["images"]
    with torch.no_grad():
        model.eval()
        assert_fp32_close(loaded(x), model(x))
    if name.endswith("+dept"):  # DePT's CE-weighted loss, PromptSRC's and DAPT's terms at their own weights
        out = model.train_outputs(_batch(4))
        extra = out["scl_text"] + out["scl_image"] + out["scl_logits"]
        dapt_terms = 0.8 * out["loss_visual"] + 0.1 * out["loss_fg"] + 0.5 * out["loss_bg"]
        assert_fp32_close(out["loss"], 0.3 * out["ce"] + 0.7 * out["cat_ce"] + extra + dapt_terms)
