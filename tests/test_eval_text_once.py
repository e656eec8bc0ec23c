"""Evaluation encodes the class prompts once per evaluation, not once per test batch (all but CoCoOp)."""

from __future__ import annotations

import pytest
import torch

import vlprompt as vp
from vlprompt.engine.evaluate import evaluate_samples
from vlprompt.engine.features import FeatureCache
from vlprompt.methods import list_methods

# image-conditioned prompts must re-encode per image; no-prompt methods never encode at test time
PER_IMAGE = {"cocoop"}
# clip-adapter, tip-adapter(-f): frozen template features, built once per class set
NO_TEXT = {"zeroshot", "linear-probe", "clip-adapter", "tip-adapter", "tip-adapter-f"}
CLASS_AWARE = {"softcpt-cata", "softcpt-cats", "softcpt-csta", "softcpt-csts"}
OPTIONS = {"maple": {"prompt_depth": 2}, "dapt": {"prompt_depth": 2}, "dapt-g": {"prompt_depth": 2},
           "ivlp": {"prompt_depth_text": 2, "prompt_depth_vision": 2},
           "promptsrc": {"prompt_depth_text": 2, "prompt_depth_vision": 2}}


def _names() -> list[str]:
    from vlprompt.methods import get_method_class

    bases = [n for n in list_methods() if not n.startswith("+") and n not in PER_IMAGE | NO_TEXT]
    bases = [n for n in bases if getattr(get_method_class(n), "has_text_side", True)]  # vision classifiers
    return bases + [f"{b}+dept" for b in bases]


@pytest.mark.parametrize("name", _names())
def test_text_tower_runs_once_per_evaluation(name, tiny_bb, shapes_root, cache_dir, monkeypatch):
    task = vp.load_dataset("imagefolder", shapes_root)
    model = vp.build_method(name, tiny_bb, task.classnames, **OPTIONS.get(name.split("+")[0], {}))
    calls = []
    original = tiny_bb.encode_text

    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_bb, "encode_text", counting)
    original_shared = tiny_bb.encode_text_shared

    def counting_shared(prefix, suffix, *args, **kwargs):  # shared prefix: one call encodes every class
        calls.append(suffix.shape[-3])
        return original_shared(prefix, suffix, *args, **kwargs)

    monkeypatch.setattr(tiny_bb, "encode_text_shared", counting_shared)
    cache = FeatureCache(tiny_bb, "fp32", torch.device("cpu"), cache_dir)
    model.eval()
    res = evaluate_samples(model, task.test[:4], cache, "fp32", torch.device("cpu"), batch_size=4)
    one_batch, calls[:] = list(calls), []
    res = evaluate_samples(model, task.test[:12], cache, "fp32", torch.device("cpu"), batch_size=4)
    assert res["n"] == 12
    # the class prompts are encoded once however many test batches (3 here); SoftCPT also encodes its task
    # names (one row per task) and, class-aware variants, the class-name prompts of its meta-network input
    n = len(task.classnames)
    assert calls == one_batch and calls.count(n) == (2 if name.split("+")[0] in CLASS_AWARE else 1), calls
    assert sum(calls) - calls.count(n) * n <= 1  # + one task-name row
