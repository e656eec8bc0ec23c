"""The main demo: base-to-new with real pretrained weights on real images, then the ViT prompt methods.

Default plan (``vlprompt demo``), two parts:

1. **Real weights** (:data:`REAL_METHODS` on ``effnet-minilm``, see docs/effnet-minilm.md, on the real suite,
   docs/real-suite.md): zero-shot, the linear probe (base classes only: a trained classifier has no weights for
   unseen classes), CoOp, CoCoOp, KgCoOp and each ``+dept``, DePT's 10-epoch configuration, 16 shots,
   :data:`REAL_SEEDS`, on :func:`real_tasks` (Fashion-MNIST and the scikit-image patches: the datasets of
   ``docs/results/real_base2new.md`` where the base-new trade-off and DePT's gain are largest per second).
2. **ViT prompts** (:data:`VIT_METHODS` on the embedded ``tiny-clip``, whose image tower is a ViT): MaPLe,
   VPT-deep and E2VPT (both with the frozen hand-template text classifier, DePT's "VPT" row, so they predict
   new classes too) against zero-shot on :data:`VIT_TASKS`, one seed.

Without the real-weights packages or the real datasets the demo says why in one line and runs the same
methods on the tiny suite with tiny-clip instead (:func:`tiny_parts`). ``backbone`` / ``methods`` / ``tasks``
replace the plan by one part with those settings.

Every part writes one run directory per method, task and seed, a base / new / H table (mean over seeds) with
its average row (H of the averaged B and N), a summary (method rows, ± the standard deviation over seeds of
the task-averaged values), a bar plot, and *reading lines* computed from the numbers (:func:`reading_lines`).

Example:
    >>> from vlprompt.demo import run_demo
    >>> summary = run_demo("runs/demo", backbone="tiny-clip", methods=["zeroshot", "coop"], tasks=["tiny/shapes"])
    >>> summary["average"]["coop"]["hm"]
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine.run import RunDir, atomic_write
from .engine.train import hm
from .errors import ConfigError
from .presets import PRESETS
from .protocols import RunSpec
from .protocols.runs import evaluate_run, train_run

#: Methods of a single-backbone demo (``--backbone`` given), in table order. ``linear-probe`` reports B only.
DEMO_METHODS: tuple[str, ...] = ("zeroshot", "linear-probe", "coop", "cocoop", "kgcoop", "maple")
#: Methods of the real-weights part (text prompts; effnet-minilm's CNN image tower takes no visual prompts).
REAL_METHODS: tuple[str, ...] = ("zeroshot", "linear-probe", "coop", "coop+dept", "cocoop", "cocoop+dept", "kgcoop",
                                 "kgcoop+dept")
#: Seeds of the real-weights part: three, so the reading lines can tell a difference from seed noise.
REAL_SEEDS: tuple[int, ...] = (1, 2, 3)
#: Real-suite datasets in order of preference; the first available of each group is used (see real_tasks).
REAL_TASK_GROUPS: tuple[tuple[str, ...], ...] = (("real/fashion_mnist", "real/animal_mnist", "real/digits"),
                                                  ("real/skimage_patches",))
#: Methods of the ViT part (visual prompts in tiny-clip's ViT image tower) and its tasks (one seed).
VIT_METHODS: tuple[str, ...] = ("zeroshot", "maple", "vpt-deep", "e2vpt")
VIT_TASKS: tuple[str, ...] = ("tiny/real_textures", "tiny/shapes")
BASE_ONLY = frozenset({"linear-probe"})
#: Method options on tiny-clip: MaPLe's depth 9 exceeds its 3 text layers (prompts in all 3); VPT / E2VPT
#: classify with the frozen hand-template text features (DePT's "VPT" row), so they predict new classes.
DEMO_OPTIONS: dict[str, dict[str, Any]] = {"maple": {"prompt_depth": 3}, "vpt-deep": {"classifier": "text"},
                                           "vpt-shallow": {"classifier": "text"}, "e2vpt": {"classifier": "text"}}
#: Training of methods without a DePT preset (VPT, E2VPT): DePT's configuration of every baseline.
DEMO_TRAIN: dict[str, Any] = {"epochs": 10, "batch_size": 4, "lr": 0.0035}


@dataclass(frozen=True)
class DemoPart:
    """One table of the demo: methods x tasks x seeds on one backbone.

    Attributes:
        slug: sub-folder of the run directories and plot name (``""``: directly under ``out``).
        title: heading in ``demo.md`` and on the terminal.
        backbone, weights: the backbone (``weights`` None = its default).
        pretrained, quick_gelu: as :func:`vlprompt.load_backbone`'s ``pretrained`` / ``force_quick_gelu``.
        methods, tasks, seeds: the grid.
        root: data root (the tiny suite folder; real datasets use their cache).
    """

    slug: str
    title: str
    backbone: str
    methods: tuple[str, ...]
    tasks: tuple[str, ...]
    seeds: tuple[int, ...] = (1,)
    weights: str | None = None
    root: str = "."
    notes: tuple[str, ...] = field(default_factory=tuple)
    pretrained: str | None = None
    quick_gelu: bool | None = None


def demo_tasks() -> list[str]:
    """The tiny suite's base tasks: split_zhou format, required sources, not a domain-shifted variant."""
    from .data.tiny import SPECS

    return [f"tiny/{s.name}" for s in SPECS if s.fmt == "split_zhou" and s.variant_of is None and not s.optional]


