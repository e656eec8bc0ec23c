"""Shared-prefix text tower: one text forward + backward step, sharing on vs off, side by side.

For each method and class count, the class prompts' text features are computed and a dummy loss is
back-propagated to the learned context, once with ``share_prefix=True`` and once with ``False``,
interleaved (on, off, on, off, ...) in one process so machine load hits both alike. Reported per row:
median seconds per step of each, their ratio, the activations saved for backward (bytes of the tensors
autograd keeps, counted by a saved-tensors hook: a device-independent stand-in for peak memory), and
the machine load. Random-weight ViT-B-16 (text tower width 512, 12 layers), fp32, 1 thread by default;
CoCoOp's step is one image (its reference batch size), MaPLe's uses depth 9. :func:`compare` is one row;
``benchmarks/device_check.py`` runs it on the GPU (bf16, with peak GPU memory of each path).

Usage::

    PYTHONPATH=src python benchmarks/text_prefix.py [--classes 10 100 1000] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch


def _saved_bytes(fn) -> int:
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def _features(model) -> torch.Tensor:
    if hasattr(model, "conditional_text_features"):  # CoCoOp: per image (batch 1, the reference's)
        image = torch.randn(1, model.backbone.embed_dim, generator=torch.Generator().manual_seed(0))
        return model.conditional_text_features(image.to(model.backbone.device))
    return model.raw_text_features()


def _step(model) -> torch.Tensor:
    feats = _features(model)
    loss = feats.float().square().mean()
    loss.backward()
    return loss


def method_options(method: str, n_cls: int) -> dict:
    """CoOp-family: n_ctx 16; SoftCPT / CoOp-MT: the classes split into up to 10 equal tasks; others: defaults."""
    opts: dict = {"n_ctx": 16} if method.startswith("coop") else {}
    if method.startswith(("softcpt", "coop-mt")):
        n_tasks = min(10, n_cls)
        sizes = [n_cls // n_tasks + (t < n_cls % n_tasks) for t in range(n_tasks)]
        opts["tasks"] = tuple((f"task number {t}", n) for t, n in enumerate(sizes))
    return opts


def compare(bb, method: str, n_cls: int, repeats: int = 3, precision: str = "fp32", extra: dict | None = None) -> dict:
    """One row: a text forward + backward step with ``share_prefix`` on and off, interleaved.

    ``shared_s`` / ``full_s``: median seconds (CUDA-synchronised on a GPU); ``saved_mb_*``: activations
    autograd keeps; on CUDA also ``peak_mib_*``: ``torch.cuda.max_memory_allocated`` of one step of each.
    """
    import vlprompt as vp
    from vlprompt.engine.precision import autocast

    device = bb.device
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    words = ["dog", "golden retriever", "sea lion", "fire truck", "hammerhead shark", "red wine", "tabby cat"]
    names = [f"{words[i % len(words)]} {i}" for i in range(n_cls)]
    opts = {**method_options(method, n_cls), **(extra or {})}  # extra: e.g. MaPLe's depth on tiny-clip
    models = {s: vp.build_method(method, bb, names, share_prefix=s, **opts).to(device) for s in (True, False)}
    times: dict[bool, list[float]] = {True: [], False: []}
    peak: dict[bool, float] = {}
    for i in range(repeats + (1 if cuda else 0)):  # CUDA: one untimed warm-up round
        for share in (True, False):
            m = models[share]
            m.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            sync()
            t0 = time.perf_counter()
            with autocast(precision, device):
                _step(m)
            sync()
            if cuda and i == 0:
                peak[share] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            if not cuda or i > 0:
                times[share].append(time.perf_counter() - t0)

    def saved(m) -> int:
        with autocast(precision, device):
            return _saved_bytes(lambda: _features(m))

    saved_b = {s: saved(models[s]) for s in (True, False)}
    on, off = statistics.median(times[True]), statistics.median(times[False])
    row = {"method": method, "classes": n_cls, "shared_s": on, "full_s": off, "speedup": off / on,
           "saved_mb_shared": saved_b[True] / 2**20, "saved_mb_full": saved_b[False] / 2**20,
           "memory_ratio": saved_b[True] / saved_b[False], "load": os.getloadavg()[0]}
    if cuda:
        row.update({"peak_mib_shared": peak[True], "peak_mib_full": peak[False],
                    "peak_ratio": peak[True] / peak[False]})
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--methods", nargs="+", default=["coop", "cocoop", "kgcoop", "maple", "coop+dept"],
                    help="also: softcpt-nata, coop-mt (classes split into up to 10 tasks)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/text_prefix.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import open_clip

    from vlprompt.backbones.clip import ClipBackbone

    torch.manual_seed(0)
    bb = ClipBackbone(open_clip.create_model("ViT-B-16"), open_clip.get_tokenizer("ViT-B-16"), name="ViT-B-16")
    rows = []
    for n_cls in args.classes:
        for method in args.methods:
            row = compare(bb, method, n_cls, args.repeats)
            rows.append(row)
            on, off = row["shared_s"], row["full_s"]
            print(f"{method:10s} {n_cls:5d} classes: shared {on:.3f} s, full {off:.3f} s, x{off / on:.2f}; "
                  f"saved activations {row['saved_mb_shared']:.0f} / {row['saved_mb_full']:.0f} MB "
                  f"({row['memory_ratio']:.2f}); load {row['load']:.1f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "rows": rows},
                                         indent=2) + "\n")


if __name__ == "__main__":
    main()
