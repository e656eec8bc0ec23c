"""Cross-dataset transfer and domain generalisation: train on a source, evaluate on targets."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .. import progress
from ..engine.run import RunDir
from .runs import RunSpec, evaluate_run, train_run
from .tables import markdown_table, summarize_acc, write_summary

#: The targets of the domain-generalisation protocol for an ImageNet source.
IMAGENET_SHIFTS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")


@progress.protocol
def transfer(
    template: RunSpec, targets: list[str], seeds: list[int] = (1, 2, 3), name: str = "cross_dataset",
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Train on ``template.dataset`` (all classes) per seed, evaluate on each target's test set.

    Prompts are re-targeted to each target's class names. A target is a dataset name (under
    ``template.root``) or ``"name@root"``. Writes ``<name>.{json,md}`` with the
    source accuracy, per-target means over seeds and the target average; each source run's
    ``results.json`` gets ``targets`` (name → accuracy), ``target_avg`` and ``source_acc``.

    Example:
        >>> spec = RunSpec("coop", "imagenet", "~/data", out="runs/xd", preset="dept")
        >>> transfer(spec, ["caltech101", "oxford_pets"])
    """
    rows = []
    protocol = name.replace("_", "-")  # cross-dataset / domain-gen, as the sweep protocols
    progress.plan(len(seeds))
    for seed in seeds:
        out = Path(template.out) / template.dataset / f"seed{seed}"
        spec = dataclasses.replace(template, seed=seed, subsample="all", out=str(out), protocol=protocol)
        res = train_run(spec)
        rows.append({"dataset": f"{template.dataset} (source)", "seed": seed, "acc": res["acc"]})
        accs = {}
        for target in targets:
            target, _, root = target.partition("@")  # "name@root" for a target stored elsewhere
            ev = evaluate_run(out, target, root or template.root, "all", cache_dir=cache_dir, weights=template.weights,
                              trust_checkpoint=template.trust_checkpoint, device=template.device)
            rows.append({"dataset": target, "seed": seed, "acc": ev["acc"]})
            accs[target if target not in accs else f"{target}@{root}"] = ev["acc"]
        if accs:  # the run's results.json carries its targets, as a sweep's: `vlprompt report` tallies them
            RunDir(out).write_results({**res, "protocol": protocol, "source_acc": res["acc"], "targets": accs,
                                       "target_avg": sum(accs.values()) / len(accs)})
    summary = summarize_acc(rows)
    target_rows = [r for r in summary["rows"] if not r["dataset"].endswith("(source)")]
    summary["average"] = {"acc": sum(r["acc"] for r in target_rows) / max(len(target_rows), 1)}
    summary.update({"protocol": name, "method": template.method, "source": template.dataset, "runs": rows})
    md = f"# {name}: {template.method}, source {template.dataset}\n\n(average = mean over targets)\n\n"
    write_summary(template.out, name, summary, md + markdown_table(summary, ["acc"], "dataset"))
    return summary


def cross_dataset(template: RunSpec, targets: list[str], seeds: list[int] = (1, 2, 3), **kw: Any) -> dict[str, Any]:
    """Cross-dataset transfer (CoCoOp protocol: ImageNet → the 10 other datasets)."""
    return transfer(template, targets, seeds, name="cross_dataset", **kw)


def domain_gen(
    template: RunSpec, targets: list[str] | None = None, seeds: list[int] = (1, 2, 3), **kw: Any
) -> dict[str, Any]:
    """Domain generalisation: source → its shifted variants (ImageNet → V2 / Sketch / A / R)."""
    return transfer(template, list(targets or IMAGENET_SHIFTS), seeds, name="domain_gen", **kw)
