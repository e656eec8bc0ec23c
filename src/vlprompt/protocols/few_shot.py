"""Few-shot protocol: all classes, K = 1/2/4/8/16 shots, several seeds."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .. import progress
from .runs import RunSpec, train_run
from .tables import markdown_table, write_summary


def few_shot(
    template: RunSpec, datasets: list[str], shots: list[int] = (1, 2, 4, 8, 16), seeds: list[int] = (1, 2, 3)
) -> dict[str, Any]:
    """Train and test on all classes for each dataset × shots × seed; writes ``few_shot.{json,md}``.

    Example:
        >>> few_shot(RunSpec("coop", "", "~/data", out="runs/fs", preset="paper"), ["eurosat"])
    """
    rows = []
    progress.plan(len(datasets) * len(shots) * len(seeds))
    for ds in datasets:
        for k in shots:
            for seed in seeds:
                out = Path(template.out) / ds / f"shots{k}" / f"seed{seed}"
                spec = dataclasses.replace(template, dataset=ds, shots=k, seed=seed, subsample="all", out=str(out))
                rows.append({"dataset": ds, "shots": k, "seed": seed, "acc": train_run(spec)["acc"]})
    table = []
    for ds in datasets:
        row: dict[str, Any] = {"dataset": ds}
        for k in shots:
            accs = [r["acc"] for r in rows if r["dataset"] == ds and r["shots"] == k]
            row[f"{k}-shot"] = sum(accs) / len(accs)
        table.append(row)
    cols = [f"{k}-shot" for k in shots]
    avg = {c: sum(r[c] for r in table) / len(table) for c in cols}
    summary = {"protocol": "few-shot", "method": template.method, "runs": rows, "rows": table, "average": avg}
    write_summary(template.out, "few_shot", summary,
                  f"# few-shot: {template.method}\n\n" + markdown_table(summary, cols, "dataset"))
    return summary
