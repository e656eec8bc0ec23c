"""Cross-dataset and domain-generalisation tables: one row per method, the source and every target.

The layout of CoCoOp's Tables 2 / 3 (and DePT's, MaPLe's): accuracy on the source dataset the prompts were
trained on, on each target (prompts re-targeted to its class names), and the average over the targets.
"""

from __future__ import annotations

from statistics import mean
from typing import Any

from .tables import _csv, _kname, _md, _order, _pm, _shots_key, _shots_title, _std, _zero_shot_first, mean_std

#: the sweep protocols tallied here (rows carry ``targets``)
TRANSFER_PROTOCOLS = ("cross-dataset", "domain-gen")


def transfer_tables(rows: list[dict[str, Any]], protocol: str) -> dict[tuple[str, Any], dict[str, Any]]:
    """Per (source dataset, shots): per method the source and per-target accuracy mean ± std over seeds and
    the average over targets (mean of the per-target means; None when some target is missing). Zero-shot rows
    (shots 0: no training images) join the table of every shot count of their source, as the papers' CLIP row.

    Returns ``{(source, shots): {"targets": [labels], "methods": {method: {"source": (m, s, n),
    "targets": {label: (m, s, n)}, "average": float}}}}``.
    """
    rs_all = [r for r in rows if r["protocol"] == protocol and r.get("targets")]
    out: dict[tuple[str, Any], dict[str, Any]] = {}
    sources = _order([r["dataset"] for r in rs_all])
    for src in sources:
        own = [r for r in rs_all if r["dataset"] == src]
        shots = sorted({r["shots"] for r in own if r["shots"] != 0}, key=_shots_key) or [0]
        for k in shots:
            rs = [r for r in own if r["shots"] in (k, 0)]
            if not rs:
                continue
            labels = _order([t for r in rs for t in r["targets"]])
            methods: dict[str, Any] = {}
            for method in _zero_shot_first(rs):
                mr = [r for r in rs if r["method"] == method]
                cells = {}
                for t in labels:
                    v = [float(r["targets"][t]) for r in mr if t in r["targets"]]
                    if v:
                        cells[t] = (*mean_std(v), len(v))
                complete = len(cells) == len(labels)  # an average over some targets only is not the papers'
                methods[method] = {"source": (*mean_std([r["acc"] for r in mr]), len(mr)), "targets": cells,
                                   "average": mean(c[0] for c in cells.values()) if complete else None}
            out[(src, k)] = {"targets": labels, "methods": methods}
    return out


def render_transfer(tables: dict[tuple[str, Any], dict[str, Any]], protocol: str) -> dict[str, str]:
    """Markdown (one table per source × shots: methods × [source, targets…, average]) and CSVs."""
    stem = protocol.replace("-", "_")
    md = [f"# {protocol}\n", "Accuracy (%): mean ± std over seeds. Source: the dataset the prompts were trained "
          "on (all classes); targets: evaluated with the same prompts on their own class names; "
          "average: mean over the targets (empty when a target is missing).\n"]
    long_rows: list[list[Any]] = []
    cmp_rows: list[list[Any]] = []
    for (src, k), t in tables.items():
        header = ["method", f"{src} (source)", *t["targets"], "average"]
        body = []
        for method, m in t["methods"].items():
            row = [method, _pm(*m["source"])]
            long_rows.append([method, src, _kname(k), src, "source", f"{m['source'][0]:.4f}",
                              _std(m["source"][1], m["source"][2]), m["source"][2]])
            for lab in t["targets"]:
                c = m["targets"].get(lab)
                row.append(_pm(*c) if c else "")
                if c:
                    long_rows.append([method, src, _kname(k), lab, "target", f"{c[0]:.4f}", _std(c[1], c[2]), c[2]])
            avg = m["average"]
            row.append("" if avg is None else f"{avg:.2f}")
            if avg is not None:
                long_rows.append([method, src, _kname(k), "average", "average", f"{avg:.4f}", "", ""])
            body.append(row)
            cmp_rows.append([method, src, _kname(k), f"{m['source'][0]:.4f}", "" if avg is None else f"{avg:.4f}"])
        md += [f"## source {src}, {_shots_title(k)}\n", _md(header, body)]
    return {
        f"{stem}.md": "\n".join(md),
        f"{stem}.csv": _csv(["method", "source", "shots", "dataset", "role", "acc", "acc_std", "seeds"], long_rows),
        f"{stem}_compare.csv": _csv(["method", "source", "shots", "source_acc", "target_avg"], cmp_rows),
    }
