"""`vlprompt report` for every protocol, on fabricated run folders (tests/report_fixtures.py): the papers' layouts,
no "± 0.00" for one seed, zero-shot listed once; the plots' data read from the matplotlib objects."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from report_fixtures import DATASETS, SEEDS, SHIFTS, SHOTS, TARGETS, base, fabricate, few, new
from vlprompt.report import base2new_tables, collect, write_report
from vlprompt.report.tables import accuracy_tables


@pytest.fixture(scope="module")
def rep(tmp_path_factory):
    root = fabricate(tmp_path_factory.mktemp("fab") / "runs")
    res = write_report(root, root.parent / "rep", plots=False)
    return root, root.parent / "rep", res


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _mean(v):
    return sum(v) / len(v)


def test_every_protocol_has_its_tables(rep):
    _, out, res = rep
    names = {Path(f).name for f in res["files"]}
    for stem in ("base2new", "few_shot", "cross_dataset", "domain_gen", "data_efficient"):
        assert {f"{stem}.md", f"{stem}.csv", f"{stem}_compare.csv"} <= names, stem
    readme = (out / "README.md").read_text()
    for title in ("# Base-to-new", "# few-shot accuracy", "# cross-dataset", "# domain-gen", "# data-efficient"):
        assert title in readme


def test_no_pm_zero_for_one_seed(rep):
    _, out, _ = rep
    for md in out.glob("*.md"):
        assert "± 0.00" not in md.read_text(), md.name
    b2n = (out / "base2new.md").read_text()
    lp = base("linear-probe", "dtd", 16, 1)
    assert f"| dtd | {lp:.2f} | n/a | n/a | 1 |" in b2n  # one seed: the value alone; no new-class weights: n/a
    assert "| dtd | 78.00 ± 1.00 |" in b2n  # coop, 3 seeds: mean ± std
    rows = {(r["method"], r["dataset"]): r for r in _csv(out / "base2new.csv")}
    assert rows[("linear-probe", "dtd")]["base_std"] == "" and rows[("linear-probe", "dtd")]["new"] == ""
    assert float(rows[("coop", "dtd")]["base_std"]) == pytest.approx(1.0)


def test_zeroshot_listed_once_not_once_per_shot_count(rep):
    root, out, _ = rep
    # the fixture holds zero-shot base-to-new runs at 1 and 16 shots (3 seeds each) and few-shot runs at 5 Ks
    rows = [r for r in collect(root) if r["method"] == "zeroshot" and r["protocol"] == "base2new"]
    assert len(rows) == len(DATASETS) * len(SEEDS) and {r["shots"] for r in rows} == {0}
    b2n = (out / "base2new.md").read_text()
    assert b2n.count("## zeroshot") == 1 and "## zeroshot (zero-shot: no training images)" in b2n
    zs = [r for r in _csv(out / "base2new.csv") if r["method"] == "zeroshot"]
    assert {r["shots"] for r in zs} == {"0"} and {r["seeds"] for r in zs if r["dataset"] != "average"} == {"3"}
    cmp_header = (out / "base2new_compare.csv").read_text().splitlines()[0]
    assert cmp_header.startswith("dataset,zeroshot B,zeroshot N,zeroshot H,")  # first, as the papers' CLIP row
    assert "zeroshot@" not in cmp_header
    fs = {r["method"]: r for r in _csv(out / "few_shot_compare.csv")}
    assert list(fs) == ["zeroshot", "coop", "coop+dept", "linear-probe"]
    assert fs["zeroshot"] == {"method": "zeroshot", "0-shot": "50.00", **{f"{k}-shot": "" for k in SHOTS}}
    assert fs["coop"]["0-shot"] == ""
    assert fs["coop"]["16-shot"] == f"{_mean([few('coop', d, 16, s) for d in DATASETS for s in SEEDS]):.2f}"


def test_cross_dataset_layout_source_targets_average(rep):
    _, out, _ = rep
    md = (out / "cross_dataset.md").read_text()
    assert "## source imagenet, 16 shots" in md
    assert f"| method | imagenet (source) | {' | '.join(TARGETS)} | average |" in md
    lines = [line for line in md.splitlines() if line.startswith("| ") and "method" not in line]
    assert [line.split(" | ")[0] for line in lines] == ["| zeroshot", "| coop", "| kgcoop"]
    # coop, seeds 1 and 2: source 70 + seed, target i: 40 + 5 i + seed + 3
    coop = [(40.0 + 5 * i + 3 + 1.5) for i in range(len(TARGETS))]
    assert lines[1] == ("| coop | 71.50 ± 0.71 | " + " | ".join(f"{v:.2f} ± 0.71" for v in coop)
                        + f" | {_mean(coop):.2f} |")
    # kgcoop: a `vlprompt cross-dataset` protocol run, one seed: values alone
    kg = [41.0 + 5 * i for i in range(len(TARGETS))]
    assert lines[2] == "| kgcoop | 72.00 | " + " | ".join(f"{v:.2f}" for v in kg) + f" | {_mean(kg):.2f} |"
    cmp = {r["method"]: r for r in _csv(out / "cross_dataset_compare.csv")}
    assert float(cmp["coop"]["target_avg"]) == pytest.approx(_mean(coop))


def test_domain_gen_layout(rep):
    _, out, _ = rep
    md = (out / "domain_gen.md").read_text()
    assert f"| method | imagenet (source) | {' | '.join(SHIFTS)} | average |" in md
    assert "| coop | 71.00 | 60.00 | 50.00 | 55.00 |" in md


def test_data_efficient_one_column_per_ratio(rep):
    root, out, _ = rep
    assert {r["protocol"] for r in collect(root) if r["method"] == "dapt"} == {"data-efficient"}
    md = (out / "data_efficient.md").read_text()
    assert "all-shot" not in md and "| dataset | 10% | 40% | 100% |" in md
    # uniform, 3 seeds: 50 + 30 r + 10 i + seed -> mean at seed 2, std 1; herding: one seed (+3)
    assert "## dapt (uniform)\n\n| dataset | 10% | 40% | 100% |\n|---|---|---|---|\n| dtd | 55.00 ± 1.00 |" in md
    assert ("## dapt (herding)\n\n| dataset | 10% | 40% | 100% |\n|---|---|---|---|\n"
            "| dtd | 57.00 | 66.00 | 84.00 |") in md
    cmp = {r["method"]: r for r in _csv(out / "data_efficient_compare.csv")}
    assert cmp["dapt (uniform)"] == {"method": "dapt (uniform)", "10%": "60.00", "40%": "69.00", "100%": "87.00"}
    long = {(r["method"], r["selection"], r["dataset"], r["ratio"]): r for r in _csv(out / "data_efficient.csv")}
    assert long[("dapt", "herding", "eurosat", "0.4")]["acc"] == "76.0000"
    assert long[("dapt", "herding", "eurosat", "0.4")]["acc_std"] == ""


def test_old_data_efficient_runs_are_not_merged_into_an_all_shot_column(tmp_path):
    """Before: runs of `vlprompt data-efficient` (results 'protocol: full', shots None) were one 'all-shot'
    column of a 'full' table, every ratio averaged together."""
    from report_fixtures import write_run

    for ratio, acc in ((0.1, 50.0), (0.5, 70.0)):
        write_run(tmp_path / "runs" / f"uniform_{ratio:g}",
                  {"method": "coop", "dataset": "dtd", "protocol": "full", "shots": None, "seed": 1, "acc": acc,
                   "selection": "uniform", "data_ratio": ratio})
    res = write_report(tmp_path / "runs", tmp_path / "rep", plots=False)
    assert not any(Path(f).name.startswith("full") for f in res["files"])
    assert "| dtd | 50.00 | 70.00 |" in (tmp_path / "rep" / "data_efficient.md").read_text()


# ----------------------------------------------------------------------------- plots: the data behind them
def _fig_tables(root):
    rows = collect(root)
    return base2new_tables(rows), accuracy_tables(rows, "few-shot")


def test_base2new_bars_missing_values_absent_and_labelled(rep):
    pytest.importorskip("matplotlib")
    from matplotlib.container import BarContainer

    from vlprompt.report.plots import MISSING, base2new_bars_figure

    b2n, _ = _fig_tables(rep[0])
    keys = list(b2n)
    lp = keys.index(("linear-probe", 16))
    fig = base2new_bars_figure(b2n)
    ax = fig.axes[0]
    bars = {c.get_label(): c for c in ax.containers if isinstance(c, BarContainer)}
    assert set(bars) == {"Base", "New", "H"}
    assert len(bars["Base"]) == len(keys) and len(bars["New"]) == len(bars["H"]) == len(keys) - 1
    for name, offset in (("New", 0), ("H", 1)):
        xs = [p.get_x() + p.get_width() / 2 for p in bars[name]]
        x_missing = lp + offset * 0.27
        assert all(abs(x - x_missing) > 0.1 for x in xs)  # no bar (of any height, 0 included) for a missing value
        assert any(t.get_text() == MISSING and abs(t.get_position()[0] - x_missing) < 1e-9 for t in ax.texts)
    assert all(p.get_height() > 0 for c in bars.values() for p in c)
    assert ax.get_ylim()[0] == 0  # bars start at 0
    heights = {(k, m): None for k in keys for m in ("base",)}
    for j, p in enumerate(bars["Base"]):
        heights[(keys[j], "base")] = p.get_height()
    assert heights[(("coop", 16), "base")] == pytest.approx(_mean([base("coop", d, 16, 2) for d in DATASETS]))


def test_base2new_bars_error_bars_are_std_over_seeds(rep):
    pytest.importorskip("matplotlib")
    from matplotlib.container import ErrorbarContainer

    from vlprompt.report.plots import base2new_bars_figure

    b2n, _ = _fig_tables(rep[0])
    keys = list(b2n)
    fig = base2new_bars_figure(b2n)
    ax = fig.axes[0]
    errs = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(errs) == 3  # B, N, H
    base_err = errs[0]
    segs = base_err.lines[2][0].get_segments()
    xs = [s[0][0] for s in segs]
    lp = keys.index(("linear-probe", 16))
    assert all(abs(x - (lp - 0.27)) > 0.1 for x in xs)  # one seed: no error bar
    assert len(segs) == len(keys) - 1
    coop = keys.index(("coop", 16))
    seg = next(s for s in segs if abs(s[0][0] - (coop - 0.27)) < 1e-9)
    # coop's per-seed average B over the datasets: 60 + 5 + 16 + seed -> std over seeds 1, 2, 3 = 1
    assert (seg[1][1] - seg[0][1]) / 2 == pytest.approx(1.0)
    per_seed_h = []
    for s in SEEDS:
        b = _mean([base("coop", d, 16, s) for d in DATASETS])
        n = _mean([new("coop", d, 16, s) for d in DATASETS])
        per_seed_h.append(2 * b * n / (b + n))
    from statistics import stdev

    assert b2n[("coop", 16)]["average"]["std"]["hm"] == (pytest.approx(stdev(per_seed_h)), 3)


def _legend_outside(fig) -> bool:
    fig.canvas.draw()
    ax = fig.axes[0]
    leg = ax.get_legend()
    return leg.get_window_extent().x0 >= ax.get_window_extent().x1


def test_legends_sit_outside_the_data(rep):
    pytest.importorskip("matplotlib")
    from vlprompt.report.plots import base2new_bars_figure, curves_figure

    b2n, fs = _fig_tables(rep[0])
    assert _legend_outside(base2new_bars_figure(b2n))
    assert _legend_outside(curves_figure(fs))


def test_few_shot_curves_error_bars_zoom_label_and_zero_shot_line(rep):
    pytest.importorskip("matplotlib")
    from matplotlib.container import ErrorbarContainer

    from vlprompt.report.plots import curves_figure

    _, fs = _fig_tables(rep[0])
    fig = curves_figure(fs)
    ax = fig.axes[0]
    errs = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
    assert set(errs) == {"coop (3 seeds)", "coop+dept (3 seeds)", "linear-probe (3 seeds)"}
    assert all(c.has_yerr for c in errs.values())
    line = errs["coop (3 seeds)"].lines[0]
    assert list(line.get_xdata()) == list(SHOTS)
    assert list(line.get_ydata()) == pytest.approx([_mean([few("coop", d, k, s) for d in DATASETS for s in SEEDS])
                                                     for k in SHOTS])
    flat = [ln for ln in ax.get_lines() if ln.get_label().startswith("zeroshot")]
    assert len(flat) == 1 and set(flat[0].get_ydata()) == {50.0}  # zero-shot: one horizontal line, no training
    lo = ax.get_ylim()[0]
    assert lo > 0 and f"axis starts at {lo:.0f}, not 0" in ax.get_ylabel()  # zoomed, and it says so


def test_plugin_deltas_keep_zero_in_view(rep):
    pytest.importorskip("matplotlib")
    from vlprompt.report.plots import plugin_deltas_figure

    b2n, fs = _fig_tables(rep[0])
    fig = plugin_deltas_figure(b2n, fs)
    for ax in fig.axes:
        lo, hi = ax.get_ylim()
        assert lo < 0 < hi
        assert all(p.get_y() == 0 for p in ax.patches)  # every bar grows from 0


def test_report_writes_every_plot(rep, tmp_path):
    pytest.importorskip("matplotlib")
    res = write_report(rep[0], tmp_path / "rep")
    pngs = {Path(f).name for f in res["files"] if f.endswith(".png")}
    assert pngs == {"base2new_bars.png", "few_shot_curves.png", "data_efficient_curves.png", "plugin_deltas.png"}
