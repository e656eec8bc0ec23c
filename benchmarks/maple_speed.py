"""MaPLe / KgCoOp speed benchmark: the reference computation pattern against vlprompt's, in one process.

Setting: ViT-B-16 with random weights on CPU, a synthetic 5-class image folder (224 px JPEGs),
16 shots per class (80 training images), batch 4, so 20 iterations per epoch; MaPLe with 2
context tokens and prompt depth 9; SGD (momentum 0.9, weight decay 5e-4), lr 0.0035.

MaPLe, one training iteration on the same augmented batches:

* reference pattern: fp32 (the reference trains in fp16 on GPUs; on CPU fp32 is its fast path,
  and open_clip's own ``nn.MultiheadAttention`` under bf16 autocast is ~7x slower than fp32 on
  this CPU, pytorch/pytorch#151934), written here from open_clip's own modules: the class
  prompts ``[SOS][P_0][suffix]`` through the *full* 77-token text transformer, calling each
  resblock with deep prompts replacing positions 1..2 before blocks 1..8, ``ln_final`` on all
  positions, EOT gather, projection, re-encoded every step; the image tower (conv1, CLS,
  positional embedding, ``V_0 = F_0(P_0)`` appended, ``ln_pre``, every resblock with ``V_k``
  replacing the last 2 tokens, ``ln_post`` of CLS, projection) with backward down to the input
  prompts; 100-scaled cosine logits, cross-entropy, backward, SGD step.
* ours: ``model.loss(batch)`` of ``vp.build_method("maple", ...)`` under bf16 autocast (the
  engine's inner loop: truncated text, batch-first block loop), backward, SGD step. Also without
  autocast (fp32), to separate what truncation and the block loop give from what bf16 gives.

The per-iteration numbers are medians over a few iterations after one warm-up iteration; the
epoch times are these medians times the 20 iterations of an epoch (plus the median time to load
and augment a batch), i.e. EXTRAPOLATED, not a timed epoch.

KgCoOp vs CoOp: one engine step each (``model.loss`` on cached image features, bf16 autocast and
fp32, backward, step) with the same 4-token "a photo of a" context, interleaved, medians.

Usage (from the repository root)::

    PYTHONPATH=src .venv/bin/python benchmarks/maple_speed.py            # ~4 min on 2 cores
    PYTHONPATH=src .venv/bin/python benchmarks/maple_speed.py --backbone tiny-clip --ref-iters 2  # smoke test

Output: ``benchmarks/results/maple_speed.json`` (git-ignored). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import vlprompt as vp
from vlprompt.data import ImageDataset, make_image_folder, train_transform
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.precision import autocast, cpu_supports_bf16
from vlprompt.engine.schedule import build_optimizer

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "maple_speed.json"
SHOTS, BATCH, LR, N_CTX, DEPTH = 16, 4, 0.0035, 2, 9
TARGET = 2.0
CPU = torch.device("cpu")


# ---------------------------------------------------------------------------- machine and load
def _proc_busy() -> float | None:
    """Busy CPU seconds of the whole machine since boot (``/proc/stat``), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    vals = [int(v) for v in fields]
    busy = sum(vals[:3]) + sum(vals[5:8])  # user nice system | irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Timer:
    """Wall time of a block and the share of the CPUs that *other* processes used meanwhile."""

    def __enter__(self) -> Timer:
        self._t, self._own, self._busy = time.perf_counter(), _self_cpu(), _proc_busy()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self._t
        busy = _proc_busy()
        other = None if busy is None or self._busy is None else busy - self._busy - (_self_cpu() - self._own)
        cap = self.wall * (os.cpu_count() or 1)
        self.foreign_share = None if other is None else round(max(0.0, other) / max(cap, 1e-9), 3)


def wait_for_quiet(max_wait: float = 120.0, share: float = 0.1) -> float | None:
    """Sleep until other processes use < ``share`` of the CPUs over 3 s (at most ``max_wait`` s).

    Returns the last measured foreign share (recorded with the results).
    """
    start, last = time.perf_counter(), None
    while True:
        with Timer() as t:
            time.sleep(3.0)
        last = t.foreign_share
        if last is None or last < share or time.perf_counter() - start > max_wait:
            return last
        print(f"  [other processes use {last:.0%} of the CPUs; waiting]", flush=True)


