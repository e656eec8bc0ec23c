"""PromptSRC: every loss term and the Gaussian prompt aggregation against independent re-derivations (open_clip's own
towers, the reference's formulas written out by hand), a float64 gradient check, kill/resume exactness across the
aggregation, +DePT, presets, I/O, CLI."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

import vlprompt as vp
from kill_resume import fit_killed_after_first_epoch
from numerics import assert_fp32_close
from test_ivlp import _hand_image, _hand_text
from vlprompt.cli import main
from vlprompt.data.templates import PROMPTSRC_TEMPLATES
from vlprompt.errors import ConfigError
from vlprompt.methods.promptsrc import PromptSRCConfig, gpa_weights
from vlprompt.presets import resolve_preset

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: one intra-op thread on shared CPUs

NAMES = ["red circle", "green_square", "blue triangle"]
DEPTH_T, DEPTH_V = 3, 4  # tiny-clip: 3 text / 4 vision blocks
SMALL = {"prompt_depth_text": DEPTH_T, "prompt_depth_vision": DEPTH_V}


def _build(bb, names=NAMES, **opts):
    torch.manual_seed(0)
    m = vp.build_method("promptsrc", bb, names, **{**SMALL, **opts})
    with torch.no_grad():  # P_0 starts as "a photo of a"; move it so nothing depends on the init
        m.ctx.add_(0.1 * torch.randn_like(m.ctx))
    return m


def _hand_targets(bb, names, templates=PROMPTSRC_TEMPLATES) -> torch.Tensor:
    """The reference's fixed_embeddings: for every template, CLIP's own encode_text of the 77-token prompts of all
    classes (un-normalised), then the mean over templates."""
    per = []
    with torch.no_grad():
        tok = bb.tokenize([t.replace("{}", n.replace("_", " ")) for t in templates for n in names])
        feats = bb.model.encode_text(tok, normalize=False)
        for i in range(len(templates)):
            per.append(feats[i * len(names):(i + 1) * len(names)])
    return sum(per) / len(per)


def _hand_loss(bb, model, images, labels, w_text=25.0, w_image=10.0) -> dict[str, torch.Tensor]:
    """PromptSRC's forward_backward, written out: normalised features, logits at CLIP's scale, CE, the two L1
    means, and KL(frozen || prompted) summed over the batch and classes and divided by their count."""
    text = torch.stack([_hand_text(bb, model, n, DEPTH_T) for n in NAMES])
    img = _hand_image(bb, model, images, DEPTH_V)
    with torch.no_grad():
        img0 = bb.model.encode_image(images)
    txt0 = _hand_targets(bb, NAMES)
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    s = bb.model.logit_scale.exp()
    z = s * unit(img) @ unit(text).t()
    z0 = s * unit(img0) @ unit(txt0).t()
    logp = z - torch.logsumexp(z, dim=1, keepdim=True)
    logq = z0 - torch.logsumexp(z0, dim=1, keepdim=True)
    ce = -logp[torch.arange(len(labels)), labels].mean()
    l_text = (unit(text) - unit(txt0)).abs().sum() / text.numel()
    l_image = (unit(img) - unit(img0)).abs().sum() / img.numel()
    kl = (logq.exp() * (logq - logp)).sum() / z.numel()
    return {"ce": ce, "scl_text": w_text * l_text, "scl_image": w_image * l_image, "scl_logits": kl,
            "loss": ce + kl + w_text * l_text + w_image * l_image, "logits": z}


def test_defaults_presets_and_parameter_count():
    cfg = PromptSRCConfig()
    assert (cfg.n_ctx_text, cfg.n_ctx_vision, cfg.ctx_init, cfg.prompt_depth_text, cfg.prompt_depth_vision) == (
        4, 4, "a photo of a", 9, 9)
    assert (cfg.text_loss_weight, cfg.image_loss_weight, cfg.gpa, cfg.gpa_mean, cfg.gpa_std) == (25, 10, True, 15, 1)
    assert cfg.text_templates == () and len(PROMPTSRC_TEMPLATES) == 60 == len(set(PROMPTSRC_TEMPLATES))
    bb = vp.load_backbone("ViT-B-16")  # random weights; only shapes matter
    m = vp.build_method("promptsrc", bb, NAMES)
    assert sum(p.numel() for p in m.trainable_parameters()) == 9 * 4 * 512 + 9 * 4 * 768 == 46_080
    b2n = resolve_preset("promptsrc", "paper")
    assert b2n["train"] == {"epochs": 20, "batch_size": 4, "lr": 0.0025}
    assert {k: b2n["method"][k] for k in ("gpa_mean", "gpa_std", "prompt_depth_text", "text_loss_weight")} == {
        "gpa_mean": 15.0, "gpa_std": 1.0, "prompt_depth_text": 9, "text_loss_weight": 25.0}
    fs = resolve_preset("promptsrc", "paper-fs", 16, "imagenet")
    assert fs["train"]["epochs"] == 50 and (fs["method"]["gpa_mean"], fs["method"]["gpa_std"]) == (30.0, 30.0)
    fs_dtd = resolve_preset("promptsrc", "paper-fs", 16, "dtd")
    assert (fs_dtd["method"]["gpa_mean"], fs_dtd["method"]["gpa_std"]) == (45.0, 5.0)
    xd = resolve_preset("promptsrc", "paper-xd")
    assert xd["method"]["prompt_depth_vision"] == 3 and (xd["method"]["gpa_mean"], xd["method"]["gpa_std"]) == (6, 10)
    assert xd["train"]["epochs"] == 20
    ref = resolve_preset("promptsrc+dept", "reference")
    assert ref["train"]["precision"] == "fp16-gpu" and ref["train"]["feature_views"] == 0
    for preset in ("paper", "paper-fs", "paper-xd"):  # every preset builds
        vp.build_method("promptsrc", bb, NAMES, **resolve_preset("promptsrc", preset)["method"])


def test_frozen_targets_are_the_template_mean_of_clips_own_text_features(tiny_bb):
    m = _build(tiny_bb)
    assert m.frozen_text is None  # encoded only when training needs them
    assert_fp32_close(m.frozen_text_features(), _hand_targets(tiny_bb, NAMES))
    m.set_classnames(["yellow star", "purple_hexagon"])
    assert m.frozen_text is None
    assert_fp32_close(m.frozen_text_features(), _hand_targets(tiny_bb, ["yellow star", "purple_hexagon"]))
    own = _build(tiny_bb, text_templates=("a {} shape.", "itap of a {}."))
    assert_fp32_close(own.frozen_text_features(), _hand_targets(tiny_bb, NAMES, ("a {} shape.", "itap of a {}.")))


@pytest.mark.parametrize("weights", [(25.0, 10.0), (3.0, 0.5)])
def test_every_loss_term_equals_the_written_out_reference_loss(tiny_bb, weights):
    m = _build(tiny_bb, text_loss_weight=weights[0], image_loss_weight=weights[1])
    torch.manual_seed(1)
    images = torch.randn(3, 3, 64, 64)
    labels = torch.tensor([0, 2, 1])
    out = m.train_outputs({"images": images, "labels": labels})
    ref = _hand_loss(tiny_bb, m, images, labels, *weights)
    for key in ("ce", "scl_text", "scl_image", "scl_logits", "loss", "logits"):
        assert_fp32_close(out[key].detach(), ref[key].detach())
    assert all(float(out[k].detach()) > 0 for k in ("scl_text", "scl_image", "scl_logits"))
    with torch.no_grad():  # inference is IVLP's: the training logits are the forward's
        assert_fp32_close(m(images), out["logits"].detach())
    step = m.loss({"images": images, "labels": labels})["loss"].detach()
    assert float(step) == pytest.approx(float(out["loss"].detach()), rel=1e-6)


def test_gradient_of_the_full_loss_matches_finite_differences_in_float64(tiny_bb):
    bb = copy.deepcopy(tiny_bb).double()
    m = _build(bb).double()
    torch.manual_seed(3)
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    labels = torch.tensor([1, 0])
    batch = {"images": images, "labels": labels}
    params = m.trainable_parameters()
    loss = m.train_outputs(batch)["loss"]
    assert loss.dtype == torch.float64
    grads = torch.autograd.grad(loss, params)
    assert all(g.abs().sum() > 0 for g in grads) and all(p.grad is None for p in bb.parameters())
    gen = torch.Generator().manual_seed(4)
    for _ in range(2):  # directional derivatives along random directions
        dirs = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
        eps = 1e-6
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, d in zip(params, dirs, strict=True):
                    p.add_(sign * eps * d)
                values.append(float(m.train_outputs(batch)["loss"]))
                for p, d in zip(params, dirs, strict=True):
                    p.sub_(sign * eps * d)
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = float(sum((g * d).sum() for g, d in zip(grads, dirs, strict=True)))
        assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-8)
    # each regulariser reaches the prompts of its own branch only (the frozen side is a constant target)
    out = m.train_outputs(batch)
    g_text = torch.autograd.grad(out["scl_text"], [m.ctx, m.visual_ctx], allow_unused=True, retain_graph=True)
    g_image = torch.autograd.grad(out["scl_image"], [m.ctx, m.visual_ctx], allow_unused=True, retain_graph=True)
    g_kl = torch.autograd.grad(out["scl_logits"], [m.ctx, m.visual_ctx])
    assert g_text[0].abs().sum() > 0 and g_text[1] is None
    assert g_image[0] is None and g_image[1].abs().sum() > 0
    assert all(g.abs().sum() > 0 for g in g_kl)  # KL pulls the prompted logits: both towers


def test_gpa_weights_are_the_normalised_normal_density_at_the_1_based_epoch():
    for n, mu, sd in ((20, 15.0, 1.0), (50, 30.0, 30.0), (20, 6.0, 10.0), (3, 2.0, 1.0)):
        raw = [math.exp(-((e - mu) ** 2) / (2 * sd * sd)) for e in range(1, n + 1)]  # the constant cancels
        assert gpa_weights(n, mu, sd) == pytest.approx([r / sum(raw) for r in raw], rel=1e-12)
    w = gpa_weights(20, 15.0, 1.0)
    assert max(range(20), key=w.__getitem__) == 14 and sum(w) == pytest.approx(1.0)  # epoch 15 weighs most
    with pytest.raises(ConfigError, match="all 0"):
        gpa_weights(3, 500.0, 1.0)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.prompt_state_dict().items()}


@pytest.fixture(scope="module")
def small_task(tmp_path_factory):
    from vlprompt.data import make_image_folder

    root = tmp_path_factory.mktemp("psrc") / "shapes"
    make_image_folder(root, n_train=4, n_val=2, n_test=2, size=64, seed=0)
    return vp.load_dataset("imagefolder", root)


def test_gpa_installs_the_gaussian_weighted_average_before_evaluation_and_saving(tiny_bb, small_task, cache_dir,
                                                                                  tmp_path):
    opts = dict(epochs=3, batch_size=4, lr=0.05, precision="fp32", cache_dir=cache_dir)
    vp.seed_everything(1)
    model = vp.build_method("promptsrc", tiny_bb, small_task.classnames, gpa_mean=2.0, gpa_std=0.8, **SMALL)
    per_epoch: list[dict[str, torch.Tensor]] = []
    res = vp.fit(model, small_task, run_dir=str(tmp_path / "run"), **opts,
                 on_epoch_end=lambda e, row: per_epoch.append(_snapshot(model)))
    assert res["gpa_epochs"] == 3 and len(per_epoch) == 3
    raw = [math.exp(-((e - 2.0) ** 2) / (2 * 0.8 ** 2)) for e in (1, 2, 3)]
    w = [r / sum(raw) for r in raw]
    final = _snapshot(model)
    for k in final:
        expected = sum(wi * snap[k].double() for wi, snap in zip(w, per_epoch, strict=True)).float()
        assert_fp32_close(final[k], expected)
        assert not torch.allclose(final[k], per_epoch[-1][k])  # the average is not the last epoch's prompt
    loaded = vp.load_prompt(tmp_path / "run", tiny_bb)
    for k, v in loaded.prompt_state_dict().items():
        assert torch.equal(v, final[k])  # what is saved is the average
    assert vp.evaluate(loaded, small_task.test, cache_dir=cache_dir) == pytest.approx(res["acc"])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
    assert loaded.config == model.config


def test_a_second_fit_of_the_same_model_starts_a_new_aggregation(tiny_bb, small_task, cache_dir):
    vp.seed_everything(1)
    model = vp.build_method("promptsrc", tiny_bb, small_task.classnames, gpa_mean=1.0, **SMALL)
    opts = dict(batch_size=4, lr=0.05, precision="fp32", cache_dir=cache_dir, evaluate_test=False)
    assert vp.fit(model, small_task, epochs=2, **opts)["gpa_epochs"] == 2
    per_epoch: list[dict[str, torch.Tensor]] = []
    res = vp.fit(model, small_task, epochs=1, **opts, on_epoch_end=lambda e, row: per_epoch.append(_snapshot(model)))
    assert res["gpa_epochs"] == 1  # one epoch of weight 1: the second run's own prompts, nothing of the first
    assert all(torch.equal(v, per_epoch[0][k]) for k, v in _snapshot(model).items())


def test_gpa_off_keeps_the_last_epoch(tiny_bb, small_task, cache_dir):
    vp.seed_everything(1)
    model = vp.build_method("promptsrc", tiny_bb, small_task.classnames, gpa=False, **SMALL)
    assert not model.plan.after_epoch and not model.plan.after_training
    last: list[dict[str, torch.Tensor]] = []
    res = vp.fit(model, small_task, epochs=2, batch_size=4, lr=0.05, precision="fp32", cache_dir=cache_dir,
                 evaluate_test=False, on_epoch_end=lambda e, row: last.append(_snapshot(model)))
    assert "gpa_epochs" not in res
    assert all(torch.equal(v, last[-1][k]) for k, v in _snapshot(model).items())


@pytest.mark.parametrize("name", ["promptsrc", "promptsrc+dept"])
def test_a_killed_and_resumed_run_ends_with_the_same_aggregated_prompts(name, tiny_bb, small_task, cache_dir,
                                                                        tmp_path):
    task = small_task if name == "promptsrc" else vp.load_dataset("imagefolder", small_task.root,
                                                                  subsample="base")
    opts = dict(epochs=3, batch_size=4, lr=0.05, precision="fp32", cache_dir=cache_dir, evaluate_test=False)
    method_opts = dict(gpa_mean=2.0, gpa_std=1.0, **SMALL)
    vp.seed_everything(1)
    whole = vp.build_method(name, tiny_bb, task.classnames, **method_opts)
    vp.fit(whole, task, run_dir=str(tmp_path / "whole"), **opts)

    vp.seed_everything(1)
    fit_killed_after_first_epoch(vp.build_method(name, tiny_bb, task.classnames, **method_opts), task,
                                 str(tmp_path / "resumed"), **opts)
    state = torch.load(tmp_path / "resumed" / "checkpoint" / "last.pt", weights_only=True)["method_state"]
    assert state["gpa_epochs"] == [0] and state["gpa_weight"] == pytest.approx(math.exp(-0.5) / math.sqrt(2 * math.pi))
    vp.seed_everything(1)
    resumed = vp.build_method(name, tiny_bb, task.classnames, **method_opts)
    res = vp.fit(resumed, task, run_dir=str(tmp_path / "resumed"), **opts)
    assert res["gpa_epochs"] == 3
    a, b = whole.state_dict(), resumed.state_dict()
    trained = set(whole.prompt_state_dict())
    assert trained and all(torch.equal(a[k], b[k]) for k in trained)


def test_dept_keeps_the_promptsrc_terms_and_averages_the_inner_prompts(tiny_bb, small_task, cache_dir, tmp_path):
    task = vp.load_dataset("imagefolder", small_task.root, subsample="base")
    vp.seed_everything(1)
    model = vp.build_method("promptsrc+dept", tiny_bb, task.classnames, **SMALL)
    assert model.plan == model.inner.plan and model.plan.after_epoch and model.plan.after_training
    images = torch.randn(4, 3, 64, 64)
    labels = torch.tensor([0, 1, 0, 1])
    out = model.train_outputs({"images": images, "labels": labels})
    inner = model.inner.train_outputs({"images": images, "labels": labels})
    lam = 0.7
    with torch.no_grad():
        z_txt = model.head(model.film_text(inner["text"][labels]))
        z_img = model.head(model.film_img(inner["image"]))
        cat_ce = F.cross_entropy(torch.cat([z_txt, z_img]), torch.cat([labels, labels]))
    expected = (1 - lam) * inner["ce"] + lam * cat_ce + inner["scl_text"] + inner["scl_image"] + inner["scl_logits"]
    assert_fp32_close(out["loss"].detach(), expected.detach())
    for key in ("scl_text", "scl_image", "scl_logits"):
        assert torch.equal(out[key], inner[key])
    per_epoch: list[dict[str, torch.Tensor]] = []
    res = vp.fit(model, task, epochs=2, batch_size=4, lr=0.05, precision="fp32", cache_dir=cache_dir,
                 run_dir=str(tmp_path / "run"), on_epoch_end=lambda e, row: per_epoch.append(_snapshot(model)))
    assert res["method"] == "promptsrc+dept" and res["gpa_epochs"] == 2 and math.isfinite(res["final_loss"])
    w = gpa_weights(2, 15.0, 1.0)
    for k, v in _snapshot(model).items():
        if k.startswith("inner."):  # the prompts are averaged; DePT's head and FiLM keep their last epoch
            expected_k = (w[0] * per_epoch[0][k].double() + w[1] * per_epoch[1][k].double()).float()
            assert_fp32_close(v, expected_k)
        else:
            assert torch.equal(v, per_epoch[-1][k])
    loaded = vp.load_prompt(tmp_path / "run", tiny_bb)
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))


def test_language_only_variant_trains_on_cached_features(tiny_bb, small_task, cache_dir):
    m = _build(tiny_bb, n_ctx_vision=0, prompt_depth_vision=0)
    assert m.plan.steps == "image-features" and m.plan.after_epoch
    feats = tiny_bb.encode_image(torch.randn(2, 3, 64, 64)).detach()
    out = m.train_outputs({"features": feats, "labels": torch.tensor([0, 1])})
    assert float(out["scl_image"].detach()) == 0.0  # frozen tower: the prompted image feature is the frozen one
    assert float(out["scl_text"].detach()) > 0
    vp.seed_everything(1)
    model = vp.build_method("promptsrc", tiny_bb, small_task.classnames, n_ctx_vision=0, prompt_depth_vision=0,
                            prompt_depth_text=3)
    res = vp.fit(model, small_task, epochs=1, batch_size=4, lr=0.05, feature_views=1, cache_dir=cache_dir,
                 evaluate_test=False)
    assert res["feature_views"] == 1 and res["gpa_epochs"] == 1


def test_refusals(tiny_bb):
    with pytest.raises(ConfigError, match="gpa_std must be > 0"):
        vp.build_method("promptsrc", tiny_bb, NAMES, gpa_std=0, **SMALL)
    with pytest.raises(ConfigError, match="text_loss_weight must be >= 0"):
        vp.build_method("promptsrc", tiny_bb, NAMES, text_loss_weight=-1, **SMALL)
    with pytest.raises(ConfigError, match="exactly one"):
        vp.build_method("promptsrc", tiny_bb, NAMES, text_templates=("no slot",), **SMALL)
    with pytest.raises(ConfigError, match="prompt_depth_text=9 exceeds"):
        vp.build_method("promptsrc", tiny_bb, NAMES)
    m = _build(tiny_bb, gpa_mean=500.0)
    m.end_epoch(0)
    with pytest.raises(ConfigError, match="all 0"):
        m.finish_training([], torch.device("cpu"))


def test_cli_lists_the_method_and_trains_one_epoch(shapes_root, cache_dir, tmp_path, capsys):
    assert main(["methods"]) in (None, 0)
    assert "promptsrc" in capsys.readouterr().out
    assert main(["methods", "promptsrc"]) in (None, 0)
    out = capsys.readouterr().out
    assert "gpa_mean = 15.0" in out and "text_loss_weight = 25.0" in out and "paper-xd:" in out
    run = tmp_path / "run"
    assert main(["train", "--method", "promptsrc", "--dataset", "imagefolder", "--root", str(shapes_root),
                 "--shots", "2", "--out", str(run), "--epochs", "1", "--batch-size", "4", "--lr", "0.0025",
                 "--cache-dir", cache_dir, "-o", "prompt_depth_text=3", "-o", "prompt_depth_vision=4"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == "promptsrc" and results["gpa_epochs"] == 1
    prompt = json.loads((run / "prompt.json").read_text())
    assert prompt["method"] == "promptsrc" and prompt["config"]["gpa_std"] == 1.0
