"""VTAB-1k / FGVC protocol of VPT: an lr × weight-decay grid on the tuning split, then 5 seeds on the final split.

Per task (``vtab/<task>``, ``fgvc/<name>``, or the tiny suite's ``tiny/vtab_*`` tasks):

1. **tune**: for every (base lr, wd) of the grid, train on train800 and score on val200 (FGVC: train →
   val). The learning rate actually used is ``base_lr × batch_size / 256`` (VPT's ``tune_*.py``). The
   best val top-1 wins; ties go to the smaller lr, then the smaller wd.
2. **final**: with the chosen pair, train on train800val200 (FGVC: train) once per seed (VPT: 42, 44,
   82, 100, 800) and evaluate on test.
3. **prune** (optional, E2VPT: ``prune=PruneOptions(...)``): with the chosen pair, E2VPT's
   prune-and-rewind search on the tuning split (:func:`vlprompt.protocols.e2vpt_prune.prune_and_rewind`:
   train, importance scores, one rewound model per (token level, segment level), best by val), then
   the final seeds again with the chosen masks fixed in fresh models;
4. **report**: per task mean ± std (sample std over seeds) of test top-1; group means (Natural /
   Specialized / Structured = mean over the group's tasks present, FGVC mean separately); the mean of
   the VTAB group means; and the tuned-parameter percentage (trainable parameters of the final runs /
   total parameters of the model that computes the logits × 100, as VPT's and E2VPT's tables: the
   backbone's plus the method's own, :meth:`~vlprompt.methods.base.PromptMethod.total_parameters`).

The lr grid is VPT's for the method (:func:`default_lrs`: the prompt grid, or ``linear`` / ``finetune``'s own).

Run directories (each with ``results.json``; finished runs are skipped when the protocol is re-run)::

    <out>/<task>/tune/lr<base lr>_wd<wd>/     <out>/<task>/tune/choice.json
    <out>/<task>/final/seed<S>/               <out>/vtab.json  <out>/vtab.md
    <out>/<task>/prune/prune.json             <out>/<task>/prune/final/seed<S>/   (with pruning)

Training defaults of the protocol (VPT's base config: SGD momentum 0.9, cosine, batch 128, 100 epochs,
10 warm-up epochs; ``linear`` / ``finetune``: their own base configs, :data:`vlprompt.presets.VTAB_TRAIN`) sit
under the method's preset, which sits under explicit ``train_options``.

Example:
    >>> from vlprompt.protocols import RunSpec, vtab
    >>> spec = RunSpec("vpt-deep", "", "~/data", out="runs/vtab", shots=None, backbone="vit_base_patch16_224")
    >>> vtab(spec, ["vtab/cifar", "vtab/dtd"])["overall"]
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from .. import progress
from ..data import canonical_name
from ..data.vtab import GROUPS, VTAB_TASKS, vtab_group
from ..engine.run import atomic_write
from ..errors import ConfigError
from ..presets import VTAB_TRAIN, resolve_preset, tune_lrs
from .runs import RunSpec, spec_backbone, train_run
from .tables import write_summary

#: E2VPT's cumulative pruning levels in percent (``vlprompt.methods.e2vpt.PRUNE_LEVELS``).
PRUNE_LEVELS: tuple[float, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)

#: VPT's base-lr grid for prompts on VTAB-1k (``tune_vtab.py``); FGVC omits 0.05.
VTAB_LRS: tuple[float, ...] = (50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05)
FGVC_LRS: tuple[float, ...] = VTAB_LRS[:-1]
#: VPT's weight-decay grid.
WDS: tuple[float, ...] = (0.01, 0.001, 0.0001, 0.0)
#: VPT's / E2VPT's seeds of the final runs.
VTAB_SEEDS: tuple[int, ...] = (42, 44, 82, 100, 800)
#: Training defaults of the protocol (VPT ``configs/base-prompt.yaml``), below preset and explicit options.
VTAB_TRAIN_DEFAULTS: dict[str, Any] = {"epochs": 100, "batch_size": 128, "optimizer": "sgd", "momentum": 0.9,
                                       "warmup_epochs": 10, "scheduler": "cosine"}
#: Number of tasks of each VTAB-1k group.
GROUP_SIZES: dict[str, int] = {g: sum(1 for s in VTAB_TASKS if s.group == g) for g in GROUPS}
_TRAIN_DEFAULT_BATCH = 32  # TrainConfig's default, when neither the preset nor the user sets one


def task_slug(name: str) -> str:
    """A folder name for a dataset name (``vtab/cifar`` → ``vtab_cifar``)."""
    return name.replace("/", "_")


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """VPT's learning-rate scaling: ``base_lr × batch_size / 256``."""
    return base_lr * batch_size / 256


