"""Why does CoOp's base accuracy fall below zero-shot on tiny-clip? A small recipe study.

CoOp (16 shots, base classes, DePT's 10-epoch configuration: batch 4, lr 0.0035, 16 random context vectors)
against zero-shot on a few of the tiny suite's tasks, varying one thing at a time:

* the learning rate (0.0005, 0.002, 0.0035 = the preset, 0.01);
* the number of epochs (30 instead of 10 at the preset's lr);
* the logit scale used in training (tiny-clip's own learned 17.1 against CLIP's 100; evaluation is an argmax,
  so the scale matters only through the loss);
* the context initialisation (``"a photo of a"`` instead of random vectors).

and, as the model's ceiling for a classifier on its frozen image features, a linear probe on the base classes
with 16 shots and with every training image. Each row records the base test accuracy and the accuracy of the
final prompt on its own 16 training shots (does the prompt fit them at all? zero-shot's row: the hand template
on the same shots). The numbers in ``docs/tiny-clip.md`` ("Why prompt
tuning does not beat zero-shot on tiny-clip") come from

    PYTHONPATH=src python benchmarks/tiny_coop_recipe.py --tasks counting shapes positions --seeds 1 2 3

(finished runs under ``--out`` are reused; ``--configs`` picks a subset). One torch thread, one process.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from vlprompt import evaluate, load_dataset, load_prompt
from vlprompt.protocols.runs import RunSpec, get_backbone, train_run

ROOT = Path(__file__).resolve().parent.parent

#: name -> (train options over the dept preset, method options, training logit scale or None = the model's)
CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any], float | None]] = {
    "preset (lr 0.0035)": ({}, {}, None),
    "lr 0.0005": ({"lr": 0.0005}, {}, None),
    "lr 0.002": ({"lr": 0.002}, {}, None),
    "lr 0.01": ({"lr": 0.01}, {}, None),
    "30 epochs": ({"epochs": 30}, {}, None),
    "logit scale 100": ({}, {}, 100.0),
    "init 'a photo of a'": ({}, {"n_ctx": 4, "ctx_init": "a photo of a"}, None),
}


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s).strip("_")


def _train_acc(run_dir: Path, task: str, seed: int) -> float:
    """Accuracy of the run's (trained) prompt on its own 16 training shots, plain view: does it fit them?"""
    bb = get_backbone("tiny-clip", None, False, "auto")
    shots = load_dataset(task, ".", shots=16, seed=seed, subsample="base")
    return evaluate(load_prompt(run_dir, bb), shots.train)


def run_one(method: str, task: str, seed: int, out: Path, shots: int | None, preset: str | None,
            train: dict[str, Any], opts: dict[str, Any], scale: float | None) -> dict[str, Any]:
    bb = get_backbone("tiny-clip", None, False, "auto")
    own = float(bb.model.logit_scale.data)
    if scale is not None:
        bb.model.logit_scale.data.fill_(math.log(scale))
    try:
        t0 = time.process_time()
        res = train_run(RunSpec(method, task, ".", out=str(out), shots=shots, seed=seed, subsample="base",
                                preset=preset, train_options=dict(train), method_options=dict(opts)))
    finally:
        bb.model.logit_scale.data.fill_(own)
    train_acc = None if method == "linear-probe" else _train_acc(out, task, seed)
    return {"base": float(res.get("base_acc", res["acc"])), "train_acc": train_acc,
            "cpu_s": round(time.process_time() - t0, 1)}


def _fmt(v: list[float]) -> str:
    if not v:
        return "-"
    m = statistics.fmean(v)
    return f"{m:.1f} ± {statistics.stdev(v):.1f}" if len(v) > 1 else f"{m:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["counting", "shapes", "positions"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--configs", nargs="+", default=None, help=f"subset of: {', '.join(CONFIGS)}")
    p.add_argument("--out", default=str(ROOT / "runs" / "tiny_coop_recipe"))
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    configs = {k: CONFIGS[k] for k in (args.configs or CONFIGS)}
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for t in args.tasks:
        task = f"tiny/{t}"
        for seed in args.seeds:
            plan: list[tuple[str, str, int | None, str | None, dict, dict, float | None]] = [
                ("zero-shot", "zeroshot", 16, None, {}, {}, None),
                ("linear probe 16-shot", "linear-probe", 16, None, {}, {}, None),
                ("linear probe all images", "linear-probe", None, None, {}, {}, None),
            ] + [(f"CoOp {k}", "coop", 16, "dept", tr, mo, sc) for k, (tr, mo, sc) in configs.items()]
            for name, method, shots, preset, tr, mo, sc in plan:
                r = run_one(method, task, seed, out / _slug(name) / t / f"seed{seed}", shots, preset, tr, mo, sc)
                rows.setdefault(t, {}).setdefault(name, []).append(r)
                print(json.dumps({"task": t, "seed": seed, "config": name, **r}), flush=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    names = list(next(iter(rows.values())).keys())
    print("\n| setting | " + " | ".join(f"{t} base | {t} train acc" for t in rows) + " |")
    print("|---|" + "---|---|" * len(rows))
    for n in names:
        cells = []
        for t in rows:
            rs = rows[t].get(n, [])
            cells.append(_fmt([r["base"] for r in rs]))
            cells.append(_fmt([r["train_acc"] for r in rs if r["train_acc"] is not None]))
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
