"""Multi-task few-shot protocol (SoftCPT): train jointly on a task group, report accuracy per task."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from statistics import mean
from typing import Any

from .runs import RunSpec, train_run
from .tables import markdown_table, write_summary


def group_slug(group: str) -> str:
    """A folder name for a group spec (``tiny-group/real`` → ``tiny-group_real``, a file → its stem)."""
    s = str(group)
    if s.endswith((".yaml", ".yml", ".json")):
        s = Path(s).stem
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", s.replace(",", "+")).strip("_") or "group"


def group_spec(template: RunSpec, group: str, shots: int | None, seed: int, out: str | Path) -> RunSpec:
    """The spec of one multi-task run: ``template`` trained on all classes of ``group`` (K shots, seed)."""
    return dataclasses.replace(template, dataset=group, shots=shots, seed=seed, subsample="all", out=str(out))


def multitask(
    template: RunSpec, groups: list[str], shots: list[int] = (16,), seeds: list[int] = (1, 2, 3)
) -> dict[str, Any]:
    """Train one model per group × shots × seed on all tasks of the group; writes ``multitask.{json,md}``.

    Each run (``<out>/<group>/shots<K>/seed<S>``) samples K images per class of every task, trains
    on batches that mix all tasks and is evaluated per task on the task's own classes; its
    ``results.json`` holds ``per_task`` and ``acc`` = the unweighted mean over tasks (the paper's
    group score). The summary has one row per task (means over seeds), one mean row per group, and
    ``average`` = the mean over groups of the group means; ``avg`` is the mean over the shot columns.

    Example:
        >>> spec = RunSpec("softcpt-nata", "", "", out="runs/mt", preset="paper")
        >>> multitask(spec, ["tiny-group/synthetic"], shots=[16], seeds=[1, 2, 3])["average"]
    """
    runs = []
    for group in groups:
        for k in shots:
            for seed in seeds:
                out = Path(template.out) / group_slug(group) / f"shots{k}" / f"seed{seed}"
                res = train_run(group_spec(template, group, k, seed, out))
                runs.append({"group": group, "shots": k, "seed": seed, "acc": res["acc"],
                             "per_task": res.get("per_task", {})})
    cols = [f"{k}-shot" for k in shots]
    rows, group_rows = [], []
    for group in groups:
        mine = [r for r in runs if r["group"] == group]
        tasks = list(dict.fromkeys(t for r in mine for t in r["per_task"]))
        for task in tasks:
            row: dict[str, Any] = {"task": f"{group} / {task}", "group": group}
            for k, c in zip(shots, cols, strict=True):
                row[c] = mean(r["per_task"][task] for r in mine if r["shots"] == k)
            rows.append(row)
        grow: dict[str, Any] = {"task": f"{group} (mean over tasks)", "group": group}
        for k, c in zip(shots, cols, strict=True):
            grow[c] = mean(r["acc"] for r in mine if r["shots"] == k)
        group_rows.append(grow)
    for row in rows + group_rows:
        row["avg"] = mean(row[c] for c in cols)
    average = {c: mean(g[c] for g in group_rows) for c in [*cols, "avg"]}
    summary = {"protocol": "multitask", "method": template.method, "groups": list(groups), "runs": runs,
               "rows": rows + group_rows, "average": average}
    md = (f"# multi-task few-shot: {template.method}\n\n(per task: mean over seeds; group rows: mean over tasks; "
          "average: mean over groups)\n\n" + markdown_table(summary, [*cols, "avg"], "task"))
    write_summary(template.out, "multitask", summary, md)
    return summary
