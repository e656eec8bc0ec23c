"""Multi-task protocols (SoftCPT): train jointly on a task group, report accuracy per task.

* few-shot (default): one model per group × shots × seed on all classes of every task;
* base-to-new (``base2new=True``, the SoftCPT README's ``main_mtcoop_base2new_{train,test}.sh``): the
  model trains jointly on the base classes (first ``ceil(n/2)``) of every task, is evaluated on each
  task's base classes, then re-targeted to every task's new classes; per task B / N / H;
* per-task baselines (``baselines=("zeroshot", "linear-probe")``): the single-task method run
  separately on each task of the group (its own classes, template, augmentation policy and metric),
  shown in the same tables. Base-to-new has only the zero-shot baseline: a linear probe has no
  classifier for classes it never saw.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from .. import progress
from ..data import load_dataset, split_group
from ..engine.loggers import log_results
from ..engine.run import RunDir
from ..engine.train import fit, hm, seed_everything
from ..errors import ConfigError
from ..methods import build_method
from .runs import RunSpec, evaluate_run, get_backbone, train_run
from .tables import markdown_table, write_summary

#: Single-task baselines that run per task of a group.
BASELINES = ("zeroshot", "linear-probe")
#: Training options a baseline inherits from the template (where and how to compute, not what to train).
_BASELINE_OPTIONS = ("cache_dir", "precision", "eval_batch_size", "num_workers", "progress")


def group_slug(group: str) -> str:
    """A folder name for a group spec (``tiny-group/real`` → ``tiny-group_real``, a file → its stem)."""
    s = str(group)
    if s.endswith((".yaml", ".yml", ".json")):
        s = Path(s).stem
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", s.replace(",", "+")).strip("_") or "group"


def group_spec(template: RunSpec, group: str, shots: int | None, seed: int, out: str | Path,
               subsample: str = "all") -> RunSpec:
    """The spec of one multi-task run: ``template`` trained on ``group`` (K shots, seed; all or base classes)."""
    return dataclasses.replace(template, dataset=group, shots=shots, seed=seed, subsample=subsample, out=str(out))


def base2new_group_run(spec: RunSpec) -> dict[str, Any]:
    """Train ``spec`` on the base classes of every task of its group, then evaluate every task's new classes.

    ``results.json`` gets ``per_task`` (base accuracy per task), ``per_task_new``, ``per_task_hm``,
    ``base_acc`` / ``new_acc`` (unweighted means over tasks) and ``hm`` = HM(base_acc, new_acc).
    A run whose results already hold ``per_task_new`` is returned as is.

    Example:
        >>> res = base2new_group_run(group_spec(spec, "tiny-group/real", 16, 1, "runs/b2n", "base"))
        >>> res["per_task_new"]["tiny/digits"], res["hm"]
    """
    spec = dataclasses.replace(spec, subsample="base")
    res = train_run(spec)
    if "per_task_new" in res:
        return res
    new = evaluate_run(spec.out, spec.dataset, spec.root, "new", cache_dir=spec.train_options.get("cache_dir"),
                       weights=spec.weights, trust_checkpoint=spec.trust_checkpoint, device=spec.device)
    base = res["per_task"]
    res = {**res, "per_task_new": new["per_task"],
           "per_task_hm": {t: hm(base[t], new["per_task"][t]) for t in base if t in new["per_task"]},
           "new_acc": new["acc"], "hm": hm(res["base_acc"], new["acc"])}
    RunDir(spec.out).write_results(res)
    log_results(spec.out, {"epochs": res.get("epochs"), "new_acc": res["new_acc"], "hm": res["hm"]})
    return res


def baseline_per_task(
    template: RunSpec, group: str, method: str, shots: int | None, seed: int, subsample: str, out: str | Path,
) -> dict[str, float]:
    """Accuracy of a single-task ``method`` (``zeroshot`` / ``linear-probe``) run on each task of ``group``.

    Every task is a separate run in ``<out>/<task>`` (skipped when its ``results.json`` exists), on the
    task's own classes (``subsample`` of them), with its own template (zero-shot) and metric.

    Example:
        >>> baseline_per_task(spec, "tiny-group/real", "zeroshot", 16, 1, "all", "runs/mt/zs")
        {'tiny/digits': 91.3, 'tiny/real_textures': 91.2}
    """
    if method not in BASELINES:
        raise ConfigError(f"per-task baseline {method!r} is unknown; expected one of {BASELINES}")
    group_task = load_dataset(group, template.root, shots=shots, seed=seed, subsample=subsample)
    train_opts = {k: v for k, v in template.train_options.items() if k in _BASELINE_OPTIONS}
    bb = None
    per_task: dict[str, float] = {}
    for task in split_group(group_task):
        run_dir = Path(out) / group_slug(task.name)
        done = RunDir(run_dir).read_results()
        if done is not None and "acc" in done:
            per_task[task.name] = float(done["acc"])
            continue
        bb = bb or get_backbone(template.backbone, template.weights, template.trust_checkpoint, template.device,
                                template.model_kwargs)
        seed_everything(seed)
        opts = {"template": task.template} if method == "zeroshot" else {}
        model = build_method(method, bb, task.classnames, **opts)
        res = fit(model, task, run_dir=str(run_dir), protocol="multitask-baseline", seed=seed,
                  device=template.device, **train_opts)
        per_task[task.name] = float(res["acc"])
    return per_task


def baseline_group_run(
    template: RunSpec, group: str, method: str, shots: int | None, seed: int, out: str | Path, base2new: bool = False,
) -> dict[str, Any]:
    """One group-level result of a per-task baseline, shaped like a joint run's ``results.json``.

    The per-task runs go to ``<out>/tasks/{all,base,new}/<task>`` (:func:`baseline_per_task`); the
    returned dict has ``per_task`` and ``acc`` (their mean), plus for base-to-new (zero-shot only)
    ``per_task_new``, ``base_acc``, ``new_acc`` and ``hm``. Used by the sweep's multitask protocols.

    Example:
        >>> baseline_group_run(spec, "tiny-group/real", "zeroshot", 16, 1, "runs/zs", base2new=True)["hm"]
    """
    if base2new and method != "zeroshot":
        raise ConfigError(f"{method} cannot be a base-to-new baseline: it has no classifier for the new classes; "
                          "use zeroshot")
    root = Path(out) / "tasks"
    base = baseline_per_task(template, group, method, shots, seed, "base" if base2new else "all",
                             root / ("base" if base2new else "all"))
    res: dict[str, Any] = {"method": method, "dataset": group, "protocol": "multitask-baseline", "shots": shots,
                           "seed": seed, "subsample": "base" if base2new else "all", "per_task": base,
                           "acc": mean(base.values()), "backbone": template.backbone}
    if base2new:
        new = baseline_per_task(template, group, method, shots, seed, "new", root / "new")
        res.update({"per_task_new": new, "per_task_hm": {t: hm(base[t], new[t]) for t in base if t in new},
                    "base_acc": res["acc"], "new_acc": mean(new.values())})
        res["hm"] = hm(res["base_acc"], res["new_acc"])
    return res


def _cols(shots: Sequence[int], base2new: bool) -> list[str]:
    if not base2new:
        return [f"{k}-shot" for k in shots]
    return [f"{k}-shot {m}" for k in shots for m in ("base", "new", "H")]


def _rows(label: str, group: str, method: str, runs: list[dict[str, Any]], shots: Sequence[int],
          base2new: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-task rows (means over seeds) and the group row (means over tasks) of one method on one group."""
    mine = [r for r in runs if r["group"] == group and r["method"] == method]
    tasks = list(dict.fromkeys(t for r in mine for t in r["per_task"]))
    suffix = "" if method == label else f" [{method}]"
    rows, grow = [], {"task": f"{group} (mean over tasks){suffix}", "group": group, "method": method}
    for task in tasks:
        row: dict[str, Any] = {"task": f"{group} / {task}{suffix}", "group": group, "method": method}
        for k in shots:
            at_k = [r for r in mine if r["shots"] == k]
            if base2new:
                b = mean(r["per_task"][task] for r in at_k)
                n = mean(r["per_task_new"][task] for r in at_k)
                row.update({f"{k}-shot base": b, f"{k}-shot new": n, f"{k}-shot H": hm(b, n)})
            else:
                row[f"{k}-shot"] = mean(r["per_task"][task] for r in at_k)
        rows.append(row)
    for k in shots:
        if base2new:
            b = mean(row[f"{k}-shot base"] for row in rows)
            n = mean(row[f"{k}-shot new"] for row in rows)
            grow.update({f"{k}-shot base": b, f"{k}-shot new": n, f"{k}-shot H": hm(b, n)})
        else:
            grow[f"{k}-shot"] = mean(row[f"{k}-shot"] for row in rows)
    if not base2new:
        for row in [*rows, grow]:
            row["avg"] = mean(row[f"{k}-shot"] for k in shots)
    return rows, grow


