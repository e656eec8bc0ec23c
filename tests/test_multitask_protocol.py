"""Multi-task protocol: base-to-new on a tiny group (per task B/N/H) and per-task zero-shot / linear-probe
baselines in the same tables."""

from __future__ import annotations

import json

import pytest

import vlprompt as vp
from vlprompt.cli import main
from vlprompt.data import split_group
from vlprompt.engine.train import hm
from vlprompt.errors import ConfigError
from vlprompt.protocols import RunSpec, multitask

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    """A partial tiny suite with two tasks of the ``synthetic`` group (procedural, fast)."""
    from vlprompt.data.tiny.suite import generate_suite

    return generate_suite(tmp_path_factory.mktemp("suite") / "tiny-suite", tasks=["shapes", "colours"])


def _spec(root, out, cache_dir):
    return RunSpec("softcpt-nata", "", str(root), out=str(out), method_options={"n_ctx": 4},
                   train_options={"epochs": 1, "batch_size": 8, "cache_dir": cache_dir, "precision": "fp32",
                                  "progress": False})


def test_split_group_members_keep_template_policy_and_labels(tiny_suite):
    group = vp.load_dataset("tiny-group/synthetic", str(tiny_suite), shots=2, seed=1)
    shapes, colours = split_group(group)
    alone = vp.load_dataset("tiny/colours", str(tiny_suite), shots=2, seed=1)
    assert colours.name == "tiny/colours" and colours.classnames == alone.classnames
    assert colours.template == alone.template and colours.augment == alone.augment
    assert shapes.augment == "none" and {s.label for s in colours.train} == set(range(colours.num_classes))
    assert sorted(s.path for s in colours.test) == sorted(s.path for s in alone.test)
    with pytest.raises(ConfigError, match="not a task group"):
        split_group(alone)


def test_multitask_base2new_per_task_and_zeroshot_rows(tiny_suite, cache_dir, tmp_path):
    spec = _spec(tiny_suite, tmp_path / "b2n", cache_dir)
    summary = multitask(spec, ["tiny-group/synthetic"], shots=[2], seeds=[1], base2new=True, baselines=["zeroshot"])
    run = tmp_path / "b2n" / "tiny-group_synthetic" / "base2new" / "shots2" / "seed1"
    res = json.loads((run / "results.json").read_text())
    tasks = ["tiny/shapes", "tiny/colours"]
    assert res["num_classes"] == 10 and set(res["per_task"]) == set(res["per_task_new"]) == set(tasks)
    assert res["base_acc"] == pytest.approx(sum(res["per_task"].values()) / 2)
    assert res["new_acc"] == pytest.approx(sum(res["per_task_new"].values()) / 2)
    assert res["hm"] == pytest.approx(hm(res["base_acc"], res["new_acc"]))
    for t in tasks:
        assert res["per_task_hm"][t] == pytest.approx(hm(res["per_task"][t], res["per_task_new"][t]))
    rows = {r["task"]: r for r in summary["rows"]}
    mean_row = rows["tiny-group/synthetic (mean over tasks)"]
    assert mean_row["2-shot base"] == pytest.approx(res["base_acc"]) and mean_row["2-shot new"] == pytest.approx(
        res["new_acc"])
    assert summary["average"]["2-shot H"] == pytest.approx(res["hm"])
    # zero-shot per task on the base and on the new classes, equal to zero-shot on the task alone
    zs = rows["tiny-group/synthetic / tiny/colours [zeroshot]"]
    bb = vp.load_backbone("tiny-clip")
    for sub, col in (("base", "2-shot base"), ("new", "2-shot new")):
        alone = vp.load_dataset("tiny/colours", str(tiny_suite), subsample=sub)
        model = vp.build_method("zeroshot", bb, alone.classnames, template=alone.template)
        assert zs[col] == pytest.approx(vp.evaluate(model, alone, cache_dir=cache_dir), abs=1e-4)
    assert "zeroshot" in summary["baseline_average"]
    md = (tmp_path / "b2n" / "multitask_base2new.md").read_text()
    assert "2-shot H" in md and "[zeroshot]" in md
    # the runs are reused: a second call trains nothing and gives the same numbers
    again = multitask(spec, ["tiny-group/synthetic"], shots=[2], seeds=[1], base2new=True, baselines=["zeroshot"])
    assert again["rows"] == summary["rows"]
    with pytest.raises(ConfigError, match="no classifier for the new"):
        multitask(spec, ["tiny-group/synthetic"], shots=[2], seeds=[1], base2new=True, baselines=["linear-probe"])
    with pytest.raises(ConfigError, match="unknown"):
        multitask(spec, ["tiny-group/synthetic"], shots=[2], seeds=[1], baselines=["coop"])


