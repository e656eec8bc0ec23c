"""Collect ``results.json`` files and tally the paper tables (mean ± std over seeds) as markdown and CSV."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import yaml

from ..engine.loggers import LOGGING_OPTIONS
from ..engine.train import hm
from ..errors import ConfigError
from ..methods import reads_training_data
from ..protocols.tables import summarize_base2new
from ..protocols.vtab import summarize_vtab, vtab_markdown


def _variant(res: dict[str, Any]) -> str:
    """The id suffix after ``seed<S>`` (``-<preset>-<hash>``) of a sweep run, '' otherwise."""
    rid = (res.get("sweep") or {}).get("id", "")
    m = re.search(r"/seeds?[\d+]+(.*)$", rid)
    return m.group(1) if m else ""


def collect(root: str | Path) -> list[dict[str, Any]]:
    """One row per ``results.json`` under ``root`` (unreadable or incomplete files are ignored).

    Row keys: ``method`` (with the sweep id's ``-<preset>-<hash>`` suffix when a method has runs of several
    such variants; runs outside a sweep keep the bare name),
    ``dataset`` (the sweep's dataset label when present), ``protocol`` (``base2new`` when the run has
    ``new_acc``), ``shots``, ``seed``, ``acc``, ``base_acc``, ``new_acc``, ``hm``, ``path``, ``per_task``
    (multi-task runs), ``per_task_new`` (multi-task base-to-new) and ``vtab_runs`` / ``backbone_params``
    (VTAB: the final runs behind the row).

    The inner runs of a VTAB sweep run (grid and seeds, below its own ``results.json``) and the
    per-task runs of a multi-task baseline (``protocol: multitask-baseline``) are not rows: the
    sweep / group run stands for them.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"report: '{root}' is not a directory")
    found = []
    for p in sorted(root.rglob("results.json")):
        try:
            res = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(res, dict) and "acc" in res and "method" in res:
            found.append((p, res))
    vtab_dirs = {p.parent for p, res in found if (res.get("sweep") or {}).get("protocol") == "vtab"}
    rows = []
    for p, res in found:
        if any(d in p.parent.parents for d in vtab_dirs):  # inner runs of a VTAB sweep run
            continue
        sweep = res.get("sweep") or {}
        if not sweep and res.get("protocol") == "multitask-baseline":  # per-task runs behind a group baseline
            continue
        b2n = res.get("new_acc") is not None and res.get("base_acc") is not None
        protocol = str(sweep.get("protocol") or res.get("protocol") or "accuracy")
        if b2n:
            protocol = "base2new"
        elif res.get("selection") and res.get("data_ratio") is not None:  # data-efficient runs (older ones: few-shot)
            protocol = "data-efficient"
        rows.append({
            "method": str(res["method"]), "variant": _variant(res),
            "dataset": str(sweep.get("dataset") or res.get("dataset", "?")),
            "protocol": protocol, "trains": reads_training_data(str(res["method"])),
            "ratio": res.get("data_ratio"), "selection": res.get("selection"),
            "shots": res.get("shots"), "seed": res.get("seed"), "acc": float(res["acc"]),
            "base_acc": res.get("base_acc"), "new_acc": res.get("new_acc"),
            "hm": res.get("hm") if res.get("hm") is not None
            else (hm(res["base_acc"], res["new_acc"]) if b2n else None),
            "path": str(p.parent), "per_task": res.get("per_task"), "per_task_new": res.get("per_task_new"),
            "vtab_runs": res.get("runs") if sweep.get("protocol") == "vtab" else None,
            "vtab_runs_pruned": (res.get("pruned") or {}).get("runs") if sweep.get("protocol") == "vtab" else None,
            "backbone_params": res.get("backbone_params"), "targets": res.get("targets"),
            "config_key": None if reads_training_data(str(res["method"])) else _config_key(p.parent, res),
        })
    rows = _one_per_configuration(rows)
    variants: dict[str, set[str]] = {}  # sweep variants (preset / options) of a method: split only when several
    for r in rows:
        if r["variant"]:
            variants.setdefault(r["method"], set()).add(r["variant"])
        variants.setdefault(r["method"], set())
    for r in rows:
        if len(variants[r["method"]]) > 1 and r["variant"]:
            r["method"] = r["method"] + r["variant"]
    return rows


