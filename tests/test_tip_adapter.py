"""Tip-Adapter / Tip-Adapter-F: cache logits, the α/β grid search, one fine-tuning step, presets, I/O, CLI.

The formulas are written out here from the reference (gaopengcuhk/Tip-Adapter ``utils.py`` / ``main.py``)
independently of the method's code; docs/deviations.md records a side-by-side run against the reference's
own functions.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import vlprompt as vp
from kill_resume import fit_killed_after_first_epoch
from numerics import assert_fp32_close
from vlprompt.cli import main
from vlprompt.data import IMAGENET_SELECT_TEMPLATES
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.schedule import build_optimizer, set_epoch_lr
from vlprompt.errors import ConfigError
from vlprompt.methods.base import TrainingPlan
from vlprompt.methods.tip_adapter import TipAdapterConfig, search_alpha_beta, search_grid
from vlprompt.presets import resolve_preset

NAMES = ["red circle", "green_square", "blue triangle"]
TEMPLATE = "a photo of a {}, a type of shape."


def _text_classifier(bb, names: list[str], templates: list[str]) -> torch.Tensor:
    """The reference's ``clip_classifier``: per class, normalised features of every template, their mean,
    renormalised (class names with ``_`` as spaces), through open_clip's own text tower."""
    rows = []
    with torch.no_grad():
        for name in names:
            emb = bb.model.encode_text(bb.tokenize([t.format(name.replace("_", " ")) for t in templates]))
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(0)
            rows.append(mean / mean.norm())
    return torch.stack(rows)


