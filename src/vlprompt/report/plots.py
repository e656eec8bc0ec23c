"""PNG plots with matplotlib (Agg backend): B/N/H bars, few-shot and data-ratio curves, plug-in deltas.

Rules every plot keeps: a missing value is never drawn (no 0-height bar) and is labelled ``n/a`` where its bar
would be; error bars are mean ± std over seeds (drawn only with two or more seeds, and the legend or title
says so); legends sit outside the data; bar axes start at 0; a curve axis that does not start at 0 says so
in its label. The ``*_figure`` functions build the figure (tests read its artists); the ``plot_*`` functions
save it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: what the label of a missing value says
MISSING = "n/a"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    fig.savefig(path, dpi=100, bbox_inches="tight")  # tight: keeps the legend placed outside the axes
    plt.close(fig)
    return path


def _plugin_pairs(methods: list[str]) -> list[tuple[str, str]]:
    """``(X+plugin, X)`` for every plug-in method whose base method is also present."""
    return [(m, m.split("+")[0]) for m in methods if "+" in m and m.split("+")[0] in methods]


def _label(method: str, k: Any, keys: list[tuple[str, Any]]) -> str:
    if sum(1 for mm, _ in keys if mm == method) == 1:
        return method
    return f"{method} ({'all' if k is None else k}-shot)"


def _zoom_note(ax: Any, what: str) -> None:
    """Say on the y label where the axis starts when it is not 0 (a zoomed axis magnifies gaps)."""
    lo = ax.get_ylim()[0]
    if lo > 0:
        ax.set_ylabel(f"{what}\n(zoomed: axis starts at {lo:.0f}, not 0)")
    else:
        ax.set_ylabel(what)


def _seeds_note(table: dict[str, Any]) -> str:
    """``"\\n(3 seeds)"`` from the per-dataset rows' seed counts ('' without rows)."""
    counts = sorted({r["seeds"] for r in table.get("rows") or []})
    if not counts:
        return ""
    n = "–".join(str(c) for c in (counts[0], counts[-1]) if c is not None) if len(counts) > 1 else str(counts[0])
    return f"\n({n} seed{'' if n == '1' else 's'})"


def base2new_bars_figure(b2n: dict[tuple[str, Any], dict[str, Any]]) -> Any:
    """Grouped bars of the average B, N and H per method, with ± std over seeds where there are several.

    ``b2n[(method, shots)]["average"]`` holds ``base``, ``new``, ``hm`` (``None``: not available, e.g. the
    linear probe's N and H) and optionally ``std`` (``{"base": (std, n_seeds) | None, ...}``).
    """
    plt = _pyplot()
    keys = list(b2n)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(keys) + 2.5), 3.8))
    width = 0.27
    n_seeds: dict[tuple[str, Any], int] = {}
    top = 0.0
    for i, (metric, name) in enumerate((("base", "Base"), ("new", "New"), ("hm", "H"))):
        xs, vals, err_x, err_v, err_s, missing = [], [], [], [], [], []
        for j, key in enumerate(keys):
            avg = b2n[key]["average"]
            x = j + (i - 1) * width
            v = avg.get(metric)
            if v is None:
                missing.append(x)
                continue
            xs.append(x)
            vals.append(v)
            spread = (avg.get("std") or {}).get(metric)
            if spread:
                err_x.append(x)
                err_v.append(v)
                err_s.append(spread[0])
                n_seeds[key] = spread[1]
            top = max(top, v + (spread[0] if spread else 0.0))
        color = f"C{i}"
        if xs:
            bars = ax.bar(xs, vals, width, label=name, color=color)
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=3)
        if err_x:  # only where there are several seeds: a std of one value is no error bar
            ax.errorbar(err_x, err_v, yerr=err_s, fmt="none", ecolor="black", elinewidth=1, capsize=3)
        for x in missing:
            ax.text(x, 1.0, MISSING, ha="center", va="bottom", fontsize=8, color=color, fontweight="bold")
    labels = [_label(m, k, keys) + _seeds_note(b2n[(m, k)]) for m, k in keys]
    ax.set_xticks(range(len(keys)), labels, rotation=20 if len(keys) > 4 else 0,
                  ha="right" if len(keys) > 4 else "center", fontsize=8)
    ax.set_ylim(0, max(10.0, top * 1.12))
    ax.set_ylabel("accuracy (%)")
    title = "Base-to-new: average over datasets"
    title += "\nerror bars: ± std over seeds" if n_seeds else "\n(one seed: no error bars)"
    ax.set_title(title, fontsize=10)
    handles, names = ax.get_legend_handles_labels()
    if any(v is None for key in keys for v in (b2n[key]["average"].get(m) for m in ("base", "new", "hm"))):
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], linestyle="none"))
        names.append(f"{MISSING}: not available")
    ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8)
    fig.tight_layout()
    return fig


def plot_base2new_bars(b2n: dict[tuple[str, Any], dict[str, Any]], path: Path) -> Path:
    """:func:`base2new_bars_figure` saved to ``path``."""
    return _save(base2new_bars_figure(b2n), path)


