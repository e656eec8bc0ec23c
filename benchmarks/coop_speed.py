"""CoOp speed benchmark: the reference computation pattern against vlprompt's, in one process.

Setting (the issue's acceptance text): ViT-B-16 with random weights on CPU, a synthetic 5-class
image folder (224 px JPEGs), 16 shots, batch 4, DePT's 10-epoch CoOp config (n_ctx 16, random
init, lr 0.0035, SGD with Dassl's warm-up + cosine schedule), a fixed test set of 20 images per
class.

(a) Per-iteration time. Reference pattern: fp32, a fresh augmented batch of 4 images, the image
    tower (``open_clip``'s ``encode_image``) on every step, the CoOp prompts through the *full*
    77-token text transformer (open_clip's own modules, not vlprompt's truncating seam), logits,
    cross-entropy, backward, SGD step. Ours: ``model.loss`` on cached features (truncated text,
    bf16 autocast where the CPU supports it), backward, step. Also the breakdown of the reference
    step and two component ratios (bf16 vs fp32 image forward; truncated vs 77-token text).
(b) End-to-end time of a whole run, feature extraction and test evaluation included: a faithful
    reference (the (a) reference step for all 200 iterations + evaluation that re-encodes the
    text for every test batch), ``vp.fit(feature_views=0, precision="fp32")`` (per-step
    augmentation through the library; note it still uses the truncated text), and
    ``vp.fit(feature_views=N)`` for N = 1, 2, 4, 10, each with a fresh feature-cache directory.
``--accuracy``: accuracy of CoOp on the pretrained ``tiny-clip`` (mean over the tiny suite's base
    tasks, seeds 1, 2, 3; 16 shots, all classes, CLIP's crop + flip augmentation forced on) for
    N = 0 (per-step augmentation), 1, 2, 4, 10 and the smallest N within 0.5 points of N = 0.

Every invocation merges its sections into the JSON file (``--out``), so the speed run and the
accuracy run can be done one after the other; the decision on the default N is recomputed from
whatever sections the file holds. Every section records the CPU time other processes used while
it ran (``foreign_cpu``): timings taken on a busy machine are not comparable.

Usage (from the repository root)::

    PYTHONPATH=src .venv/bin/python benchmarks/coop_speed.py --quick       # ~10 min on 2 cores
    PYTHONPATH=src .venv/bin/python benchmarks/coop_speed.py               # full reference loops, ~18 min
    PYTHONPATH=src .venv/bin/python benchmarks/coop_speed.py --accuracy    # accuracy vs N, ~15 min
    PYTHONPATH=src .venv/bin/python benchmarks/coop_speed.py --summarize   # recompute the decision

``--quick`` runs the faithful reference for 20 of its 200 iterations and ``vp.fit(feature_views=0)``
for 1 of 10 epochs and scales their training loops linearly (labelled ``train_extrapolated`` in the
JSON; extraction and evaluation are measured). A smoke test: ``--backbone tiny-clip --quick``.
See docs/performance.md for the results and the decision rule for the default N.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import vlprompt as vp
from vlprompt.data import ImageDataset, make_image_folder, test_transform, train_transform
from vlprompt.engine.config import DEFAULT_FEATURE_VIEWS, TrainConfig
from vlprompt.engine.precision import autocast, cpu_supports_bf16
from vlprompt.engine.schedule import build_optimizer, set_epoch_lr

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "coop_speed.json"
DEFAULT_DATA = ROOT / "results" / "data"

SHOTS = 16
BATCH = 4
EPOCHS = 10
LR = 0.0035
N_CTX = 16
TEST_PER_CLASS = 20
VIEWS = (1, 2, 4, 10)
SEEDS = (1, 2, 3)
ACC_TOLERANCE = 0.5  # points
TARGET_STEP = 8.0
TARGET_E2E = 5.0
CPU = torch.device("cpu")

#: The figures quoted in the issue, for comparison with what this machine measures.
ISSUE_FIGURES = {
    "reference_s_per_iter": 1.46, "reference_image_share": 0.67,
    "bf16_image_forward_speedup": 2.4, "truncation_77_to_24_text_fwd_bwd_speedup": 3.5,
}


# ---------------------------------------------------------------------------- machine & load
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    import open_clip

    flags = ""
    with contextlib.suppress(OSError):
        flags = open("/proc/cpuinfo").read()
    return {
        "cpu_model": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "open_clip": open_clip.__version__, "vlprompt": vp.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
        "bf16_autocast_used": cpu_supports_bf16(),
        "vlprompt_git": git_state(),
    }


def git_state() -> dict[str, Any]:
    """Commit of the checkout and whether the library sources differ from it (they are edited concurrently)."""
    import subprocess

    repo = ROOT.parent

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD") or None, "src_dirty": bool(git("status", "--porcelain", "src"))}


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy (from /proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in parts[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Section:
    """Wall time, own CPU time and CPU time used by *other* processes during a block."""

    def __enter__(self) -> Section:
        self.wall0, self.own0, self.busy0 = time.perf_counter(), _own_cpu_seconds(), _busy_cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.own = _own_cpu_seconds() - self.own0
        busy1 = _busy_cpu_seconds()
        self.foreign = None if busy1 is None or self.busy0 is None else max(0.0, busy1 - self.busy0 - self.own)

    def record(self) -> dict[str, Any]:
        ncpu = os.cpu_count() or 1
        out = {"wall_s": round(self.wall, 3), "own_cpu_s": round(self.own, 3)}
        if self.foreign is not None:
            out["foreign_cpu_s"] = round(self.foreign, 3)
            out["foreign_cpu_share"] = round(self.foreign / max(self.wall * ncpu, 1e-9), 3)
        return out


def wait_until_idle(max_wait: float, threshold: float = 0.1, window: float = 3.0) -> dict[str, Any]:
    """Wait (up to ``max_wait`` s) until other processes use < ``threshold`` of the CPUs."""
    t0 = time.perf_counter()
    share = None
    while True:
        b0 = _busy_cpu_seconds()
        o0 = _own_cpu_seconds()
        time.sleep(window)
        b1 = _busy_cpu_seconds()
        if b0 is None or b1 is None:
            return {"waited_s": 0.0, "foreign_cpu_share": None}
        share = max(0.0, b1 - b0 - (_own_cpu_seconds() - o0)) / (window * (os.cpu_count() or 1))
        waited = time.perf_counter() - t0
        if share < threshold or waited >= max_wait:
            return {"waited_s": round(waited, 1), "foreign_cpu_share": round(share, 3)}
        print(f"  [waiting: other processes use {share:.0%} of the CPUs]", flush=True)


# ---------------------------------------------------------------------------- timing helpers
def time_calls(fn: Callable[[], Any], warmup: int, iters: int) -> dict[str, Any]:
    """Median / min / max wall time of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return _stats(times, warmup)


