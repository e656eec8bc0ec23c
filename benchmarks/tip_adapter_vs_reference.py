"""Tip-Adapter / Tip-Adapter-F side by side with the reference's own functions, on identical random features.

The reference (gaopengcuhk/Tip-Adapter) is imported at run time from a checkout you provide (its ``utils.py``,
``main.py``, ``clip/`` and ``datasets/``); nothing of it is copied here. Its ``.cuda()`` calls become no-ops
(CPU), ``gdown`` (a download helper its dataset module imports) is stubbed, and numpy 2's refusal of
``float()`` on a 1-element array is shimmed for its ``cls_acc``. Compared, in fp32 on CPU:

* ``build_cache_model`` (10 augmented passes of a fake CLIP) vs the method's ``fit_features``: keys, values;
* the tip logits at three (β, α) vs ``logits_from_features``;
* ``search_hp`` at three search scales vs :func:`vlprompt.methods.tip_adapter.search_alpha_beta`;
* ``run_tip_adapter_F`` for one epoch of one batch vs one step of the engine's optimizer on the method's loss.

Usage::

    git clone https://github.com/gaopengcuhk/Tip-Adapter /tmp/tipref
    .venv/bin/python benchmarks/tip_adapter_vs_reference.py --reference /tmp/tipref --out runs/tip_vs_reference.json
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import io
import json
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="a checkout of gaopengcuhk/Tip-Adapter")
    parser.add_argument("--out", default="tip_vs_reference.json")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(args.reference).resolve()))
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    sys.modules.setdefault("gdown", types.ModuleType("gdown"))
    import main as ref_main  # the reference's main.py
    import utils as ref  # the reference's utils.py

    ref.float = lambda a: builtins.float(a.reshape(()) if hasattr(a, "reshape") else a)
    ref_main.float = ref.float

    import vlprompt as vp
    from vlprompt.engine.config import TrainConfig
    from vlprompt.engine.schedule import build_optimizer, set_epoch_lr
    from vlprompt.methods.tip_adapter import search_alpha_beta

    torch.manual_seed(0)
    n_views, n_cls, shots, dim, n_val = 10, 7, 4, 32, 60
    n = n_cls * shots
    views = torch.randn(n_views, n, dim) + torch.randn(1, n, dim) * 2  # raw features of 10 augmented passes
    labels = torch.arange(n_cls).repeat_interleave(shots)
    batch = 8
    n_batches = (n + batch - 1) // batch

    class PassCLIP:  # encode_image(indices) -> the current augmented pass's features
        calls = 0

        def encode_image(self, images: torch.Tensor) -> torch.Tensor:
            out = views[self.calls // n_batches][images]
            self.calls += 1
            return out

    loader = [(torch.arange(i, min(i + batch, n)), labels[i:i + batch]) for i in range(0, n, batch)]
    work = tempfile.mkdtemp()
    cfg = {"load_cache": False, "augment_epoch": n_views, "cache_dir": work, "shots": shots, "search_hp": True,
           "search_scale": [7, 3], "search_step": [200, 20]}
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        ref_keys, ref_values = ref.build_cache_model(cfg, PassCLIP(), loader)
    ref_keys = ref_keys.clone()  # (D, N); cloned: the reference's adapter trains this storage in place

    bb = vp.load_backbone("tiny-clip")
    names = [f"class {i}" for i in range(n_cls)]
    text = F.normalize(torch.randn(n_cls, dim), dim=-1)

    def method(name: str) -> vp.PromptMethod:
        m = vp.build_method(name, bb, names, search=False)
        m.class_features = text  # the same random classifier on both sides
        m.cache_keys = nn.Parameter(torch.zeros(0, dim), requires_grad=name == "tip-adapter-f")
        m.fit_features((views, labels), None)
        return m

    out: dict = {}
    model = method("tip-adapter")
    out["keys_max_abs_diff"] = (model.cache_keys.detach() - ref_keys.t()).abs().max().item()
    out["values_equal"] = torch.equal(model.cache_values, ref_values.float())

    idx = torch.randint(n, (n_val,))
    val = F.normalize(torch.randn(n_val, dim) * 2.5 + views.mean(0)[idx], dim=-1)
    val_labels = labels[idx]
    clip_weights = text.t()
    out["logits"] = []
    for beta, alpha in [(1.0, 1.17), (5.5, 2.0), (0.3, 10.0)]:
        affinity = val @ ref_keys
        ref_logits = 100.0 * val @ clip_weights + ((-1) * (beta - beta * affinity)).exp() @ ref_values.float() * alpha
        model.alpha, model.beta = alpha, beta
        with torch.no_grad():
            ours = model.logits_from_features(val * 3.0)  # raw features: the method normalises them
        out["logits"].append({"beta": beta, "alpha": alpha, "max_abs_diff": (ours - ref_logits).abs().max().item(),
                              "max_abs_logit": ref_logits.abs().max().item()})
    out["search"] = []
    for scale in ([7, 3], [13, 13], [50, 50]):
        cfg["search_scale"] = scale
        with quiet:
            rb, ra = ref.search_hp(cfg, ref_keys, ref_values.float(), val, val_labels, clip_weights)
        ob, oa, acc = search_alpha_beta(val, val_labels, 100.0 * val @ clip_weights, ref_keys.t(), ref_values.float(),
                                        tuple(scale), (200, 20))
        out["search"].append({"scale": scale, "reference": [rb, ra], "vlprompt": [ob, oa], "val_acc": acc,
                              "identical": rb == ob and ra == oa})

    step_features = views[0].clone()

    class StepCLIP:
        dtype = torch.float32

        def encode_image(self, images: torch.Tensor) -> torch.Tensor:
            return step_features[images].clone()

    cfg.update(train_epoch=1, lr=0.001, init_beta=1.0, init_alpha=1.17, search_scale=[7, 3])
    with quiet:
        ref_main.run_tip_adapter_F(cfg, ref_keys.clone(), ref_values.float(), val, val_labels, val, val_labels,
                                   clip_weights, StepCLIP(), [(torch.arange(n), labels)])
    ref_trained = torch.load(Path(work) / f"best_F_{shots}shots.pt").detach()  # the adapter weight (N, D)
    tuned = method("tip-adapter-f")
    tc = TrainConfig(optimizer="adamw", lr=0.001, weight_decay=0.01, warmup_epochs=0, epochs=1)
    opt = build_optimizer(tuned.param_groups(tc.lr), tc)
    set_epoch_lr(opt, tc, 0)
    opt.zero_grad()
    tuned.loss({"features": step_features, "labels": labels})["loss"].backward()
    opt.step()
    out["finetune_step"] = {"keys_max_abs_diff": (tuned.cache_keys.detach() - ref_trained).abs().max().item(),
                            "step_max_abs": (ref_trained - model.cache_keys.detach()).abs().max().item()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