def real_tasks() -> tuple[list[str], list[str]]:
    """The real-suite datasets of the demo (first available of each :data:`REAL_TASK_GROUPS` entry) and the
    reasons of those left out (``"real/x: <install command>"``)."""
    from .data.real import SPEC_BY_NAME

    chosen, missing = [], []
    for group in REAL_TASK_GROUPS:
        for name in group:
            spec = SPEC_BY_NAME[name.split("/", 1)[1]]
            if spec.available():
                chosen.append(name)
                break
            missing.append(f"{name} ({spec.install or 'pip install vlprompt[tiny]'})")
    return chosen, missing


def real_weights_problem() -> str | None:
    """Why the real-weights part cannot run (None: it can). Loads ``effnet-minilm`` once in this process, which
    also fits and caches its text→image alignment before the worker processes need it."""
    from .backbones import load_backbone

    try:
        load_backbone("effnet-minilm")
    except (ConfigError, ImportError, OSError) as e:
        return f"backbone 'effnet-minilm' unavailable ({str(e).splitlines()[0]})"
    chosen, missing = real_tasks()
    if len(chosen) < len(REAL_TASK_GROUPS):
        return f"real-suite datasets missing: {', '.join(missing)}"
    return None


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
    if load_backbone(backbone, weights=weights, **extra).supports_visual_prompts:
        return DEMO_METHODS
    return tuple(m for m in DEMO_METHODS if m != "maple")


def vit_part(root: str = ".", seeds: tuple[int, ...] = (1,)) -> DemoPart:
    return DemoPart("vit", "ViT prompts on tiny-clip (MaPLe, VPT, E2VPT): base-to-new", "tiny-clip", VIT_METHODS,
                    VIT_TASKS, seeds, root=root,
                    notes=("tiny-clip is the project's own small CLIP (docs/tiny-clip.md): its image tower is a "
                           "ViT, so the visual-prompt methods run on it; on this model the hand templates are hard "
                           "to beat (docs/tiny-clip.md, \"Why prompt tuning does not beat zero-shot on tiny-clip\").",))


def real_parts(root: str = ".", seeds: tuple[int, ...] = REAL_SEEDS) -> list[DemoPart]:
    """The default plan: the real-weights part, then the ViT part."""
    tasks, _ = real_tasks()
    return [
        DemoPart("real", "Real pretrained weights (effnet-minilm) on real images: base-to-new", "effnet-minilm",
                 REAL_METHODS, tuple(tasks), seeds, root=root,
                 notes=("effnet-minilm: EfficientNet-Lite0 (ImageNet) + MiniLM-L6 sentence encoder, both from "
                        "installed packages, aligned in closed form on ImageNet's class names "
                        "(docs/effnet-minilm.md). Datasets: docs/real-suite.md.",)),
        vit_part(root),
    ]