def _config_key(run_dir: Path, res: dict[str, Any]) -> str:
    """What determines the results of a run that reads no training images: the method's and the training
    options (``config.yaml``; logging and cache folders aside), backbone, dataset, class subset and seed."""
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    train = {k: v for k, v in (cfg.get("train") or {}).items() if k != "cache_dir" and k not in LOGGING_OPTIONS}
    key = {"method_config": cfg.get("method_config"), "train": train, "backbone": res.get("backbone"),
           "weights": res.get("weights"), "subsample": res.get("subsample"), "seed": res.get("seed"),
           "targets": sorted(res.get("targets") or {})}
    return json.dumps(key, sort_keys=True, default=str)


def _one_per_configuration(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of methods that read no training images (zero-shot) stand for every shot count: their ``shots``
    becomes 0 and repeats of one configuration (one run per shot count, from older sweeps or protocol runs)
    are dropped, so such a method is listed (and averaged over seeds) once."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for r in rows:
        if r["config_key"] is not None:
            key = (r["protocol"], r["method"], r["variant"], r["dataset"], r["config_key"])
            if key in seen:
                continue
            seen.add(key)
            r["shots"] = 0
        out.append(r)
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return mean(values), (stdev(values) if len(values) > 1 else 0.0)


def _pm(m: float, s: float, n: int = 2) -> str:
    """``mean ± std`` over ``n`` seeds; the mean alone for one seed (a std of one value says nothing)."""
    return f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}"


def _std(s: float, n: int) -> str:
    """A std for a CSV cell: empty for one seed."""
    return f"{s:.4f}" if n > 1 else ""


