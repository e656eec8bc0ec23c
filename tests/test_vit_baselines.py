"""VPT's ViT baselines: ``linear`` (a head on the frozen tower) and ``finetune`` (tower + head trained).

Each quantity is re-derived by hand from timm's own forward and the reference's formulas (KMnP/vpt
``src/models/mlp.py``, ``src/solver/optimizer.py``), never through the method's own code path.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import vlprompt as vp
from numerics import assert_fp32_close
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.schedule import build_optimizer
from vlprompt.errors import ConfigError
from vlprompt.presets import resolve_preset
from vlprompt.protocols.vtab import default_lrs, summarize_vtab

TINY = "timm:vit_tiny_patch16_224"
TINY_KW = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}


@pytest.fixture(scope="module")
def vit():
    return vp.load_backbone(TINY, model_kwargs=TINY_KW, seed=0)


def _batch(n: int = 6, n_cls: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % n_cls


def _cls_feature(timm_model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """VPT's feature by hand: timm's forward_features (final norm applied), CLS token."""
    return timm_model.forward_features(images)[:, 0]


# ------------------------------------------------------------------ feature and head
def test_linear_logits_are_a_hand_written_head_on_the_cls_feature(vit):
    torch.manual_seed(0)
    model = vp.build_method("linear", vit, ["a", "b", "c"])
    x, _ = _batch()
    with torch.no_grad():
        ref = _cls_feature(vit.model, x) @ model.head.weight.t() + model.head.bias
        assert_fp32_close(model(x), ref)
    assert torch.all(model.head.bias == -math.log(99.0))  # the reference MLP's "special bias" (prior 0.01)
    assert not model.training and not vit.training and model.plan.image_features
    assert model.trainable_parameters() == [model.head.weight, model.head.bias]


def test_head_init_is_kaiming_normal_fan_out():
    """Weight ~ N(0, 2 / n_cls) (fan-out = n_cls rows): checked on a head wide enough to estimate the std."""
    bb = vp.load_backbone(TINY, model_kwargs={**TINY_KW, "embed_dim": 256, "depth": 1, "num_heads": 2}, seed=0)
    torch.manual_seed(1)
    model = vp.build_method("linear", bb, [f"c{i}" for i in range(200)])
    std = float(model.head.weight.detach().std())
    assert abs(std - math.sqrt(2.0 / 200)) < 0.02 * math.sqrt(2.0 / 200)  # 51,200 draws: ~0.3 % sampling error
    assert abs(float(model.head.weight.detach().mean())) < 1e-3


def test_finetune_logits_are_a_head_on_its_own_tower_and_the_backbone_is_untouched(vit):
    torch.manual_seed(0)
    model = vp.build_method("finetune", vit, ["a", "b", "c"], dropout=0.1)
    x, y = _batch()
    with torch.no_grad():
        # a fresh copy equals the frozen backbone; eval mode: no dropout
        ref = _cls_feature(vit.model, x) @ model.head.weight.t() + model.head.bias
        assert_fp32_close(model(x), ref)
    frozen = {k: v.clone() for k, v in vit.model.state_dict().items()}
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    model.train()
    assert model.encoder.model.training and not vit.model.training
    model.loss({"images": x, "labels": y})["loss"].backward()
    opt.step()
    model.eval()
    assert all(torch.equal(v, vit.model.state_dict()[k]) for k, v in frozen.items())  # shared backbone unchanged
    assert all(p.grad is None for p in vit.parameters())
    with torch.no_grad():
        ref = _cls_feature(model.encoder.model, x) @ model.head.weight.t() + model.head.bias
        assert_fp32_close(model(x), ref)
        assert not torch.allclose(model(x), vit.model.forward_features(x)[:, 0] @ model.head.weight.t()
                                  + model.head.bias)


def test_finetune_dropout_sites_and_training_mode(vit):
    model = vp.build_method("finetune", vit, ["a", "b"], dropout=0.1)
    m = model.encoder.model
    assert model.dropout_layers == 1 + 2 * len(m.blocks)
    assert m.pos_drop.p == 0.1 and all(b.mlp.drop1.p == 0.1 and b.mlp.drop2.p == 0.1 for b in m.blocks)
    assert all(b.attn.attn_drop.p == 0.0 and b.attn.proj_drop.p == 0.0 for b in m.blocks)  # attention: 0
    assert vit.model.pos_drop.p == 0.0  # the shared backbone keeps its own rates
    x, _ = _batch(2)
    model.train()
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        b = model(x)
    assert not torch.allclose(a, b)  # dropout acts in training mode
    none = vp.build_method("finetune", vit, ["a", "b"], dropout=0.0)
    none.load_prompt_state_dict(model.prompt_state_dict())
    none.train()
    model.eval()
    with torch.no_grad():
        assert_fp32_close(none(x), model(x))  # rate 0 in training mode = eval mode
    with pytest.raises(ConfigError, match="dropout"):
        vp.build_method("finetune", vit, ["a"], dropout=1.0)


def test_finetune_on_clip_trains_only_the_image_tower(tiny_bb):
    model = vp.build_method("finetune", tiny_bb, ["a", "b"])
    tower = sum(p.numel() for p in tiny_bb.model.visual.parameters())
    head = model.head.weight.numel() + model.head.bias.numel()
    assert sum(p.numel() for p in model.trainable_parameters()) == tower + head
    assert model.dropout_layers == 0  # CLIP towers have no dropout layers
    assert model.total_parameters() == sum(p.numel() for p in tiny_bb.parameters()) + head


# ------------------------------------------------------------------ one optimiser step each
def test_linear_sgd_steps_equal_the_reference_rule(vit):
    """VPT's SGD: momentum 0.9, weight decay on the weight, none on ``last_layer.bias``; two steps."""
    torch.manual_seed(0)
    model = vp.build_method("linear", vit, ["a", "b", "c"])
    lr, wd, mom = 0.3, 1e-3, 0.9
    cfg = TrainConfig(lr=lr, weight_decay=wd, momentum=mom, optimizer="sgd")
    opt = build_optimizer(model.param_groups(lr), cfg)
    x, y = _batch()
    feats = vit.encode_image(x).detach()
    w, b = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    bw, bb_ = torch.zeros_like(w), torch.zeros_like(b)
    for step in range(2):
        opt.zero_grad()
        model.loss({"features": feats, "labels": y})["loss"].backward()
        # by hand: softmax CE gradient of a linear head
        p = F.softmax(feats @ w.t() + b, dim=-1)
        d = (p - F.one_hot(y, 3).float()) / len(y)
        gw, gb = d.t() @ feats + wd * w, d.sum(0)
        bw, bb_ = (gw, gb) if step == 0 else (mom * bw + gw, mom * bb_ + gb)
        w, b = w - lr * bw, b - lr * bb_
        opt.step()
        assert_fp32_close(model.head.weight, w)
        assert_fp32_close(model.head.bias, b)


