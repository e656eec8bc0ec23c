"""Sweep protocols ``multitask`` (task groups, SoftCPT) and ``vtab`` (VTAB-1k grid + seeds per run), the
paper sweep files, and the report's multi-task and VTAB tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vlprompt.errors import ConfigError
from vlprompt.report import collect, write_report
from vlprompt.sweep import is_complete, load_sweep, parse_sweep, sweep_main
from vlprompt.sweep.spec import vtab_run_id

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


# ----------------------------------------------------------------------------- parsing (no training)
def test_multitask_and_vtab_expansion(tmp_path):
    mt = parse_sweep({
        "methods": ["softcpt-nata"], "protocol": "multitask", "shots": [1, 16], "seeds": [1, 2],
        "datasets": ["tiny-group/real", "a,b", {"name": "plant6.yaml", "label": "plant6"},
                     "fashion20/split_dk_Fashion20.json", "/abs/g.yml"],
        "data_root": "/data", "out": str(tmp_path),
    }).expand()
    assert len(mt) == 5 * 2 * 2
    by_label = {r.dataset_label: r.dataset for r in mt}
    assert by_label == {"tiny-group_real": "tiny-group/real", "a+b": "a,b", "plant6": "/data/plant6.yaml",
                        "split_dk_Fashion20": "/data/fashion20/split_dk_Fashion20.json", "g": "/abs/g.yml"}
    assert mt[0].id == "multitask/softcpt-nata/tiny-group_real/shots1/seed1"
    vt = parse_sweep({"methods": ["vpt-deep", "e2vpt"], "datasets": ["vtab/cifar", "vtab/dtd"], "protocol": "vtab",
                      "data_root": "/data", "out": str(tmp_path)}).expand()
    assert len(vt) == 4 and {r.seeds for r in vt} == {(42, 44, 82, 100, 800)}
    assert vt[0].id == "vtab/vpt-deep/vtab_cifar/seeds42+44+82+100+800" and vt[0].shots is None
    assert vt[0].lrs is None and vt[0].wds is None  # VPT's grid
    grid = parse_sweep({"methods": ["coop"], "datasets": ["vtab/dtd"], "protocol": "vtab", "seeds": [1],
                        "lrs": [1, 0.1], "wds": 0.0, "data_root": "/d"}).expand()[0]
    assert grid.lrs == (1.0, 0.1) and grid.wds == (0.0,) and grid.seeds == (1,)
    assert grid.id == vtab_run_id("coop", "vtab_dtd", [1], None, {}, {}, {"lrs": [1.0, 0.1], "wds": [0.0]})
    assert grid.id != vtab_run_id("coop", "vtab_dtd", [1]) and grid.id.startswith("vtab/coop/vtab_dtd/seeds1-")
    with pytest.raises(ConfigError, match="vtab only"):
        parse_sweep({"methods": ["coop"], "datasets": ["dtd"], "lrs": [1.0]})
    with pytest.raises(ConfigError, match="cannot share"):
        parse_sweep({"methods": ["coop"], "datasets": ["dtd"], "protocol": ["vtab", "few-shot"]})
    with pytest.raises(ConfigError, match="single datasets"):
        parse_sweep({"methods": ["coop-mt"], "datasets": ["eurosat", "a,b"], "protocol": "multitask"})
    with pytest.raises(ConfigError, match="shots"):
        parse_sweep({"methods": ["coop"], "datasets": ["vtab/dtd"], "protocol": "vtab", "shots": [16]})


@pytest.mark.parametrize("name,n", [("softcpt_groups", 9 * 3 * 5 * 3), ("e2vpt_vtab", 2 * 19),
                                    ("vit_baselines_vtab", 2 * 19),
                                    ("tiny_softcpt", 4 * 2 * 3 * 3), ("tiny_vtab", 2 * 3),
                                    ("dept_base2new", 9 * 11 * 3), ("tiny_base2new", 9 * 9 * 3),
                                    ("dept_cross_dataset", 8 * 3), ("dept_domain_gen", 8 * 3),
                                    ("tiny_domain_gen", 9 * 3), ("tiny_combinations", 10 * 5 * 3),
                                    ("tiny_combinations_paper", 13 * 5 * 3), ("real_combinations", 5 * 4 * 3)])
def test_paper_sweep_files_dry_run_without_data(name, n, tmp_path, capsys):
    fake = tmp_path / "no-data"
    argv = [str(SWEEPS / f"{name}.yaml"), "--dry-run", "--data-root", str(fake), "--out", str(tmp_path / "o")]
    assert sweep_main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == n and all(line.startswith("todo  ") for line in lines)
    assert not fake.exists() and not (tmp_path / "o").exists()  # nothing read or written


def test_paper_sweep_contents():
    mt = load_sweep(SWEEPS / "softcpt_groups.yaml", data_root="/data")
    runs = mt.expand()
    assert {r.dataset_label for r in runs} == {"general10", "plant6", "fashion20"}
    assert {r.dataset for r in runs} == {"general10", "plant6", "fashion20"}  # SoftCPT's groups by name
    from vlprompt.data.named_groups import GENERAL10

    general = [g[0] for g in GENERAL10]
    assert len(general) == 10 and "imagenet" not in general
    assert mt.backbone == "RN50" and mt.shots == [1, 2, 4, 8, 16] and mt.seeds == [1, 2, 3]
    plant = yaml.safe_load((SWEEPS / "groups" / "plant6.yaml").read_text())
    assert len(plant["tasks"]) == 6
    vt = load_sweep(SWEEPS / "e2vpt_vtab.yaml", data_root="/data")
    from vlprompt.data.vtab import VTAB_TASKS

    assert [d.name for d in vt.datasets] == [s.name for s in VTAB_TASKS]
    assert vt.backbone.startswith("timm:vit_base_patch16_224") and vt.seeds == [42, 44, 82, 100, 800]


# ----------------------------------------------------------------------------- end to end (tiny)
@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A partial tiny suite: two tasks of the ``synthetic`` group and ``vtab_eurosat`` cut to 40/20/40 images."""
    from vlprompt.data.tiny.suite import generate_suite

    root = generate_suite(tmp_path_factory.mktemp("suite") / "tiny-suite",
                          tasks=["shapes", "colours", "vtab_eurosat"])
    task = root / "vtab_eurosat"
    lists = {k: (task / f"{k}.txt").read_text().splitlines()[:n] for k, n in
             (("train800", 40), ("val200", 20), ("test", 40))}
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for key, lines in lists.items():
        (task / f"{key}.txt").write_text("".join(f"{x}\n" for x in lines))
    return root


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _mtimes(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}