def _order(values: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def _zero_shot_first(rows: list[dict[str, Any]]) -> list[str]:
    """The rows' methods in first-seen order, those without training (shots 0) first, as the papers' CLIP row."""
    methods = _order([r["method"] for r in rows])
    untrained = {r["method"] for r in rows if r["shots"] == 0}
    return [m for m in methods if m in untrained] + [m for m in methods if m not in untrained]


def _shots_key(k: Any) -> tuple[int, float]:
    return (1, 0.0) if k is None else (0, float(k))


def base2new_tables(rows: list[dict[str, Any]]) -> dict[tuple[str, Any], dict[str, Any]]:
    """Per (method, shots): per-dataset B/N mean ± std, H = HM(mean B, mean N) and the average row.

    The average row is :func:`vlprompt.protocols.tables.summarize_base2new`'s (mean of the datasets'
    B and N, H of those averages); its ``std`` holds ``(std, n_seeds)`` over seeds of the per-seed average
    B, N and H = HM(per-seed B, per-seed N) (for error bars; None for one seed). A method whose runs have no
    new-class accuracy (the base-only linear probe) has ``new`` and ``hm`` None.
    """
    b2n = [r for r in rows if r["protocol"] == "base2new" and r.get("base_acc") is not None]
    out: dict[tuple[str, Any], dict[str, Any]] = {}
    for method in _zero_shot_first(b2n):
        for shots in sorted({r["shots"] for r in b2n if r["method"] == method}, key=_shots_key):
            rs = [r for r in b2n if r["method"] == method and r["shots"] == shots]
            has_new = all(r.get("new_acc") is not None for r in rs)  # base-only runs (linear probe): B alone
            table = []
            for ds in _order([r["dataset"] for r in rs]):
                d = [r for r in rs if r["dataset"] == ds]
                bm, bs = mean_std([r["base_acc"] for r in d])
                (nm, ns), (_, hs) = ((mean_std([r["new_acc"] for r in d]), mean_std([r["hm"] for r in d]))
                                     if has_new else ((None, None), (None, None)))
                table.append({"dataset": ds, "base": bm, "base_std": bs, "new": nm, "new_std": ns,
                              "hm": None if nm is None else hm(bm, nm), "hm_std": hs, "seeds": len(d)})
            if has_new:
                summary = summarize_base2new([{"dataset": r["dataset"], "seed": r["seed"], "base_acc": r["base_acc"],
                                               "new_acc": r["new_acc"]} for r in rs])["average"]
            else:
                summary = {"base_acc": mean(t["base"] for t in table), "new_acc": None, "hm": None}
            per_b = _per_seed(rs, "base_acc")
            per_n = _per_seed(rs, "new_acc") if has_new else []
            per_h = [hm(b, n) for b, n in zip(per_b, per_n, strict=False)]
            out[(method, shots)] = {"rows": table, "average": {
                "dataset": "average", "base": summary["base_acc"], "new": summary["new_acc"],
                "hm": summary["hm"], "datasets": len(table),
                "std": {"base": _spread(per_b), "new": _spread(per_n), "hm": _spread(per_h)}}}
    return out


def plugin_effect_lines(tables: dict[tuple[str, Any], dict[str, Any]], bases: list[str] | tuple[str, ...],
                        plugin: str = "dept", reference: str | None = "zeroshot") -> list[str]:
    """Markdown rows: per base method the average B / N / H without and with ``+plugin`` and the change of
    H (methods lacking either run are left out), then the ``reference`` method's averages.

    ``tables`` is :func:`base2new_tables`' output (one shot count).
    """
    avg = {m: t["average"] for (m, _), t in tables.items()}
    p = {"dept": "DePT"}.get(plugin, plugin)
    lines = [f"| method | B | N | H | +{p} B | +{p} N | +{p} H | ΔH |", "|---|---|---|---|---|---|---|---|"]
    for m in bases:
        a, b = avg.get(m), avg.get(f"{m}+{plugin}")
        if a is None or b is None:
            continue
        lines.append(f"| {m} | {a['base']:.2f} | {a['new']:.2f} | {a['hm']:.2f} | {b['base']:.2f} | {b['new']:.2f} "
                     f"| {b['hm']:.2f} | {b['hm'] - a['hm']:+.2f} |")
    z = avg.get(reference) if reference else None
    if z is not None:
        lines.append(f"| {reference} (reference) | {z['base']:.2f} | {z['new']:.2f} | {z['hm']:.2f} | | | | |")
    return lines


def accuracy_tables(rows: list[dict[str, Any]], protocol: str = "few-shot") -> dict[str, dict[str, Any]]:
    """Per method: accuracy mean ± std over seeds per (dataset, shots), and per-shots average over datasets
    (``average``) with :func:`seed_spread` (``average_std``: std over seeds of the per-seed averages, or None)."""
    rs_all = [r for r in rows if r["protocol"] == protocol]
    out: dict[str, dict[str, Any]] = {}
    for method in _zero_shot_first(rs_all):
        rs = [r for r in rs_all if r["method"] == method]
        shots = sorted({r["shots"] for r in rs}, key=_shots_key)
        cells: dict[tuple[str, Any], tuple[float, float, int]] = {}
        for ds in _order([r["dataset"] for r in rs]):
            for k in shots:
                v = [r["acc"] for r in rs if r["dataset"] == ds and r["shots"] == k]
                if v:
                    cells[(ds, k)] = (*mean_std(v), len(v))
        avg, avg_std = {}, {}
        for k in shots:
            means = [c[0] for (ds, kk), c in cells.items() if kk == k]
            avg[k] = mean(means)
            avg_std[k] = seed_spread([r for r in rs if r["shots"] == k], "acc")
        out[method] = {"shots": shots, "datasets": _order([r["dataset"] for r in rs]), "cells": cells,
                       "average": avg, "average_std": avg_std}
    return out


def _per_seed(rows: list[dict[str, Any]], key: str) -> list[float]:
    """Per seed (first-seen order), the mean over datasets of ``row[key]``; only seeds with a row for every
    dataset count (a seed missing a dataset would average other datasets)."""
    datasets = _order([r["dataset"] for r in rows])
    out = []
    for seed in _order([r["seed"] for r in rows]):
        vals = {r["dataset"]: r[key] for r in rows if r["seed"] == seed}
        if len(vals) == len(datasets) and None not in vals.values():
            out.append(mean(vals.values()))
    return out


def _spread(values: list[float]) -> tuple[float, int] | None:
    return (stdev(values), len(values)) if len(values) > 1 else None


def seed_spread(rows: list[dict[str, Any]], key: str) -> tuple[float, int] | None:
    """``(std, n)``: the sample std over the ``n`` seeds of the per-seed mean over datasets of ``row[key]``
    (seeds with every dataset only); None with fewer than 2 such seeds (no spread to show)."""
    return _spread(_per_seed(rows, key))


def _md(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _csv(header: list[str], body: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(body)
    return buf.getvalue()


def _kname(k: Any) -> str:
    return "all" if k is None else str(k)


#: a value a method does not have (the linear probe's N and H)
NA = "n/a"


def _na(v: float | None, digits: int = 2, missing: str = NA) -> str:
    return missing if v is None else f"{v:.{digits}f}"


def _pm_na(m: float | None, s: float | None, n: int) -> str:
    return NA if m is None else _pm(m, s or 0.0, n)


def _shots_title(k: Any) -> str:
    return "zero-shot: no training images" if k == 0 else f"{_kname(k)} shots"


def render_base2new(tables: dict[tuple[str, Any], dict[str, Any]]) -> dict[str, str]:
    """Markdown (per-method tables + side-by-side comparison) and CSVs (long + comparison)."""
    md = ["# Base-to-new generalisation\n",
          "B, N: mean ± std over seeds (the mean alone for one seed); H = HM(mean B, mean N) (± std of the "
          "per-seed H); average row: mean of the datasets' B and N, H of those averages; "
          f"{NA}: not available (a base-only method such as the linear probe has no new-class weights).\n"]
    long_rows: list[list[Any]] = []
    for (method, shots), t in tables.items():
        body = [[r["dataset"], _pm(r["base"], r["base_std"], r["seeds"]), _pm_na(r["new"], r["new_std"], r["seeds"]),
                 _pm_na(r["hm"], r["hm_std"], r["seeds"]), str(r["seeds"])] for r in t["rows"]]
        a = t["average"]
        body.append(["**average**", f"{a['base']:.2f}", _na(a["new"]), _na(a["hm"]), ""])
        md += [f"## {method} ({_shots_title(shots)})\n", _md(["dataset", "base", "new", "H", "seeds"], body)]
        for r in t["rows"]:
            n = r["seeds"]
            long_rows.append([method, _kname(shots), r["dataset"], f"{r['base']:.4f}", _std(r["base_std"], n),
                              _na(r["new"], 4, ""), _std(r["new_std"] or 0.0, n) if r["new"] is not None else "",
                              _na(r["hm"], 4, ""), _std(r["hm_std"] or 0.0, n) if r["hm"] is not None else "", n])
        long_rows.append([method, _kname(shots), "average", f"{a['base']:.4f}", "", _na(a["new"], 4, ""), "",
                          _na(a["hm"], 4, ""), "", ""])
    # side by side: one row per dataset, B/N/H per method
    keys = list(tables)
    names = [m if sum(1 for mm, _ in keys if mm == m) == 1 else f"{m}@{_kname(k)}" for m, k in keys]
    datasets = _order([r["dataset"] for t in tables.values() for r in t["rows"]])
    header = ["dataset"] + [f"{n} {c}" for n in names for c in ("B", "N", "H")]
    cmp_body: list[list[str]] = []
    for ds in [*datasets, "average"]:
        row = ["**average**" if ds == "average" else ds]
        for key in keys:
            t = tables[key]
            r = t["average"] if ds == "average" else next((x for x in t["rows"] if x["dataset"] == ds), None)
            row += [_na(r[c]) for c in ("base", "new", "hm")] if r else ["", "", ""]
        cmp_body.append(row)
    md += ["## Method comparison\n", _md(header, cmp_body)]
    return {
        "base2new.md": "\n".join(md),
        "base2new.csv": _csv(["method", "shots", "dataset", "base", "base_std", "new", "new_std", "hm", "hm_std",
                              "seeds"], long_rows),
        "base2new_compare.csv": _csv(header, [[c.strip("*").replace(NA, "") for c in r] for r in cmp_body]),
    }


def render_accuracy(tables: dict[str, dict[str, Any]], protocol: str = "few-shot") -> dict[str, str]:
    """Markdown (per-method dataset × shots tables + comparison of averages) and CSVs."""
    stem = protocol.replace("-", "_")
    md = [f"# {protocol} accuracy\n", "Accuracy (%): mean ± std over seeds; average row: mean over datasets.\n"]
    long_rows: list[list[Any]] = []
    for method, t in tables.items():
        header = ["dataset"] + [f"{_kname(k)}-shot" for k in t["shots"]]
        body = []
        for ds in t["datasets"]:
            row = [ds]
            for k in t["shots"]:
                c = t["cells"].get((ds, k))
                row.append(_pm(*c) if c else "")
                if c:
                    long_rows.append([method, ds, _kname(k), f"{c[0]:.4f}", _std(c[1], c[2]), c[2]])
            body.append(row)
        body.append(["**average**"] + [f"{t['average'][k]:.2f}" for k in t["shots"]])
        for k in t["shots"]:
            long_rows.append([method, "average", _kname(k), f"{t['average'][k]:.4f}", "", ""])
        md += [f"## {method}\n", _md(header, body)]
    all_shots = sorted({k for t in tables.values() for k in t["shots"]}, key=_shots_key)
    header = ["method"] + [f"{_kname(k)}-shot" for k in all_shots]
    cmp_body = [[m] + [f"{t['average'][k]:.2f}" if k in t["average"] else "" for k in all_shots]
                for m, t in tables.items()]
    md += ["## Method comparison (average over datasets)\n", _md(header, cmp_body)]
    return {
        f"{stem}.md": "\n".join(md),
        f"{stem}.csv": _csv(["method", "dataset", "shots", "acc", "acc_std", "seeds"], long_rows),
        f"{stem}_compare.csv": _csv(header, cmp_body),
    }


def multitask_task_tables(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: per (group, task) × shots accuracy mean ± std over seeds (multi-task runs' ``per_task``)."""
    rs_all = [r for r in rows if r["protocol"] == "multitask" and r.get("per_task")]
    out: dict[str, dict[str, Any]] = {}
    for method in _order([r["method"] for r in rs_all]):
        rs = [r for r in rs_all if r["method"] == method]
        shots = sorted({r["shots"] for r in rs}, key=_shots_key)
        keys = _order([(r["dataset"], t) for r in rs for t in r["per_task"]])
        cells: dict[tuple[str, str, Any], tuple[float, float, int]] = {}
        for group, task in keys:
            for k in shots:
                v = [float(r["per_task"][task]) for r in rs
                     if r["dataset"] == group and r["shots"] == k and task in r["per_task"]]
                if v:
                    cells[(group, task, k)] = (*mean_std(v), len(v))
        out[method] = {"shots": shots, "tasks": keys, "cells": cells}
    return out


def render_multitask_tasks(tables: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Markdown section and CSV of the per-task accuracies of multi-task runs."""
    md = ["# multitask: accuracy per task\n",
          "Accuracy (%) of each task on its own classes: mean ± std over seeds (the group rows of "
          "`multitask.md` are the unweighted means over these tasks).\n"]
    long_rows: list[list[Any]] = []
    for method, t in tables.items():
        header = ["group", "task"] + [f"{_kname(k)}-shot" for k in t["shots"]]
        body = []
        for group, task in t["tasks"]:
            row = [group, task]
            for k in t["shots"]:
                c = t["cells"].get((group, task, k))
                row.append(_pm(*c) if c else "")
                if c:
                    long_rows.append([method, group, task, _kname(k), f"{c[0]:.4f}", _std(c[1], c[2]), c[2]])
            body.append(row)
        md += [f"## {method}\n", _md(header, body)]
    return {"multitask_tasks.md": "\n".join(md),
            "multitask_tasks.csv": _csv(["method", "group", "task", "shots", "acc", "acc_std", "seeds"], long_rows)}


def multitask_base2new_task_tables(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: per (group, task) × shots base / new accuracy (mean ± std over seeds) and H = HM of the
    means, from multi-task base-to-new runs (``per_task`` = base, ``per_task_new``)."""
    rs_all = [r for r in rows if r["protocol"] == "base2new" and r.get("per_task") and r.get("per_task_new")]
    out: dict[str, dict[str, Any]] = {}
    for method in _order([r["method"] for r in rs_all]):
        rs = [r for r in rs_all if r["method"] == method]
        shots = sorted({r["shots"] for r in rs}, key=_shots_key)
        keys = _order([(r["dataset"], t) for r in rs for t in r["per_task"]])
        cells: dict[tuple[str, str, Any], dict[str, float]] = {}
        for group, task in keys:
            for k in shots:
                d = [r for r in rs if r["dataset"] == group and r["shots"] == k
                     and task in r["per_task"] and task in r["per_task_new"]]
                if d:
                    (bm, bs), (nm, ns) = (mean_std([float(r["per_task"][task]) for r in d]),
                                          mean_std([float(r["per_task_new"][task]) for r in d]))
                    cells[(group, task, k)] = {"base": bm, "base_std": bs, "new": nm, "new_std": ns,
                                               "hm": hm(bm, nm), "seeds": len(d)}
        out[method] = {"shots": shots, "tasks": keys, "cells": cells}
    return out


def render_multitask_base2new_tasks(tables: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Markdown and CSV of the per-task base / new / H of multi-task base-to-new runs."""
    md = ["# multitask base-to-new: per task\n",
          "Each task's base and new accuracy on its own classes (mean ± std over seeds) and H = HM(B, N) of the "
          "means; the group rows of `base2new.md` are the means over these tasks.\n"]
    long_rows: list[list[Any]] = []
    for method, t in tables.items():
        header = ["group", "task"] + [f"{_kname(k)}-shot {m}" for k in t["shots"] for m in ("base", "new", "H")]
        body = []
        for group, task in t["tasks"]:
            row = [group, task]
            for k in t["shots"]:
                c = t["cells"].get((group, task, k))
                row += ([_pm(c["base"], c["base_std"], c["seeds"]), _pm(c["new"], c["new_std"], c["seeds"]),
                         f"{c['hm']:.2f}"]
                        if c else ["", "", ""])
                if c:
                    long_rows.append([method, group, task, _kname(k), f"{c['base']:.4f}", f"{c['new']:.4f}",
                                      f"{c['hm']:.4f}", c["seeds"]])
            body.append(row)
        md += [f"## {method}\n", _md(header, body)]
    return {"multitask_base2new_tasks.md": "\n".join(md),
            "multitask_base2new_tasks.csv": _csv(["method", "group", "task", "shots", "base", "new", "hm", "seeds"],
                                                 long_rows)}


def vtab_tables(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: :func:`vlprompt.protocols.vtab.summarize_vtab` over its final VTAB runs.

    A VTAB sweep row contributes the per-seed runs it holds (``vtab_runs``); a final run of
    ``vlprompt vtab`` (protocol ``vtab``, outside a sweep) contributes itself.
    """
    from ..data.vtab import vtab_group

    out: dict[str, dict[str, Any]] = {}
    vt = [r for r in rows if r["protocol"] == "vtab"]
    for method in _order([r["method"] for r in vt]):
        finals: list[dict[str, Any]] = []
        pruned: list[dict[str, Any]] = []
        params = None
        for r in (r for r in vt if r["method"] == method):
            if r.get("vtab_runs"):
                finals += r["vtab_runs"]
                pruned += r.get("vtab_runs_pruned") or []
                params = params or r.get("backbone_params")
            else:
                finals.append({"dataset": r["dataset"], "group": vtab_group(r["dataset"]) or "other",
                               "seed": r["seed"], "acc": r["acc"]})
        out[method] = summarize_vtab(finals, params)
        if pruned:  # E2VPT's pruning stage: the final seeds with the pruned masks, as a row of its own
            out[f"{method} (pruned)"] = summarize_vtab(pruned, params)
    return out


def render_vtab(tables: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Per method the VTAB-1k table (per task mean ± std, group means, tuned %), a comparison and CSVs."""
    from ..data.vtab import GROUPS

    md = ["# VTAB-1k\n", "Per task: test top-1 mean ± std over the final seeds, the chosen (base lr, wd); "
          "group means over the group's tasks present; mean of the VTAB group means.\n"]
    long_rows: list[list[Any]] = []
    for method, s in tables.items():
        md.append("#" + vtab_markdown(s, method))
        for r in s["rows"]:
            long_rows.append([method, r["dataset"], r["group"], f"{r['acc']:.4f}", f"{r['std']:.4f}",
                              len(r["seeds"]), r.get("base_lr", ""), r.get("wd", ""),
                              f"{r['tuned_percent']:.6f}" if "tuned_percent" in r else ""])
    groups = [g for g in (*GROUPS, "fgvc", "other") if any(g in s["groups"] for s in tables.values())]
    header = ["method", *groups, "mean of groups", "tuned %"]
    body = []
    for method, s in tables.items():
        row = [method] + [f"{s['groups'][g]['acc']:.2f}" if g in s["groups"] else "" for g in groups]
        mog = s["overall"]["mean_of_groups"]
        row.append(f"{mog:.2f}" if mog is not None else "")
        tp = s.get("tuned_percent_mean")
        row.append(f"{tp:.4f}" if tp is not None else "")
        body.append(row)
    md += ["## Method comparison (group means)\n", _md(header, body)]
    return {"vtab.md": "\n".join(md),
            "vtab.csv": _csv(["method", "dataset", "group", "acc", "acc_std", "seeds", "base_lr", "wd",
                              "tuned_percent"], long_rows),
            "vtab_compare.csv": _csv(header, body)}