def test_multitask_cli_with_linear_probe_and_zeroshot_baselines(tiny_suite, cache_dir, tmp_path, capsys):
    out = tmp_path / "mt"
    argv = ["multitask", "--method", "coop-mt", "--groups", "tiny-group/synthetic", "--root", str(tiny_suite),
            "--shots-list", "1", "2", "--seeds", "1", "--out", str(out), "--epochs", "1", "--batch-size", "8",
            "--cache-dir", cache_dir, "-o", "n_ctx=4", "--baselines", "zeroshot", "linear-probe"]
    assert main(argv) == 0
    summary = json.loads((out / "multitask.json").read_text())
    rows = {r["task"]: r for r in summary["rows"]}
    lp = rows["tiny-group/synthetic / tiny/shapes [linear-probe]"]
    zs = rows["tiny-group/synthetic / tiny/shapes [zeroshot]"]
    assert zs["1-shot"] == zs["2-shot"] and 0 <= lp["1-shot"] <= 100 and 0 <= lp["2-shot"] <= 100
    lp_run = json.loads((out / "tiny-group_synthetic" / "baselines" / "linear-probe" / "shots2" / "seed1"
                         / "tiny_shapes" / "results.json").read_text())
    assert lp_run["method"] == "linear-probe" and lp_run["acc"] == pytest.approx(lp["2-shot"])
    assert lp_run["per_task"] == {"tiny/shapes": pytest.approx(lp_run["acc"])}
    g = rows["tiny-group/synthetic (mean over tasks) [linear-probe]"]
    assert g["2-shot"] == pytest.approx((lp["2-shot"] + rows["tiny-group/synthetic / tiny/colours [linear-probe]"][
        "2-shot"]) / 2)
    assert summary["baseline_average"]["linear-probe"]["2-shot"] == pytest.approx(g["2-shot"])
    assert "[linear-probe]" in (out / "multitask.md").read_text()


# ------------------------------------------------------------------ sweep + report
@pytest.fixture
def in_process(monkeypatch):
    """Run the local executor's runs in this process (no worker spawn)."""
    from vlprompt.sweep import run as run_mod

    def run_local(runs, workers, on_start, on_done, threads=None):
        for r in runs:
            on_start(r.id)
            on_done(run_mod.execute(r))

    monkeypatch.setattr(run_mod, "run_local", run_local)


def test_sweep_multitask_base2new_and_baselines_report(tiny_suite, cache_dir, tmp_path, in_process):
    import yaml

    from vlprompt.report import collect, write_report
    from vlprompt.sweep import is_complete, load_sweep, sweep_main

    out = tmp_path / "runs"
    spec = {"name": "mtb", "methods": [{"name": "softcpt-nata", "options": {"n_ctx": 4}}, "zeroshot"],
            "datasets": ["tiny-group/synthetic"], "protocol": "multitask-base2new", "shots": [2], "seeds": [1],
            "overrides": {"train": {"epochs": 1, "batch_size": 8, "precision": "fp32"}}, "data_root": str(tiny_suite),
            "cache_dir": cache_dir, "out": str(out / "b2n")}
    (tmp_path / "b2n.yaml").write_text(yaml.safe_dump(spec))
    lp = {**spec, "methods": ["linear-probe"], "protocol": "multitask", "out": str(out / "lp")}
    (tmp_path / "lp.yaml").write_text(yaml.safe_dump(lp))
    assert sweep_main([str(tmp_path / "b2n.yaml"), "--workers", "1"]) == 0
    assert sweep_main([str(tmp_path / "lp.yaml"), "--workers", "1"]) == 0
    runs = load_sweep(tmp_path / "b2n.yaml").expand()
    assert all(is_complete(r) for r in runs) and len(runs) == 2
    by_method = {r.method: json.loads((tmp_path / r.out / "results.json").read_text()) for r in runs}
    joint, zs = by_method["softcpt-nata"], by_method["zeroshot"]
    assert set(joint["per_task_new"]) == set(zs["per_task_new"]) == {"tiny/shapes", "tiny/colours"}
    assert zs["new_acc"] == pytest.approx(sum(zs["per_task_new"].values()) / 2)
    assert zs["hm"] == pytest.approx(hm(zs["base_acc"], zs["new_acc"]))
    rows = collect(out)
    assert sorted((r["method"], r["protocol"]) for r in rows) == [
        ("linear-probe", "multitask"), ("softcpt-nata", "base2new"), ("zeroshot", "base2new")]  # no inner runs
    files = {p.split("/")[-1] for p in write_report(out, plots=False)["files"]}
    assert {"base2new.md", "multitask_base2new_tasks.md", "multitask_base2new_tasks.csv",
            "multitask_tasks.md"} <= files
    md = (out / "report" / "multitask_base2new_tasks.md").read_text()
    assert "## zeroshot" in md and "## softcpt-nata" in md and "2-shot H" in md
    lp_md = (out / "report" / "multitask_tasks.md").read_text()
    assert "## linear-probe" in lp_md and "tiny/colours" in lp_md