def machine() -> dict[str, Any]:
    import open_clip

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE.parent, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "cpu_model": model, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "open_clip": open_clip.__version__, "python": platform.python_version(),
        "bf16_native": cpu_supports_bf16(), "vlprompt_commit": commit,
    }


def median_times(step: Callable[[int], Any], warmup: int, iters: int) -> dict[str, Any]:
    quiet = wait_for_quiet()
    for i in range(warmup):
        step(i)
    times = []
    with Timer() as t:
        for i in range(iters):
            s = time.perf_counter()
            step(warmup + i)
            times.append(time.perf_counter() - s)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4), "iters": iters, "warmup": warmup, "foreign_cpu_share": t.foreign_share,
            "foreign_share_before": quiet}


# ---------------------------------------------------------------------------- reference MaPLe step
def reference_text_features(model: Any) -> torch.Tensor:
    """Class text features as the reference computes them: all 77 positions, open_clip resblocks."""
    m = model.backbone.model
    n = model.n_ctx
    pre, suf = model.prompts.token_prefix, model.prompts.token_suffix
    n_cls = pre.shape[0]
    x = torch.cat([pre, model.ctx.unsqueeze(0).expand(n_cls, -1, -1), suf], dim=1)
    x = x + m.positional_embedding
    for i, block in enumerate(m.transformer.resblocks):
        if 1 <= i < model.config.prompt_depth:
            x = torch.cat([x[:, :1], model.deep_ctx[i - 1].unsqueeze(0).expand(n_cls, -1, -1), x[:, 1 + n:]], dim=1)
        x = block(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    return x[torch.arange(n_cls), model.prompts.eot_idx] @ m.text_projection


def reference_image_features(model: Any, images: torch.Tensor) -> torch.Tensor:
    """Prompted image features as the reference computes them, through open_clip's visual modules."""
    v = model.backbone.model.visual
    n, b = model.n_ctx, images.shape[0]
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(b, 1, -1), x], dim=1) + v.positional_embedding
    x = torch.cat([x, model.couplings[0](model.ctx).unsqueeze(0).expand(b, -1, -1)], dim=1)
    x = v.ln_pre(x)
    for i, block in enumerate(v.transformer.resblocks):
        if 1 <= i < model.config.prompt_depth:
            vk = model.couplings[i](model.deep_ctx[i - 1]).unsqueeze(0).expand(b, -1, -1)
            x = torch.cat([x[:, :-n], vk], dim=1)
        x = block(x)
    return v.ln_post(x[:, 0]) @ v.proj


def reference_logits(model: Any, images: torch.Tensor) -> torch.Tensor:
    text = F.normalize(reference_text_features(model), dim=-1)
    img = F.normalize(reference_image_features(model, images), dim=-1)
    return model.backbone.model.logit_scale.exp() * img @ text.t()


def sgd(model: Any) -> torch.optim.Optimizer:
    cfg = TrainConfig(epochs=5, lr=LR, batch_size=BATCH, device="cpu", progress=False)
    return build_optimizer(model.param_groups(LR), cfg)


def train_step(loss_fn: Callable[[], torch.Tensor], opt: torch.optim.Optimizer) -> float:
    loss = loss_fn()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


# ---------------------------------------------------------------------------- benchmarks
def augmented_pool(root: Path, image_size: int, n_batches: int) -> tuple[Any, list, dict[str, Any]]:
    task = vp.load_dataset("imagefolder", root, shots=SHOTS, seed=1)
    ds = ImageDataset(task.train, train_transform(image_size))
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(ds), generator=gen)
    pool, load_times = [], []
    for k in range(n_batches):
        idx = order[(k * BATCH) % len(ds):][:BATCH].tolist()
        s = time.perf_counter()
        items = [ds[i] for i in idx]
        load_times.append(time.perf_counter() - s)
        pool.append((torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items])))
    data = {"median_s": round(statistics.median(load_times), 4), "what": "load + RandomResizedCrop + flip of 4 JPEGs"}
    return task, pool, data


