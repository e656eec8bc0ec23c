"""Data-efficient learning (DAPT): train on a selected fraction of the training set, report accuracy vs ratio.

For each dataset × ratio × seed, :func:`select_subset` keeps ``ratio`` of the training images
(``uniform`` sampling — the reference default — or a coreset: ``herding`` / ``kcenter`` on the
frozen backbone's image features, see :mod:`vlprompt.data.selection`), the method trains on
them and is tested on the full test set. ``data_efficient.{json,md}`` hold accuracy per
dataset and ratio (mean over seeds) and the average over datasets.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch.nn.functional as F

from .. import progress
from ..backbones.base import Backbone
from ..data.selection import NEEDS_FEATURES, select_indices
from ..data.task import Task
from .runs import RunSpec, train_run
from .tables import markdown_table, write_summary


def select_subset(
    task: Task, ratio: float, selection: str = "uniform", seed: int = 1, backbone: Backbone | None = None,
    cache_dir: str | None = None, device: str = "auto", balanced: bool = True,
) -> Task:
    """A copy of ``task`` whose training split keeps ``ratio`` of the images.

    Coreset selections (``herding``, ``kcenter``) use the plain-view image features of
    ``backbone`` (frozen, no prompts; read from / written to the feature cache). The choice is
    recorded in ``task.extra["selection"]``.

    Example:
        >>> small = select_subset(task, 0.1, "herding", seed=1, backbone=bb)
    """
    features = None
    if selection in NEEDS_FEATURES:
        from ..engine.features import FeatureCache
        from ..engine.precision import resolve_device, resolve_precision

        if backbone is None:
            from ..errors import ConfigError

            raise ConfigError(f"selection {selection!r} needs a backbone for image features")
        dev = resolve_device(device)
        cache = FeatureCache(backbone, resolve_precision("auto", dev), dev, cache_dir)
        features = F.normalize(cache.get(task.train, "test").float(), dim=-1)
    idx = select_indices(selection, [s.label for s in task.train], ratio, seed, features, balanced)
    info = {"method": selection, "ratio": ratio, "seed": seed, "balanced": balanced,
            "kept": len(idx), "of": len(task.train)}
    return task.with_splits(train=[task.train[i] for i in idx], extra={**task.extra, "selection": info})


@progress.protocol
def data_efficient(
    template: RunSpec, datasets: list[str], ratios: list[float] = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0),
    seeds: list[int] = (1, 2, 3), selection: str = "uniform",
) -> dict[str, Any]:
    """Accuracy vs data ratio for each dataset × ratio × seed; writes ``data_efficient.{json,md}``.

    ``template.shots`` is applied before the selection (``None``, the default for this
    protocol's CLI, selects from the full training set). Runs go to
    ``<out>/<dataset>/<selection>_<ratio>/seed<S>`` (the reference's ``<Method>_<ratio>`` layout).

    Example:
        >>> spec = RunSpec("dapt", "", "~/data", out="runs/de", shots=None, preset="paper-fs")
        >>> data_efficient(spec, ["eurosat"], ratios=[0.1, 0.5], selection="herding")["average"]
    """
    rows = []
    progress.plan(len(datasets) * len(ratios) * len(seeds))
    for ds in datasets:
        for ratio in ratios:
            for seed in seeds:
                out = Path(template.out) / ds / f"{selection}_{ratio:g}" / f"seed{seed}"
                spec = dataclasses.replace(template, dataset=ds, seed=seed, subsample="all", out=str(out),
                                           selection=selection, data_ratio=ratio, protocol="data-efficient")
                res = train_run(spec)
                rows.append({"dataset": ds, "ratio": ratio, "seed": seed, "acc": res["acc"],
                             "n_train": res.get("n_train")})
    cols = [f"{r:g}" for r in ratios]
    table = []
    for ds in datasets:
        row: dict[str, Any] = {"dataset": ds}
        for ratio, col in zip(ratios, cols, strict=True):
            accs = [r["acc"] for r in rows if r["dataset"] == ds and r["ratio"] == ratio]
            row[col] = sum(accs) / len(accs)
        table.append(row)
    avg = {c: sum(r[c] for r in table) / len(table) for c in cols}
    summary = {"protocol": "data-efficient", "method": template.method, "selection": selection,
               "ratios": list(ratios), "runs": rows, "rows": table, "average": avg}
    md = (f"# data-efficient: {template.method}, selection {selection}\n\n"
          "(accuracy on the full test set; columns = fraction of the training set kept)\n\n")
    write_summary(template.out, "data_efficient", summary, md + markdown_table(summary, cols, "dataset"))
    return summary
