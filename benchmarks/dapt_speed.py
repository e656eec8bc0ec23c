"""DAPT training cost vs MaPLe, and the cost of DAPT-G's per-epoch Grad-CAM pass, in one process.

Setting (defaults): the embedded ``tiny-clip`` on CPU, ``tiny/shapes`` base classes (5 classes, the
suite ships exact foreground masks), 16 shots (80 training images), batch 4 (20 steps per epoch),
MaPLe's prompts (2 context tokens, "a photo of a", ``prompt_depth`` 3 = every layer of tiny-clip's
3-layer text tower), SGD lr 0.0035 (momentum 0.9, weight decay 5e-4), the engine's precision
(``auto``: bf16 autocast on CPUs with native bf16, else fp32). ``--backbone ViT-B-16`` runs the same on
a randomly initialised ViT-B/16 (224 px; use ``--depth 9`` for MaPLe's paper depth).

1. One training step (``model.loss`` under autocast, backward, SGD step) on the same pre-loaded
   augmented batches (image + paired mask), interleaved model by model, medians after 2 warm-up steps:

   * ``maple``;
   * ``dapt`` with the paper's loss (all four terms every epoch): image tower with gradients on
     ``[x; x ⊙ (1 − m)]``, ``x ⊙ m`` without gradients, class + 32 background prompts in one text pass;
   * ``dapt`` with the released code's early-epoch loss (``loss_schedule="reference"``, epochs 0-6:
     ``L_cls + 0.8 L_v``): ``x`` with gradients, ``[x ⊙ m; x ⊙ (1 − m)]`` without.

   A DAPT-G step is a DAPT-S step (the masks come from memory instead of disk).

2. Whole epochs, timed (data loading included, ``num_workers=0``), ``--epochs`` rounds (medians): MaPLe (plain train
   transform), DAPT-S (disk masks, paired transform), and DAPT-G = its Grad-CAM pass over the training
   set (``prepare_epoch``: one forward + backward to the last block's input per image, no parameter
   gradients) followed by the epoch's training steps on those masks. Reported: the Grad-CAM pass
   relative to DAPT-G's training epoch and to a MaPLe epoch.

The machine is shared: every timing records the share of the CPUs other processes used meanwhile
(``foreign_cpu_share``); steps are interleaved so that load affects the models alike.

Usage (from the repository root)::

    PYTHONPATH=src python benchmarks/dapt_speed.py                          # tiny-clip, ~1-2 min on 2 cores
    PYTHONPATH=src python benchmarks/dapt_speed.py --backbone ViT-B-16 --depth 9 --iters 4 --epochs 0

Output: ``benchmarks/results/dapt_speed.json`` (git-ignored); the measured figures are in docs/dapt.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import vlprompt as vp
from vlprompt.data import ImageDataset, train_transform
from vlprompt.data.masks import DiskMasks, MaskedImageDataset, PairedTrainTransform
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.precision import autocast, cpu_supports_bf16, resolve_precision
from vlprompt.engine.schedule import build_optimizer

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "dapt_speed.json"
CPU = torch.device("cpu")
LR = 0.0035


# ---------------------------------------------------------------------------- machine and load
def _proc_busy() -> float | None:
    """Busy CPU seconds of the whole machine since boot (``/proc/stat``), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    vals = [int(v) for v in fields]
    return (sum(vals[:3]) + sum(vals[5:8])) / os.sysconf("SC_CLK_TCK")


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


def machine() -> dict[str, Any]:
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
    return {"cpu_model": model, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "bf16_native": cpu_supports_bf16(),
            "vlprompt_commit": commit}


# ---------------------------------------------------------------------------- models and steps
def build(name: str, bb: Any, classnames: list[str], depth: int, **extra: Any) -> Any:
    vp.seed_everything(1)
    return vp.build_method(name, bb, classnames, n_ctx=2, ctx_init="a photo of a", prompt_depth=depth, **extra)