def pick_best(grid: list[dict[str, Any]]) -> dict[str, Any]:
    """The grid row with the best ``val_acc``; ties → smaller ``base_lr``, then smaller ``wd``.

    Example:
        >>> pick_best([{"base_lr": 1.0, "wd": 0.0, "val_acc": 50.0}, {"base_lr": 0.1, "wd": 0.0, "val_acc": 50.0}])
        {'base_lr': 0.1, 'wd': 0.0, 'val_acc': 50.0}
    """
    if not grid:
        raise ConfigError("the lr × wd grid is empty; expected at least one learning rate and one weight decay")
    return min(grid, key=lambda r: (-r["val_acc"], r["base_lr"], r["wd"]))


def default_lrs(method: str, dataset: str) -> tuple[float, ...]:
    """The base-lr grid VPT's tune scripts search for ``method`` on ``dataset``: the method's own
    (:data:`vlprompt.presets.TUNE_LRS`: ``linear``, ``finetune``), else the prompt grid (FGVC without 0.05).

    Example:
        >>> default_lrs("finetune", "vtab/dtd"), default_lrs("vpt-deep", "fgvc/cub")[-1]
        ((0.001, 0.0001, 0.0005, 0.005), 0.1)
    """
    fgvc = canonical_name(dataset).startswith("fgvc/")
    own = tune_lrs(method, fgvc)
    if own is not None:
        return own
    return FGVC_LRS if fgvc else VTAB_LRS


def _merged_train_options(template: RunSpec, dataset: str) -> dict[str, Any]:
    preset = resolve_preset(template.method, template.preset, None, dataset)
    own = VTAB_TRAIN.get(template.method.split("+")[0], {})  # linear / finetune: their own base config
    return {**VTAB_TRAIN_DEFAULTS, **own, **preset["train"], **template.train_options}


def _stage_spec(template: RunSpec, dataset: str, split: str, out: Path, seed: int, train: dict[str, Any]) -> RunSpec:
    train = {k: v for k, v in train.items() if k not in ("seed", "device")}
    return dataclasses.replace(template, dataset=dataset, shots=None, subsample="all", seed=seed, split=split,
                               out=str(out), train_options=train, split_file=None,
                               protocol="vtab-tune" if split == "tune" else "vtab")


def tune_task(
    template: RunSpec, dataset: str, lrs: Sequence[float] | None = None, wds: Sequence[float] = WDS,
    seed: int = VTAB_SEEDS[0], scale_lr: bool = True,
) -> dict[str, Any]:
    """Stage 1 for one task: the grid on the tuning split; writes and returns ``tune/choice.json``'s content.

    Returns:
        ``{"dataset", "grid": [{base_lr, wd, lr, val_acc}], "best": {...}, "batch_size"}``.
    """
    name = canonical_name(dataset)
    if lrs is None:
        lrs = default_lrs(template.method, name)
    train = _merged_train_options(template, name)
    batch = int(train.get("batch_size", _TRAIN_DEFAULT_BATCH))
    base = Path(template.out) / task_slug(name) / "tune"
    grid = []
    for base_lr in lrs:
        for wd in wds:
            lr = scaled_lr(base_lr, batch) if scale_lr else base_lr
            out = base / f"lr{base_lr:g}_wd{wd:g}"
            spec = _stage_spec(template, name, "tune", out, seed, {**train, "lr": lr, "weight_decay": wd})
            res = train_run(spec)
            grid.append({"base_lr": float(base_lr), "wd": float(wd), "lr": lr, "val_acc": float(res["acc"])})
    choice = {"dataset": name, "batch_size": batch, "scale_lr": scale_lr, "seed": seed, "grid": grid,
              "best": pick_best(grid)}
    atomic_write(base / "choice.json", json.dumps(choice, indent=2) + "\n")
    return choice


