"""Reports over run directories: markdown + CSV tables (mean ± std over seeds) and PNG plots.

Example:
    >>> from vlprompt.report import write_report
    >>> write_report("runs/my_sweep")["files"]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..engine.run import atomic_write
from ..errors import VlpromptError
from .data_efficient import data_efficient_tables, render_data_efficient
from .plots import (
    have_matplotlib,
    plot_base2new_bars,
    plot_data_efficient_curves,
    plot_few_shot_curves,
    plot_plugin_deltas,
)
from .tables import (
    accuracy_tables,
    base2new_tables,
    collect,
    mean_std,
    multitask_base2new_task_tables,
    multitask_task_tables,
    render_accuracy,
    render_base2new,
    render_multitask_base2new_tasks,
    render_multitask_tasks,
    render_vtab,
    vtab_tables,
)
from .transfer import TRANSFER_PROTOCOLS, render_transfer, transfer_tables

__all__ = ["accuracy_tables", "base2new_tables", "collect", "data_efficient_tables", "mean_std",
           "multitask_task_tables", "report_main", "transfer_tables", "vtab_tables", "write_report"]


def write_report(root: str | Path, out: str | Path | None = None, plots: bool = True) -> dict[str, Any]:
    """Tally every ``results.json`` under ``root`` into ``out`` (default ``<root>/report``).

    Writes ``base2new.{md,csv}`` + ``base2new_compare.csv``, ``few_shot.{md,csv}`` +
    ``few_shot_compare.csv`` (and the same for any other accuracy protocol; ``multitask`` adds
    ``multitask_tasks.{md,csv}``, multi-task base-to-new ``multitask_base2new_tasks.{md,csv}``),
    ``cross_dataset.{md,csv}`` / ``domain_gen.{md,csv}`` (+ ``_compare.csv``: methods × source, targets,
    average), ``data_efficient.{md,csv}`` + ``data_efficient_compare.csv`` (datasets × data ratios),
    ``vtab.{md,csv}`` + ``vtab_compare.csv``, ``README.md`` (all tables),
    and with matplotlib ``base2new_bars.png``, ``few_shot_curves.png``, ``data_efficient_curves.png``,
    ``plugin_deltas.png`` (see :mod:`vlprompt.report.plots` for what they show).

    Returns:
        ``{"runs": n, "files": [paths], "note": str | None}``.
    """
    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    rows = collect(root)
    files: dict[str, str] = {}
    b2n = base2new_tables(rows)
    if b2n:
        files.update(render_base2new(b2n))
        mt_b2n = multitask_base2new_task_tables(rows)
        if mt_b2n:
            files.update(render_multitask_base2new_tasks(mt_b2n))
    acc: dict[str, dict[str, Any]] = {}
    for protocol in TRANSFER_PROTOCOLS:
        xd = transfer_tables(rows, protocol)
        if xd:
            files.update(render_transfer(xd, protocol))
    de = data_efficient_tables(rows)
    if de:
        files.update(render_data_efficient(de))
    for protocol in sorted({r["protocol"] for r in rows} - {"base2new", "vtab", "data-efficient", *TRANSFER_PROTOCOLS}):
        acc[protocol] = accuracy_tables(rows, protocol)
        files.update(render_accuracy(acc[protocol], protocol))
        if protocol == "multitask":
            per_task = multitask_task_tables(rows)
            if per_task:
                files.update(render_multitask_tasks(per_task))
    vt = vtab_tables(rows)
    if vt:
        files.update(render_vtab(vt))
    note = None
    if not rows:
        note = f"no results.json with 'acc' found under {root}"
    md_parts = [v for k, v in files.items() if k.endswith(".md")]
    written = []
    for name, text in files.items():
        atomic_write(out / name, text)
        written.append(out / name)
    pngs: list[Path] = []
    if plots and rows:
        if not have_matplotlib():
            note = "plots skipped: matplotlib is not installed (pip install 'vlprompt[report]')"
        else:
            out.mkdir(parents=True, exist_ok=True)
            if b2n:
                pngs.append(plot_base2new_bars(b2n, out / "base2new_bars.png"))
            if acc.get("few-shot"):
                pngs.append(plot_few_shot_curves(acc["few-shot"], out / "few_shot_curves.png"))
            if de:
                pngs.append(plot_data_efficient_curves(de, out / "data_efficient_curves.png"))
            p = plot_plugin_deltas(b2n, acc.get("few-shot", {}), out / "plugin_deltas.png")
            if p is not None:
                pngs.append(p)
    summary = [f"# Report: {root}\n", f"{len(rows)} runs.\n"]
    if note:
        summary.append(f"> {note}\n")
    summary += [f"![{p.stem}]({p.name})\n" for p in pngs]
    atomic_write(out / "README.md", "\n".join(summary + md_parts))
    return {"runs": len(rows), "files": [str(p) for p in [out / "README.md", *written, *pngs]], "note": note}


def build_report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlprompt report",
                                description="Tables (markdown, CSV) and plots (PNG) from the results.json under DIR.")
    p.add_argument("dir", help="folder searched recursively for results.json (e.g. a sweep's out)")
    p.add_argument("--out", help="output folder (default: DIR/report)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    return p


def report_main(argv: list[str] | None = None) -> int:
    """``vlprompt report DIR [--out OUT] [--no-plots]``; exit 0, or 2 on a user error."""
    args = build_report_parser().parse_args(argv)
    try:
        res = write_report(args.dir, args.out, plots=not args.no_plots)
    except VlpromptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if res["note"]:
        print(f"note: {res['note']}", file=sys.stderr)
    print(f"{res['runs']} runs -> " + ", ".join(res["files"]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(report_main())