def sgd(model: Any, batch: int) -> torch.optim.Optimizer:
    cfg = TrainConfig(epochs=5, lr=LR, batch_size=batch, device="cpu", progress=False)
    return build_optimizer(model.param_groups(LR), cfg)


def step(model: Any, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor], precision: str) -> float:
    with autocast(precision, CPU):
        loss = model.loss(batch)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def stats(times: list[float]) -> dict[str, Any]:
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4), "n": len(times)}


def bench_steps(models: dict[str, Any], pool: list[dict[str, torch.Tensor]], precision: str, batch: int,
                warmup: int, iters: int) -> dict[str, Any]:
    opts = {k: sgd(m, batch) for k, m in models.items()}
    for m in models.values():
        m.train()
    times: dict[str, list[float]] = {k: [] for k in models}
    with Timer() as t:
        for i in range(warmup + iters):
            for k, m in models.items():
                s = time.perf_counter()
                step(m, opts[k], pool[i % len(pool)], precision)
                if i >= warmup:
                    times[k].append(time.perf_counter() - s)
    out: dict[str, Any] = {k: stats(v) for k, v in times.items()}
    base = out["maple"]["median_s"]
    out["ratio_to_maple"] = {k: round(out[k]["median_s"] / base, 2) for k in models if k != "maple"}
    out["warmup"], out["foreign_cpu_share"] = warmup, t.foreign_share
    return out


def timed_epoch(model: Any, dataset: Any, batch: int, precision: str, seed: int = 0) -> dict[str, Any]:
    """One epoch over ``dataset`` as the engine runs it (shuffled batches, loading included)."""
    opt = sgd(model, batch)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, generator=gen, num_workers=0)
    n = 0
    with Timer() as t:
        for items in loader:
            if len(items) == 4:
                x, m, y, _ = items
                b = {"images": x, "masks": m, "labels": y}
            else:
                x, y, _ = items
                b = {"images": x, "labels": y}
            step(model, opt, b, precision)
            n += 1
    return {"wall_s": round(t.wall, 3), "steps": n, "foreign_cpu_share": t.foreign_share}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median wall time, plus every run's wall time."""
    mid = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
    return {**mid, "all_wall_s": [r["wall_s"] for r in runs]}


def bench_epochs(bb: Any, task: Any, depth: int, batch: int, precision: str, repeats: int) -> dict[str, Any]:
    """``repeats`` rounds of: a MaPLe epoch, a DAPT-S epoch, DAPT-G's Grad-CAM pass + its epoch (medians)."""
    names, size = task.classnames, bb.image_size
    maple, dapt = build("maple", bb, names, depth), build("dapt", bb, names, depth)
    g = build("dapt-g", bb, names, depth)
    plain = ImageDataset(task.train, train_transform(size))
    disk = MaskedImageDataset(task.train, DiskMasks.for_task(task), PairedTrainTransform(size))
    runs: dict[str, list[dict[str, Any]]] = {"maple_epoch": [], "dapt_s_epoch": [], "dapt_g_gradcam_pass": [],
                                             "dapt_g_train_epoch": []}
    for r in range(repeats):
        runs["maple_epoch"].append(timed_epoch(maple, plain, batch, precision, seed=r))
        runs["dapt_s_epoch"].append(timed_epoch(dapt, disk, batch, precision, seed=r))
        with Timer() as t:
            g.prepare_epoch(r, task.train, CPU)
        runs["dapt_g_gradcam_pass"].append({
            "wall_s": round(t.wall, 3), "images": len(task.train), "foreign_cpu_share": t.foreign_share,
            "gradcam_batch_size": g.config.gradcam_batch_size,
            "what": "prepare_epoch: load + resize every training image, Grad-CAM masks (fp32, as in the engine)"})
        masked = MaskedImageDataset(task.train, g.epoch_masks(), PairedTrainTransform(size))
        runs["dapt_g_train_epoch"].append(timed_epoch(g, masked, batch, precision, seed=r))
    out: dict[str, Any] = {k: median_run(v) for k, v in runs.items()}
    out["repeats"] = repeats
    cam, train = out["dapt_g_gradcam_pass"]["wall_s"], out["dapt_g_train_epoch"]["wall_s"]
    out["gradcam_over_dapt_g_train_epoch"] = round(cam / train, 3)
    out["gradcam_over_maple_epoch"] = round(cam / out["maple_epoch"]["wall_s"], 3)
    out["dapt_g_epoch_total_over_maple_epoch"] = round((cam + train) / out["maple_epoch"]["wall_s"], 2)
    out["dapt_s_epoch_over_maple_epoch"] = round(out["dapt_s_epoch"]["wall_s"] / out["maple_epoch"]["wall_s"], 2)
    return out