def _final_row(name: str, seed: int, res: dict[str, Any], base_lr: float, wd: float, lr: float) -> dict[str, Any]:
    """One final run's row for :func:`summarize_vtab` (``total_params`` where the run recorded it)."""
    row = {"dataset": name, "group": vtab_group(name) or "other", "seed": seed, "acc": float(res["acc"]),
           "base_lr": float(base_lr), "wd": float(wd), "lr": lr,
           "trainable_params": int(res.get("trainable_params", 0))}
    if res.get("total_params"):
        row["total_params"] = int(res["total_params"])
    return row


def final_task(
    template: RunSpec, dataset: str, base_lr: float, wd: float, seeds: Sequence[int] = VTAB_SEEDS,
    scale_lr: bool = True,
) -> list[dict[str, Any]]:
    """Stage 2 for one task: train on the final split with (``base_lr``, ``wd``) once per seed, test.

    Returns:
        rows ``{dataset, group, seed, acc, base_lr, wd, lr, trainable_params}``.
    """
    name = canonical_name(dataset)
    train = _merged_train_options(template, name)
    batch = int(train.get("batch_size", _TRAIN_DEFAULT_BATCH))
    lr = scaled_lr(base_lr, batch) if scale_lr else base_lr
    rows = []
    for seed in seeds:
        out = Path(template.out) / task_slug(name) / "final" / f"seed{seed}"
        res = train_run(_stage_spec(template, name, "final", out, seed, {**train, "lr": lr, "weight_decay": wd}))
        rows.append(_final_row(name, seed, res, base_lr, wd, lr))
    return rows


@dataclass(frozen=True)
class PruneOptions:
    """E2VPT's pruning stage of the protocol (reference: ``tune_vtab_PruningRewind_CVK.py``).

    Attributes:
        token_levels, piece_levels: pruning levels (percent) searched as a grid; the reference uses
            10 … 90 for both (81 rewound trainings per task): pass fewer to bound the cost.
        min_tokens, min_pieces: mask entries that always survive (reference: 1 token, 4 pieces).
    """

    token_levels: tuple[float, ...] = PRUNE_LEVELS
    piece_levels: tuple[float, ...] = PRUNE_LEVELS
    min_tokens: int = 1
    min_pieces: int = 4

    def __post_init__(self) -> None:
        for key in ("token_levels", "piece_levels"):
            levels = getattr(self, key)
            if not levels or not all(0 <= float(v) < 100 for v in levels):
                raise ConfigError(f"vtab pruning: {key} must be non-empty percentages in [0, 100), got {levels}")


def _prune_search(template: RunSpec, name: str, train: dict[str, Any], seed: int, options: PruneOptions,
                  path: Path) -> dict[str, Any]:
    """Run (or read) the prune-and-rewind search of one task; its result is ``prune.json``."""
    if path.is_file():
        return json.loads(path.read_text())
    from ..data import load_dataset
    from ..engine.train import seed_everything
    from ..methods import build_method
    from .e2vpt_prune import prune_and_rewind

    task = load_dataset(name, template.root, shots=None, split="tune")
    bb = spec_backbone(template)
    method_opts = {**resolve_preset(template.method, template.preset, None, name)["method"],
                   **template.method_options}
    seed_everything(seed)
    model = build_method(template.method, bb, task.classnames, **method_opts)
    res = prune_and_rewind(model, task, token_levels=options.token_levels, piece_levels=options.piece_levels,
                           min_tokens=options.min_tokens, min_pieces=options.min_pieces, rewind_seed=seed,
                           seed=seed, device=template.device, **{k: v for k, v in train.items() if k != "device"})
    best = res["model"]
    out = {"dataset": name, "token_pct": res["token_pct"], "piece_pct": res["piece_pct"],
           "val_acc": res["val_acc"], "pruned_fraction": res["pruned_fraction"], "grid": res["grid"],
           "token_mask": best.token_mask.tolist(), "piece_mask": best.piece_mask.tolist(),
           "visual_prompt_params": int(best.prompt.numel() + best.deep_prompt.numel())}
    atomic_write(path, json.dumps(out, indent=1) + "\n")
    return out