def check_groups(template: RunSpec, groups: Sequence[str], shots: Sequence[int], seeds: Sequence[int],
                 base2new: bool = False) -> None:
    """Load every group once (first shots and seed) so that a missing file or image of any group is one
    error before the first run trains (runs then load their own sample)."""
    for group in groups:
        load_dataset(group, template.root, shots=shots[0] if shots else None, seed=seeds[0] if seeds else 1,
                     subsample="base" if base2new else "all")


@progress.protocol
def multitask(
    template: RunSpec, groups: list[str], shots: Sequence[int] = (16,), seeds: Sequence[int] = (1, 2, 3),
    base2new: bool = False, baselines: Sequence[str] = (),
) -> dict[str, Any]:
    """Train one model per group × shots × seed jointly on all tasks of the group; writes ``multitask.{json,md}``
    (``multitask_base2new.{json,md}`` with ``base2new=True``).

    Each run (``<out>/<group>/shots<K>/seed<S>``; base-to-new: ``<out>/<group>/base2new/shots<K>/seed<S>``)
    samples K images per class of every task, trains on batches that mix all tasks and is evaluated
    per task on the task's own classes; its ``results.json`` holds ``per_task`` and ``acc`` = the
    unweighted mean over tasks (the paper's group score). Base-to-new runs add ``per_task_new``,
    ``new_acc`` and ``hm`` (see :func:`base2new_group_run`).

    The summary has one row per task (means over seeds), one mean row per group, and ``average`` = the
    mean over groups of the group means (base-to-new: per shots B, N and H = HM(B, N) of the means).
    ``baselines`` (``zeroshot``, ``linear-probe``) add the same rows for each single-task baseline run
    per task (:func:`baseline_per_task`; runs under ``<out>/<group>/baselines/``), labelled ``[name]``.

    Example:
        >>> spec = RunSpec("softcpt-nata", "", "", out="runs/mt", preset="paper")
        >>> multitask(spec, ["tiny-group/synthetic"], shots=[16], seeds=[1, 2, 3])["average"]
        >>> multitask(spec, ["tiny-group/real"], [16], [1], base2new=True, baselines=["zeroshot"])["rows"]
    """
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise ConfigError(f"per-task baselines {bad} are unknown; expected some of {BASELINES}")
    if base2new and "linear-probe" in baselines:
        raise ConfigError("linear-probe cannot be a base-to-new baseline: it has no classifier for the new "
                          "classes; use baselines=['zeroshot']")
    check_groups(template, groups, shots, seeds, base2new)
    runs: list[dict[str, Any]] = []
    progress.plan(len(groups) * len(shots) * len(seeds))
    for group in groups:
        slug = group_slug(group)
        for k in shots:
            for seed in seeds:
                if base2new:
                    out = Path(template.out) / slug / "base2new" / f"shots{k}" / f"seed{seed}"
                    res = base2new_group_run(group_spec(template, group, k, seed, out, "base"))
                else:
                    out = Path(template.out) / slug / f"shots{k}" / f"seed{seed}"
                    res = train_run(group_spec(template, group, k, seed, out))
                runs.append({"group": group, "method": template.method, "shots": k, "seed": seed, "acc": res["acc"],
                             "per_task": res.get("per_task", {}),
                             **({"per_task_new": res["per_task_new"], "new_acc": res["new_acc"], "hm": res["hm"]}
                                if base2new else {})})
        for name in baselines:
            runs += _baseline_runs(template, group, name, shots, seeds, base2new)
    cols = _cols(shots, base2new)
    rows, group_rows = [], []
    for method in [template.method, *baselines]:
        for group in groups:
            task_rows, grow = _rows(template.method, group, method, runs, shots, base2new)
            rows += task_rows
            group_rows.append(grow)
    average = _average([g for g in group_rows if g["method"] == template.method], shots, base2new)
    baseline_average = {b: _average([g for g in group_rows if g["method"] == b], shots, base2new) for b in baselines}
    name = "multitask_base2new" if base2new else "multitask"
    summary = {"protocol": name, "method": template.method, "groups": list(groups), "baselines": list(baselines),
               "runs": runs, "rows": rows + group_rows, "average": average, "baseline_average": baseline_average}
    what = "base-to-new" if base2new else "few-shot"
    how = ("per task: B, N (means over seeds) and H = HM(B, N); group rows: mean B and N over tasks and their H; "
           "average: over groups" if base2new else
           "per task: mean over seeds; group rows: mean over tasks; average: mean over groups")
    md = (f"# multi-task {what}: {template.method}\n\n({how}; `[zeroshot]` / `[linear-probe]` rows: the baseline "
          "run separately on each task)\n\n" + markdown_table(summary, [*cols] + ([] if base2new else ["avg"]), "task"))
    write_summary(template.out, name, summary, md)
    return summary


