"""Issue 19's base-to-new table of the new methods and plug-in combinations: runs
``sweeps/tiny_combinations.yaml`` + ``sweeps/tiny_combinations_paper.yaml`` (tiny-clip) or
``sweeps/real_combinations.yaml`` (effnet-minilm) into one run folder and writes
``docs/results/tiny_combinations.md`` / ``docs/results/real_combinations.md``.

The seeds' methods (CoOp, CoCoOp, MaPLe) run DePT's 10-epoch re-run preset (``dept``), the methods added
after them their own ``paper`` preset (see the sweep files); ``X`` and ``X+plugin`` share X's preset, so a
plug-in row differs from its base row by the plug-in alone.

The reading lines under the tables are computed from the per-seed numbers: a change is called a rise or fall
only when it has the same sign in every seed and its mean exceeds the spread of the per-seed differences
(:func:`vlprompt.demo.reading_lines`); the others are named as within seed noise. Runs are resumable:
finished runs are skipped, so a second invocation only rewrites the document.

    PYTHONPATH=src python benchmarks/combinations_base2new.py --suite tiny [--workers 2]
    PYTHONPATH=src python benchmarks/combinations_base2new.py --suite real [--workers 2]
    PYTHONPATH=src python benchmarks/combinations_base2new.py --suite tiny --methods coop coop+dapt \\
        --seeds 1 --out runs/check --doc runs/check/doc.md      # a subset (pipeline check)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import time
from pathlib import Path
from statistics import mean
from typing import Any

import torch
import yaml

from vlprompt.demo import reading_lines
from vlprompt.report import base2new_tables, collect
from vlprompt.report.tables import plugin_effect_lines, render_base2new
from vlprompt.sweep.run import run_sweep
from vlprompt.sweep.spec import parse_sweep

ROOT = Path(__file__).resolve().parent.parent
#: Which plug-in effect tables to show, and on which base methods (rows lacking a run are left out).
PLUGINS: dict[str, tuple[str, ...]] = {
    "dept": ("clip-adapter", "ivlp", "promptsrc", "promptsrc+dapt"),
    "dapt": ("coop", "cocoop", "maple", "ivlp", "promptsrc"),
    "dapt-g": ("coop", "cocoop", "maple", "ivlp", "promptsrc"),
}
TITLES = {"dept": "DePT", "dapt": "DAPT-S (masks from the dataset)", "dapt-g": "DAPT-G (Grad-CAM masks)"}


def _method_name(m: Any) -> str:
    return m if isinstance(m, str) else str(m["name"])


def per_seed_averages(rows: list[dict[str, Any]]) -> tuple[dict[str, list[dict[str, float | None]]],
                                                           dict[str, dict[str, float | None]], int]:
    """Per method, the task-averaged B / N / H of every seed (seeds with a run on every task, in one order for
    all methods), their means (H of the mean B and N), and the number of tasks."""
    datasets = sorted({r["dataset"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    per_seed: dict[str, list[dict[str, float | None]]] = {}
    for method in sorted({r["method"] for r in rows}):
        out = []
        for s in seeds:
            rs = {r["dataset"]: r for r in rows if r["method"] == method and r["seed"] == s}
            if set(rs) != set(datasets):
                break
            b = mean(float(r["base_acc"]) for r in rs.values())
            n = mean(float(r["new_acc"]) for r in rs.values())
            out.append({"base": b, "new": n, "hm": 2 * b * n / (b + n) if b + n else 0.0})
        if len(out) == len(seeds):
            per_seed[method] = out
    average = {}
    for m, v in per_seed.items():
        b, n = mean(float(x["base"]) for x in v), mean(float(x["new"]) for x in v)  # type: ignore[arg-type]
        average[m] = {"base": b, "new": n, "hm": 2 * b * n / (b + n) if b + n else 0.0}
    return per_seed, average, len(datasets)


def run_seconds(rows: list[dict[str, Any]]) -> float:
    """Training plus feature-extraction seconds of the runs, as their ``results.json`` record them."""
    total = 0.0
    for r in rows:
        res = json.loads((Path(r["path"]) / "results.json").read_text(encoding="utf-8"))
        total += float(res.get("train_seconds") or 0) + float(res.get("feature_seconds") or 0)
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=("tiny", "real"), default="tiny")
    p.add_argument("--sweep", nargs="+", default=None, help="default: sweeps/<suite>_combinations*.yaml")
    p.add_argument("--out", default=None, help="default: runs/<suite>_combinations")
    p.add_argument("--doc", default=None, help="default: docs/results/<suite>_combinations.md")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=None, help="a subset of the sweep's methods (by name)")
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--datasets", nargs="+", default=None)
    p.add_argument("--no-run", action="store_true", help="only rewrite the document from finished runs")
    args = p.parse_args()
    paths = [Path(x) for x in args.sweep] if args.sweep else sorted((ROOT / "sweeps").glob(
        f"{args.suite}_combinations*.yaml"))
    out = args.out or str(ROOT / "runs" / f"{args.suite}_combinations")
    sweeps, names = [], []
    for path in paths:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if args.methods:
            data["methods"] = [m for m in data["methods"] if _method_name(m) in args.methods]
            if not data["methods"]:
                continue
        for key in ("seeds", "datasets"):
            if getattr(args, key):
                data[key] = getattr(args, key)
        data["out"] = out
        sweeps.append((path, parse_sweep(data)))
        names += [_method_name(m) for m in data["methods"]]
    missing = sorted(set(args.methods or ()) - set(names))
    if missing:
        raise SystemExit(f"--methods {missing} are in none of {[p.name for p in paths]}")
    start = _dt.datetime.now(_dt.timezone.utc)
    t0, load0 = time.monotonic(), os.getloadavg()[0]
    if not args.no_run:
        for _, sweep in sweeps:
            status = run_sweep(sweep, executor="local", workers=args.workers)
            if status.get("failures"):
                raise SystemExit(f"failed runs: {status['failures']}")
    wall, load1 = time.monotonic() - t0, os.getloadavg()[0]
    sweep = sweeps[0][1]
    labels = {d.label for _, s in sweeps for d in s.datasets}  # runs of tasks a sweep file no longer lists: not shown
    rows = [r for r in collect(sweep.out) if r["protocol"] == "base2new" and r["dataset"] in labels]
    if not rows:
        raise SystemExit(f"no finished base-to-new runs under {sweep.out}")
    expected = len(sweep.datasets) * len(sweep.seeds) * len(sweep.shots)
    counts = {n: sum(1 for r in rows if r["method"] == n) for n in names}
    incomplete = {n for n, c in counts.items() if c < expected}
    rows = [r for r in rows if r["method"] not in incomplete]  # a partial average would mislead
    tables = base2new_tables(rows)
    per_seed, average, n_tasks = per_seed_averages(rows)
    md = render_base2new(tables)["base2new.md"]
    title = {"tiny": "the tiny suite (tiny-clip)", "real": "the real-data suite (effnet-minilm)"}[args.suite]
    head = [
        f"# New methods and plug-in combinations, base-to-new on {title}",
        "",
        f"Generated by `benchmarks/combinations_base2new.py --suite {args.suite}` on {start:%Y-%m-%d} (sweep "
        f"{' + '.join(f'`sweeps/{p.name}`' for p, _ in sweeps)}: {len(rows)} runs; backbone `{sweep.backbone}`, "
        f"{sweep.shots[0]} shots, seeds {', '.join(map(str, sweep.seeds))}, presets "
        f"{', '.join(f'`{s.presets[0]}` ({p.name})' for p, s in sweeps)}; torch {torch.__version__}, "
        f"{platform.machine()} CPU). Summed time of the runs (training + feature extraction, from their results): "
        f"{run_seconds(rows) / 60:.1f} min; this invocation: {wall / 60:.1f} min wall, load average {load0:.1f} → "
        f"{load1:.1f} (finished runs are reused). Do not edit by hand: rerun the script.",
        "",
        f"Methods: {', '.join(f'`{n}`' for n in names)}. Tasks: "
        f"{', '.join(f'`{d.name}`' for d in sweep.datasets)}.",
        "",
    ]
    short = ", ".join(f"`{n}` ({counts[n]}/{expected} runs)" for n in names if n in incomplete)
    if short:
        head += [f"**Incomplete:** runs still missing for {short}; these methods are left out of every table "
                 "until each task and seed has run (rerun the script: finished runs are kept).", ""]
    for plugin, bases in PLUGINS.items():
        lines = plugin_effect_lines(tables, bases, plugin=plugin)
        if len(lines) <= 3:  # header, rule and the reference row only: no pair ran
            continue
        head += [f"## Does {TITLES[plugin]} raise H? (average over the tasks)", "", *lines, ""]
        said = reading_lines(per_seed, average, n_tasks=n_tasks, plugin=f"+{plugin}")
        pair_lines = [s for s in said if "H for" in s or "change of H" in s]
        if pair_lines:
            head += [f"* {s}" for s in pair_lines] + [""]
    general = [s for s in reading_lines(per_seed, average, n_tasks=n_tasks, plugin="+none")
               if "H for" not in s and "change of H" not in s]
    if general:
        head += ["## Against zero-shot", "", *[f"* {s}" for s in general], ""]
    if args.suite == "real" and any(n.split("+")[0] in ("ivlp", "promptsrc") for n in average):
        head += ["IVLP and PromptSRC run language-only here: effnet-minilm's image tower is a CNN, so their prompts go "
                 "into the 6 MiniLM blocks only (`prompt_depth_vision=0`; IVLP in the MaPLe repository's "
                 "language-only config `paper-language`, PromptSRC in its base-to-new `paper` config without vision "
                 "prompts, where its image L1 term is zero). DAPT needs a ViT (DAPT-G) or mask files (DAPT-S) and "
                 "runs on the tiny suite only.", ""]
    if any(n.startswith("tip-adapter") for n in average):
        head += ["Tip-Adapter's cache holds the base classes' few-shot features only, so on new classes its logits are "
                 "zero-shot CLIP's (docs/deviations.md T10), computed in fp32 where the zero-shot runs use bf16 "
                 "autocast: a difference in N between them is rounding, not the cache.", ""]
    doc = Path(args.doc or ROOT / "docs" / "results" / f"{args.suite}_combinations.md")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(head) + "\n" + md.replace("# Base-to-new generalisation\n", "", 1), encoding="utf-8")
    print(f"wrote {doc} ({len(rows)} runs, {wall / 60:.1f} min)")


if __name__ == "__main__":
    main()
