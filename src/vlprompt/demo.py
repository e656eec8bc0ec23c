"""The main demo: base-to-new on the whole tiny suite with the embedded tiny-clip, one seed.

Zero-shot, the linear probe (base classes only: a trained classifier has no weights for unseen classes)
and every text-prompt method (CoOp, CoCoOp, KgCoOp, MaPLe; DePT's 10-epoch configuration), 16 shots.
Writes one run directory per method, task and seed, a markdown report with the base / new / H table and
its average row (H of the averaged B and N), and a bar plot of the averages.

Example:
    >>> from vlprompt.demo import run_demo
    >>> summary = run_demo("runs/demo", methods=["zeroshot", "coop"], tasks=["tiny/shapes"])
    >>> summary["average"]["coop"]["hm"]
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from .engine.run import RunDir, atomic_write
from .engine.train import hm
from .errors import ConfigError
from .presets import PRESETS
from .protocols import RunSpec
from .protocols.runs import evaluate_run, train_run

#: Methods of the demo, in table order. ``linear-probe`` reports base accuracy only.
DEMO_METHODS: tuple[str, ...] = ("zeroshot", "linear-probe", "coop", "cocoop", "kgcoop", "maple")
BASE_ONLY = frozenset({"linear-probe"})
#: Method options of the demo: MaPLe's depth 9 exceeds tiny-clip's 3 text layers (prompts in all 3).
DEMO_OPTIONS: dict[str, dict[str, Any]] = {"maple": {"prompt_depth": 3}}


def demo_tasks() -> list[str]:
    """The tiny suite's base tasks: split_zhou format, required sources, not a domain-shifted variant."""
    from .data.tiny import SPECS

    return [f"tiny/{s.name}" for s in SPECS if s.fmt == "split_zhou" and s.variant_of is None and not s.optional]


def default_methods(
    backbone: str = "tiny-clip", weights: str | None = None, pretrained: str | None = None,
    quick_gelu: bool | None = None,
) -> tuple[str, ...]:
    """:data:`DEMO_METHODS` less those the backbone cannot run (MaPLe needs a ViT image tower with visual
    prompts: a CNN tower such as ``effnet-minilm``'s drops it)."""
    if backbone == "tiny-clip":
        return DEMO_METHODS
    from .backbones import load_backbone

    extra = {k: v for k, v in (("pretrained", pretrained), ("force_quick_gelu", quick_gelu)) if v is not None}
    bb = load_backbone(backbone, weights=weights, **extra)
    if bb.supports_visual_prompts:
        return DEMO_METHODS
    return tuple(m for m in DEMO_METHODS if m != "maple")


def run_demo(
    out: str | Path = "runs/demo", backbone: str = "tiny-clip", weights: str | None = None,
    methods: list[str] | tuple[str, ...] | None = None, tasks: list[str] | None = None, seed: int = 1,
    shots: int = 16, epochs: int | None = None, root: str = ".", workers: int = 2, log: Any = print,
    pretrained: str | None = None, quick_gelu: bool | None = None,
) -> dict[str, Any]:
    """Run the demo into ``out``; returns ``{"rows", "average", "seconds", "files"}``.

    ``rows[task][method]`` and ``average[method]`` hold ``base``, ``new`` and ``hm`` (percent; ``new`` and
    ``hm`` are ``None`` for the linear probe). ``epochs`` overrides the presets' 10 epochs (quick checks).
    ``root``: a tiny suite folder (default: the cache, generated on first use). ``workers``: processes
    running the (method, task) runs in parallel, one torch thread each (1: in this process).
    Finished runs (their ``results.json`` exists) are reused. ``pretrained`` / ``quick_gelu``: as
    :func:`vlprompt.load_backbone`'s ``pretrained`` / ``force_quick_gelu``.
    """
    out = Path(out)
    if methods is None:
        methods = default_methods(backbone, weights, pretrained, quick_gelu)
        if len(methods) < len(DEMO_METHODS):
            log(f"demo: {', '.join(m for m in DEMO_METHODS if m not in methods)} skipped: backbone {backbone!r} "
                "has no ViT image tower for visual prompts")
    tasks = list(tasks) if tasks else demo_tasks()
    if not tasks:
        raise ConfigError("the demo needs at least one task")
    train = {"epochs": epochs} if epochs is not None else {}
    rows: dict[str, dict[str, dict[str, float | None]]] = {t: {} for t in tasks}
    seconds: dict[str, float] = dict.fromkeys(methods, 0.0)
    bb_args = {"backbone": backbone, "weights": weights, "pretrained": pretrained, "quick_gelu": quick_gelu}
    jobs = [(m, t, str(out), bb_args, shots, seed, root, train) for m in methods for t in tasks]
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        results = map(_job, jobs)
    else:  # one torch thread per worker: 2 workers on 2 cores beat 1 process with 2 threads on these tiny models
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker)
        results = pool.map(_job, sorted(jobs, key=lambda j: -_COST.get(j[0], 1.0)))
    t_start = time.perf_counter()
    try:
        for method, task, row, sec in results:
            rows[task][method] = row
            seconds[method] += sec
            if log:
                log(f"{method} {task}: B {_cell(row['base'])} N {_cell(row['new'])} ({sec:.1f} s)")
    finally:
        if workers > 1:
            pool.shutdown()
    wall = time.perf_counter() - t_start
    rows = {t: {m: rows[t][m] for m in methods} for t in tasks}
    average: dict[str, dict[str, float | None]] = {}
    for m in methods:
        b = sum(rows[t][m]["base"] for t in tasks) / len(tasks)
        n = None if m in BASE_ONLY else sum(rows[t][m]["new"] for t in tasks) / len(tasks)
        average[m] = {"base": b, "new": n, "hm": None if n is None else hm(b, n)}
    table = render_table(rows, average, list(methods))
    files = [out / "demo.md"]
    png = _plot(average, out / "demo_bars.png")
    if png is not None:
        files.append(png)
    total = sum(seconds.values())
    seconds = {m: round(v, 1) for m, v in seconds.items()}
    md = [
        "# vlprompt demo: base-to-new on the tiny suite", "",
        f"Backbone `{backbone}`, {shots} shots, seed {seed}, DePT's 10-epoch configuration for the trained "
        f"methods{'' if epochs is None else f' (epochs overridden: {epochs})'}. B = accuracy on the base classes "
        "(first half of each task's classes), N = on the new classes (never trained on), H = harmonic mean; "
        "average row: mean B and N over the tasks, H of those means. The linear probe has no new-class "
        "weights (B only).", "",
        table, "",
        "Seconds per method (all tasks, summed over workers): " + ", ".join(f"{m} {s:.0f}" for m, s in seconds.items())
        + f"; total {total:.0f} s; wall clock {wall:.0f} s with {workers} worker(s).", "",
    ]
    if png is not None:
        md.append(f"![average B / N / H]({png.name})\n")
    atomic_write(out / "demo.md", "\n".join(md))
    return {"rows": rows, "average": average, "seconds": seconds, "wall_seconds": round(wall, 1), "table": table,
            "files": [str(f) for f in files]}


