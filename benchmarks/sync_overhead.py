"""Per-step host syncs in the training loop: the old loop against the deferred one, in one process.

The old loop (``--before-ref``, default the commit before the change) converted the loss to a Python
float, checked it with ``math.isfinite`` and summed loss and accuracy through ``sum_scalar`` on every
step; on a GPU each conversion is a device sync. The new loop keeps per-step losses and accuracies on
the device, checks finiteness every ``SYNC_EVERY`` steps and at the epoch's end, and sums the epoch on
the host in the same order. This script trains the same runs with both loops, interleaved (ABAB...),
checks that the metrics rows (loss, train accuracy) and the trained prompts are bit-identical, and
reports the median seconds per step of each. The machine load (``os.getloadavg()``) is recorded before
and after: timings from a busy machine are not comparable.

Settings: tiny-clip, CoOp (n_ctx 4) on cached features of a generated 5-class image folder; batch 4,
so a step is as short as it gets (the case where a sync can dominate); fp32 and bf16.

Usage (repository root; the old loop is read from git)::

    PYTHONPATH=src .venv/bin/python benchmarks/sync_overhead.py [--repeats 5] [--device cpu]

Output: ``benchmarks/results/sync_overhead.json`` (git-ignored). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch

import vlprompt as vp
from vlprompt import progress
from vlprompt.data import make_image_folder
from vlprompt.engine import train as train_mod

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "sync_overhead.json"
#: the last commit whose training loop synced on every step
BEFORE_REF = "548abaa"


def load_before(ref: str) -> types.ModuleType:
    """``vlprompt.engine.train`` as it was at ``ref`` (its relative imports resolve against today's package)."""
    try:
        src = subprocess.run(["git", "show", f"{ref}:src/vlprompt/engine/train.py"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"cannot read the old training loop from git ({ref}): {e}")
    mod = types.ModuleType("vlprompt.engine._train_before")
    mod.__package__ = "vlprompt.engine"
    mod.__file__ = f"<{ref}:src/vlprompt/engine/train.py>"
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


def run_context_loop(old_loop: Any) -> Any:
    """The old loop (positional arguments) called the way today's engine calls ``_train_epochs(ctx)``."""

    def loop(ctx: Any) -> None:
        old_loop(ctx.model, ctx.task, ctx.cfg, ctx.views, ctx.optimizer, ctx.scaler, ctx.precision, ctx.device,
                 ctx.start_epoch, ctx.epochs, ctx.metrics, ctx.writer, ctx.fingerprint, ctx.prior_seconds, ctx.t0,
                 ctx.on_epoch_end, ctx.logger)

    return loop


def one_run(loop: Any, bb: Any, task: Any, precision: str, device: str, cache: str, epochs: int,
            ) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], float]:
    """Train once with ``loop`` as the engine's epoch loop; metrics rows, prompt state, seconds per step."""
    saved = train_mod._train_epochs
    train_mod._train_epochs = loop
    try:
        train_mod.seed_everything(1)
        model = vp.build_method("coop", bb, task.classnames, n_ctx=4)
        rows: list[dict[str, Any]] = []
        train_mod.fit(model, task, epochs=epochs, lr=0.002, batch_size=4, precision=precision, device=device,
                      cache_dir=cache, evaluate_test=False, progress=False,
                      on_epoch_end=lambda e, row: rows.append(dict(row)))
    finally:
        train_mod._train_epochs = saved
    steps = sum(r["steps"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    state = {k: v.detach().cpu().clone() for k, v in model.prompt_state_dict().items()}
    return rows, state, seconds / max(steps, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs per loop and precision (interleaved)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=40, help="training images per class (x5 classes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--before-ref", default=BEFORE_REF)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    before = run_context_loop(load_before(args.before_ref)._train_epochs)
    progress.set_quiet()
    after = train_mod._train_epochs
    bb = vp.load_backbone("tiny-clip")
    load_start = os.getloadavg()
    result: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "threads": args.threads, "device": args.device},
        "before_ref": args.before_ref, "sync_every": train_mod.SYNC_EVERY, "loadavg_start": load_start,
        "settings": {"method": "coop", "n_ctx": 4, "batch_size": 4, "epochs": args.epochs,
                     "n_train": 5 * args.n_train, "repeats": args.repeats},
        "precisions": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        make_image_folder(root, n_train=args.n_train, n_val=0, n_test=2, size=32, seed=0)
        task = vp.load_dataset("imagefolder", root)
        cache = str(Path(tmp) / "cache")
        for precision in args.precisions:
            one_run(after, bb, task, precision, args.device, cache, 1)  # warm-up + feature cache
            times: dict[str, list[float]] = {"before": [], "after": []}
            identical = True
            for _ in range(args.repeats):
                ref_rows, ref_state, t_before = one_run(before, bb, task, precision, args.device, cache, args.epochs)
                rows, state, t_after = one_run(after, bb, task, precision, args.device, cache, args.epochs)
                times["before"].append(t_before)
                times["after"].append(t_after)
                same_rows = [(r["loss"], r["train_acc"], r["lr"], r["steps"]) for r in rows] == \
                            [(r["loss"], r["train_acc"], r["lr"], r["steps"]) for r in ref_rows]
                same_state = all(torch.equal(state[k], ref_state[k]) for k in ref_state)
                identical = identical and same_rows and same_state
            med = {k: statistics.median(v) for k, v in times.items()}
            result["precisions"][precision] = {
                "seconds_per_step_median": med, "seconds_per_step": times,
                "after_over_before": med["after"] / med["before"],
                "metrics_and_prompts_identical": identical,
                "final_loss": rows[-1]["loss"],
            }
            print(f"{precision}: before {1e3 * med['before']:.2f} ms/step, after {1e3 * med['after']:.2f} ms/step, "
                  f"ratio {med['after'] / med['before']:.3f}, identical={identical}", flush=True)
    result["loadavg_end"] = os.getloadavg()
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"loadavg {load_start} -> {result['loadavg_end']}; wrote {args.out}")
    if not all(p["metrics_and_prompts_identical"] for p in result["precisions"].values()):
        sys.exit("the deferred loop changed the results")


if __name__ == "__main__":
    main()