def tiny_parts(root: str = ".", seeds: tuple[int, ...] = (1,)) -> list[DemoPart]:
    """The fallback plan: the real part's methods on the whole tiny suite with tiny-clip, then the ViT part."""
    return [DemoPart("tiny", "tiny-clip on the tiny suite: base-to-new", "tiny-clip", REAL_METHODS,
                     tuple(demo_tasks()), seeds, root=root), vit_part(root)]


def plan_parts(backbone: str | None = None, weights: str | None = None, methods: Sequence[str] | None = None,
               tasks: Sequence[str] | None = None, seeds: Sequence[int] | None = None, root: str = ".",
               log: Callable[[str], Any] | None = print,
               problem: Callable[[], str | None] | None = None, pretrained: str | None = None,
               quick_gelu: bool | None = None) -> list[DemoPart]:
    """The parts to run: the default plan (real weights + ViT, or the tiny-clip fallback with one line saying
    why), or one part when ``backbone``, ``methods`` or ``tasks`` is given. ``problem``: the availability check
    (default :func:`real_weights_problem`)."""
    sd = tuple(seeds) if seeds else None
    if backbone is None and methods is None and tasks is None:
        why = (problem or real_weights_problem)()
        if why is None:
            return real_parts(root, sd or REAL_SEEDS)
        if log:
            log(f"demo: {why}; running the tiny-clip demo instead (see docs/effnet-minilm.md, docs/real-suite.md)")
        return tiny_parts(root, sd or (1,))
    bb = backbone or ("tiny-clip" if not tasks or all(t.startswith("tiny/") for t in tasks) else "effnet-minilm")
    if methods is None:
        methods = default_methods(bb, weights, pretrained, quick_gelu)
        if len(methods) < len(DEMO_METHODS) and log:
            log(f"demo: {', '.join(m for m in DEMO_METHODS if m not in methods)} skipped: backbone {bb!r} "
                "has no ViT image tower for visual prompts")
    task_list = list(tasks) if tasks else (demo_tasks() if bb == "tiny-clip" else real_tasks()[0])
    if not task_list:
        raise ConfigError("the demo needs at least one task")
    if not methods:
        raise ConfigError("the demo needs at least one method")
    return [DemoPart("", f"base-to-new with {bb}", bb, tuple(methods), tuple(task_list), sd or (1,), weights, root,
                     pretrained=pretrained, quick_gelu=quick_gelu)]