def prune_task(
    template: RunSpec, dataset: str, base_lr: float, wd: float, seeds: Sequence[int] = VTAB_SEEDS,
    options: PruneOptions | None = None, scale_lr: bool = True, tune_seed: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Stage 3 for one task (E2VPT): prune + rewind on the tuning split, then the final seeds with the masks.

    Args:
        template, dataset, base_lr, wd, seeds, scale_lr: as :func:`final_task` (the grid's choice).
        options: the pruning levels (default: the reference's 9 × 9 grid).
        tune_seed: seed of the search (default: the first final seed).

    Returns:
        ``(rows, info)``: final rows as :func:`final_task`'s, with ``trainable_params`` counting only the
        visual-prompt entries the masks keep; ``info`` = the search's choice (levels, val accuracy of the
        rewound model, pruned fraction).
    """
    import torch

    options = options or PruneOptions()
    name = canonical_name(dataset)
    train = _merged_train_options(template, name)
    batch = int(train.get("batch_size", _TRAIN_DEFAULT_BATCH))
    lr = scaled_lr(base_lr, batch) if scale_lr else base_lr
    base = Path(template.out) / task_slug(name) / "prune"
    opts = {**{k: v for k, v in train.items() if k not in ("seed",)}, "lr": lr, "weight_decay": wd}
    search = _prune_search(template, name, opts, seeds[0] if tune_seed is None else tune_seed, options,
                           base / "prune.json")
    token_mask, piece_mask = torch.tensor(search["token_mask"]), torch.tensor(search["piece_mask"])
    removed = int(round(search["pruned_fraction"] * search["visual_prompt_params"]))
    rows = []
    for seed in seeds:
        out = base / "final" / f"seed{seed}"
        spec = dataclasses.replace(_stage_spec(template, name, "final", out, seed, opts), protocol="vtab-pruned")
        res = train_run(spec, setup=lambda m: m.set_masks(token_mask, piece_mask))
        row = _final_row(name, seed, res, base_lr, wd, lr)
        row["trainable_params_unpruned"] = row["trainable_params"]
        row["trainable_params"] -= removed
        rows.append(row)
    info = {k: search[k] for k in ("token_pct", "piece_pct", "val_acc", "pruned_fraction")}
    return rows, info


def summarize_vtab(rows: list[dict[str, Any]], backbone_params: int | None = None) -> dict[str, Any]:
    """Per-task mean ± std, group means, the mean of the VTAB group means, and tuned-parameter percentages.

    Args:
        rows: ``{dataset, group, seed, acc}`` (+ ``trainable_params``, ``base_lr``, ``wd`` optional), one per
            final run; ``group`` is ``natural``/``specialized``/``structured``, ``fgvc`` or anything else.
        backbone_params: parameter count of the frozen backbone: the denominator of ``tuned_percent`` for rows
            without ``total_params`` (runs written before it was recorded).

    Returns:
        ``{"rows": [per task], "groups": {group: {acc, n_tasks, expected_tasks, complete}}, "overall":
        {"mean_of_groups", "n_groups", "mean_of_tasks"}, "average": {"acc"}, "tuned_percent_mean"}``;
        ``mean_of_groups`` averages the VTAB groups present; ``mean_of_tasks`` all VTAB tasks.

    Example:
        >>> s = summarize_vtab([{"dataset": "vtab/dtd", "group": "natural", "seed": 1, "acc": 60.0}])
        >>> s["groups"]["natural"]["acc"], s["overall"]["mean_of_groups"]
        (60.0, 60.0)
    """
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["dataset"], []).append(r)
    table = []
    for name, rs in by_task.items():
        accs = [float(r["acc"]) for r in rs]
        row: dict[str, Any] = {"dataset": name, "group": rs[0].get("group") or "other", "acc": mean(accs),
                               "std": stdev(accs) if len(accs) > 1 else 0.0, "seeds": [r["seed"] for r in rs]}
        for key in ("base_lr", "wd"):
            if key in rs[0]:
                row[key] = rs[0][key]
        params = rs[0].get("trainable_params")
        if params is not None:
            row["trainable_params"] = int(params)
            total = rs[0].get("total_params") or backbone_params
            if rs[0].get("total_params"):
                row["total_params"] = int(total)
            if total:
                row["tuned_percent"] = 100.0 * params / total
        table.append(row)
    groups: dict[str, dict[str, Any]] = {}
    for g in dict.fromkeys(r["group"] for r in table):
        accs = [r["acc"] for r in table if r["group"] == g]
        expected = GROUP_SIZES.get(g)
        groups[g] = {"acc": mean(accs), "n_tasks": len(accs), "expected_tasks": expected,
                     "complete": expected is None or len(accs) == expected}
    vtab_groups = [g for g in GROUPS if g in groups]
    vtab_rows = [r for r in table if r["group"] in GROUPS]
    overall = {
        "mean_of_groups": mean(groups[g]["acc"] for g in vtab_groups) if vtab_groups else None,
        "n_groups": len(vtab_groups),
        "mean_of_tasks": mean(r["acc"] for r in vtab_rows) if vtab_rows else None,
    }
    tuned = [r["tuned_percent"] for r in table if "tuned_percent" in r]
    return {"rows": table, "groups": groups, "overall": overall,
            "average": {"acc": mean(r["acc"] for r in table) if table else None},
            "backbone_params": backbone_params, "tuned_percent_mean": mean(tuned) if tuned else None}


def _pm(row: dict[str, Any]) -> str:
    """``acc ± std`` over the row's seeds; the accuracy alone for one seed."""
    return f"{row['acc']:.2f} ± {row['std']:.2f}" if len(row.get("seeds") or ()) > 1 else f"{row['acc']:.2f}"


def vtab_markdown(summary: dict[str, Any], title: str = "") -> str:
    """The summary as markdown: a per-task table, a group table and the overall line."""
    lines = [f"# VTAB-1k / FGVC: {title}".rstrip(": ") + "\n",
             "| task | group | test top-1 (mean ± std) | seeds | base lr | wd | tuned params | tuned % |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        tuned = f"{r['tuned_percent']:.3f}" if "tuned_percent" in r else "-"
        count = f"{r['trainable_params']:,}" if "trainable_params" in r else "-"
        lines.append(f"| {r['dataset']} | {r['group']} | {_pm(r)} | {len(r['seeds'])} | "
                     f"{r.get('base_lr', '-')} | {r.get('wd', '-')} | {count} | {tuned} |")
    lines += ["", "| group | mean top-1 | tasks |", "|---|---|---|"]
    for g, info in summary["groups"].items():
        n = f"{info['n_tasks']}/{info['expected_tasks']}" if info["expected_tasks"] else str(info["n_tasks"])
        lines.append(f"| {g} | {info['acc']:.2f} | {n} |")
    o = summary["overall"]
    if o["n_groups"]:
        lines += ["", f"Mean of the {o['n_groups']} VTAB group means: **{o['mean_of_groups']:.2f}** "
                      f"(mean over the VTAB tasks: {o['mean_of_tasks']:.2f})."]
    if summary.get("tuned_percent_mean") is not None:
        bb_params = f", {summary['backbone_params']:,}," if summary.get("backbone_params") else ""
        lines.append(f"Tuned parameters: {summary['tuned_percent_mean']:.4f}% of the model's parameters (tuned / "
                     f"total, mean over tasks; total = the backbone's{bb_params} plus the method's own).")
    pruned = summary.get("pruned")
    if pruned:
        before = {r["dataset"]: r for r in summary["rows"]}
        lines += ["", "## After E2VPT pruning + rewinding", "",
                  "| task | levels token / segment % | val top-1 rewound | test top-1 before | test top-1 after "
                  "| tuned % before | tuned % after |", "|---|---|---|---|---|---|---|"]
        for r in pruned["rows"]:
            b = before.get(r["dataset"], {})
            info = summary.get("pruning", {}).get(r["dataset"], {})

            def pct(row: dict[str, Any]) -> str:
                return f"{row['tuned_percent']:.3f}" if "tuned_percent" in row else "-"

            acc_b = _pm(b) if b else "-"
            lines.append(f"| {r['dataset']} | {info.get('token_pct', '-')} / {info.get('piece_pct', '-')} | "
                         f"{info.get('val_acc', float('nan')):.2f} | {acc_b} | {_pm(r)} | "
                         f"{pct(b) if b else '-'} | {pct(r)} |")
        po = pruned["overall"]
        if po["n_groups"]:
            lines += ["", f"Mean of the VTAB group means after pruning: **{po['mean_of_groups']:.2f}** "
                          f"(before: {summary['overall']['mean_of_groups']:.2f})."]
    return "\n".join(lines) + "\n"


@progress.protocol
def vtab(
    template: RunSpec, datasets: Sequence[str], lrs: Sequence[float] | None = None, wds: Sequence[float] = WDS,
    seeds: Sequence[int] = VTAB_SEEDS, scale_lr: bool = True, tune: bool = True, tune_seed: int | None = None,
    prune: PruneOptions | None = None,
) -> dict[str, Any]:
    """Run the VTAB-1k / FGVC protocol for ``template.method`` on ``datasets``; writes ``vtab.{json,md}``.

    Args:
        template: method, backbone, root, options and ``out`` (the output root).
        datasets: ``vtab/<task>``, ``fgvc/<name>`` or ``tiny/vtab_*`` names.
        lrs: base learning rates of the grid (default: VPT's grid for the method, :func:`default_lrs`:
            :data:`VTAB_LRS` / :data:`FGVC_LRS` for prompts, ``linear`` / ``finetune``'s own).
        wds: weight decays of the grid (default: :data:`WDS`).
        seeds: seeds of the final runs (default: VPT's five).
        scale_lr: use ``base_lr × batch_size / 256`` (VPT); False uses the base lr as is.
        tune: run the grid; False requires a single (lr, wd) pair and trains the final runs with it.
        tune_seed: seed of the grid runs (default: the first of ``seeds``).
        prune: run E2VPT's pruning stage after the final runs (``e2vpt`` only); the summary then
            also holds ``pruned`` (the same summary for the pruned final runs) and ``pruning`` (per
            task: chosen levels, val top-1 of the rewound model, pruned fraction).

    Example:
        >>> spec = RunSpec("linear-probe", "", "~/data", out="runs/vtab", shots=None)
        >>> vtab(spec, ["vtab/eurosat"], lrs=[1.0], wds=[0.0], seeds=[42])["groups"]["specialized"]["acc"]
    """
    if not datasets:
        raise ConfigError("vtab: no datasets given; expected e.g. vtab/cifar vtab/dtd ...")
    if not seeds:
        raise ConfigError("vtab: no seeds given; expected e.g. 42 44 82 100 800")
    if prune is not None and template.method.split("+")[0] != "e2vpt":
        raise ConfigError(f"vtab: the pruning stage is E2VPT's; method {template.method!r} has no pruning masks")
    choices: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    pruned_rows: list[dict[str, Any]] = []
    pruning: dict[str, dict[str, Any]] = {}
    names = list(dict.fromkeys(canonical_name(ds) for ds in datasets))  # unknown names fail before any run
    grid = sum(len(lrs or default_lrs(template.method, n)) for n in names) * len(wds) if tune else 0
    progress.plan(grid + len(names) * len(seeds) * (2 if prune is not None else 1))
    for name in names:
        if tune:
            best = tune_task(template, name, lrs, wds, seed=seeds[0] if tune_seed is None else tune_seed,
                             scale_lr=scale_lr)["best"]
        else:
            if lrs is None or len(lrs) != 1 or len(wds) != 1:
                raise ConfigError("vtab: tune=False needs exactly one learning rate and one weight decay")
            best = {"base_lr": float(lrs[0]), "wd": float(wds[0]), "val_acc": None}
        choices[name] = best
        rows += final_task(template, name, best["base_lr"], best["wd"], seeds, scale_lr=scale_lr)
        if prune is not None:
            p_rows, pruning[name] = prune_task(template, name, best["base_lr"], best["wd"], seeds, prune,
                                               scale_lr=scale_lr, tune_seed=tune_seed)
            pruned_rows += p_rows
    bb = spec_backbone(template)
    n_params = sum(p.numel() for p in bb.parameters())
    summary = summarize_vtab(rows, n_params)
    summary.update({"protocol": "vtab", "method": template.method, "backbone": template.backbone,
                    "choices": choices, "runs": rows})
    if prune is not None:
        summary.update({"pruned": summarize_vtab(pruned_rows, n_params), "pruning": pruning,
                        "runs_pruned": pruned_rows, "prune_options": dataclasses.asdict(prune)})
    write_summary(template.out, "vtab", summary, vtab_markdown(summary, template.method))
    return summary
