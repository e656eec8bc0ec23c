"""Deferred finiteness checks and device-side loss sums of the training loop (no host sync per step)."""

from __future__ import annotations

import math

import pytest
import torch

import vlprompt as vp
from vlprompt.engine import train as train_mod
from vlprompt.errors import TrainingError


def test_first_non_finite_step_of_a_window_is_named():
    losses = torch.tensor([1.0, 2.0, math.nan, math.inf, 3.0], dtype=torch.float64)
    train_mod._check_finite(losses, 0, 2, 0, 3, 0.1, "fp32", None)  # the finite part passes
    with pytest.raises(TrainingError, match=r"loss is nan at epoch 2/3, step 3/5 \(lr 0.1\)"):
        train_mod._check_finite(losses, 0, 5, 1, 3, 0.1, "fp32", None)
    with pytest.raises(TrainingError, match=r"loss is inf at epoch 1/3, step 4/5"):
        train_mod._check_finite(losses, 3, 5, 0, 3, 0.1, "bf16", None)


def test_epoch_sums_add_in_step_order_in_float64():
    g = torch.Generator().manual_seed(0)
    losses = (torch.rand(97, generator=g) * 3).float().double()
    accs = torch.rand(97, generator=g, dtype=torch.float64)
    scales = [0.5 if i % 3 else 1.0 for i in range(97)]
    tot_loss, tot_acc = train_mod._epoch_sums(losses, accs, scales)
    ref_loss, ref_acc = 0.0, 0.0
    for loss, acc, scale in zip(losses.tolist(), accs.tolist(), scales, strict=True):
        ref_loss += loss
        ref_acc += acc * scale
    assert tot_loss == ref_loss and tot_acc == ref_acc  # the same floats, not just close


@pytest.mark.parametrize("every", [1, 3])
def test_divergence_is_reported_at_the_same_step_whatever_the_window(every, shapes_root, cache_dir, tiny_bb,
                                                                      monkeypatch):
    monkeypatch.setattr(train_mod, "SYNC_EVERY", every)
    task = vp.load_dataset("imagefolder", shapes_root, shots=2)
    model = vp.build_method("coop", tiny_bb, task.classnames, n_ctx=2)
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at epoch 2/2, step 2/2"):
        vp.fit(model, task, epochs=2, lr=1e30, batch_size=4, cache_dir=cache_dir, evaluate_test=False)


def test_results_do_not_depend_on_the_window(shapes_root, cache_dir, tiny_bb, monkeypatch):
    task = vp.load_dataset("imagefolder", shapes_root, shots=4)
    runs = []
    for every in (1, 50):
        monkeypatch.setattr(train_mod, "SYNC_EVERY", every)
        train_mod.seed_everything(1)
        model = vp.build_method("coop", tiny_bb, task.classnames, n_ctx=2)
        rows: list[dict] = []
        res = vp.fit(model, task, epochs=2, lr=0.002, batch_size=2, cache_dir=cache_dir, precision="fp32",
                     on_epoch_end=lambda e, r, rows=rows: rows.append(r))
        runs.append(([(r["loss"], r["train_acc"]) for r in rows], res["acc"], res["final_loss"]))
    assert runs[0] == runs[1]