def curves_figure(tables: dict[str, dict[str, Any]], key: str = "shots", title: str = "Few-shot: average over datasets",
                  xlabel: str = "shots per class", log2: bool = True, tick: Any = str) -> Any:
    """Average accuracy over datasets vs ``key`` (``shots`` or ``ratios``), one line per method, ± std over seeds
    as error bars where a point has two or more seeds. A method with a single point at 0 shots (zero-shot:
    no training images) is a dashed horizontal line. Missing points are left out (the line joins the
    present ones, each marked)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    xs_all: set[Any] = set()
    seeds: set[int] = set()
    flat: list[tuple[str, float]] = []
    for i, (method, t) in enumerate(tables.items()):
        ks = [k for k in t[key] if k is not None and k != 0 and t["average"].get(k) is not None]
        if not ks:
            if t["average"].get(0) is not None:
                flat.append((method, t["average"][0]))
            continue
        xs_all.update(ks)
        spreads = [(t.get("average_std") or {}).get(k) for k in ks]
        seeds.update(s[1] for s in spreads if s)
        errs = [s[0] if s else 0.0 for s in spreads]
        counts = {c[2] for c in t.get("cells", {}).values()}
        n = f"{min(counts)}–{max(counts)}" if len(counts) > 1 else str(next(iter(counts), "?"))
        ax.errorbar(ks, [t["average"][k] for k in ks], yerr=errs if any(errs) else None, marker="o", capsize=3,
                    label=f"{method} ({n} seed{'' if n == '1' else 's'})", color=f"C{i % 10}")
    for j, (method, v) in enumerate(flat):
        ax.axhline(v, linestyle="--", linewidth=1.2, color=f"C{(len(tables) + j) % 10}",
                   label=f"{method} (no training: {v:.1f})")
    if log2:
        ax.set_xscale("log", base=2)
    if xs_all:
        ticks = sorted(xs_all)
        ax.set_xticks(ticks, [tick(k) for k in ticks])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    if seeds:
        title += f"\nerror bars: ± std over {'/'.join(str(s) for s in sorted(seeds))} seeds"
    else:
        title += "\n(one seed: no error bars)"
    ax.set_title(title, fontsize=10)
    _zoom_note(ax, "accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8)
    fig.tight_layout()
    return fig


def plot_few_shot_curves(fs: dict[str, dict[str, Any]], path: Path) -> Path:
    """Average accuracy over datasets vs shots (:func:`curves_figure`) saved to ``path``."""
    return _save(curves_figure(fs), path)


def plot_data_efficient_curves(de: dict[str, dict[str, Any]], path: Path) -> Path:
    """Average accuracy over datasets vs the kept fraction of the training set, saved to ``path``."""
    from .data_efficient import ratio_label

    return _save(curves_figure(de, key="ratios", title="Data-efficient: average over datasets",
                               xlabel="fraction of the training set", log2=False, tick=ratio_label), path)


def plugin_deltas_figure(b2n: dict[tuple[str, Any], dict[str, Any]], fs: dict[str, dict[str, Any]]) -> Any | None:
    """Per-dataset deltas of each plug-in ``X+p`` vs its base ``X``: H (base-to-new) and accuracy at the
    largest common shots (few-shot); None when no pair exists. Differences of the means over seeds."""
    panels: list[tuple[str, list[str], list[float]]] = []
    b2n_methods = list(dict.fromkeys(m for m, _ in b2n))
    for plug, base in _plugin_pairs(b2n_methods):
        common = [k for m, k in b2n if m == plug and (base, k) in b2n]
        if not common:
            continue
        k = max(common, key=lambda v: -1 if v is None else v)  # the largest shot count both have
        tp, tb = b2n[(plug, k)], b2n[(base, k)]
        hb = {r["dataset"]: r["hm"] for r in tb["rows"] if r["hm"] is not None}
        ds = [r["dataset"] for r in tp["rows"] if r["dataset"] in hb and r["hm"] is not None]
        if not ds or tp["average"]["hm"] is None or tb["average"]["hm"] is None:
            continue
        shots = "all" if k is None else k
        panels.append((f"{plug} − {base}: H (base-to-new, {shots} shots)", ds + ["average"],
                       [r["hm"] - hb[r["dataset"]] for r in tp["rows"] if r["dataset"] in ds]
                       + [tp["average"]["hm"] - tb["average"]["hm"]]))
    for plug, base in _plugin_pairs(list(fs)):
        common = [k for k in fs[plug]["shots"] if k in fs[base]["shots"]]
        if not common:
            continue
        k = common[-1]
        cells_p, cells_b = fs[plug]["cells"], fs[base]["cells"]
        ds = [d for d in fs[plug]["datasets"] if (d, k) in cells_p and (d, k) in cells_b]
        panels.append((f"{plug} − {base}: accuracy ({k} shots)", ds,
                       [cells_p[(d, k)][0] - cells_b[(d, k)][0] for d in ds]))
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(5.0, 0.7 * max(len(p[1]) for p in panels) + 2),
                                                      2.9 * len(panels)), squeeze=False)
    for ax, (title, names, deltas) in zip(axes[:, 0], panels, strict=True):
        colors = ["tab:green" if d >= 0 else "tab:red" for d in deltas]
        bars = ax.bar(range(len(names)), deltas, color=colors)
        ax.bar_label(bars, fmt="%+.1f", fontsize=7, padding=2)
        ax.axhline(0, color="black", linewidth=0.8)
        lo, hi = min(0.0, *deltas), max(0.0, *deltas)
        pad = max(0.5, 0.15 * (hi - lo))
        ax.set_ylim(lo - pad, hi + pad)  # bars grow from 0, which stays in view
        ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 5 else 0)
        ax.set_ylabel("Δ (points)")
        ax.set_title(title + " (difference of the means over seeds)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_plugin_deltas(b2n: dict[tuple[str, Any], dict[str, Any]], fs: dict[str, dict[str, Any]],
                       path: Path) -> Path | None:
    """:func:`plugin_deltas_figure` saved to ``path``; None when no pair exists."""
    fig = plugin_deltas_figure(b2n, fs)
    return None if fig is None else _save(fig, path)