def batch_pool(task: Any, size: int, batch: int, n_batches: int) -> tuple[list[dict[str, torch.Tensor]], float]:
    ds = MaskedImageDataset(task.train, DiskMasks.for_task(task), PairedTrainTransform(size))
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    order = torch.randperm(len(ds), generator=gen).tolist()
    pool, loads = [], []
    for k in range(n_batches):
        idx = order[k * batch:(k + 1) * batch] or order[:batch]
        s = time.perf_counter()
        items = [ds[i] for i in idx]
        loads.append(time.perf_counter() - s)
        pool.append({"images": torch.stack([it[0] for it in items]), "masks": torch.stack([it[1] for it in items]),
                     "labels": torch.tensor([it[2] for it in items])})
    return pool, statistics.median(loads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="tiny-clip", help="tiny-clip (shipped weights) or e.g. ViT-B-16 (random)")
    ap.add_argument("--dataset", default="tiny/shapes", help="a tiny-suite task (it ships masks)")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=3,
                    help="rounds of timed whole epochs and Grad-CAM passes (medians reported); 0: skip")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    t0 = time.perf_counter()
    bb = vp.load_backbone(args.backbone)
    precision = resolve_precision(args.precision, CPU)
    task = vp.load_dataset(args.dataset, None, shots=args.shots, seed=1, subsample="base")
    pool, load_s = batch_pool(task, bb.image_size, args.batch, 4)
    names = task.classnames
    models: dict[str, Any] = {
        "maple": build("maple", bb, names, args.depth),
        "dapt_paper_loss": build("dapt", bb, names, args.depth),
        "dapt_reference_early_epochs": build("dapt", bb, names, args.depth, loss_schedule="reference"),
    }
    result: dict[str, Any] = {
        "benchmark": "dapt_speed", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "setting": {"backbone": bb.name, "image_size": bb.image_size, "dataset": args.dataset, "subsample": "base",
                    "classes": len(names), "shots": args.shots, "train_images": len(task.train),
                    "batch": args.batch, "steps_per_epoch": -(-len(task.train) // args.batch), "n_ctx": 2,
                    "prompt_depth": args.depth, "lr": LR, "precision": precision,
                    "load_masked_batch_median_s": round(load_s, 4)},
    }
    print(f"steps: {list(models)} ({args.iters} interleaved, {precision}) ...", flush=True)
    result["steps"] = bench_steps(models, pool, precision, args.batch, args.warmup, args.iters)
    print(json.dumps({"median_s": {k: result["steps"][k]["median_s"] for k in models},
                      "ratio_to_maple": result["steps"]["ratio_to_maple"]}), flush=True)
    if args.epochs:
        print("timed epochs: maple, dapt-s, dapt-g (Grad-CAM pass + training) ...", flush=True)
        result["epochs"] = bench_epochs(bb, task, args.depth, args.batch, precision, args.epochs)
        print(json.dumps({k: v for k, v in result["epochs"].items() if not isinstance(v, dict)}), flush=True)
    result["total_wall_s"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['total_wall_s']} s)")


if __name__ == "__main__":
    main()