def run_demo(
    out: str | Path = "runs/demo", backbone: str | None = None, weights: str | None = None,
    methods: list[str] | tuple[str, ...] | None = None, tasks: list[str] | None = None, seed: int | None = None,
    shots: int = 16, epochs: int | None = None, root: str = ".", workers: int = 2, log: Any = print,
    seeds: Sequence[int] | None = None, parts: list[DemoPart] | None = None, pretrained: str | None = None,
    quick_gelu: bool | None = None,
) -> dict[str, Any]:
    """Run the demo into ``out``; returns ``{"parts", "rows", "average", "reading", "table", "files", ...}``.

    ``parts[i]`` holds that part's ``rows[task][method]`` and ``average[method]`` (``base``, ``new``, ``hm`` in
    percent, means over seeds; ``new`` and ``hm`` are ``None`` for the linear probe), ``std[method]`` (standard
    deviation over seeds of the task-averaged values), ``reading`` (lines computed from the numbers) and
    ``table``; top-level ``rows`` / ``average`` are the first part's. ``epochs`` overrides the 10 epochs (quick
    checks). ``seed`` / ``seeds``: the seeds of every part (default: the plan's). ``root``: a tiny suite
    folder (default: the cache, generated on first use). ``workers``: processes running the runs in parallel,
    one torch thread each (1: in this process). Finished runs (their ``results.json`` exists) are reused.
    """
    out = Path(out)
    if seed is not None and seeds is None:
        seeds = (seed,)
    if parts is None:
        parts = plan_parts(backbone, weights, methods, tasks, seeds, root, log, pretrained=pretrained,
                           quick_gelu=quick_gelu)
    train = {"epochs": epochs} if epochs is not None else {}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    jobs = [(p.slug, m, t, s, str(out / p.slug) if p.slug else str(out),
             {"backbone": p.backbone, "weights": p.weights, "pretrained": p.pretrained, "quick_gelu": p.quick_gelu},
             shots, p.root, train)
            for p in parts for m in p.methods for t in p.tasks for s in p.seeds]
    workers = max(1, min(workers, len(jobs)))
    raw: dict[tuple[str, str, str, int], dict[str, float | None]] = {}
    seconds: dict[tuple[str, str], float] = {}
    cpu: dict[tuple[str, str], float] = {}
    t_start = time.perf_counter()
    if workers == 1:
        results = map(_job, jobs)
    else:  # one torch thread per worker: 2 workers on 2 cores beat 1 process with 2 threads on these models
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker)
        order = {p.slug: i for i, p in enumerate(parts)}  # part by part (a worker keeps one backbone loaded)
        results = pool.map(_job, sorted(jobs, key=lambda j: (order[j[0]], -_COST.get(j[1], 1.0))))
    try:
        for slug, method, task, s, row, sec, csec in results:
            raw[(slug, method, task, s)] = row
            seconds[(slug, method)] = seconds.get((slug, method), 0.0) + sec
            cpu[(slug, method)] = cpu.get((slug, method), 0.0) + csec
            if log:
                log(f"{method} {task} seed {s}: B {_cell(row['base'])} N {_cell(row['new'])} ({sec:.1f} s)")
    finally:
        if workers > 1:
            pool.shutdown()
    wall = time.perf_counter() - t_start
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    done = []
    for p in parts:
        res = summarise(p, {(m, t, s): raw[(p.slug, m, t, s)] for m in p.methods for t in p.tasks for s in p.seeds})
        res["seconds"] = {m: round(seconds[(p.slug, m)], 1) for m in p.methods}
        res["cpu_seconds"] = {m: round(cpu[(p.slug, m)], 1) for m in p.methods}
        done.append(res)
    files = [out / "demo.md"]
    for i, (p, res) in enumerate(zip(parts, done, strict=True)):
        png = _plot({m: {k: res["average"][m][k] for k in ("base", "new", "hm")} for m in p.methods},
                    out / ("demo_bars.png" if i == 0 else f"demo_{p.slug or i}_bars.png"))
        res["plot"] = None if png is None else str(png)
        if png is not None:
            files.append(png)
    cpu_total = sum(cpu.values())
    timing = {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu_total, 1), "workers": workers,
              "load_start": load, "load_end": load_end,
              "idle_estimate_seconds": round(max(cpu_total / workers, max(cpu.values(), default=0.0)), 1)}
    md = ["# vlprompt demo: base-to-new, the papers' story", "",
          f"{shots} shots, DePT's 10-epoch configuration for the trained methods"
          f"{'' if epochs is None else f' (epochs overridden: {epochs})'}. B = accuracy on the base classes (first "
          "half of each task's classes, the only ones trained on), N = on the new classes (never trained on), H = "
          "their harmonic mean. Average row: mean B and N over the tasks, H of those means. The linear probe has "
          "no new-class weights (B only). A difference is stated in the reading lines only when it has the same "
          "sign in every seed and exceeds the standard deviation of its per-seed values (with one seed there is "
          "no noise estimate, and the lines say so).", ""]
    for p, res in zip(parts, done, strict=True):
        md += [f"## {p.title}", "", f"Backbone `{p.backbone}`, seeds {', '.join(map(str, p.seeds))}, tasks "
               f"{', '.join(p.tasks)}.", *[f"{n}" for n in p.notes], "", "### Average over the tasks", "",
               res["summary"], "", "### Reading", "", *[f"* {line}" for line in res["reading"]], "",
               "### Per task (mean over seeds)", "", res["table"], ""]
        if res["plot"]:
            md.append(f"![average B / N / H]({Path(res['plot']).name})\n")
        md += ["CPU seconds per method (all tasks and seeds): "
               + ", ".join(f"{m} {s:.0f}" for m, s in res["cpu_seconds"].items()), ""]
    md += ["## Time", "", _timing_line(timing), ""]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "demo.md", "\n".join(md))
    text = []
    for p, res in zip(parts, done, strict=True):
        text += [f"== {p.title} ({p.backbone}; seeds {', '.join(map(str, p.seeds))}; {len(p.tasks)} tasks)",
                 res["summary"], "", *[f"- {line}" for line in res["reading"]], ""]
    text.append(_timing_line(timing))
    first = done[0]
    return {"parts": done, "rows": first["rows"], "average": first["average"], "reading": first["reading"],
            "table": "\n".join(text), "files": [str(f) for f in files], **timing}


