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
    ("maple", {"prompt_depth": 3}), ("maple", {"prompt_depth": 3, "ctx_init": ""}), ("maple+dept", {"prompt_depth": 2}),
    ("dapt", {"prompt_depth": 3}),
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


def test_fixed_words_every_class_has_join_the_prefix(bb):
    from vlprompt.methods.prompting import ClassPrompts

    maple = vp.build_method("maple", bb, NAMES, prompt_depth=2)  # P_0 = "a photo"; "of a" is fixed
    assert maple.prompts.common_len == 2
    golden = ClassPrompts(bb, ["golden eagle", "golden retriever"], 4, None)
    assert golden.common_len == 1  # the shared first word of the names
    single = ClassPrompts(bb, ["cat"], 4, None)
    assert 4 + 1 + single.common_len <= int(single.eot_idx.min())  # the prefix ends before the EOT


def test_the_full_path_is_kept_where_the_prefix_is_not_shared(bb):
    assert not vp.build_method("coop", bb, NAMES, n_ctx=2, csc=True).shares_prefix()
    assert not vp.build_method("coop", bb, NAMES, n_ctx=2, class_token_position="middle").shares_prefix()
    assert not vp.build_method("coop", bb, NAMES, n_ctx=2, class_token_position="front").shares_prefix()


def test_a_bidirectional_text_tower_never_shares():
    from vlprompt.backbones.base import Backbone

    assert Backbone.supports_prefix_sharing is False


@pytest.mark.parametrize("chunk", [1024, 7])  # 7 sequences: one image per forward, the chunking path
def test_cocoop_shared_prefix_per_image_equals_the_full_path(bb, chunk):
    torch.manual_seed(0)
    shared = vp.build_method("cocoop", bb, NAMES, text_chunk=chunk)
    torch.manual_seed(0)
    full = vp.build_method("cocoop", bb, NAMES, text_chunk=chunk, share_prefix=False)
    assert shared.shares_prefix() and not full.shares_prefix()
    torch.manual_seed(2)
    image_features = torch.randn(3, bb.embed_dim)
    out = []
    for model in (shared, full):
        feats = model.conditional_text_features(image_features)
        weights = torch.randn_like(feats, generator=torch.Generator().manual_seed(3))
        grads = torch.autograd.grad((feats * weights).sum(), model.trainable_parameters())
        out.append((feats.detach(), grads))
    assert out[0][0].shape == (3, len(NAMES), bb.embed_dim)
    assert_fp32_close(out[0][0], out[1][0])
    for a, b in zip(out[0][1], out[1][1], strict=True):
        assert_fp32_close(a / b.abs().max(), b / b.abs().max())


def test_classes_of_different_lengths_run_in_length_buckets(bb):
    from vlprompt.backbones.clip import _length_buckets

    assert _length_buckets([5, 5, 9, 30], 3, overhead=0) == [([0, 1], 6), ([2], 10), ([3], 31)]
    assert _length_buckets([5, 6], 3) == [([0, 1], 7)]  # merging one token of padding beats another pass
    names = [f"cat {i}" for i in range(40)]
    names += [f"a very long class name with many many more words {i}" for i in range(8)]
    torch.manual_seed(0)
    shared = vp.build_method("coop", bb, names, n_ctx=4)
    assert len(_length_buckets(shared.prompts.eot_idx.tolist(), 5)) > 1
    torch.manual_seed(0)
    full = vp.build_method("coop", bb, names, n_ctx=4, share_prefix=False)
    f1, g1 = _features_and_grads(shared)
    f2, g2 = _features_and_grads(full)
    assert_fp32_close(f1, f2)
    assert_fp32_close(g1[0] / g2[0].abs().max(), g2[0] / g2[0].abs().max())


TASKS = (("animal recognition", 3), ("land use classification", 2))


def _count_shared(bb, monkeypatch) -> list[int]:
    calls: list[int] = []
    original = bb.encode_text_shared

    def counting(prefix, suffix, *args, **kwargs):
        calls.append(suffix.shape[-3])
        return original(prefix, suffix, *args, **kwargs)

    monkeypatch.setattr(bb, "encode_text_shared", counting)
    return calls


