"""E2VPT: key-value prompts vs hand-built attention, masks, importance scores, pruning + rewinding."""

from __future__ import annotations

import pytest
import torch

import vlprompt as vp
from numerics import assert_fp32_close
from vlprompt.errors import ConfigError
from vlprompt.methods.e2vpt import expand_pieces, importance_scores, masks_for_level, pruned_fraction

NAMES = ["red circle", "green square", "blue triangle"]
TINY = "timm:vit_tiny_patch16_224"
TINY_KW = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}


@pytest.fixture(scope="module")
def timm_bb():
    return vp.load_backbone(TINY, model_kwargs=TINY_KW)


def _hand_block(block, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """A timm block by hand: per head softmax(q [k_p; k]^T / sqrt(d_h)) [v_p; v], K = V prompts shared."""
    a = block.attn
    h = block.norm1(x)
    q, k, v = (h @ w.t() + b for w, b in zip(a.qkv.weight.chunk(3), a.qkv.bias.chunk(3), strict=True))
    heads, d_h = a.num_heads, a.head_dim
    outs = []
    for i in range(heads):
        sl = slice(d_h * i, d_h * (i + 1))
        kk = torch.cat([kv[None, :, sl].expand(x.shape[0], -1, -1), k[..., sl]], dim=1)
        vv = torch.cat([kv[None, :, sl].expand(x.shape[0], -1, -1), v[..., sl]], dim=1)
        outs.append(((q[..., sl] @ kk.transpose(1, 2)) / d_h**0.5).softmax(-1) @ vv)
    y = x + a.proj(torch.cat(outs, dim=-1))
    return y + block.mlp(block.norm2(y))


def test_logits_equal_hand_built(timm_bb):
    torch.manual_seed(0)
    model = vp.build_method("e2vpt", timm_bb, NAMES, num_tokens=4, num_kv_tokens=3, pieces=4)
    tm, pm = torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.ones(4, 4)
    pm[2, 1] = 0.0
    model.set_masks(tm, pm)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model(images)
        m = timm_bb.model
        mask = tm[:, None] * pm.repeat(1, 8)  # strided: dim d belongs to piece d % 4
        assert mask[2, 1] == 0 and mask[2, 5] == 0 and mask[2, 2] == 1
        x = m._pos_embed(m.patch_embed(images))
        x = torch.cat([x[:, :1], (model.prompt * mask).expand(2, -1, -1), x[:, 1:]], dim=1)
        for i, block in enumerate(m.blocks):
            if i >= 1:
                x = torch.cat([x[:, :1], (model.deep_prompt[i - 1] * mask).expand(2, -1, -1), x[:, 5:]], dim=1)
            x = _hand_block(block, x, model.kv_prompt[i])
        ref = model.head(m.norm(x)[:, 0])
    assert_fp32_close(ours, ref)


def test_parameters_init_and_gradients(timm_bb):
    model = vp.build_method("e2vpt", timm_bb, NAMES, pieces=16)
    assert (model.config.num_tokens, model.config.num_kv_tokens, model.config.dropout) == (10, 5, 0.1)
    assert model.kv_prompt.shape == (3, 5, 32)
    assert model.kv_prompt.abs().max() <= (6 / (5 * 16)) ** 0.5  # Kaiming-uniform bound, fan_in = N_kv * d_h
    model.train()
    out = model.loss({"images": torch.randn(3, 3, 32, 32), "labels": torch.tensor([0, 1, 2])})
    out["loss"].backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got == {"prompt", "deep_prompt", "kv_prompt", "head.weight", "head.bias"}
    assert all(p.grad is None for p in timm_bb.parameters())
    unshared = vp.build_method("e2vpt", timm_bb, NAMES, share_kv=False, pieces=16)
    assert unshared.kv_value.shape == unshared.kv_prompt.shape
    with pytest.raises(ConfigError, match="pieces"):
        vp.build_method("e2vpt", timm_bb, NAMES, pieces=5)


def test_expand_pieces_layouts():
    m = torch.tensor([[1.0, 0.0]])
    assert expand_pieces(m, 6, "strided").tolist() == [[1, 0, 1, 0, 1, 0]]
    assert expand_pieces(m, 6, "contiguous").tolist() == [[1, 1, 1, 0, 0, 0]]


def test_masks_for_level_lowest_first_with_floors():
    tok = torch.tensor([0.3, -0.2, 0.1, 0.5, -0.9, 0.0, 0.2, 0.4, 0.6, 0.7])
    pie = torch.arange(16.0).flip(0).repeat(10, 1)  # piece 15 lowest
    tm, pm = masks_for_level(tok, pie, 30, 25)
    assert tm.sum() == 7
    assert set(torch.nonzero(tm == 0).flatten().tolist()) == {4, 1, 5}  # the 3 lowest scores
    assert (pm == 0).sum(-1).tolist() == [4] * 10 and pm[0, 12:].sum() == 0
    tm, pm = masks_for_level(tok, pie, 100, 100)
    assert tm.sum() == 1 and tm[9] == 1  # one token always survives (the highest score)
    assert pm.sum(-1).tolist() == [4] * 10  # at least 4 pieces survive


def test_importance_scores_are_mask_gradients(timm_bb):
    torch.manual_seed(1)
    model = vp.build_method("e2vpt", timm_bb, NAMES, num_tokens=3, pieces=4)
    batch = {"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 1])}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    tok, pie = importance_scores(model, [batch, batch])
    assert tok.shape == (3,) and pie.shape == (3, 4)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)

    def loss_at(token_mask):
        with torch.no_grad():
            model.set_masks(token_mask, torch.ones(3, 4))
            return float(torch.nn.functional.cross_entropy(model(batch["images"]), batch["labels"]))

    eps = 1e-2
    for k in range(3):
        up, down = torch.ones(3), torch.ones(3)
        up[k], down[k] = 1 + eps, 1 - eps
        assert (loss_at(up) - loss_at(down)) / (2 * eps) == pytest.approx(float(tok[k]), rel=2e-2, abs=2e-4)
    model.set_masks(torch.ones(3), torch.ones(3, 4))
    abs_model = vp.build_method("e2vpt", timm_bb, NAMES, num_tokens=3, pieces=4, importance="abs")
    abs_model.load_prompt_state_dict(model.prompt_state_dict())
    assert torch.allclose(importance_scores(abs_model, [batch])[0], tok.abs(), atol=1e-6)


def test_masks_survive_save_and_load(timm_bb, tmp_path):
    model = vp.build_method("e2vpt", timm_bb, NAMES, num_tokens=4, pieces=8)
    model.set_masks(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.ones(4, 8))
    assert pruned_fraction(model) == pytest.approx(0.25)
    vp.save_prompt(model, tmp_path / "prompt.safetensors")
    loaded = vp.load_prompt(tmp_path / "prompt.safetensors", timm_bb)
    assert torch.equal(loaded.token_mask, model.token_mask)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(images), model(images), atol=1e-6)