def _timing_line(t: dict[str, Any]) -> str:
    load = "" if t["load_start"] is None else \
        f" (1-minute load average {t['load_start']:.1f} at the start, {t['load_end']:.1f} at the end)"
    return (f"Wall clock {t['wall_seconds']:.0f} s with {t['workers']} worker process(es){load}; the runs used "
            f"{t['cpu_seconds']:.0f} CPU seconds, so on an otherwise idle machine with {t['workers']} cores they "
            f"take about {t['idle_estimate_seconds']:.0f} s.")


def summarise(part: DemoPart, raw: dict[tuple[str, str, int], dict[str, float | None]]) -> dict[str, Any]:
    """Tables and reading lines of one part from ``raw[(method, task, seed)] = {base, new, hm}``."""
    methods, tasks, seeds = list(part.methods), list(part.tasks), list(part.seeds)

    def mean(vals: list[float | None]) -> float | None:
        return None if any(v is None for v in vals) else statistics.fmean(vals)  # type: ignore[arg-type]

    rows: dict[str, dict[str, dict[str, float | None]]] = {}
    for t in tasks:
        rows[t] = {}
        for m in methods:
            b = mean([raw[(m, t, s)]["base"] for s in seeds])
            n = mean([raw[(m, t, s)]["new"] for s in seeds])
            rows[t][m] = {"base": b, "new": n, "hm": None if b is None or n is None else hm(b, n)}
    per_seed: dict[str, list[dict[str, float | None]]] = {}
    for m in methods:
        per_seed[m] = []
        for s in seeds:
            b = mean([raw[(m, t, s)]["base"] for t in tasks])
            n = mean([raw[(m, t, s)]["new"] for t in tasks])
            per_seed[m].append({"base": b, "new": n, "hm": None if b is None or n is None else hm(b, n)})
    average: dict[str, dict[str, float | None]] = {}
    std: dict[str, dict[str, float | None]] = {}
    for m in methods:
        b = mean([r["base"] for r in per_seed[m]])
        n = mean([r["new"] for r in per_seed[m]])
        average[m] = {"base": b, "new": n, "hm": None if b is None or n is None else hm(b, n)}
        std[m] = {k: (statistics.stdev(v) if len(v) > 1 and None not in v else None)  # type: ignore[type-var]
                  for k in ("base", "new", "hm") for v in [[r[k] for r in per_seed[m]]]}
    return {"rows": rows, "average": average, "std": std, "per_seed": per_seed,
            "reading": reading_lines(per_seed, average, len(tasks)),
            "table": render_table(rows, average, methods), "summary": render_summary(average, std, methods, rows)}


#: Rough relative cost per method (measured), to start the long runs first.
_COST = {"maple": 30.0, "cocoop+dept": 18.0, "cocoop": 16.0, "e2vpt": 12.0, "vpt-deep": 11.0, "coop+dept": 10.0,
         "coop": 9.0, "kgcoop+dept": 8.0, "kgcoop": 6.0, "linear-probe": 5.0, "zeroshot": 1.0}