def _baseline_runs(template: RunSpec, group: str, name: str, shots: Sequence[int], seeds: Sequence[int],
                   base2new: bool) -> list[dict[str, Any]]:
    """The per-task results of one baseline on one group, as rows shaped like the joint runs'."""
    root = Path(template.out) / group_slug(group) / "baselines" / name
    out = []
    if name == "zeroshot":  # no training: one evaluation per class subset serves every shots × seed
        sub = ("base", "new") if base2new else ("all",)
        acc = {s: baseline_per_task(template, group, name, shots[0], seeds[0], s, root / s) for s in sub}
        for k in shots:
            for seed in seeds:
                row = {"group": group, "method": name, "shots": k, "seed": seed, "per_task": acc[sub[0]]}
                if base2new:
                    row["per_task_new"] = acc["new"]
                out.append(row)
        return out
    for k in shots:
        for seed in seeds:
            per_task = baseline_per_task(template, group, name, k, seed, "all", root / f"shots{k}" / f"seed{seed}")
            out.append({"group": group, "method": name, "shots": k, "seed": seed, "per_task": per_task})
    return out


def _average(group_rows: list[dict[str, Any]], shots: Sequence[int], base2new: bool) -> dict[str, float]:
    if not group_rows:
        return {}
    if not base2new:
        return {c: mean(g[c] for g in group_rows) for c in [*_cols(shots, False), "avg"]}
    avg: dict[str, float] = {}
    for k in shots:
        b = mean(g[f"{k}-shot base"] for g in group_rows)
        n = mean(g[f"{k}-shot new"] for g in group_rows)
        avg.update({f"{k}-shot base": b, f"{k}-shot new": n, f"{k}-shot H": hm(b, n)})
    return avg
