"""Shared-prefix text tower: the same features and gradients as the full per-class path (fp32)."""

from __future__ import annotations

import open_clip
import pytest
import torch

import vlprompt as vp
from numerics import assert_fp32_close
from vlprompt.backbones.clip import ClipBackbone
from vlprompt.backbones.configs import register_configs

register_configs()
NAMES = ["cat", "sea lion", "golden retriever puppy with a very long name", "a", "Annual_Crop_Land"]


def _make(arch: str) -> ClipBackbone:
    torch.manual_seed(0)
    return ClipBackbone(open_clip.create_model(arch), open_clip.get_tokenizer(arch), name=arch)


@pytest.fixture(scope="module", params=["tiny-clip", "ViT-B-16"])
def bb(request):
    return _make(request.param)


def _features_and_grads(model) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(1)
    feats = model.raw_text_features()
    weights = torch.randn_like(feats)
    params = model.trainable_parameters()
    grads = torch.autograd.grad((feats * weights).sum(), params, allow_unused=True)  # DePT's head: unused
    return feats.detach(), [g for g in grads if g is not None]


@pytest.mark.parametrize(("name", "opts"), [
    ("coop", {"n_ctx": 16}), ("coop", {"ctx_init": "a photo of a"}), ("kgcoop", {}), ("coop+dept", {"n_ctx": 4}),
])
def test_shared_prefix_equals_the_full_path(bb, name, opts):
    torch.manual_seed(0)
    shared = vp.build_method(name, bb, NAMES, **opts)
    torch.manual_seed(0)
    full = vp.build_method(name, bb, NAMES, share_prefix=False, **opts)
    inner = getattr(shared, "inner", shared)
    assert inner.shares_prefix() and not getattr(full, "inner", full).shares_prefix()
    f1, g1 = _features_and_grads(shared)
    f2, g2 = _features_and_grads(full)
    assert g1 and len(g1) == len(g2)
    assert_fp32_close(f1, f2)
    for a, b in zip(g1, g2, strict=True):
        assert_fp32_close(a / b.abs().max(), b / b.abs().max())  # relative to the gradient's scale


def test_the_full_path_is_kept_where_the_prefix_is_not_shared(bb):
    assert not vp.build_method("coop", bb, NAMES, n_ctx=2, csc=True).shares_prefix()
    assert not vp.build_method("coop", bb, NAMES, n_ctx=2, class_token_position="middle").shares_prefix()
    assert not vp.build_method("coop", bb, NAMES, n_ctx=2, class_token_position="front").shares_prefix()


def test_a_bidirectional_text_tower_never_shares():
    from vlprompt.backbones.base import Backbone

    assert Backbone.supports_prefix_sharing is False