def _stats(times: list[float], warmup: int) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(times), 5), "min_s": round(min(times), 5),
        "max_s": round(max(times), 5), "iters": len(times), "warmup": warmup,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else round(a / b, 2)


# ---------------------------------------------------------------------------- the reference pattern
def reference_text_features(model: Any) -> torch.Tensor:
    """CoOp class text features through open_clip's FULL text transformer (all 77 positions).

    This is the reference TextEncoder: prompts + positional embedding, every block over the
    whole context with the causal mask, ``ln_final`` on all positions, EOT gather, projection.
    """
    m = model.backbone.model
    x = model.prompts.assemble(model.ctx)
    x = x + m.positional_embedding.to(x.dtype)
    x = m.transformer(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    x = x[torch.arange(x.shape[0]), model.prompts.eot_idx]
    proj = m.text_projection
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def reference_logits(model: Any, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    scale = model.backbone.model.logit_scale.exp()
    return scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()


def reference_step(model: Any, opt: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """One reference CoOp step (fp32); returns the image features and the phase times."""
    t0 = time.perf_counter()
    with torch.no_grad():
        feats = model.backbone.model.encode_image(images)
    t1 = time.perf_counter()
    logits = reference_logits(model, feats, reference_text_features(model))
    loss = F.cross_entropy(logits, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    t2 = time.perf_counter()
    return {"features": feats, "image_s": t1 - t0, "text_s": t2 - t1, "loss": float(loss.detach())}


def ours_step(model: Any, opt: torch.optim.Optimizer, feats: torch.Tensor, labels: torch.Tensor, precision: str):
    """One step as vlprompt's engine does it on cached features (truncated text, autocast)."""
    with autocast(precision, CPU):
        out = model.loss({"features": feats, "labels": labels})
    loss = out["loss"]
    if not math.isfinite(float(loss.detach())):
        raise FloatingPointError("non-finite loss")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def augmented_batches(task: Any, image_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless fresh augmented batches of the training images (RandomResizedCrop + flip)."""
    ds = ImageDataset(task.train, train_transform(image_size))
    gen = torch.Generator().manual_seed(seed)
    while True:
        loader = DataLoader(ds, batch_size=BATCH, shuffle=True, drop_last=True, generator=gen)
        for x, y, _ in loader:
            yield x, y


def train_config(**kw: Any) -> TrainConfig:
    return TrainConfig(epochs=EPOCHS, lr=LR, batch_size=BATCH, device="cpu", progress=False, **kw)


def new_coop(bb: Any, classnames: list[str], seed: int = 1) -> Any:
    vp.seed_everything(seed)
    return vp.build_method("coop", bb, classnames, n_ctx=N_CTX)


# ---------------------------------------------------------------------------- (a) per iteration
def bench_per_iteration(bb: Any, task: Any, args: argparse.Namespace, ours_precision: str) -> dict[str, Any]:
    classnames = task.classnames
    ref_model = new_coop(bb, classnames)
    ref_opt = build_optimizer(ref_model.param_groups(LR), train_config())
    batches = augmented_batches(task, bb.image_size, seed=1)
    ref_rows: list[dict[str, float]] = []
    feats_pool: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(args.ref_warmup + args.ref_iters):
        t = time.perf_counter()
        x, y = next(batches)
        data_s = time.perf_counter() - t
        r = reference_step(ref_model, ref_opt, x, y)
        feats_pool.append((r["features"].detach(), y))
        if i >= args.ref_warmup:
            ref_rows.append({"data_s": data_s, "image_s": r["image_s"], "text_s": r["text_s"]})
    med = {k: statistics.median(row[k] for row in ref_rows) for k in ("data_s", "image_s", "text_s")}
    compute = [row["image_s"] + row["text_s"] for row in ref_rows]
    total = [row["data_s"] + row["image_s"] + row["text_s"] for row in ref_rows]
    ref = {
        "what": "fp32; fresh augmented batch of 4; open_clip encode_image (no grad) on every step; CoOp prompts "
                "through the full 77-token text transformer; 100*cos logits; CE; backward; SGD step",
        "per_iter_incl_data": _stats(total, args.ref_warmup),
        "per_iter_compute": _stats(compute, args.ref_warmup),
        "median_phase_s": {k: round(v, 5) for k, v in med.items()},
        "phases": "data_s: load + augment 4 JPEGs; image_s: image tower forward; text_s: text tower forward "
                  "(77 tokens) + logits + CE + backward + SGD step",
    }
    # shares from totals over the timed iterations (medians of the parts need not add up)
    ref["image_share_of_compute"] = round(sum(r["image_s"] for r in ref_rows) / sum(compute), 3)
    ref["text_share_of_compute"] = round(sum(r["text_s"] for r in ref_rows) / sum(compute), 3)
    ref["data_share_of_iter"] = round(sum(r["data_s"] for r in ref_rows) / sum(total), 3)

    def ours_runner(precision: str) -> dict[str, Any]:
        model = new_coop(bb, classnames)
        opt = build_optimizer(model.param_groups(LR), train_config())
        k = {"i": 0}

        def step() -> None:
            f, y = feats_pool[k["i"] % len(feats_pool)]
            k["i"] += 1
            ours_step(model, opt, f, y, precision)

        return time_calls(step, args.ours_warmup, args.ours_iters)

    ours = {
        "what": f"model.loss on cached features (batch 4), truncated text, {ours_precision} autocast; backward; "
                "SGD step (the engine's inner loop)",
        "precision": ours_precision, "per_iter": ours_runner(ours_precision),
    }
    ref_c = ref["per_iter_compute"]["median_s"]
    ref_t = ref["per_iter_incl_data"]["median_s"]
    o = ours["per_iter"]["median_s"]
    out = {
        "reference": ref, "ours": ours,
        "speedup_compute": ratio(ref_c, o), "speedup_incl_data": ratio(ref_t, o),
        "target": TARGET_STEP,
        "meets_target": (ratio(ref_c, o) or 0) >= TARGET_STEP,
    }
    diag: dict[str, Any] = {}
    if ours_precision != "fp32":
        r32 = ours_runner("fp32")
        diag["ours_fp32"] = {"per_iter": r32, "speedup_compute": ratio(ref_c, r32["median_s"]),
                             "note": "cached features + truncation without autocast"}
    out["diagnostics"] = diag
    return out


def bench_components(bb: Any, task: Any, args: argparse.Namespace, ours_precision: str) -> dict[str, Any]:
    """bf16 vs fp32 image forward (batch 4); truncated vs 77-token text forward+backward."""
    ds = ImageDataset(task.train, train_transform(bb.image_size))
    images = torch.stack([ds[i][0] for i in range(BATCH)])
    m = bb.model
    n, w = args.comp_iters, 1

    def image_fwd(precision: str, seam: bool) -> Callable[[], Any]:
        encode = bb.encode_image if seam else m.encode_image

        def f() -> None:
            with torch.no_grad(), autocast(precision, CPU):
                encode(images)
        return f

    img: dict[str, Any] = {
        "batch": BATCH,
        "what": "open_clip = the model's own encode_image (the reference path); vlprompt = bb.encode_image, the "
                "seam the feature cache uses",
        "open_clip_fp32": time_calls(image_fwd("fp32", False), w, n),
        "vlprompt_fp32": time_calls(image_fwd("fp32", True), w, n),
    }
    base = img["open_clip_fp32"]["median_s"]
    if ours_precision != "fp32":
        img[f"vlprompt_{ours_precision}"] = time_calls(image_fwd(ours_precision, True), w, n)
        img[f"open_clip_{ours_precision}"] = time_calls(image_fwd(ours_precision, False), w, n)
        img[f"speedup_vlprompt_{ours_precision}_vs_fp32"] = ratio(base, img[f"vlprompt_{ours_precision}"]["median_s"])
        img[f"speedup_open_clip_{ours_precision}_vs_fp32"] = ratio(base, img[f"open_clip_{ours_precision}"]["median_s"])
        img[f"note_open_clip_{ours_precision}"] = (
            "open_clip's nn.MultiheadAttention(batch_first=True) projects a transposed view; under bf16 on CPU "
            "that takes torch's slow batched-matmul path (pytorch/pytorch#151934). vlprompt's block loop avoids it."
        )

    model = new_coop(bb, task.classnames)
    eot = model.prompts.eot_idx
    trunc_len = int(eot.max()) + 1

    def text_full() -> None:
        model.ctx.grad = None
        reference_text_features(model).float().square().sum().backward()

    def text_trunc(precision: str) -> Callable[[], None]:
        def f() -> None:
            model.ctx.grad = None
            with autocast(precision, CPU):
                feats = bb.encode_text(model.prompt_embeddings(), eot)
            feats.float().square().sum().backward()
        return f

    with torch.no_grad():
        full = reference_text_features(model)
        trunc = bb.encode_text(model.prompt_embeddings(), eot)
    txt: dict[str, Any] = {
        "n_prompts": int(eot.shape[0]), "context_length": bb.context_length, "truncated_length": trunc_len,
        "max_abs_diff_truncated_vs_full_fp32": float((full - trunc).abs().max()),
        "full77_fp32": time_calls(text_full, w + 1, n * 2),
        "truncated_fp32": time_calls(text_trunc("fp32"), w + 1, n * 2),
    }
    txt["speedup_truncated_vs_full_fp32"] = ratio(txt["full77_fp32"]["median_s"], txt["truncated_fp32"]["median_s"])
    if ours_precision != "fp32":
        txt[f"truncated_{ours_precision}"] = time_calls(text_trunc(ours_precision), w + 1, n * 2)
        txt[f"speedup_truncated_{ours_precision}_vs_full_fp32"] = ratio(
            txt["full77_fp32"]["median_s"], txt[f"truncated_{ours_precision}"]["median_s"]
        )
    return {"image_forward": img, "text_fwd_bwd": txt}


# ---------------------------------------------------------------------------- (b) end to end
def reference_end_to_end(bb: Any, task: Any, max_iters: int | None) -> dict[str, Any]:
    """The (a) reference step for the whole schedule (or its first ``max_iters`` steps) + evaluation."""
    model = new_coop(bb, task.classnames)
    cfg = train_config()
    opt = build_optimizer(model.param_groups(LR), cfg)
    ds = ImageDataset(task.train, train_transform(bb.image_size))
    total_iters = EPOCHS * (len(task.train) // BATCH)
    done = 0
    with Section() as tr:
        for epoch in range(EPOCHS):
            set_epoch_lr(opt, cfg, epoch)
            gen = torch.Generator().manual_seed(1000 + epoch)
            for x, y, _ in DataLoader(ds, batch_size=BATCH, shuffle=True, drop_last=True, generator=gen):
                if max_iters is not None and done >= max_iters:
                    break
                reference_step(model, opt, x, y)
                done += 1
            if max_iters is not None and done >= max_iters:
                break
    with Section() as ev:
        correct = 0
        loader = DataLoader(ImageDataset(task.test, test_transform(bb.image_size)), batch_size=100)
        with torch.no_grad():
            for x, y, _ in loader:  # per-batch text re-encoding, as the reference model's forward
                logits = reference_logits(model, model.backbone.model.encode_image(x), reference_text_features(model))
                correct += int((logits.argmax(-1) == y).sum())
    measured_train = tr.wall
    extrapolated = done < total_iters
    train_s = measured_train * total_iters / done
    out = {
        "iterations_total": total_iters, "iterations_measured": done,
        "train_seconds_measured": round(measured_train, 2),
        "train_seconds": round(train_s, 2), "train_extrapolated": extrapolated,
        "eval_seconds": round(ev.wall, 2), "n_test": len(task.test),
        "total_seconds": round(train_s + ev.wall, 2),
        "acc": None if extrapolated else round(100.0 * correct / len(task.test), 2),
        "load_train": tr.record(), "load_eval": ev.record(),
    }
    if extrapolated:
        out["note"] = (f"train time measured over {done} of {total_iters} iterations and scaled linearly; "
                       "accuracy omitted (the run was cut short)")
    return out


def fit_end_to_end(bb: Any, task: Any, views: int, precision: str, epochs: int = EPOCHS) -> dict[str, Any]:
    """``vp.fit`` with a fresh feature-cache directory (extraction included).

    ``train_seconds`` of ``vp.fit`` covers feature extraction (train views and, up front, the test
    features) and the epochs; the per-epoch times come from ``on_epoch_end``. A run cut short
    (``epochs`` < 10) is extrapolated as setup + mean epoch time x 10.
    """
    model = new_coop(bb, task.classnames)
    cache = tempfile.mkdtemp(prefix="coop_speed_cache_")
    epoch_s: list[float] = []
    try:
        with Section() as s:
            res = vp.fit(
                model, task, epochs=epochs, lr=LR, batch_size=BATCH, feature_views=views, precision=precision,
                cache_dir=cache, run_dir=None, device="cpu", progress=False, seed=1,
                on_epoch_end=lambda _e, row: epoch_s.append(float(row["seconds"])),
            )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    loop_s = sum(epoch_s)
    setup_s = res["train_seconds"] - loop_s
    loop_full = loop_s * EPOCHS / epochs
    train_s = setup_s + loop_full
    out = {
        "feature_views": views, "precision": precision, "epochs_run": epochs,
        "train_seconds_measured": res["train_seconds"],
        "feature_seconds": res.get("feature_seconds"),
        "setup_seconds": round(setup_s, 2), "epoch_seconds": [round(t, 2) for t in epoch_s],
        "train_loop_seconds": round(loop_full, 2),
        "train_seconds": round(train_s, 2),
        "train_extrapolated": epochs != EPOCHS, "eval_seconds": res["eval_seconds"],
        "total_seconds": round(train_s + res["eval_seconds"], 2),
        "acc": None if epochs != EPOCHS else res["acc"], "n_test": res["n_test"], "load": s.record(),
        "parts": "train_seconds = setup (feature extraction incl. the test features, done up front by vp.fit) + "
                 "train loop; total = train_seconds + eval_seconds",
    }
    if epochs != EPOCHS:
        out["note"] = (f"trained {epochs} of {EPOCHS} epochs; the train loop is scaled linearly (same work per "
                       "epoch), setup/extraction and evaluation are measured; accuracy omitted")
    return out


def bench_end_to_end(
    bb: Any, task: Any, args: argparse.Namespace, variants: list[str], emit: Callable[[dict], None]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    print("  (b) faithful reference end to end ...", flush=True)
    out["reference_faithful"] = reference_end_to_end(bb, task, args.ref_e2e_iters)
    emit(out)
    print(f"      {out['reference_faithful']['total_seconds']:.1f} s", flush=True)
    if not args.skip_lib_reference:
        print("  (b) vp.fit feature_views=0 fp32 (library per-step path) ...", flush=True)
        out["library_per_step_fp32"] = fit_end_to_end(bb, task, 0, "fp32", epochs=args.lib_ref_epochs)
        out["library_per_step_fp32"]["note_text"] = "uses vlprompt's truncated text seam, unlike the reference"
        emit(out)
        print(f"      {out['library_per_step_fp32']['total_seconds']:.1f} s", flush=True)
    ref_total = out["reference_faithful"]["total_seconds"]
    lib_total = out.get("library_per_step_fp32", {}).get("total_seconds")
    for prec in variants:
        rows = out.setdefault(f"ours_{prec}", {})
        for n in args.views:
            print(f"  (b) vp.fit feature_views={n} {prec} ...", flush=True)
            row = fit_end_to_end(bb, task, n, prec)
            row["speedup_vs_reference_faithful"] = ratio(ref_total, row["total_seconds"])
            row["speedup_vs_library_per_step"] = ratio(lib_total, row["total_seconds"])
            rows[str(n)] = row
            emit(out)
            print(f"      {row['total_seconds']:.1f} s  acc {row['acc']}  "
                  f"x{row['speedup_vs_reference_faithful']} vs reference", flush=True)
    return out


# ---------------------------------------------------------------------------- accuracy on the tiny suite
def accuracy_tasks() -> list[str]:
    """The tiny suite's base tasks (split_zhou format, required sources, no domain variants)."""
    from vlprompt.data.tiny import SPECS

    return [f"tiny/{s.name}" for s in SPECS if s.fmt == "split_zhou" and s.variant_of is None and not s.optional]


def bench_accuracy(args: argparse.Namespace, emit: Callable[[dict], None]) -> dict[str, Any]:
    """CoOp (DePT's 10-epoch config) on every base task of the tiny suite, 16 shots, all classes, with
    CLIP's training augmentation forced on (``augment="clip"``: the policy of every real dataset, the
    one N is about), for N = 0 (a fresh augmented view per step) and the N of ``--views``; the mean over
    tasks, per seed and over seeds."""
    tasks = args.acc_tasks or accuracy_tasks()
    bb = vp.load_backbone(args.acc_backbone)
    ours_prec = "bf16" if cpu_supports_bf16() else "fp32"
    configs = [(0, "fp32")] + ([(0, ours_prec)] if ours_prec != "fp32" else []) + [(n, ours_prec) for n in args.views]
    out: dict[str, Any] = {
        "stand_in": False,
        "note": (f"CoOp on the pretrained '{args.acc_backbone}' over the tiny suite's base tasks, 16 shots, all "
                 "classes, training augmentation forced to CLIP's (random resized crop 0.08-1 + flip)."),
        "backbone": args.acc_backbone, "backbone_weights": bb.weights_id, "tasks": tasks, "augment": "clip",
        "hyper_parameters": {"epochs": EPOCHS, "lr": LR, "batch_size": BATCH, "n_ctx": N_CTX, "optimizer": "sgd",
                             "shots": SHOTS},
        "seeds": list(args.seeds), "baseline": "feature_views=0 (per-step augmentation), fp32",
        "tolerance_points": ACC_TOLERANCE, "runs": {},
    }
    with Section() as s:
        for n, prec in configs:
            key = f"N{n}_{prec}"
            per_task: dict[str, list[float]] = {}
            for ds in tasks:
                for seed in args.seeds:
                    task = vp.load_dataset(ds, ".", shots=SHOTS, seed=seed)
                    vp.seed_everything(seed)
                    model = vp.build_method("coop", bb, task.classnames, n_ctx=N_CTX)
                    cache = tempfile.mkdtemp(prefix="coop_acc_cache_")
                    try:
                        res = vp.fit(model, task, epochs=EPOCHS, lr=LR, batch_size=BATCH, feature_views=n,
                                     precision=prec, cache_dir=cache, device="cpu", progress=False, seed=seed,
                                     augment="clip")
                    finally:
                        shutil.rmtree(cache, ignore_errors=True)
                    per_task.setdefault(ds, []).append(res["acc"])
            seed_means = [statistics.mean(per_task[ds][i] for ds in tasks) for i in range(len(args.seeds))]
            out["runs"][key] = {
                "feature_views": n, "precision": prec,
                "acc_per_task": {ds: round(statistics.mean(v), 3) for ds, v in per_task.items()},
                "acc_per_seed": [round(a, 3) for a in seed_means],
                "delta_per_seed_vs_baseline": (
                    [round(a - b, 2) for a, b in zip(seed_means, out["runs"]["N0_fp32"]["acc_per_seed"], strict=True)]
                    if "N0_fp32" in out["runs"] else None
                ),
                "mean_acc": round(statistics.mean(seed_means), 3),
                "std_acc": round(statistics.stdev(seed_means), 3) if len(seed_means) > 1 else 0.0,
            }
            print(f"  {key}: {out['runs'][key]['mean_acc']:.2f} ({out['runs'][key]['acc_per_seed']})", flush=True)
            emit(out)
    base = out["runs"]["N0_fp32"]["mean_acc"]
    same = out["runs"].get(f"N0_{ours_prec}", out["runs"]["N0_fp32"])["mean_acc"]
    for row in out["runs"].values():
        row["delta_vs_baseline"] = round(row["mean_acc"] - base, 3)
    ok = [n for n in args.views if out["runs"][f"N{n}_{ours_prec}"]["mean_acc"] >= base - ACC_TOLERANCE]
    ok_same = [n for n in args.views if out["runs"][f"N{n}_{ours_prec}"]["mean_acc"] >= same - ACC_TOLERANCE]
    out["smallest_N_within_tolerance"] = min(ok) if ok else None
    out["smallest_N_within_tolerance_same_precision_baseline"] = min(ok_same) if ok_same else None
    out["load"] = s.record()
    return out


# ---------------------------------------------------------------------------- decision & output
def decide(result: dict[str, Any]) -> dict[str, Any]:
    speed = result.get("speed", {})
    acc = result.get("accuracy")
    e2e = speed.get("end_to_end", {})
    prec = speed.get("ours_precision")
    rows = e2e.get(f"ours_{prec}", {}) if prec else {}
    d: dict[str, Any] = {
        "rule": (f"default N = the smallest N whose mean accuracy is within {ACC_TOLERANCE} points of per-step "
                 f"augmentation; the end-to-end target is >= {TARGET_E2E}x at that N"),
        "engine_default_feature_views": DEFAULT_FEATURE_VIEWS,
    }
    n = acc.get("smallest_N_within_tolerance") if acc else None
    d["accuracy_source"] = (("stand-in (random tiny-clip, synthetic data)" if acc.get("stand_in") else
                             "tiny suite, pretrained tiny-clip") if acc else "missing (run --accuracy)")
    d["supported_default_N"] = n
    if acc:
        d["accuracy_delta_points_by_N"] = {
            str(r["feature_views"]): r["delta_vs_baseline"] for k, r in acc["runs"].items()
            if r["feature_views"] > 0 and r.get("delta_vs_baseline") is not None
        }
        if n is None:
            d["supported_default_N_note"] = (
                "no tested N reached the accuracy tolerance, so the rule selects none"
            )
    if rows:
        d["end_to_end_speedup_by_N"] = {k: r["speedup_vs_reference_faithful"] for k, r in rows.items()}
        meeting = [int(k) for k, r in rows.items() if (r["speedup_vs_reference_faithful"] or 0) >= TARGET_E2E]
        d["largest_N_meeting_end_to_end_target"] = max(meeting) if meeting else None
    if n is not None and str(n) in rows:
        sp = rows[str(n)]["speedup_vs_reference_faithful"]
        d["end_to_end_speedup_at_N"] = sp
        d["meets_end_to_end_target"] = (sp or 0) >= TARGET_E2E
    per = speed.get("per_iteration")
    if per:
        d["per_iteration_speedup_compute"] = per["speedup_compute"]
        d["meets_per_iteration_target"] = per["meets_target"]
    return d


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)


def load_existing(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return {}


def summary(result: dict[str, Any]) -> str:
    lines = []
    sp = result.get("speed")
    if sp and "per_iteration" in sp:
        p = sp["per_iteration"]
        r = p["reference"]
        lines.append(f"mode: {sp['mode']}   ours precision: {sp['ours_precision']}")
        lines.append(
            f"(a) reference {r['per_iter_compute']['median_s']:.3f} s/iter compute "
            f"({r['per_iter_incl_data']['median_s']:.3f} s incl. data; image {r['image_share_of_compute']:.0%}, "
            f"text {r['text_share_of_compute']:.0%})  ours {p['ours']['per_iter']['median_s']:.4f} s  "
            f"-> x{p['speedup_compute']} (incl. data x{p['speedup_incl_data']}; target x{TARGET_STEP:g})"
        )
        for k, v in p.get("diagnostics", {}).items():
            lines.append(f"    diagnostic {k}: {v['per_iter']['median_s']:.4f} s -> x{v['speedup_compute']}")
    if sp and "components" in sp:
        c = sp["components"]
        img, txt = c["image_forward"], c["text_fwd_bwd"]
        for k, v in img.items():
            if k.startswith("speedup"):
                lines.append(f"    image forward (batch 4) {k}: x{v}")
        lines.append(
            f"    text fwd+bwd 77 -> {txt['truncated_length']} tokens (fp32): x{txt['speedup_truncated_vs_full_fp32']}"
        )
        for k, v in txt.items():
            if k.startswith("speedup_truncated_") and k != "speedup_truncated_vs_full_fp32":
                lines.append(f"    text fwd+bwd {k}: x{v}")
    if sp and "end_to_end" in sp:
        e = sp["end_to_end"]
        ref = e["reference_faithful"]
        lines.append(f"(b) faithful reference: {ref['total_seconds']:.1f} s"
                     f"{' (train extrapolated)' if ref['train_extrapolated'] else ''}")
        lib = e.get("library_per_step_fp32")
        if lib:
            lines.append(f"    vp.fit N=0 fp32: {lib['total_seconds']:.1f} s"
                         f"{' (train extrapolated)' if lib['train_extrapolated'] else ''}")
        for key, rows in e.items():
            if key.startswith("ours_"):
                for n, row in rows.items():
                    lines.append(f"    {key} N={n}: {row['total_seconds']:.1f} s (features {row['feature_seconds']}, "
                                 f"loop {row['train_loop_seconds']:.1f}, eval {row['eval_seconds']:.1f}) "
                                 f"x{row['speedup_vs_reference_faithful']}  acc {row['acc']}")
    acc = result.get("accuracy")
    if acc:
        lines.append("accuracy (" + ("STAND-IN: tiny-clip random weights, synthetic data" if acc.get("stand_in")
                                     else "tiny suite, mean over tasks") + "):")
        for k, row in acc["runs"].items():
            lines.append(f"    {k}: {row['mean_acc']:.2f} +- {row['std_acc']:.2f}")
        lines.append(f"    smallest N within {ACC_TOLERANCE} pt: {acc.get('smallest_N_within_tolerance')}")
    d = result.get("decision")
    if d:
        lines.append(f"decision: supported default N = {d.get('supported_default_N')} "
                     f"(engine default {d['engine_default_feature_views']}); "
                     f"e2e speedup there: {d.get('end_to_end_speedup_at_N')}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file (sections are merged into it)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA), help="where the synthetic data sets are written")
    p.add_argument("--quick", action="store_true",
                   help="cut the two per-step reference runs short and extrapolate them linearly (labelled)")
    p.add_argument("--accuracy", action="store_true", help="run the accuracy-vs-N measurement instead of the speed run")
    p.add_argument("--summarize", action="store_true", help="only recompute the decision in --out and print it")
    p.add_argument("--backbone", default="ViT-B-16", help="speed-run backbone (tiny-clip for a smoke test)")
    p.add_argument("--acc-backbone", default="tiny-clip")
    p.add_argument("--views", type=int, nargs="+", default=list(VIEWS))
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--acc-tasks", nargs="+", default=None, help="datasets (default: the tiny suite's base tasks)")
    p.add_argument("--variants", nargs="+", default=None, choices=["bf16", "fp32"],
                   help="precisions of 'ours' run in (b) (default: bf16 where the CPU supports it, else fp32)")
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument("--skip-lib-reference", action="store_true", help="skip vp.fit(feature_views=0) in (b)")
    p.add_argument("--skip-components", action="store_true", help="skip the component ratios in (a)")
    p.add_argument("--wait-idle", type=float, default=120.0,
                   help="before each section wait up to this many seconds for other processes to go quiet")
    args = p.parse_args(argv)
    q = args.quick
    args.ref_warmup, args.ref_iters = 2, (10 if q else 20)
    args.ours_warmup, args.ours_iters = 5, (20 if q else 50)
    args.comp_iters = 3 if q else 5
    args.ref_e2e_iters = 20 if q else None
    args.lib_ref_epochs = 1 if q else EPOCHS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_path = Path(args.out)
    result = load_existing(out_path)
    if args.summarize:
        if not result:
            print(f"no results in {out_path}")
            return 1
        result["decision"] = decide(result)
        write_json(out_path, result)
        print(summary(result))
        return 0
    result.update({"benchmark": "coop_speed", "schema": 1, "machine": machine_info()})
    result["issue_figures_for_scale"] = ISSUE_FIGURES
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    cmd = " ".join([Path(sys.executable).name, *sys.argv])

    def save() -> None:
        result["decision"] = decide(result)
        write_json(out_path, result)

    if args.accuracy:
        print(f"accuracy vs N (tiny suite, {args.acc_backbone}) ...", flush=True)
        idle = wait_until_idle(args.wait_idle)
        acc: dict[str, Any] = {}

        def emit_acc(part: dict) -> None:
            result["accuracy"] = {**part, "complete": False, "started": stamp, "command": cmd}
            save()

        acc = bench_accuracy(args, emit_acc)
        result["accuracy"] = {**acc, "complete": True, "started": stamp, "command": cmd, "idle_check": idle}
        save()
        print(summary(result))
        return 0

    ours_prec = "bf16" if cpu_supports_bf16() else "fp32"
    variants = args.variants or [ours_prec]
    root = make_image_folder(
        Path(args.data_dir) / "speed", n_train=SHOTS, n_val=0, n_test=TEST_PER_CLASS, size=224, seed=0
    )
    task = vp.load_dataset("imagefolder", root, shots=SHOTS, seed=1)
    bb = vp.load_backbone(args.backbone, seed=0)
    speed: dict[str, Any] = {
        "mode": "quick" if args.quick else "full", "started": stamp, "command": cmd, "complete": False,
        "ours_precision": ours_prec,
        "setting": {
            "backbone": args.backbone, "weights": bb.weights_id, "device": "cpu", "classes": task.classnames,
            "shots": SHOTS, "train_images": len(task.train), "test_images": len(task.test),
            "image_size": bb.image_size, "batch_size": BATCH, "epochs": EPOCHS, "lr": LR, "n_ctx": N_CTX,
            "ctx_init": "random N(0, 0.02^2)", "optimizer": "sgd momentum 0.9, wd 5e-4, warm-up 1 epoch at 1e-5, "
            "cosine", "iterations": EPOCHS * (len(task.train) // BATCH), "eval_batch_size": 100,
        },
        "measurement": {
            "ref_iters": args.ref_iters, "ref_warmup": args.ref_warmup, "ours_iters": args.ours_iters,
            "ours_warmup": args.ours_warmup, "component_iters": args.comp_iters,
            "ref_e2e_iters": args.ref_e2e_iters or "all", "lib_ref_epochs": args.lib_ref_epochs,
        },
    }
    result["speed"] = speed

    print(f"(a) per-iteration ({args.backbone}, {speed['mode']}) ...", flush=True)
    speed["idle_check_a"] = wait_until_idle(args.wait_idle)
    with Section() as s:
        speed["per_iteration"] = bench_per_iteration(bb, task, args, ours_prec)
    speed["per_iteration"]["load"] = s.record()
    save()
    if not args.skip_components:
        with Section() as s:
            speed["components"] = bench_components(bb, task, args, ours_prec)
        speed["components"]["load"] = s.record()
        save()
    print(summary(result), flush=True)

    if not args.skip_e2e:
        speed["idle_check_b"] = wait_until_idle(args.wait_idle)

        def emit_e2e(part: dict) -> None:
            speed["end_to_end"] = part
            save()

        with Section() as s:
            speed["end_to_end"] = bench_end_to_end(bb, task, args, variants, emit_e2e)
        speed["end_to_end"]["load"] = s.record()
    speed["complete"] = True
    speed["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    save()
    print(summary(result))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
