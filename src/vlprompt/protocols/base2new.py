"""Base-to-new generalisation: train on the base half of the classes, test base and new."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .. import progress
from ..engine.loggers import log_results
from ..engine.run import RunDir
from ..engine.train import hm
from .runs import RunSpec, evaluate_run, train_run
from .tables import markdown_table, summarize_base2new, write_summary


@progress.protocol
def base2new(
    template: RunSpec, datasets: list[str], seeds: list[int] = (1, 2, 3), cache_dir: str | None = None
) -> dict[str, Any]:
    """Run base-to-new for each dataset × seed; returns and writes ``base2new.{json,md}``.

    ``template.out`` is the output root; runs go to ``<out>/<dataset>/seed<S>``. Each run trains
    on the base classes (16 shots by default, sampled on all classes first), is evaluated on the
    base test images among base classes, then re-targeted to the new classes.

    Example:
        >>> spec = RunSpec("coop", "", "~/data", out="runs/b2n", preset="dept")
        >>> base2new(spec, ["eurosat", "dtd"], seeds=[1, 2, 3])["average"]["hm"]
    """
    rows = []
    progress.plan(len(datasets) * len(seeds))
    for ds in datasets:
        for seed in seeds:
            out = Path(template.out) / ds / f"seed{seed}"
            spec = dataclasses.replace(template, dataset=ds, seed=seed, subsample="base", out=str(out))
            res = train_run(spec)
            if "new_acc" not in res:
                new = evaluate_run(out, ds, template.root, "new", cache_dir=cache_dir,
                                   weights=template.weights, trust_checkpoint=template.trust_checkpoint,
                                   device=template.device)
                res = {**res, "new_acc": new["acc"], "hm": hm(res["base_acc"], new["acc"])}
                RunDir(out).write_results(res)
                log_results(out, {"epochs": res.get("epochs"), "new_acc": res["new_acc"], "hm": res["hm"]})
            rows.append({"dataset": ds, "seed": seed, "base_acc": res["base_acc"], "new_acc": res["new_acc"]})
    summary = {"protocol": "base2new", "method": template.method, "runs": rows, **summarize_base2new(rows)}
    md = f"# base-to-new: {template.method}\n\n" + markdown_table(summary, ["base_acc", "new_acc", "hm"], "dataset")
    write_summary(template.out, "base2new", summary, md)
    return summary
