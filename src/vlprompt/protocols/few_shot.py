"""Few-shot protocol: all classes, K = 1/2/4/8/16 shots, several seeds.

With ``repeats=N`` the linear probe follows CoOp's ``lpclip`` protocol instead: runs 1..N, each
resampling the few-shot train/val set from the full dataset with the reference's numpy rule
(:func:`vlprompt.data.sample_lpclip`), accuracy = mean (and population std) over the N runs.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from .. import progress
from ..errors import ConfigError
from .runs import RunSpec, train_run
from .tables import markdown_table, write_summary


@progress.protocol
def few_shot(
    template: RunSpec, datasets: list[str], shots: list[int] = (1, 2, 4, 8, 16), seeds: list[int] = (1, 2, 3),
    repeats: int | None = None,
) -> dict[str, Any]:
    """Train and test on all classes for each dataset × shots × seed; writes ``few_shot.{json,md}``.

    Args:
        repeats: linear probe only: CoOp ``lpclip``'s protocol with runs ``1..repeats`` (the
            reference script's default is 10, its shell script passes 3). Each run draws its own
            sample from the full training / val features as the reference does (``seeds`` is then
            not used); the table has the mean and ``std`` (numpy's population std, as the reference
            prints) over the runs. ``None``: one fit per seed on vlprompt's own few-shot sample.

    Raises:
        ConfigError: ``repeats`` with another method, or not a positive integer.
        DatasetError: (``repeats``) a class with fewer images than the sample needs; raised for every
            dataset and shot count before the first fit.

    Example:
        >>> few_shot(RunSpec("coop", "", "~/data", out="runs/fs", preset="paper"), ["eurosat"])
        >>> few_shot(RunSpec("linear-probe", "", "~/data", out="runs/lp"), ["eurosat"], repeats=10)
    """
    if repeats is not None:
        return _lpclip_few_shot(template, datasets, list(shots), repeats)
    rows = []
    progress.plan(len(datasets) * len(shots) * len(seeds))
    for ds in datasets:
        for k in shots:
            for seed in seeds:
                out = Path(template.out) / ds / f"shots{k}" / f"seed{seed}"
                spec = dataclasses.replace(template, dataset=ds, shots=k, seed=seed, subsample="all", out=str(out))
                rows.append({"dataset": ds, "shots": k, "seed": seed, "acc": train_run(spec)["acc"]})
    return _summarize(template, datasets, shots, rows, {})


def _summarize(template: RunSpec, datasets: list[str], shots, rows: list[dict], extra: dict) -> dict[str, Any]:
    table = []
    for ds in datasets:
        row: dict[str, Any] = {"dataset": ds}
        for k in shots:
            accs = [r["acc"] for r in rows if r["dataset"] == ds and r["shots"] == k]
            row[f"{k}-shot"] = sum(accs) / len(accs)
            if extra:  # lpclip: the spread over runs, as the reference reports it
                row[f"{k}-shot std"] = math.sqrt(sum((a - row[f"{k}-shot"]) ** 2 for a in accs) / len(accs))
        table.append(row)
    cols = [f"{k}-shot" for k in shots]
    avg = {c: sum(r[c] for r in table) / len(table) for c in cols}
    summary = {"protocol": "few-shot", "method": template.method, **extra, "runs": rows, "rows": table,
               "average": avg}
    shown = [c for k in shots for c in ((f"{k}-shot", f"{k}-shot std") if extra else (f"{k}-shot",))]
    note = (f"(CoOp lpclip protocol: mean and std over runs 1..{extra['repeats']}, each with its own "
            "sample from the full data)\n\n" if extra else "")
    write_summary(template.out, "few_shot", summary,
                  f"# few-shot: {template.method}\n\n{note}" + markdown_table(summary, shown, "dataset"))
    return summary


def _lpclip_few_shot(template: RunSpec, datasets: list[str], shots: list[int], repeats: int) -> dict[str, Any]:
    from ..data import load_dataset, sample_lpclip, save_split
    from ..data.multitask import is_group_spec

    if template.method != "linear-probe":
        raise ConfigError(f"repeats (CoOp's lpclip protocol) is a linear-probe option; method "
                          f"{template.method!r} trains once per seed (drop repeats, or use --method linear-probe)")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats={repeats!r} is invalid; expected a positive integer (the reference uses 10)")
    for ds in datasets:
        if is_group_spec(ds):
            raise ConfigError(f"repeats is not supported for task groups ({ds!r}); the lpclip protocol "
                              "samples one dataset")
    # every sample is drawn (and checked) before the first fit
    plan = []
    for ds in datasets:
        full = load_dataset(ds, template.root, split=template.split)
        for k in shots:
            for run in range(1, repeats + 1):
                plan.append((ds, k, run, sample_lpclip(full, k, run)))
    rows = []
    for ds, k, run, task in plan:
        out = Path(template.out) / ds / f"shots{k}" / f"seed{run}"
        sample = save_split(Path(template.out) / ds / "lpclip_samples" / f"shots{k}_seed{run}.json", task)
        spec = dataclasses.replace(template, dataset=ds, shots=k, seed=run, subsample="all", out=str(out),
                                   split_file=str(sample))
        rows.append({"dataset": ds, "shots": k, "seed": run, "acc": train_run(spec)["acc"]})
    return _summarize(template, datasets, shots, rows, {"sampling": "lpclip", "repeats": repeats})
