"""Reports: tables equal hand-computed means on a fixture of results.json files; plots open as images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import vlprompt.report as report
from vlprompt.report import collect, report_main, write_report

# (method, dataset, seed) -> (base_acc, new_acc)
B2N = {
    ("coop", "dtd", 1): (80, 60), ("coop", "dtd", 2): (82, 62), ("coop", "dtd", 3): (84, 58),
    ("coop", "eurosat", 1): (90, 50), ("coop", "eurosat", 2): (94, 70),
    ("coop+dept", "dtd", 1): (82, 61), ("coop+dept", "dtd", 2): (84, 63), ("coop+dept", "dtd", 3): (86, 59),
    ("coop+dept", "eurosat", 1): (92, 55), ("coop+dept", "eurosat", 2): (96, 65),
}
# (method, dataset, shots, seed) -> acc
FEW = {
    ("coop", "dtd", 1, 1): 40, ("coop", "dtd", 1, 2): 44, ("coop", "dtd", 2, 1): 50,
    ("coop", "eurosat", 1, 1): 60, ("coop", "eurosat", 1, 2): 62, ("coop", "eurosat", 2, 1): 70,
    ("coop+dept", "dtd", 2, 1): 55, ("coop+dept", "eurosat", 2, 1): 68,
}


def _write(path: Path, res: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(res))


@pytest.fixture()
def runs(tmp_path):
    root = tmp_path / "runs"
    for (m, ds, seed), (b, n) in B2N.items():
        h = 2 * b * n / (b + n)
        res = {"method": m, "dataset": ds, "protocol": "base2new", "shots": 16, "seed": seed, "acc": b,
               "base_acc": b, "new_acc": n, "hm": h}
        if ds == "dtd":  # sweep runs carry their id and dataset label; the others are plain run directories
            rid = f"base2new/{m}/dtd/shots16/seed{seed}-abcd1234"
            res["sweep"] = {"id": rid, "dataset": "dtd", "protocol": "base2new"}
            _write(root / rid, res)
        else:
            _write(root / "b2n" / m / ds / f"seed{seed}", res)
    for (m, ds, k, seed), acc in FEW.items():
        _write(root / "fs" / m / ds / f"shots{k}" / f"seed{seed}",
               {"method": m, "dataset": ds, "protocol": "few-shot", "shots": k, "seed": seed, "acc": acc,
                "base_acc": None, "new_acc": None, "hm": None})
    _write(root / "unfinished", {"method": "coop", "dataset": "dtd"})  # no acc: ignored
    (root / "broken").mkdir()
    (root / "broken" / "results.json").write_text("{not json")
    return root


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_collect(runs):
    rows = collect(runs)
    assert len(rows) == len(B2N) + len(FEW)
    assert {r["protocol"] for r in rows} == {"base2new", "few-shot"}
    assert {r["method"] for r in rows} == {"coop", "coop+dept"}


def test_tables_match_hand_computed_means(runs, tmp_path):
    res = write_report(runs, tmp_path / "rep")
    assert res["runs"] == 18 and res["note"] is None
    rep = tmp_path / "rep"
    rows = {(r["method"], r["dataset"]): r for r in _csv(rep / "base2new.csv")}
    # coop dtd: B 80/82/84 -> 82 ± 2, N 60/62/58 -> 60 ± 2, H = HM(82, 60)
    r = rows[("coop", "dtd")]
    assert float(r["base"]) == pytest.approx(82) and float(r["base_std"]) == pytest.approx(2, abs=1e-4)
    assert float(r["new"]) == pytest.approx(60) and float(r["new_std"]) == pytest.approx(2, abs=1e-4)
    assert float(r["hm"]) == pytest.approx(69.2958, abs=1e-4) and r["seeds"] == "3"
    # coop eurosat: B 90/94 -> 92 ± 2.8284, N 50/70 -> 60 ± 14.1421, H = HM(92, 60) = 72.6316
    r = rows[("coop", "eurosat")]
    assert (float(r["base"]), float(r["new"])) == (pytest.approx(92), pytest.approx(60))
    assert float(r["base_std"]) == pytest.approx(2.8284, abs=1e-4)
    assert float(r["new_std"]) == pytest.approx(14.1421, abs=1e-4)
    assert float(r["hm"]) == pytest.approx(72.6316, abs=1e-4)
    # average row: mean of dataset means (87, 60), H of those = 71.0204 (not the mean of the H's)
    r = rows[("coop", "average")]
    assert (float(r["base"]), float(r["new"])) == (pytest.approx(87), pytest.approx(60))
    assert float(r["hm"]) == pytest.approx(71.0204, abs=1e-4)
    r = rows[("coop+dept", "average")]  # B (84 + 94) / 2 = 89, N (61 + 60) / 2 = 60.5, H = 72.0334
    assert (float(r["base"]), float(r["new"])) == (pytest.approx(89), pytest.approx(60.5))
    assert float(r["hm"]) == pytest.approx(72.0334, abs=1e-4)
    # side by side
    cmp = {r["dataset"]: r for r in _csv(rep / "base2new_compare.csv")}
    assert float(cmp["average"]["coop H"]) == pytest.approx(71.02, abs=0.005)
    assert float(cmp["dtd"]["coop+dept B"]) == pytest.approx(84)
    md = (rep / "base2new.md").read_text()
    assert "| dtd | 82.00 ± 2.00 | 60.00 ± 2.00 |" in md and "| **average** | 87.00 | 60.00 | 71.02 |" in md
    # few-shot: dtd 1-shot 40/44 -> 42 ± 2.8284; averages over datasets 1-shot (42 + 61)/2, 2-shot (50 + 70)/2
    fs = {(r["method"], r["dataset"], r["shots"]): r for r in _csv(rep / "few_shot.csv")}
    assert float(fs[("coop", "dtd", "1")]["acc"]) == pytest.approx(42)
    assert float(fs[("coop", "dtd", "1")]["acc_std"]) == pytest.approx(2.8284, abs=1e-4)
    assert float(fs[("coop", "average", "1")]["acc"]) == pytest.approx(51.5)
    assert float(fs[("coop", "average", "2")]["acc"]) == pytest.approx(60)
    assert float(fs[("coop+dept", "average", "2")]["acc"]) == pytest.approx(61.5)
    cmp = {r["method"]: r for r in _csv(rep / "few_shot_compare.csv")}
    assert cmp["coop"] == {"method": "coop", "1-shot": "51.50", "2-shot": "60.00"}
    assert cmp["coop+dept"]["1-shot"] == ""
    readme = (rep / "README.md").read_text()
    assert "18 runs" in readme and "![plugin_deltas](plugin_deltas.png)" in readme


def test_plots_open_as_images(runs, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    write_report(runs, tmp_path / "rep")
    for name in ("base2new_bars.png", "few_shot_curves.png", "plugin_deltas.png"):
        with Image.open(tmp_path / "rep" / name) as im:
            im.verify()
        with Image.open(tmp_path / "rep" / name) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_without_matplotlib_tables_only(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "have_matplotlib", lambda: False)
    assert report_main([str(runs), "--out", str(tmp_path / "rep")]) == 0
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert (tmp_path / "rep" / "base2new.csv").exists() and not list((tmp_path / "rep").glob("*.png"))
    assert "matplotlib is not installed" in (tmp_path / "rep" / "README.md").read_text()


def test_report_cli_errors_and_empty(tmp_path, capsys):
    assert report_main([str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert report_main([str(tmp_path / "empty"), "--no-plots"]) == 0
    assert "no results.json" in capsys.readouterr().err


def test_plugin_effect_lines_compare_each_method_with_its_plugin_variant():
    from vlprompt.report.tables import plugin_effect_lines

    def t(b, n, h):
        return {"rows": [], "average": {"base": b, "new": n, "hm": h}}

    tables = {("coop", 16): t(80.0, 40.0, 53.33), ("coop+dept", 16): t(90.0, 45.0, 60.0),
              ("cocoop", 16): t(70.0, 50.0, 58.33), ("zeroshot", 16): t(35.0, 46.0, 39.75)}
    lines = plugin_effect_lines(tables, ("coop", "cocoop", "kgcoop"))
    assert lines[0] == "| method | B | N | H | +DePT B | +DePT N | +DePT H | ΔH |"
    # cocoop has no +dept run and kgcoop none at all: both left out; the reference row comes last
    assert lines[2:] == ["| coop | 80.00 | 40.00 | 53.33 | 90.00 | 45.00 | 60.00 | +6.67 |",
                         "| zeroshot (reference) | 35.00 | 46.00 | 39.75 | | | | |"]
    assert plugin_effect_lines(tables, ("coop",), reference=None)[-1].startswith("| coop |")