def _views(bb, n_views: int = 3, per_class: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw features of ``n_views`` 'augmented views' (noisy copies) of a few images, and their labels."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(len(NAMES) * per_class, bb.embed_dim, generator=g)
    views = torch.stack([base + 0.3 * torch.randn(base.shape, generator=g) for _ in range(n_views)])
    return views, torch.arange(len(NAMES)).repeat_interleave(per_class)


def _reference_logits(f: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, text: torch.Tensor,
                      alpha: float, beta: float, n_cls: int) -> torch.Tensor:
    """``100 · f·Wᵀ + α · exp(-(β - β · f·Kᵀ)) · one_hot(labels)`` on normalised ``f``."""
    values = F.one_hot(labels, n_cls).float()
    affinity = f @ keys.t()
    return 100.0 * f @ text.t() + alpha * torch.exp(-1.0 * (beta - beta * affinity)) @ values


def test_defaults_are_the_reference_imagenet_config():
    cfg = TipAdapterConfig()
    assert (cfg.init_alpha, cfg.init_beta, cfg.search_scale, cfg.search_step) == (1.17, 1.0, (7.0, 3.0), (200, 20))
    assert cfg.augment_views == 10 and cfg.logit_scale == 100.0 and cfg.search
    assert vp.build_method("tip-adapter-f", vp.load_backbone("tiny-clip"), NAMES).config.adam_eps == 1e-4


def test_cache_keys_and_logits_equal_the_reference_formula(tiny_bb):
    views, labels = _views(tiny_bb)
    model = vp.build_method("tip-adapter", tiny_bb, NAMES, template=TEMPLATE, init_alpha=2.0, init_beta=3.0,
                            augment_views=3)
    assert model.plan.fit_views == 3 and model.plan.steps == "none" and model.plan.fit_features == "train"
    info = model.fit_features((views, labels), None)
    assert info["cache_size"] == 6 and info["augment_views"] == 3 and info["searched"] is False
    # keys: the mean of the raw views, then L2-normalised (not the mean of normalised views)
    mean = views.mean(0)
    keys = mean / mean.norm(dim=-1, keepdim=True)
    assert_fp32_close(model.cache_keys.detach(), keys)
    assert not torch.allclose(keys, F.normalize(F.normalize(views, dim=-1).mean(0), dim=-1), atol=1e-4)
    text = _text_classifier(tiny_bb, NAMES, [TEMPLATE])
    assert_fp32_close(model.text_features(), text)
    raw = torch.randn(5, tiny_bb.embed_dim) * 4
    f = raw / raw.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        ours = model.logits_from_features(raw)
    assert_fp32_close(ours, _reference_logits(f, keys, labels, text, 2.0, 3.0, 3))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the run's autocast stays outside
        assert torch.equal(model.logits_from_features(raw), ours)
    # the image path: forward(images) = the same logits on the frozen tower's features
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        img = tiny_bb.model.encode_image(images)
        fi = img / img.norm(dim=-1, keepdim=True)
        assert_fp32_close(model(images), _reference_logits(fi, keys, labels, text, 2.0, 3.0, 3))


def test_imagenet_uses_the_seven_select_templates(tiny_bb):
    model = vp.build_method("tip-adapter", tiny_bb, NAMES, dataset="imagenet", template=TEMPLATE)
    assert model.templates() == list(IMAGENET_SELECT_TEMPLATES)
    assert_fp32_close(model.text_features(), _text_classifier(tiny_bb, NAMES, list(IMAGENET_SELECT_TEMPLATES)))
    assert vp.build_method("tip-adapter", tiny_bb, NAMES, dataset="dtd", template="{} texture.").templates() == [
        "{} texture."]


def test_search_grid_formula():
    beta = search_grid(7, 200)
    assert len(beta) == 200 and beta[0] == 0.1 and beta[-1] < 7
    for i in (1, 57, 199):
        assert beta[i] == i * (7 - 0.1) / 200 + 0.1
    assert search_grid(3, 20)[1] == pytest.approx(0.245)


def _brute_force_search(f, y, text, keys, labels, n_cls, scale, steps):
    """The reference's ``search_hp`` loop: β outer, α inner, accuracy in percent, strict ``>`` from 0."""
    best_acc, best = 0.0, (0, 0)
    values = F.one_hot(labels, n_cls).float()
    for i in range(steps[0]):
        beta = i * (scale[0] - 0.1) / steps[0] + 0.1
        for j in range(steps[1]):
            alpha = j * (scale[1] - 0.1) / steps[1] + 0.1
            logits = 100.0 * f @ text.t() + torch.exp(-1 * (beta - beta * (f @ keys.t()))) @ values * alpha
            acc = 100.0 * float((logits.argmax(-1) == y).sum()) / len(y)
            if acc > best_acc:
                best_acc, best = acc, (beta, alpha)
    return best, best_acc


def test_search_chooses_the_reference_setting(tiny_bb):
    torch.manual_seed(1)
    n_cls, per = 5, 4
    keys = F.normalize(torch.randn(n_cls * per, 16), dim=-1)
    labels = torch.arange(n_cls).repeat_interleave(per)
    text = F.normalize(torch.randn(n_cls, 16), dim=-1)
    idx = torch.randint(len(labels), (40,))
    f = F.normalize(keys[idx] + 0.9 * torch.randn(40, 16), dim=-1)  # near its own key: the cache helps
    y = labels[idx]
    values = F.one_hot(labels, n_cls).float()
    for scale in [(7.0, 3.0), (13.0, 13.0), (50.0, 50.0)]:
        steps = (30, 8)
        expected, exp_acc = _brute_force_search(f, y, text, keys, labels, n_cls, scale, steps)
        beta, alpha, acc = search_alpha_beta(f, y, 100.0 * f @ text.t(), keys, values, scale, steps)
        assert (beta, alpha) == expected and acc == pytest.approx(exp_acc)
    # ties: the first setting of the β-outer, α-inner order wins; no setting above 0 %: (0, 0)
    same = torch.zeros(3, n_cls)
    assert search_alpha_beta(f[:3], torch.zeros(3, dtype=torch.long), same, keys, values * 0, (7, 3), (4, 4))[:2] \
        == (0.1, 0.1)
    assert search_alpha_beta(f[:3], torch.ones(3, dtype=torch.long), same, keys, values * 0, (7, 3), (4, 4))[:2] \
        == (0.0, 0.0)


def test_fit_searches_on_val_and_installs_float32_values(tiny_bb):
    views, labels = _views(tiny_bb, seed=2)
    model = vp.build_method("tip-adapter", tiny_bb, NAMES, template=TEMPLATE, augment_views=3,
                            search_step=(20, 10))
    g = torch.Generator().manual_seed(5)
    val_x = views.mean(0).repeat(2, 1) + 0.8 * torch.randn(12, tiny_bb.embed_dim, generator=g)
    val_y = labels.repeat(2)
    info = model.fit_features((views, labels), (val_x, val_y))
    f = F.normalize(val_x, dim=-1)
    text = _text_classifier(tiny_bb, NAMES, [TEMPLATE])
    keys = F.normalize(views.mean(0), dim=-1)
    (beta, alpha), acc = _brute_force_search(f, val_y, text, keys, labels, 3, (7.0, 3.0), (20, 10))
    assert info["searched"] and info["search_val_acc"] == pytest.approx(acc)
    f32 = lambda v: float(torch.tensor(v, dtype=torch.float32))  # noqa: E731
    assert (model.beta, model.alpha) == (f32(beta), f32(alpha)) == (info["beta"], info["alpha"])


def test_fine_tuning_step_equals_a_hand_written_adamw_step(tiny_bb):
    """Tip-Adapter-F trains the keys with the initial α/β: CE of the tip logits, AdamW (eps 1e-4, decay 0.01)."""
    views, labels = _views(tiny_bb, seed=3)
    model = vp.build_method("tip-adapter-f", tiny_bb, NAMES, template=TEMPLATE, augment_views=3,
                            init_alpha=1.5, init_beta=2.0)
    assert model.plan == TrainingPlan(steps="image-features", fit_features="train", fit_views=3, after_training=True)
    model.fit_features((views, labels), None)
    keys0 = model.cache_keys.detach().clone()
    assert [p is model.cache_keys for p in model.trainable_parameters()] == [True]
    lr, wd, eps = 1e-3, 0.01, 1e-4
    cfg = TrainConfig(optimizer="adamw", lr=lr, weight_decay=wd, warmup_epochs=0, epochs=4)
    opt = build_optimizer(model.param_groups(cfg.lr), cfg)
    assert set_epoch_lr(opt, cfg, 0) == lr
    feats = views[1] + 0.1
    model.loss({"features": feats, "labels": labels})["loss"].backward()
    opt.step()
    # by hand: the gradient of the reference's training loss, then one AdamW step from zero moments
    w = keys0.clone().requires_grad_(True)
    f = feats / feats.norm(dim=-1, keepdim=True)
    text = _text_classifier(tiny_bb, NAMES, [TEMPLATE])
    loss = F.cross_entropy(_reference_logits(f, w, labels, text, 1.5, 2.0, 3), labels)
    (grad,) = torch.autograd.grad(loss, w)
    m_hat = (1 - 0.9) * grad / (1 - 0.9)
    v_hat = (1 - 0.999) * grad * grad / (1 - 0.999)
    expected = keys0 * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
    assert_fp32_close(model.cache_keys.detach(), expected)
    assert (model.cache_keys.detach() - keys0).abs().max() > 1e-4  # the step moved the keys


def test_save_load_round_trip_and_new_classes(tiny_bb, tmp_path):
    views, labels = _views(tiny_bb, seed=4)
    model = vp.build_method("tip-adapter-f", tiny_bb, NAMES, template=TEMPLATE, augment_views=3)
    model.fit_features((views, labels), (views[0], labels))
    with torch.no_grad():
        model.cache_keys.add_(0.01 * torch.randn_like(model.cache_keys))  # as after training
    model.search()
    raw = torch.randn(6, tiny_bb.embed_dim)
    with torch.no_grad():
        before = model.logits_from_features(raw)
    vp.save_prompt(model, tmp_path / "prompt.safetensors")
    meta = json.loads((tmp_path / "prompt.json").read_text())
    assert meta["config"]["cache_size"] == 6 and meta["config"]["cache_classes"] == NAMES
    loaded = vp.load_prompt(tmp_path / "prompt.safetensors", tiny_bb)
    assert (loaded.alpha, loaded.beta) == (model.alpha, model.beta)
    with torch.no_grad():
        assert torch.equal(loaded.logits_from_features(raw), before)
    # new classes only: no cache column, the logits are zero-shot CLIP's (100 · cos)
    new = ["purple cross", "yellow star"]
    retargeted = vp.load_prompt(tmp_path / "prompt.safetensors", tiny_bb, classnames=new)
    f = F.normalize(raw, dim=-1)
    with torch.no_grad():
        zero_shot = 100.0 * f @ _text_classifier(tiny_bb, new, [TEMPLATE]).t()
        assert_fp32_close(retargeted.logits_from_features(raw), zero_shot)
    # base and new together: each cached image votes for its class by name
    both = [new[0], NAMES[2], NAMES[0], new[1], NAMES[1]]
    mixed = vp.load_prompt(tmp_path / "prompt.safetensors", tiny_bb, classnames=both)
    keys = loaded.cache_keys.detach()
    cache = torch.exp(-1.0 * (loaded.beta - loaded.beta * (f @ keys.t())))
    expected = 100.0 * f @ _text_classifier(tiny_bb, both, [TEMPLATE]).t()
    for col, name in enumerate(both):
        if name in NAMES:
            expected[:, col] += loaded.alpha * cache[:, labels == NAMES.index(name)].sum(-1)
    with torch.no_grad():
        assert_fp32_close(mixed.logits_from_features(raw), expected)


def test_unfitted_cache_is_zero_shot_and_bad_options_are_refused(tiny_bb):
    model = vp.build_method("tip-adapter", tiny_bb, NAMES, template=TEMPLATE)
    raw = torch.randn(3, tiny_bb.embed_dim)
    f = F.normalize(raw, dim=-1)
    with torch.no_grad():
        assert_fp32_close(model.logits_from_features(raw), 100.0 * f @ _text_classifier(tiny_bb, NAMES, [TEMPLATE]).t())
    assert model.trainable_parameters() == []
    with pytest.raises(ConfigError, match="augment_views"):
        vp.build_method("tip-adapter", tiny_bb, NAMES, augment_views=0)
    with pytest.raises(ConfigError, match="cache_size and cache_classes"):
        vp.build_method("tip-adapter", tiny_bb, NAMES, cache_size=3)
    with pytest.raises(ConfigError, match="DePT wraps prompt-learning methods"):
        vp.build_method("tip-adapter+dept", tiny_bb, NAMES)


def test_paper_presets_per_dataset():
    expected = {  # configs/<dataset>.yaml: init_alpha, search_scale [beta, alpha], train_epoch
        "caltech101": (3, (12, 5), 20), "dtd": (2, (13, 13), 20), "eurosat": (2, (12, 10), 100),
        "fgvc_aircraft": (5, (30, 30), 20), "food101": (1.17, (10, 10), 20), "imagenet": (1.17, (7, 3), 20),
        "oxford_flowers": (10, (50, 50), 20), "oxford_pets": (1.17, (7, 3), 20), "stanford_cars": (3, (20, 10), 20),
        "sun397": (1.17, (12, 10), 20), "ucf101": (3, (7, 3), 20),
    }
    for dataset, (alpha, scale, epochs) in expected.items():
        p = resolve_preset("tip-adapter-f", "paper", shots=16, dataset=dataset)
        m, t = p["method"], p["train"]
        assert (m["init_alpha"], m["init_beta"], m["search_scale"], m["search_step"], m["augment_views"]) == \
            (alpha, 1.0, scale, (200, 20), 10), dataset
        assert t == {"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.01, "batch_size": 256, "epochs": epochs,
                     "warmup_epochs": 0, "scheduler": "cosine"}, dataset
        assert resolve_preset("tip-adapter", "paper", dataset=dataset)["method"] == \
            {k: v for k, v in m.items() if k != "adam_eps"}
    assert resolve_preset("tip-adapter", "paper", dataset="FGVCAircraft")["method"]["search_scale"] == (30, 30)
    ref = resolve_preset("tip-adapter-f", "reference", dataset="eurosat")
    assert ref["train"]["precision"] == "fp16-gpu" and ref["train"]["feature_views"] == 0
    assert ref["train"]["epochs"] == 100


def test_fit_gets_the_averaged_views_of_the_run(tiny_bb, shapes_root, cache_dir):
    """The engine hands the fit ``fit_views`` distinct cached views ``(V, n, D)``; the cache is their mean."""
    task = vp.load_dataset("imagefolder", shapes_root, shots=4, seed=1)
    model = vp.build_method("tip-adapter", tiny_bb, task, augment_views=3, search_step=(10, 5))
    seen = {}
    fit = model.fit_features

    def spy(train, val):
        seen["views"], seen["val"] = train[0].clone(), val
        return fit(train, val)

    model.fit_features = spy
    res = vp.fit(model, task, cache_dir=cache_dir, precision="fp32")
    views = seen["views"]
    assert views.shape == (3, len(task.train), tiny_bb.embed_dim) and not torch.equal(views[0], views[1])
    assert len(seen["val"][1]) == len(task.val)
    assert_fp32_close(model.cache_keys.detach(), F.normalize(views.float().mean(0), dim=-1))
    assert res["epochs"] == 0 and res["trainable_params"] == 0 and res["cache_size"] == len(task.train)
    assert res["searched"] and math.isfinite(res["alpha"]) and math.isfinite(res["acc"])


def test_cli_lists_and_trains_both(shapes_root, cache_dir, tmp_path, capsys):
    assert main(["methods"]) in (None, 0)
    listed = capsys.readouterr().out
    assert "tip-adapter" in listed and "tip-adapter-f" in listed
    assert main(["methods", "tip-adapter"]) in (None, 0)
    assert "init_alpha = 1.17" in capsys.readouterr().out
    run = tmp_path / "tip"
    assert main(["train", "--method", "tip-adapter", "--dataset", "imagefolder", "--root", str(shapes_root),
                 "--shots", "4", "--out", str(run), "--cache-dir", cache_dir, "-o", "augment_views=2",
                 "-o", "search_step=[20,5]"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["method"] == "tip-adapter" and res["epochs"] == 0 and res["searched"]
    task = vp.load_dataset("imagefolder", shapes_root, shots=4, seed=1)
    loaded = vp.load_prompt(run, vp.load_backbone("tiny-clip"))
    assert vp.evaluate(loaded, task.test, cache_dir=cache_dir) == pytest.approx(res["acc"])
    run_f = tmp_path / "tipf"
    assert main(["train", "--method", "tip-adapter-f", "--dataset", "imagefolder", "--root", str(shapes_root),
                 "--shots", "4", "--out", str(run_f), "--cache-dir", cache_dir, "--epochs", "2", "--batch-size", "8",
                 "--lr", "0.001", "-o", "augment_views=2", "-o", "search_step=[20,5]"]) == 0
    res_f = json.loads((run_f / "results.json").read_text())
    assert res_f["epochs"] == 2 and res_f["searched"]
    assert res_f["trainable_params"] == res_f["cache_size"] * loaded.backbone.embed_dim
    assert main(["train", "--method", "tip-adapter", "--dataset", "imagefolder", "--root", str(shapes_root),
                 "--out", str(tmp_path / "bad"), "-o", "augment_views=0"]) == 2


def test_tip_adapter_f_resumed_run_ends_identical(tiny_bb, shapes_root, cache_dir, tmp_path):
    """A run killed after its first epoch and resumed: the fit rebuilds the cache (and keeps val), the checkpoint
    restores the trained keys, the search after training gives the same α/β and keys as an uninterrupted run."""
    task = vp.load_dataset("imagefolder", shapes_root, shots=4, seed=1)
    opts = dict(epochs=3, batch_size=4, lr=0.01, optimizer="adamw", weight_decay=0.01, warmup_epochs=0,
                precision="fp32", cache_dir=cache_dir)
    build = {"augment_views": 2, "search_step": (20, 5)}
    whole = vp.build_method("tip-adapter-f", tiny_bb, task, **build)
    res_whole = vp.fit(whole, task, run_dir=str(tmp_path / "whole"), **opts)

    first = vp.build_method("tip-adapter-f", tiny_bb, task, **build)
    fit_killed_after_first_epoch(first, task, str(tmp_path / "resumed"), **opts)
    second = vp.build_method("tip-adapter-f", tiny_bb, task, **build)
    res = vp.fit(second, task, run_dir=str(tmp_path / "resumed"), **opts)
    assert torch.equal(second.cache_keys, whole.cache_keys)
    assert (second.alpha, second.beta) == (whole.alpha, whole.beta) == (res_whole["alpha"], res_whole["beta"])
    assert res["acc"] == res_whole["acc"] and res["searched"]


def test_training_plan_fit_views_is_checked():
    assert TrainingPlan(fit_features="train", fit_views=4).fit_views == 4
    with pytest.raises(ValueError, match="needs fit_features='train'"):
        TrainingPlan(fit_features="test", fit_views=2)
    with pytest.raises(ValueError, match="fit_views must be an integer >= 1"):
        TrainingPlan(fit_features="train", fit_views=0)