@pytest.mark.parametrize(("name", "opts", "shares", "shared_rows"), [
    # one shared-prefix pass each: the task prompts (2 rows), the class prompts (5 rows, each class continuing
    # its own task's context), the class-name prompts of class-aware variants (5 rows)
    ("softcpt-nata", {}, True, [2, 5]),
    ("softcpt-nats", {}, True, [5]),  # one task context per task: the task prompts take the full path
    ("softcpt-nata", {"task_n_ctx": 0}, True, [5]),  # plain "<task name>." prompts: nothing learned to share
    ("softcpt-nata+dept", {}, True, [2, 5]),
    ("softcpt-cata", {}, False, [2, 5]),  # class prompts have per-class contexts; the meta input shares
    ("softcpt-csta", {}, False, [2]),  # per-class class contexts: only the task prompts share
    ("softcpt-cats", {"class_token_position": "middle"}, False, [5]),
    ("coop-mt", {}, True, [5]),  # one context for all classes of all tasks
    ("coop-mt", {"task_csc": True}, True, [5]),
    ("coop-mt", {"ctx_init": "a photo of a"}, True, [5]),
    ("coop-mt", {"csc": True}, False, []),
])
def test_softcpt_shares_per_task_and_equals_the_full_path(bb, monkeypatch, name, opts, shares, shared_rows):
    """SoftCPT (per task) and the hard-sharing baseline: features and gradients of the shared path equal
    the full path (share_prefix=False), for all classes and for a class-sampled subset of rows."""
    opts = {"n_ctx": 16, "tasks": TASKS, **opts}
    torch.manual_seed(0)
    shared = vp.build_method(name, bb, NAMES, **opts)
    torch.manual_seed(0)
    full = vp.build_method(name, bb, NAMES, share_prefix=False, **opts)
    inner = getattr(shared, "inner", shared)
    assert inner.shares_prefix() == shares and not getattr(full, "inner", full).shares_prefix()
    calls = _count_shared(bb, monkeypatch)
    f1, g1 = _features_and_grads(shared)
    assert calls == shared_rows
    calls.clear()
    f2, g2 = _features_and_grads(full)
    assert calls == []  # the full model never takes the shared path
    assert g1 and len(g1) == len(g2)
    assert_fp32_close(f1, f2)
    for a, b in zip(g1, g2, strict=True):
        assert_fp32_close(a / b.abs().max(), b / b.abs().max())
    rows = torch.tensor([0, 2, 3])  # class sampling: two classes of task 0, one of task 1
    sub = [getattr(m, "inner", m).raw_text_features(rows) for m in (shared, full)]
    assert_fp32_close(sub[0], sub[1])
    assert_fp32_close(sub[0], f2[rows])


def test_softcpt_class_sampled_step_equals_the_full_path(bb):
    """A class-sampled training step (cls_sample_rate): the same loss and gradients either way."""
    out = []
    for share in (True, False):
        torch.manual_seed(0)
        model = vp.build_method("softcpt-nata", bb, NAMES, n_ctx=16, tasks=TASKS, cls_sample_rate=0.5,
                                share_prefix=share)
        model.train()
        torch.manual_seed(5)  # the same class draw for both
        batch = {"features": torch.randn(4, bb.embed_dim), "labels": torch.tensor([0, 1, 3, 4])}
        loss = model.loss(batch)["loss"]
        out.append((loss.detach(), torch.autograd.grad(loss, model.trainable_parameters())))
    assert_fp32_close(out[0][0], out[1][0])
    for a, b in zip(out[0][1], out[1][1], strict=True):
        assert_fp32_close(a / b.abs().max(), b / b.abs().max())


@pytest.mark.parametrize(("name", "opts"), [
    ("coop", {"n_ctx": 4}), ("kgcoop", {}), ("coop+dept", {"n_ctx": 4}), ("maple", {"prompt_depth": 2}),
    ("dapt", {"prompt_depth": 2}), ("softcpt-nata", {"tasks": TASKS}),
    ("coop-mt", {"task_csc": True, "tasks": TASKS}), ("cocoop", {}),
])
def test_evaluation_logits_equal_the_full_path(bb, name, opts):
    """Evaluation (eval mode, no grad, text features once per evaluation): the same logits either way."""
    logits = []
    torch.manual_seed(4)
    images = torch.randn(3, bb.embed_dim)
    for share in (True, False):
        torch.manual_seed(0)
        model = vp.build_method(name, bb, NAMES, share_prefix=share, **opts).eval()
        with torch.no_grad():
            text = model.eval_text_features()
            logits.append(model.logits_from_features(images, text) if text is not None
                          else model.logits_from_features(images))
    assert logits[0].shape == (3, len(NAMES))
    assert_fp32_close(logits[0], logits[1])