def test_multitask_and_vtab_sweeps_resume_and_report(suite, cache_dir, tmp_path, capsys, in_process):
    runs_dir = tmp_path / "runs"
    mt_file = _write(tmp_path / "mt.yaml", {
        "name": "mt", "methods": [{"name": "softcpt-nata", "options": {"n_ctx": 4}}],
        "datasets": ["tiny-group/synthetic"], "protocol": "multitask", "shots": [2], "seeds": [1],
        "overrides": {"train": {"epochs": 1, "batch_size": 8, "lr": 0.002}}, "data_root": str(suite),
        "cache_dir": cache_dir, "out": str(runs_dir / "mt"),
    })
    vt_file = _write(tmp_path / "vt.yaml", {
        "name": "vt", "methods": ["linear-probe"], "datasets": ["tiny/vtab_eurosat"], "protocol": "vtab",
        "lrs": [1.0], "wds": [0.0], "seeds": [42],
        "overrides": {"train": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0, "feature_views": 1,
                                "precision": "fp32"}},
        "data_root": str(suite), "cache_dir": cache_dir, "out": str(runs_dir / "vt"),
    })
    assert sweep_main([str(mt_file), "--workers", "1"]) == 0
    assert sweep_main([str(vt_file), "--workers", "1"]) == 0
    # multitask: the group run holds per-task accuracies, acc = their mean
    (mt_run,) = load_sweep(mt_file).expand()
    assert mt_run.id.startswith("multitask/softcpt-nata/tiny-group_synthetic/shots2/seed1-") and is_complete(mt_run)
    res = json.loads((Path(mt_run.out) / "results.json").read_text())
    assert res["protocol"] == "multitask" and set(res["per_task"]) == {"tiny/shapes", "tiny/colours"}
    assert res["acc"] == pytest.approx(sum(res["per_task"].values()) / 2) and res["sweep"]["id"] == mt_run.id
    # vtab: one sweep run = grid (1 x 1) + final seeds, summarised
    (vt_run,) = load_sweep(vt_file).expand()
    assert is_complete(vt_run)
    out = Path(vt_run.out)
    vres = json.loads((out / "results.json").read_text())
    final = json.loads((out / "tiny_vtab_eurosat" / "final" / "seed42" / "results.json").read_text())
    assert vres["protocol"] == "vtab" and vres["group"] == "specialized" and vres["seeds"] == [42]
    assert vres["acc"] == pytest.approx(final["acc"]) and vres["std"] == 0.0
    assert (vres["base_lr"], vres["wd"]) == (1.0, 0.0) and vres["lr"] == pytest.approx(1.0 * 16 / 256)
    assert len(vres["grid"]) == 1 and 0 < vres["tuned_percent"] < 100 and vres["sweep"]["lrs"] == [1.0]
    assert (out / "vtab.md").is_file()
    # restart: nothing complete is re-run
    before = _mtimes(runs_dir)
    assert sweep_main([str(mt_file)]) == 0 and sweep_main([str(vt_file)]) == 0
    assert _mtimes(runs_dir) == before
    capsys.readouterr()
    assert sweep_main([str(vt_file), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("done  vtab/linear-probe/tiny_vtab_eurosat/seeds42-")
    # report: one row per sweep run (the VTAB run's inner grid / seed runs are not rows)
    rows = collect(runs_dir)
    assert sorted(r["protocol"] for r in rows) == ["multitask", "vtab"]
    files = {Path(f).name for f in write_report(runs_dir, plots=False)["files"]}
    assert {"multitask.md", "multitask_tasks.md", "multitask_tasks.csv", "vtab.md", "vtab.csv",
            "vtab_compare.csv"} <= files
    report = runs_dir / "report"
    tasks_md = (report / "multitask_tasks.md").read_text()
    assert "tiny/shapes" in tasks_md and "tiny/colours" in tasks_md and "tiny-group_synthetic" in tasks_md
    assert "tiny-group_synthetic" in (report / "multitask.md").read_text()
    vtab_md = (report / "vtab.md").read_text()
    assert "tiny/vtab_eurosat" in vtab_md and "Mean of the 1 VTAB group means" in vtab_md
    cmp = (report / "vtab_compare.csv").read_text().splitlines()
    assert cmp[0].startswith("method,specialized,mean of groups,tuned %")
    assert cmp[1].startswith(f"linear-probe,{vres['acc']:.2f}")


def test_vtab_sweep_with_e2vpt_pruning_and_report(suite, cache_dir, tmp_path, in_process):
    """`prune:` in a vtab sweep: e2vpt runs add the pruning stage (others ignore it); the report shows both rows."""
    data = {"name": "vp", "methods": ["vpt-shallow", {"name": "e2vpt", "options": {"num_tokens": 4,
                                                                                   "num_kv_tokens": 2}}],
            "datasets": ["tiny/vtab_eurosat"], "protocol": "vtab", "lrs": [1.0], "wds": [0.0], "seeds": [42],
            "prune": {"token_levels": [50], "piece_levels": [50]},
            "overrides": {"train": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0, "precision": "fp32"}},
            "data_root": str(suite), "cache_dir": cache_dir, "out": str(tmp_path / "vp")}
    vpt_run, e2_run = parse_sweep(data).expand()
    assert vpt_run.prune is None and e2_run.prune == {"token_levels": [50.0], "piece_levels": [50.0]}
    assert e2_run.id != parse_sweep({**data, "prune": None}).expand()[1].id  # the pruning stage is in the hash
    assert vpt_run.id == parse_sweep({**data, "prune": None}).expand()[0].id
    with pytest.raises(ConfigError, match="prune"):
        parse_sweep({**data, "prune": {"levels": [1]}})
    with pytest.raises(ConfigError, match="vtab only"):
        parse_sweep({**data, "protocol": "few-shot"})
    assert sweep_main([str(_write(tmp_path / "vp.yaml", data)), "--workers", "1"]) == 0
    assert is_complete(e2_run) and is_complete(vpt_run)
    res = json.loads((Path(e2_run.out) / "results.json").read_text())
    assert res["pruned"]["token_pct"] == 50 and res["pruned"]["tuned_percent"] < res["tuned_percent"]
    assert "pruned" not in json.loads((Path(vpt_run.out) / "results.json").read_text())
    write_report(tmp_path / "vp", plots=False)
    cmp = (tmp_path / "vp" / "report" / "vtab_compare.csv").read_text()
    assert "e2vpt (pruned)," in cmp and "vpt-shallow," in cmp