def bench_maple(bb: Any, task: Any, pool: list, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    names = task.classnames

    def new_model() -> Any:
        vp.seed_everything(1)
        return vp.build_method("maple", bb, names, n_ctx=N_CTX, prompt_depth=args.depth)

    # the reference pattern computes what the library computes (fp32, same parameters, same batch)
    check = new_model()
    x0, y0 = pool[0]
    with torch.no_grad():
        ref_logits = reference_logits(check, x0)
        ours_logits = check.train_outputs({"images": x0, "labels": y0})["logits"]
    max_diff = float((ref_logits - ours_logits).abs().max())

    ref_model = new_model()
    ref_opt = sgd(ref_model)
    ref = median_times(
        lambda i: train_step(lambda: F.cross_entropy(reference_logits(ref_model, pool[i % len(pool)][0]),
                                                     pool[i % len(pool)][1]), ref_opt),
        1, args.ref_iters,
    )

    def ours(precision: str, iters: int) -> dict[str, Any]:
        model = new_model()
        opt = sgd(model)

        def loss(i: int) -> torch.Tensor:
            x, y = pool[i % len(pool)]
            with autocast(precision, CPU):
                return model.loss({"images": x, "labels": y})["loss"]

        return median_times(lambda i: train_step(lambda: loss(i), opt), 1, iters)

    ours_prec = "bf16" if (cpu_supports_bf16() or args.force_bf16) else "fp32"
    ours_main = ours(ours_prec, args.ours_iters)
    parts = components(new_model(), pool, ours_prec, args.comp_iters)
    ours_fp32 = ours("fp32", args.ours_iters) if ours_prec != "fp32" else ours_main
    iters_per_epoch = (len(task.train) // BATCH)
    ref_s, ours_s = ref["median_s"], ours_main["median_s"]

    def epoch(per_iter: float) -> float:
        return round(iters_per_epoch * (per_iter + data["median_s"]), 2)

    trunc = int(check.prompts.eot_idx.max()) + 1
    return {
        "setting": {"backbone": bb.name, "classes": len(names), "shots": SHOTS, "train_images": len(task.train),
                    "batch": BATCH, "n_ctx": N_CTX, "prompt_depth": args.depth, "iters_per_epoch": iters_per_epoch,
                    "text_tokens_reference": bb.context_length, "text_tokens_ours": trunc,
                    "trainable_params": sum(p.numel() for p in check.trainable_parameters())},
        "reference_vs_ours_fp32_max_abs_logit_diff": max_diff,
        "reference": {"what": "fp32; open_clip resblocks called one by one; 77-token text re-encoded every step; "
                              "prompted image tower; CE; backward; SGD step", **ref},
        "ours": {"what": f"model.loss under {ours_prec} autocast (engine inner loop); backward; SGD step",
                 "precision": ours_prec, **ours_main},
        "ours_fp32": {"what": "the same without autocast", **ours_fp32},
        "data_per_batch": data,
        "components": parts,
        "speedup": round(ref_s / ours_s, 2),
        "speedup_fp32": round(ref_s / ours_fp32["median_s"], 2),
        "target": TARGET, "meets_target": ref_s / ours_s >= TARGET,
        "epoch_extrapolated": {
            "note": f"median s/iter x {iters_per_epoch} iterations + data loading; extrapolated, not timed",
            "reference_s": epoch(ref_s), "ours_s": epoch(ours_s), "ours_fp32_s": epoch(ours_fp32["median_s"]),
        },
    }


def components(model: Any, pool: list, precision: str, iters: int) -> dict[str, Any]:
    """Forward + backward of each tower alone (sum of the features as the loss), reference vs ours."""
    x = pool[0][0]

    def run(fn: Callable[[], torch.Tensor], prec: str) -> Callable[[int], None]:
        def step(_: int) -> None:
            model.zero_grad(set_to_none=True)
            with autocast(prec, CPU):
                out = fn()
            out.float().sum().backward()
        return step

    out = {
        "text_reference_fp32_77": median_times(run(lambda: reference_text_features(model), "fp32"), 1, iters),
        f"text_ours_{precision}": median_times(run(model.raw_text_features, precision), 1, iters),
        "image_reference_fp32": median_times(run(lambda: reference_image_features(model, x), "fp32"), 1, iters),
        f"image_ours_{precision}": median_times(run(lambda: model.encode_images(x), precision), 1, iters),
        "image_ours_fp32": median_times(run(lambda: model.encode_images(x), "fp32"), 1, iters),
    }
    out["what"] = "forward + backward of one tower with its prompts (loss = sum of the raw features)"
    return out


def bench_kgcoop(bb: Any, names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    vp.seed_everything(1)
    t0 = time.perf_counter()
    coop = vp.build_method("coop", bb, names, ctx_init="a photo of a")
    build_coop = time.perf_counter() - t0
    t0 = time.perf_counter()
    kg = vp.build_method("kgcoop", bb, names, ctx_init="a photo of a")
    build_kg = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(BATCH, bb.embed_dim, generator=gen) for _ in range(8)]
    labels = [torch.randint(len(names), (BATCH,), generator=gen) for _ in range(8)]
    out: dict[str, Any] = {"build_s": {"coop": round(build_coop, 3), "kgcoop": round(build_kg, 3),
                                       "note": "kgcoop encodes the template once per class set here"}}
    precisions = ["bf16", "fp32"] if (cpu_supports_bf16() or args.force_bf16) else ["fp32"]
    for prec in precisions:
        models = {"coop": coop, "kgcoop": kg}
        opts = {k: sgd(m) for k, m in models.items()}
        times: dict[str, list[float]] = {k: [] for k in models}
        wait_for_quiet()
        with Timer() as t:
            for i in range(2 + args.kg_iters):  # interleaved: coop, kgcoop, coop, ...
                for k, m in models.items():
                    batch = {"features": feats[i % 8], "labels": labels[i % 8]}

                    def loss(m: Any = m, batch: dict = batch, prec: str = prec) -> torch.Tensor:
                        with autocast(prec, CPU):
                            return m.loss(batch)["loss"]

                    s = time.perf_counter()
                    train_step(loss, opts[k])
                    if i >= 2:
                        times[k].append(time.perf_counter() - s)
        med = {k: round(statistics.median(v), 5) for k, v in times.items()}
        out[prec] = {"median_s": med, "iters": args.kg_iters, "warmup": 2,
                     "kgcoop_over_coop": round(med["kgcoop"] / med["coop"], 3), "foreign_cpu_share": t.foreign_share}
    out["what"] = ("engine step on cached image features (batch 4, 5 classes, 4-token 'a photo of a' context, "
                   "truncated text): model.loss, backward, SGD step; CoOp and KgCoOp interleaved")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="ViT-B-16")
    ap.add_argument("--depth", type=int, default=DEPTH)
    ap.add_argument("--ref-iters", type=int, default=5)
    ap.add_argument("--ours-iters", type=int, default=8)
    ap.add_argument("--kg-iters", type=int, default=30)
    ap.add_argument("--comp-iters", type=int, default=3)
    ap.add_argument("--force-bf16", action="store_true", help="use bf16 autocast even without native CPU support")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    bb = vp.load_backbone(args.backbone)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_image_folder(Path(tmp) / "shapes", n_train=SHOTS, n_val=0, n_test=1, size=224, seed=0)
        task, pool, data = augmented_pool(root, bb.image_size, n_batches=4)
        result: dict[str, Any] = {
            "benchmark": "maple_speed", "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(),
        }
        print("MaPLe ...", flush=True)
        result["maple"] = bench_maple(bb, task, pool, data, args)
        summary = {k: result["maple"][k] for k in ("speedup", "speedup_fp32", "epoch_extrapolated")}
        print(json.dumps(summary), flush=True)
        print("KgCoOp vs CoOp ...", flush=True)
        result["kgcoop_vs_coop"] = bench_kgcoop(bb, task.classnames, args)
        print(json.dumps({k: v for k, v in result["kgcoop_vs_coop"].items() if k != "what"}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