def _hf_adamw(p, g, m, v, t, lr, wd, b1=0.9, b2=0.999, eps=1e-6):
    """The reference's AdamW (HuggingFace's BERT version) for one tensor, written out."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (v.sqrt() + eps)
    if wd > 0:
        p = p - lr * wd * p
    return p, m, v


def test_finetune_adamw_hf_steps_equal_the_reference_optimizer(vit):
    """Two steps of preset ``paper``'s optimiser vs the reference's AdamW by hand: decay 0.01 on every
    parameter except those whose name holds ``bias`` (LayerNorm weights are decayed, as the reference's
    ``no_decay`` patterns never match its ViT's names), decay after the update."""
    torch.manual_seed(0)
    model = vp.build_method("finetune", vit, ["a", "b", "c"], dropout=0.0)
    train = resolve_preset("finetune", "paper")["train"]
    assert (train["optimizer"], train["weight_decay"], train["batch_size"], train["warmup_epochs"]) == \
        ("adamw-hf", 0.01, 384, 5)
    lr, wd = 1e-3, train["weight_decay"]
    opt = build_optimizer(model.param_groups(lr), TrainConfig(lr=lr, weight_decay=wd, optimizer="adamw-hf"))
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad and not n.startswith("backbone.")]
    state = {n: (named[n].detach().clone(), torch.zeros_like(named[n]), torch.zeros_like(named[n])) for n in names}
    x, y = _batch()
    model.train()
    for t in (1, 2):
        opt.zero_grad()
        model.loss({"images": x, "labels": y})["loss"].backward()
        grads = {n: named[n].grad.detach().clone() for n in names}
        opt.step()
        for n in names:
            p, m, v = state[n]
            state[n] = _hf_adamw(p, grads[n], m, v, t, lr, 0.0 if "bias" in n else wd)
            assert_fp32_close(named[n], state[n][0])
    decayed = {n for n in names if "bias" not in n}
    assert "encoder.model.blocks.0.norm1.weight" in decayed and "head.weight" in decayed
    assert "encoder.model.cls_token" in decayed and "head.bias" not in decayed