def _init_worker() -> None:
    import torch

    from .workers import exit_with_parent

    exit_with_parent()

    torch.set_num_threads(1)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _job(job: tuple) -> tuple[str, str, str, int, dict[str, float | None], float, float]:
    """One (method, task, seed) base-to-new run; returns ``(part, method, task, seed, {base, new, hm}, seconds,
    cpu_seconds)``."""
    slug, method, task, seed, out, bb_args, shots, root, train = job
    backbone = bb_args["backbone"]
    t0, c0 = time.perf_counter(), _cpu()
    run_out = Path(out) / method / task / f"seed{seed}"
    if method in BASE_ONLY:
        res = train_run(RunSpec(method, task, root, out=str(run_out), **bb_args, shots=shots, seed=seed,
                                subsample="base"))
        row: dict[str, float | None] = {"base": res.get("base_acc", res["acc"]), "new": None, "hm": None}
        return slug, method, task, seed, row, time.perf_counter() - t0, _cpu() - c0
    base = method.split("+")[0]
    preset = "dept" if base in PRESETS and "dept" in PRESETS[base] else None
    options = dict(DEMO_OPTIONS.get(base, {})) if backbone == "tiny-clip" else {}
    train_opts = dict(train) if preset or base == "zeroshot" else {**DEMO_TRAIN, **train}
    res = train_run(RunSpec(method, task, root, out=str(run_out), **bb_args, shots=shots,
                            seed=seed, subsample="base", preset=preset, train_options=train_opts,
                            method_options=options))
    if "new_acc" not in res:  # as protocols.base2new: re-target the trained run to the new classes
        new = evaluate_run(run_out, task, root, "new", weights=bb_args["weights"])
        res = {**res, "new_acc": new["acc"], "hm": hm(res["base_acc"], new["acc"])}
        RunDir(run_out).write_results(res)
    row = {"base": res["base_acc"], "new": res["new_acc"], "hm": res["hm"]}
    return slug, method, task, seed, row, time.perf_counter() - t0, _cpu() - c0


# ------------------------------------------------------------------------------------------- reading lines
def _effect(diffs: list[float]) -> int:
    """+1 / -1 when per-seed differences agree in sign and their mean exceeds their standard deviation (one
    seed: its sign); 0 otherwise (within seed noise)."""
    if not diffs or all(d == 0 for d in diffs):
        return 0
    if len(diffs) == 1:
        return 1 if diffs[0] > 0 else -1
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if all(d > 0 for d in diffs) and mean > sd:
        return 1
    if all(d < 0 for d in diffs) and -mean > sd:
        return -1
    return 0