def test_prune_and_rewind_end_to_end(timm_bb, shapes_root, cache_dir):
    from vlprompt.protocols.e2vpt_prune import prune_and_rewind

    task = vp.load_dataset("imagefolder", shapes_root, shots=2, seed=1)
    model = vp.build_method("e2vpt", timm_bb, task.classnames, num_tokens=4, num_kv_tokens=2, pieces=8)
    out = prune_and_rewind(model, task, token_levels=(50,), piece_levels=(25, 50), epochs=1, batch_size=5,
                           lr=0.1, precision="fp32", cache_dir=cache_dir, progress=False)
    assert len(out["grid"]) == 2 and out["token_pct"] == 50
    best = out["model"]
    assert best is not model and best.token_mask.sum() == 2
    assert (best.piece_mask == 0).sum(-1).tolist() == [int(8 * out["piece_pct"] / 100)] * 4
    assert 0.0 <= out["val_acc"] <= 100.0 and len(out["token_scores"]) == 4


def test_kv_dropout_never_fires_by_default_as_in_the_reference(timm_bb):
    """The reference's ``train()`` keeps the encoder (where KV dropout lives) in eval mode."""
    from vlprompt.errors import VlpromptWarning

    with pytest.warns(VlpromptWarning, match="kv_dropout_in_training=True"):
        model = vp.build_method("e2vpt", timm_bb, ["a", "b"], num_tokens=2, num_kv_tokens=3, kv_dropout=0.5)
    model.train(True)
    kv = model.visual_prompts().kv
    assert all(torch.equal(kv[i].key, model.kv_prompt[i]) for i in kv)
    active = vp.build_method("e2vpt", timm_bb, ["a", "b"], num_tokens=2, num_kv_tokens=3, kv_dropout=0.5,
                             kv_dropout_in_training=True)
    active.train(True)
    torch.manual_seed(0)
    key = active.visual_prompts().kv[0].key
    kept = key != 0
    assert 0 < kept.float().mean() < 1  # inverted dropout: zeros, the rest scaled by 1 / (1 - p)
    assert_fp32_close(key[kept], 2 * active.kv_prompt[0][kept])
    active.train(False)
    assert torch.equal(active.visual_prompts().kv[0].key, active.kv_prompt[0])