def test_adamw_hf_differs_from_torch_adamw():
    w0 = torch.tensor([1.0, -2.0, 0.5])
    g = torch.tensor([1e-7, 0.3, -0.2])
    outs = []
    for cls in ("hf", "torch"):
        w = torch.nn.Parameter(w0.clone())
        cfg = TrainConfig(lr=0.1, weight_decay=0.5, optimizer="adamw-hf" if cls == "hf" else "adamw")
        opt = build_optimizer([{"params": [w], "lr": 0.1}], cfg)
        w.grad = g.clone()
        opt.step()
        outs.append(w.detach().clone())
    hf, _, _ = _hf_adamw(w0, g, torch.zeros(3), torch.zeros(3), 1, 0.1, 0.5)
    assert_fp32_close(outs[0], hf)
    assert not torch.allclose(outs[0], outs[1])


# ------------------------------------------------------------------ tuned-parameter percentages
def test_tuned_percentages_counted_independently(vit):
    n_cls = 5
    names = [f"c{i}" for i in range(n_cls)]
    vit_params = sum(p.numel() for p in timm.create_model(TINY.removeprefix("timm:"), pretrained=False, num_classes=0,
                                                          **TINY_KW).parameters())
    d, depth, p_tok = TINY_KW["embed_dim"], TINY_KW["depth"], 4
    head = d * n_cls + n_cls
    expected = {
        "linear": (head, vit_params + head),
        "finetune": (vit_params + head, vit_params + head),  # the trained copy replaces the frozen tower
        "vpt-shallow": (p_tok * d + head, vit_params + p_tok * d + head),
        "vpt-deep": (depth * p_tok * d + head, vit_params + depth * p_tok * d + head),
    }
    rows = []
    for method, (tuned, total) in expected.items():
        opts = {"num_tokens": p_tok} if method.startswith("vpt") else {}
        model = vp.build_method(method, vit, names, **opts)
        assert sum(p.numel() for p in model.trainable_parameters()) == tuned
        assert model.total_parameters() == total
        rows.append({"dataset": f"vtab/{method}", "group": "natural", "seed": 42, "acc": 50.0,
                     "trainable_params": tuned, "total_params": total})
    summary = summarize_vtab(rows, backbone_params=vit_params)
    percent = {r["dataset"].split("/")[1]: r["tuned_percent"] for r in summary["rows"]}
    assert percent["finetune"] == 100.0
    for method, (tuned, total) in expected.items():
        assert percent[method] == pytest.approx(100.0 * tuned / total, rel=1e-12)
    # rows of runs written before total_params was recorded: the backbone's count, as before
    assert summarize_vtab([{**rows[0], "total_params": None}], vit_params)["rows"][0]["tuned_percent"] == \
        pytest.approx(100.0 * head / vit_params)