#: Rough relative cost per method (measured on the tiny suite), to start the long runs first.
_COST = {"maple": 30.0, "cocoop": 16.0, "coop": 9.0, "kgcoop": 6.0, "linear-probe": 5.0, "zeroshot": 1.0}


def _init_worker() -> None:
    import torch

    from .workers import exit_with_parent

    exit_with_parent()

    torch.set_num_threads(1)


def _job(job: tuple) -> tuple[str, str, dict[str, float | None], float]:
    """One (method, task) base-to-new run; returns ``(method, task, {base, new, hm}, seconds)``."""
    method, task, out, bb_args, shots, seed, root, train = job
    backbone = bb_args["backbone"]
    t0 = time.perf_counter()
    run_out = Path(out) / method / task / f"seed{seed}"
    if method in BASE_ONLY:
        res = train_run(RunSpec(method, task, root, out=str(run_out), **bb_args, shots=shots, seed=seed,
                                subsample="base"))
        return method, task, {"base": res["acc"], "new": None, "hm": None}, time.perf_counter() - t0
    preset = "dept" if method.split("+")[0] in PRESETS else None
    options = dict(DEMO_OPTIONS.get(method.split("+")[0], {})) if backbone == "tiny-clip" else {}
    res = train_run(RunSpec(method, task, root, out=str(run_out), **bb_args, shots=shots,
                            seed=seed, subsample="base", preset=preset, train_options=dict(train),
                            method_options=options))
    if "new_acc" not in res:  # as protocols.base2new: re-target the trained run to the new classes
        new = evaluate_run(run_out, task, root, "new", weights=bb_args["weights"])
        res = {**res, "new_acc": new["acc"], "hm": hm(res["base_acc"], new["acc"])}
        RunDir(run_out).write_results(res)
    return method, task, {"base": res["base_acc"], "new": res["new_acc"], "hm": res["hm"]}, time.perf_counter() - t0


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def render_table(rows: dict[str, dict[str, dict[str, float | None]]], average: dict[str, dict[str, float | None]],
                 methods: list[str]) -> str:
    """Markdown: one row per task and the average row; B / N / H columns per method."""
    header = ["task"] + [f"{m} {c}" for m in methods for c in ("B", "N", "H")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t, r in [*rows.items(), ("**average**", average)]:
        cells = [_cell(r[m][c]) for m in methods for c in ("base", "new", "hm")]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(average: dict[str, dict[str, float | None]], path: Path) -> Path | None:
    from .report.plots import have_matplotlib, plot_base2new_bars

    if not have_matplotlib():
        return None
    b2n = {(m, 16): {"average": dict(a)} for m, a in average.items()}  # None (linear probe N, H): drawn as n/a
    path.parent.mkdir(parents=True, exist_ok=True)
    return plot_base2new_bars(b2n, path)
