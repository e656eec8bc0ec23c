"""PNG plots with matplotlib (Agg backend): B/N/H bars, few-shot curves, plug-in deltas."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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


def _plugin_pairs(methods: list[str]) -> list[tuple[str, str]]:
    """``(X+plugin, X)`` for every plug-in method whose base method is also present."""
    return [(m, m.split("+")[0]) for m in methods if "+" in m and m.split("+")[0] in methods]


def plot_base2new_bars(b2n: dict[tuple[str, Any], dict[str, Any]], path: Path) -> Path:
    """Grouped bars of the average B, N and H per method."""
    plt = _pyplot()
    keys = list(b2n)
    labels = [m if sum(1 for mm, _ in keys if mm == m) == 1 else f"{m}@{k}" for m, k in keys]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(keys) + 2), 3.5))
    width = 0.27
    for i, (metric, name) in enumerate((("base", "Base"), ("new", "New"), ("hm", "H"))):
        xs = [j + (i - 1) * width for j in range(len(keys))]
        vals = [b2n[k]["average"][metric] for k in keys]
        bars = ax.bar(xs, vals, width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(keys)), labels, rotation=20 if len(keys) > 4 else 0)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Base-to-new: average over datasets")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_few_shot_curves(fs: dict[str, dict[str, Any]], path: Path) -> Path:
    """Average accuracy over datasets vs shots, one line per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, t in fs.items():
        ks = [k for k in t["shots"] if k is not None]
        ax.plot(ks, [t["average"][k] for k in ks], marker="o", label=method)
    ax.set_xscale("log", base=2)
    all_k = sorted({k for t in fs.values() for k in t["shots"] if k is not None})
    if all_k:
        ax.set_xticks(all_k, [str(k) for k in all_k])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Few-shot: average over datasets")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_plugin_deltas(b2n: dict[tuple[str, Any], dict[str, Any]], fs: dict[str, dict[str, Any]],
                       path: Path) -> Path | None:
    """Per-dataset deltas of each plug-in ``X+p`` vs its base ``X``: H (base-to-new) and accuracy at the
    largest common shots (few-shot). Returns None when no pair exists."""
    panels: list[tuple[str, list[str], list[float]]] = []
    b2n_methods = {m: k for m, k in b2n}
    for plug, base in _plugin_pairs(list(b2n_methods)):
        tp, tb = b2n[(plug, b2n_methods[plug])], b2n[(base, b2n_methods[base])]
        hb = {r["dataset"]: r["hm"] for r in tb["rows"]}
        ds = [r["dataset"] for r in tp["rows"] if r["dataset"] in hb]
        panels.append((f"{plug} − {base}: H (base-to-new)", ds + ["average"],
                       [r["hm"] - hb[r["dataset"]] for r in tp["rows"] if r["dataset"] in hb]
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
                                                      2.8 * len(panels)), squeeze=False)
    for ax, (title, names, deltas) in zip(axes[:, 0], panels, strict=True):
        colors = ["tab:green" if d >= 0 else "tab:red" for d in deltas]
        bars = ax.bar(range(len(names)), deltas, color=colors)
        ax.bar_label(bars, fmt="%+.1f", fontsize=7)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 5 else 0)
        ax.set_ylabel("Δ (points)")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