# ------------------------------------------------------------------ saving
@pytest.mark.parametrize("method", ["linear", "finetune"])
def test_save_load_round_trip_gives_identical_logits(method, vit, tmp_path):
    torch.manual_seed(0)
    model = vp.build_method(method, vit, ["a", "b", "c"])
    x, y = _batch()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    model.train()
    batch = {"images": x, "labels": y} if method == "finetune" else {"features": vit.encode_image(x), "labels": y}
    model.loss(batch)["loss"].backward()
    opt.step()
    model.eval()
    path = vp.save_prompt(model, tmp_path / "prompt.safetensors")
    loaded = vp.load_prompt(path, vit)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    from safetensors.torch import load_file

    saved = load_file(str(path))
    n_saved = sum(t.numel() for t in saved.values())
    assert n_saved == sum(p.numel() for p in model.trainable_parameters())
    if method == "finetune":  # the whole tower: 4 bytes per parameter (fp32)
        assert n_saved == sum(p.numel() for p in vit.parameters()) + 3 * 32 + 3
        assert path.stat().st_size >= 4 * n_saved
    with pytest.raises(ConfigError, match="reset_head"):
        loaded.set_classnames(["a", "b"])
    loaded.reset_head(["x", "y"])
    assert loaded(x).shape == (6, 2)


def test_grids_and_presets_are_the_references():
    assert default_lrs("linear", "vtab/dtd") == (50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05)
    assert default_lrs("linear", "fgvc/cub") == default_lrs("linear", "vtab/dtd")  # tune_fgvc.py keeps 0.05
    assert sorted(default_lrs("finetune", "vtab/dtd")) == [0.0001, 0.0005, 0.001, 0.005]
    assert default_lrs("vpt-deep", "fgvc/cub")[-1] == 0.1  # the prompt grid, unchanged
    lin = resolve_preset("linear", "paper")["train"]
    assert (lin["optimizer"], lin["batch_size"], lin["epochs"], lin["warmup_epochs"], lin["weight_decay"]) == \
        ("sgd", 1024, 100, 10, 1e-4)
    assert resolve_preset("finetune", "reference")["train"]["precision"] == "fp32"
    assert resolve_preset("finetune", "e2vpt")["train"] == {**resolve_preset("finetune", "paper")["train"],
                                                            "batch_size": 224}
    assert resolve_preset("linear", "reference")["train"]["feature_views"] == 0


def test_linear_warmup_cosine_is_vpts_warmup_cosine_schedule():
    """VPT's ``WarmupCosineSchedule`` (a LambdaLR stepped once per epoch), written out: the lr of every epoch,
    and every parameter group scaled by its own lr (no constant warm-up value)."""
    from vlprompt.engine.schedule import lr_at_epoch, set_epoch_lr

    def vpt_lambda(step: int, warmup: int, total: int) -> float:
        if step < warmup:
            return float(step) / float(max(1.0, warmup))
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))

    for warmup, total in ((10, 100), (5, 100), (0, 7), (3, 3)):
        cfg = TrainConfig(lr=0.75, epochs=total, warmup_epochs=warmup, scheduler="linear-warmup-cosine")
        assert [lr_at_epoch(cfg, e) for e in range(total)] == \
            pytest.approx([0.75 * vpt_lambda(e, warmup, total) for e in range(total)], rel=1e-12, abs=0)
    cfg = TrainConfig(lr=0.5, epochs=20, warmup_epochs=5, scheduler="linear-warmup-cosine")
    w, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([{"params": [w], "lr": 0.5}, {"params": [b], "lr": 2.0}], cfg)
    assert set_epoch_lr(opt, cfg, 0) == 0.0 and [g["lr"] for g in opt.param_groups] == [0.0, 0.0]
    set_epoch_lr(opt, cfg, 2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5 * 2 / 5, 2.0 * 2 / 5])
    with pytest.raises(ConfigError, match="scheduler"):
        TrainConfig(scheduler="step")
    for method in ("linear", "finetune"):
        assert resolve_preset(method, "paper")["train"]["scheduler"] == "linear-warmup-cosine"
