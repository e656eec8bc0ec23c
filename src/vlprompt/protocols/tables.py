"""Protocol summaries: per-dataset means over seeds and the papers' average row, as JSON and markdown."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Any

from ..engine.run import atomic_write
from ..engine.train import hm


def summarize_base2new(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows ``{dataset, seed, base_acc, new_acc}`` → per-dataset B/N/H and the average row.

    Per dataset, B and N are means over seeds and H = HM(B, N); the average row is the mean
    of the datasets' B and N with H = HM(avg B, avg N), as DePT's result parser and the papers do.
    """
    by_ds: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_ds.setdefault(r["dataset"], []).append(r)
    table = []
    for ds, rs in by_ds.items():
        b, n = mean(r["base_acc"] for r in rs), mean(r["new_acc"] for r in rs)
        table.append({"dataset": ds, "base_acc": b, "new_acc": n, "hm": hm(b, n), "seeds": [r["seed"] for r in rs]})
    avg_b = mean(r["base_acc"] for r in table)
    avg_n = mean(r["new_acc"] for r in table)
    return {"rows": table, "average": {"base_acc": avg_b, "new_acc": avg_n, "hm": hm(avg_b, avg_n)}}


def summarize_acc(rows: list[dict[str, Any]], key: str = "dataset") -> dict[str, Any]:
    """Rows ``{<key>, seed, acc}`` → mean accuracy per ``key`` and their mean."""
    groups: dict[Any, list[float]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r["acc"])
    table = [{key: k, "acc": mean(v), "seeds": len(v)} for k, v in groups.items()]
    return {"rows": table, "average": {"acc": mean(r["acc"] for r in table)}}


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def markdown_table(summary: dict[str, Any], columns: list[str], first: str) -> str:
    """A markdown table of ``summary["rows"]`` plus its average row."""
    lines = ["| " + " | ".join([first, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for r in summary["rows"]:
        lines.append("| " + " | ".join([str(r[first])] + [_fmt(r[c]) for c in columns]) + " |")
    avg = summary["average"]
    lines.append("| **average** | " + " | ".join(_fmt(avg.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out: str | Path, name: str, summary: dict[str, Any], markdown: str) -> None:
    out = Path(out)
    atomic_write(out / f"{name}.json", json.dumps(summary, indent=2) + "\n")
    atomic_write(out / f"{name}.md", markdown)
