"""Data-efficient tables: accuracy vs the fraction of the training set kept, one column per ratio.

The layout of DAPT's data-efficiency table: one row per dataset and the average over datasets, one column per
data ratio (10 %, 20 %, ... of the training images), for each method and selection rule (``uniform``,
``herding``, ``kcenter``); then the methods side by side on the averages.
"""

from __future__ import annotations

from statistics import mean
from typing import Any

from .tables import _csv, _md, _order, _pm, _std, mean_std, seed_spread


def ratio_label(ratio: float) -> str:
    """``0.1`` → ``"10%"``.

    Example:
        >>> ratio_label(0.1), ratio_label(0.125), ratio_label(1.0)
        ('10%', '12.5%', '100%')
    """
    return f"{100 * ratio:g}%"


def data_efficient_tables(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method label (``<method> (<selection>)``): accuracy mean ± std over seeds per (dataset, ratio) and the
    per-ratio average over datasets (None for a ratio some dataset lacks: not an average over all of them).

    Returns ``{label: {"ratios": [...], "datasets": [...], "cells": {(dataset, ratio): (mean, std, n)},
    "average": {ratio: float | None}, "average_std": {ratio: (std, n_seeds) | None}}}`` (std over seeds of the
    per-seed averages, :func:`~vlprompt.report.tables.seed_spread`).
    """
    rs_all = [r for r in rows if r["protocol"] == "data-efficient" and r.get("ratio") is not None]
    out: dict[str, dict[str, Any]] = {}
    for method, selection in _order([(r["method"], r.get("selection") or "uniform") for r in rs_all]):
        rs = [r for r in rs_all if r["method"] == method and (r.get("selection") or "uniform") == selection]
        ratios = sorted({float(r["ratio"]) for r in rs})
        datasets = _order([r["dataset"] for r in rs])
        cells: dict[tuple[str, float], tuple[float, float, int]] = {}
        for ds in datasets:
            for k in ratios:
                v = [r["acc"] for r in rs if r["dataset"] == ds and float(r["ratio"]) == k]
                if v:
                    cells[(ds, k)] = (*mean_std(v), len(v))
        average = {k: (mean(cells[(ds, k)][0] for ds in datasets) if all((ds, k) in cells for ds in datasets)
                       else None) for k in ratios}
        average_std = {k: seed_spread([r for r in rs if float(r["ratio"]) == k], "acc") for k in ratios}
        out[f"{method} ({selection})"] = {"method": method, "selection": selection, "ratios": ratios,
                                          "datasets": datasets, "cells": cells, "average": average,
                                          "average_std": average_std}
    return out


def _cell(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def render_data_efficient(tables: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Markdown (per method: datasets × ratios + average row; methods × ratios comparison) and CSVs."""
    md = ["# data-efficient\n",
          "Accuracy (%) on the full test set after training on the given fraction of the training images "
          "(selection rule in brackets): mean ± std over seeds; average row: mean over the datasets "
          "(empty where a dataset lacks that ratio).\n"]
    long_rows: list[list[Any]] = []
    for label, t in tables.items():
        header = ["dataset"] + [ratio_label(k) for k in t["ratios"]]
        body = []
        for ds in t["datasets"]:
            row = [ds]
            for k in t["ratios"]:
                c = t["cells"].get((ds, k))
                row.append(_pm(*c) if c else "")
                if c:
                    long_rows.append([t["method"], t["selection"], ds, f"{k:g}", f"{c[0]:.4f}", _std(c[1], c[2]),
                                      c[2]])
            body.append(row)
        body.append(["**average**"] + [_cell(t["average"][k]) for k in t["ratios"]])
        for k in t["ratios"]:
            if t["average"][k] is not None:
                long_rows.append([t["method"], t["selection"], "average", f"{k:g}", f"{t['average'][k]:.4f}", "", ""])
        md += [f"## {label}\n", _md(header, body)]
    all_ratios = sorted({k for t in tables.values() for k in t["ratios"]})
    header = ["method"] + [ratio_label(k) for k in all_ratios]
    cmp_body = [[label] + [_cell(t["average"].get(k)) for k in all_ratios] for label, t in tables.items()]
    md += ["## Method comparison (average over datasets)\n", _md(header, cmp_body)]
    return {
        "data_efficient.md": "\n".join(md),
        "data_efficient.csv": _csv(["method", "selection", "dataset", "ratio", "acc", "acc_std", "seeds"], long_rows),
        "data_efficient_compare.csv": _csv(header, cmp_body),
    }
