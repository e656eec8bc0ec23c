"""CoCoOp: batched conditional prompts against a per-image loop, chunking, Meta-Net input, size, fit."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import vlprompt as vp
from numerics import assert_fp32_close
from vlprompt.methods.cocoop import CoCoOpConfig, build_meta_net

NAMES = ["red circle", "green_square", "blue triangle", "a very long purple cross name"]


def _model(bb, **config):
    torch.manual_seed(0)
    model = vp.build_method("cocoop", bb, NAMES, **config)
    with torch.no_grad():  # make the Meta-Net's bias large enough to matter
        model.meta_net.linear2.weight.mul_(20.0)
        model.meta_net.linear2.bias.normal_(0.0, 0.1)
    return model


@pytest.fixture(scope="module")
def bb64(tiny_bb):
    """A float64 copy of tiny-clip, to compare computations below fp32 rounding."""
    return copy.deepcopy(tiny_bb).double()


def _hand_prompt(bb, ctx: torch.Tensor, name: str, position: str) -> tuple[torch.Tensor, int]:
    """[SOS] + ctx + class tokens + '.' + EOT + padding, assembled from token ids (CoOp style)."""
    tok = bb.tokenize([name.replace("_", " ") + "."])[0]
    eot = int(tok.argmax())
    with torch.no_grad():
        emb = bb.model.token_embedding(tok)
    sos, words, rest = emb[:1], emb[1 : eot - 1], emb[eot - 1 :]
    m = ctx.shape[0]
    if position == "end":
        seq = [sos, ctx, words, rest]
    elif position == "front":
        seq = [sos, words, ctx, rest]
    else:
        seq = [sos, ctx[: m // 2], words, ctx[m // 2 :], rest]
    return torch.cat(seq)[: bb.context_length], eot + m


def _loop(model, bb, feats: torch.Tensor, position: str) -> tuple[torch.Tensor, torch.Tensor]:
    """An independent per-image loop: shifted ctx → hand-built prompts → encode_text.

    Returns the raw text features ``(B, n_cls, D)`` and the logits ``(B, n_cls)``.
    """
    texts, rows = [], []
    for f in feats:
        pi = model.meta_net(f / f.norm())
        ctx = model.ctx + pi
        prompts, eots = zip(*[
            _hand_prompt(bb, ctx[i] if ctx.dim() == 3 else ctx, n, position) for i, n in enumerate(NAMES)
        ], strict=True)
        text = bb.encode_text(torch.stack(prompts), torch.tensor(eots))
        texts.append(text)
        rows.append(bb.logit_scale * F.normalize(text, dim=-1) @ (f / f.norm()))
    return torch.stack(texts), torch.stack(rows)


def _loop_logits(model, bb, feats: torch.Tensor, position: str) -> torch.Tensor:
    return _loop(model, bb, feats, position)[1]


@pytest.mark.parametrize(("position", "csc"), [("end", False), ("front", False), ("middle", False), ("end", True)])
def test_batched_logits_equal_per_image_loop(tiny_bb, bb64, position, csc):
    model = _model(tiny_bb, class_token_position=position, csc=csc)
    feats = torch.randn(5, tiny_bb.embed_dim)
    with torch.no_grad():
        ours = model.logits_from_features(feats)
        ref = _loop_logits(model, tiny_bb, feats, position)
        shared = model.logits_from_features(feats[:1].expand(5, -1))
    scale = float(tiny_bb.logit_scale)
    assert ours.shape == (5, len(NAMES))
    # fp32: cosines (logits / logit_scale) agree to 1e-5; batch-size-dependent rounding only
    assert_fp32_close(ours / scale, ref / scale)
    assert not torch.allclose(ours[1:], shared[1:], atol=1e-3)  # the prompts really depend on the image
    # fp64: the batched text features equal the loop's to double-precision rounding
    model64 = vp.build_method("cocoop", bb64, NAMES, class_token_position=position, csc=csc).double()
    model64.load_prompt_state_dict(model.prompt_state_dict())
    with torch.no_grad():
        text64 = model64.conditional_text_features(feats.double())
        ref64, _ = _loop(model64, model64.backbone, feats.double(), position)
    assert text64.dtype == torch.float64
    assert torch.allclose(text64, ref64, atol=1e-10, rtol=0)


def test_train_outputs_and_image_path(tiny_bb):
    model = _model(tiny_bb)
    images = torch.randn(3, 3, 64, 64)
    labels = torch.tensor([0, 3, 1])
    out = model.train_outputs({"images": images, "labels": labels})
    assert out["text"].shape == (3, len(NAMES), tiny_bb.embed_dim)
    with torch.no_grad():
        feats = tiny_bb.encode_image(images)
        ref = _loop_logits(model, tiny_bb, feats, "end")
        raw = model.conditional_text_features(feats)
    scale = float(tiny_bb.logit_scale)
    assert_fp32_close(out["logits"] / scale, ref / scale)
    assert torch.allclose(out["text"], raw, atol=1e-6)  # unnormalised
    assert not torch.allclose(out["text"].norm(dim=-1), torch.ones(3, len(NAMES)))
    assert torch.allclose(out["ce"], F.cross_entropy(ref, labels), atol=1e-5)
    assert model.eval_text_features() is None
    with torch.no_grad():
        assert_fp32_close(model(images) / scale, ref / scale)
    with pytest.raises(NotImplementedError, match="conditional"):
        model.raw_text_features()


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_equals_unchunked(tiny_bb, chunk):
    full = _model(tiny_bb, class_token_position="middle")
    part = _model(tiny_bb, class_token_position="middle", text_chunk=chunk)
    part.load_prompt_state_dict(full.prompt_state_dict())
    feats = torch.randn(3, tiny_bb.embed_dim)
    with torch.no_grad():
        a = full.conditional_text_features(feats)
        b = part.conditional_text_features(feats)
    assert_fp32_close(b, a)  # chunks change the matmul shapes, so the kernels' blocking


def test_gradients_reach_ctx_and_meta_net_through_chunks(tiny_bb):
    model = _model(tiny_bb, text_chunk=3)
    out = model.loss({"features": torch.randn(2, tiny_bb.embed_dim), "labels": torch.tensor([0, 2])})
    out["loss"].backward()
    names = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert names == {"ctx", "meta_net.linear1.weight", "meta_net.linear1.bias",
                     "meta_net.linear2.weight", "meta_net.linear2.bias"}


def test_meta_net_sees_the_normalised_feature(tiny_bb):
    model = _model(tiny_bb)
    seen = []
    model.meta_net.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach()))
    feats = torch.randn(3, tiny_bb.embed_dim)
    with torch.no_grad():
        a = model.logits_from_features(feats)
        b = model.logits_from_features(7.5 * feats)
    assert torch.allclose(seen[0].norm(dim=-1), torch.ones(3), atol=1e-6)
    assert torch.allclose(seen[0], seen[1], atol=1e-6)
    assert torch.allclose(a, b, atol=1e-5)


def test_defaults_and_parameter_count(tiny_bb):
    cfg = CoCoOpConfig()
    assert (cfg.n_ctx, cfg.ctx_init, cfg.csc, cfg.class_token_position) == (4, "a photo of a", False, "end")
    # ViT-B/16: D = text width = 512, n_ctx 4 -> 2,048 + 33,312 = 35,360 (the paper's count)
    net = build_meta_net(512, 512, cfg.meta_reduction)
    shapes = [tuple(p.shape) for p in net.parameters()]
    assert shapes == [(32, 512), (32,), (512, 32), (512,)]
    assert 4 * 512 + sum(p.numel() for p in net.parameters()) == 35_360
    model = vp.build_method("cocoop", tiny_bb, NAMES)
    d, w = tiny_bb.embed_dim, tiny_bb.text_width
    expected = 4 * w + (d * (d // 16) + d // 16) + ((d // 16) * w + w)
    assert sum(p.numel() for p in model.trainable_parameters()) == expected
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())


def test_fit_one_epoch(tiny_bb, shapes_root, cache_dir, tmp_path):
    task = vp.load_dataset("imagefolder", shapes_root, shots=4, seed=1)
    vp.seed_everything(1)
    model = vp.build_method("cocoop", tiny_bb, task.classnames)
    before = model.ctx.detach().clone()
    res = vp.fit(model, task, epochs=1, lr=0.002, batch_size=1, feature_views=1, cache_dir=cache_dir,
                 run_dir=str(tmp_path / "run"))
    assert res["method"] == "cocoop" and 0 <= res["acc"] <= 100
    assert res["trainable_params"] == sum(p.numel() for p in model.trainable_parameters())
    assert res["final_loss"] > 0
    loaded = vp.load_prompt(tmp_path / "run" / "prompt.safetensors", tiny_bb)
    assert torch.equal(loaded.ctx, model.ctx.detach())
    assert not torch.equal(before, model.ctx.detach())  # epoch 0 runs at the warm-up lr 1e-5


def test_one_text_forward_per_batch_not_per_image(tiny_bb, monkeypatch):
    """B × n_cls prompts go through one encode_text call (or ceil(B·n_cls / text_chunk) calls)."""
    calls = []
    original = tiny_bb.encode_text

    def counting(embeds, eot_idx, *args, **kwargs):
        calls.append(embeds.shape[0])
        return original(embeds, eot_idx, *args, **kwargs)

    monkeypatch.setattr(tiny_bb, "encode_text", counting)
    shared_calls = []
    original_shared = tiny_bb.encode_text_shared

    def counting_shared(prefix, suffix, *args, **kwargs):
        shared_calls.append(prefix.shape[0] * suffix.shape[-3])
        return original_shared(prefix, suffix, *args, **kwargs)

    monkeypatch.setattr(tiny_bb, "encode_text_shared", counting_shared)
    feats = torch.randn(6, tiny_bb.embed_dim)
    with torch.no_grad():
        vp.build_method("cocoop", tiny_bb, NAMES, share_prefix=False).logits_from_features(feats)
        assert calls == [6 * len(NAMES)]
        calls.clear()
        vp.build_method("cocoop", tiny_bb, NAMES, text_chunk=10, share_prefix=False).logits_from_features(feats)
        assert calls == [10, 10, 4]
        calls.clear()
        # shared prefix: whole images per forward, at most text_chunk sequences (at least one image)
        vp.build_method("cocoop", tiny_bb, NAMES).logits_from_features(feats)
        assert calls == [] and shared_calls == [6 * len(NAMES)]
        shared_calls.clear()
        vp.build_method("cocoop", tiny_bb, NAMES, text_chunk=10).logits_from_features(feats)
    per = 10 // len(NAMES)
    assert shared_calls == [min(per, 6 - i) * len(NAMES) for i in range(0, 6, per)]