def _seed_note(n: int) -> str:
    return " (one seed: no noise estimate)" if n == 1 else f" (same sign in all {n} seeds, beyond their spread)"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def reading_lines(per_seed: dict[str, list[dict[str, float | None]]], average: dict[str, dict[str, float | None]],
                  n_tasks: int = 1, reference: str = "zeroshot", plugin: str = "+dept") -> list[str]:
    """Statements the numbers support, chosen by the numbers.

    ``per_seed[method]``: one ``{base, new, hm}`` per seed (task-averaged, seeds in the same order for every
    method); ``average[method]``: their means (``hm`` = H of the mean B and N). Compared with ``reference``
    (zero-shot): base accuracy of every trained method, new-class accuracy of those with a text side (the
    base-new trade-off), and for each ``X`` / ``X+dept`` pair the change in H. A difference is stated as a rise
    or fall only when :func:`_effect` finds it beyond seed noise; the others are named as within noise.

    Example:
        >>> reading_lines({"zeroshot": [{"base": 40, "new": 50, "hm": 44.4}], "coop": [{"base": 80, "new": 45,
        ...                "hm": 57.6}]}, {"zeroshot": {"base": 40, "new": 50, "hm": 44.4},
        ...                "coop": {"base": 80, "new": 45, "hm": 57.6}})[0]
        "Base accuracy rises above zero-shot's 40.0 for coop 80.0 (+40.0) (one seed: no noise estimate)."
    """
    lines: list[str] = []
    if reference not in per_seed:
        return lines
    n = len(per_seed[reference])
    ref = average[reference]
    trained = [m for m in per_seed if m != reference]
    where = f" (average of {n_tasks} tasks)" if n_tasks > 1 else ""

    def diffs(m: str, key: str, other: str = reference) -> list[float]:
        return [float(a[key]) - float(b[key]) for a, b in zip(per_seed[m], per_seed[other], strict=True)
                if a[key] is not None and b[key] is not None]

    def fmt(m: str, key: str, base_value: float) -> str:
        v = float(average[m][key])  # type: ignore[arg-type]
        return f"{m} {v:.1f} ({v - base_value:+.1f})"

    base_eff: dict[str, int] = {}
    verbs = {("base", 1): "rises above", ("base", -1): "falls below", ("new", 1): "rises above",
             ("new", -1): "falls below"}
    for key, what in (("base", "Base accuracy"), ("new", "New-class accuracy")):
        group = [m for m in trained if average[m][key] is not None]
        if not group or ref[key] is None:
            continue
        eff = {m: _effect(diffs(m, key)) for m in group}
        r = float(ref[key])  # type: ignore[arg-type]
        if key == "base":
            base_eff = eff
        for sign in (1, -1):
            ms = [m for m in group if eff[m] == sign]
            if ms:  # the trade-off: N falls where B rose (every method named)
                traded = key == "new" and sign == -1 and all(base_eff.get(m) == 1 for m in ms)
                tail = ": the base-new trade-off, the prompts fit the base classes at the cost of the unseen ones" \
                    if traded else ""
                lines.append(f"{what} {verbs[(key, sign)]} zero-shot's {r:.1f}{where} for "
                             f"{_join([fmt(m, key, r) for m in ms])}{_seed_note(n)}{tail}.")
        flat = [m for m in group if eff[m] == 0]
        if flat:
            lines.append(f"{what} {'equals' if n == 1 else 'stays within seed noise of'} zero-shot's {r:.1f} for "
                         f"{_join([fmt(m, key, r) for m in flat])}.")
    pairs = [(m, m + plugin) for m in trained if not m.endswith(plugin) and m + plugin in per_seed
             and average[m]["hm"] is not None and average[m + plugin]["hm"] is not None]
    if pairs:
        eff = {m: _effect(diffs(p, "hm", m)) for m, p in pairs}
        name = "DePT" if plugin == "+dept" else plugin.lstrip("+")

        def dh(m: str, p: str) -> str:
            a, b = float(average[m]["hm"]), float(average[p]["hm"])  # type: ignore[arg-type]
            return f"{m} {a:.1f} → {b:.1f} ({b - a:+.1f})"

        for sign, verb in ((1, "lifts"), (-1, "lowers")):
            ps = [(m, p) for m, p in pairs if eff[m] == sign]
            if ps:
                lines.append(f"{name} {verb} H for {_join([dh(m, p) for m, p in ps])}{_seed_note(n)}.")
        flat_pairs = [(m, p) for m, p in pairs if eff[m] == 0]
        if flat_pairs:
            lines.append(f"{name}'s change of H is within seed noise for "
                         f"{_join([dh(m, p) for m, p in flat_pairs])}.")
    return lines


# ------------------------------------------------------------------------------------------- tables
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


def render_summary(average: dict[str, dict[str, float | None]], std: dict[str, dict[str, float | None]],
                   methods: list[str], rows: dict[str, dict[str, dict[str, float | None]]] | None = None) -> str:
    """Markdown: one row per method with the task-averaged B, N, H (± standard deviation over seeds), then one
    ``B / N / H`` column per task (means over seeds) when ``rows`` is given."""
    tasks = list(rows or {})
    lines = ["| method | B | N | H |" + "".join(f" {t} B / N / H |" for t in tasks),
             "|---|---|---|---|" + "---|" * len(tasks)]
    for m in methods:
        cells = []
        for k in ("base", "new", "hm"):
            v, s = average[m][k], std.get(m, {}).get(k)
            cells.append("-" if v is None else f"{v:.1f}" + ("" if s is None else f" ± {s:.1f}"))
        cells += [" / ".join(_cell(rows[t][m][k]) for k in ("base", "new", "hm")) for t in tasks]  # type: ignore[index]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(average: dict[str, dict[str, float | None]], path: Path) -> Path | None:
    from .report.plots import have_matplotlib, plot_base2new_bars

    if not have_matplotlib():
        return None
    b2n = {(m, 16): {"average": dict(a)} for m, a in average.items()}  # None (linear probe N, H): drawn as n/a
    path.parent.mkdir(parents=True, exist_ok=True)
    return plot_base2new_bars(b2n, path)


__all__ = ["DEMO_METHODS", "REAL_METHODS", "VIT_METHODS", "DemoPart", "default_methods",
           "demo_tasks", "plan_parts", "reading_lines", "real_tasks", "real_weights_problem", "render_summary",
           "render_table", "run_demo", "summarise"]
