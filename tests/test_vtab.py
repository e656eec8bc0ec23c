"""VTAB-1k and FGVC loaders (miniatures in the exact layouts) and the VTAB protocol end to end on the tiny suite."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vlprompt.cli import main
from vlprompt.data import list_datasets, load_dataset
from vlprompt.data.fgvc import FGVC_TASKS
from vlprompt.data.vtab import FLOWERS102, GROUPS, VTAB_BY_FOLDER, VTAB_TASKS, select_split, vtab_group
from vlprompt.engine.run import RunDir
from vlprompt.errors import ConfigError, DatasetError
from vlprompt.protocols import RunSpec
from vlprompt.protocols.vtab import GROUP_SIZES, pick_best, scaled_lr, summarize_vtab, vtab
from vtab_fixtures import (
    FGVC_BUILDERS,
    FGVC_EXPECTED,
    TINY_VTAB,
    VTAB_COUNTS,
    make_vtab,
    trimmed_tiny_suite,
)

# The 19 tasks with the class counts of VPT's tune_vtab.py (DATA2CLS) and NOAH's folder names.
COUNTS = {"cifar": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37, "svhn": 10,
          "sun397": 397, "patch_camelyon": 2, "eurosat": 10, "resisc45": 45, "diabetic_retinopathy": 5,
          "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4, "dsprites_loc": 16, "dsprites_ori": 16,
          "smallnorb_azi": 18, "smallnorb_ele": 9}


# ------------------------------------------------------------------------------------------ VTAB
def test_nineteen_tasks_counts_groups_and_names():
    assert {s.folder: s.num_classes for s in VTAB_TASKS} == COUNTS
    assert GROUP_SIZES == {"natural": 7, "specialized": 4, "structured": 8}
    assert {f"vtab/{f}" for f in COUNTS} <= set(list_datasets())
    for spec in VTAB_TASKS:
        assert len(set(spec.classnames)) == spec.num_classes, spec.folder  # distinct names
        assert "{}" in spec.template and spec.group in GROUPS
    assert VTAB_BY_FOLDER["dtd"].classnames[:2] == ("banded", "blotchy")
    assert VTAB_BY_FOLDER["cifar"].classnames[:2] == ("apple", "aquarium fish")
    assert vtab_group("vtab/kitti") == "structured" and vtab_group("vtab/svhn") == "natural"
    assert vtab_group("fgvc/cub") == "fgvc" and vtab_group("eurosat") is None


@pytest.mark.parametrize("folder", sorted(COUNTS))
def test_load_every_task_and_its_splits(tmp_path, folder):
    tdir = make_vtab(tmp_path, folder, COUNTS[folder])
    task = load_dataset(f"vtab/{folder}", tmp_path)
    assert task.name == f"vtab/{folder}" and task.num_classes == COUNTS[folder]
    assert (len(task.train), len(task.val), len(task.test)) == (6, 3, 5)
    assert max(s.label for s in task.train) == COUNTS[folder] - 1
    assert all(os.path.isfile(s.path) and s.classname == task.classnames[s.label] for s in task.train + task.test)
    tune = load_dataset(f"vtab/{folder}", tmp_path, split="tune")
    assert [s.path for s in tune.test] == [s.path for s in tune.val] == [s.path for s in task.val]
    assert len(tune.train) == VTAB_COUNTS["train800"]
    final = load_dataset(f"vtab/{folder}", tdir, split="final")  # root = the task folder itself
    assert len(final.train) == 9 and not final.val and len(final.test) == 5
    assert all("/images/train800val200/" in s.path for s in final.train)
    assert final.extra["split"] == "final" and final.extra["vtab_group"] == VTAB_BY_FOLDER[folder].group


def test_roots_aliases_and_classnames_override(tmp_path):
    tdir = make_vtab(tmp_path, "oxford_flowers102", 102)
    a = load_dataset("vtab/flowers102", tmp_path / "vtab-1k")  # the vtab-1k folder as root, an alias
    assert a.name == "vtab/oxford_flowers102" and a.classnames == FLOWERS102
    assert a.extra["classnames_source"] == "dataset"
    (tdir / "classnames.txt").write_text("".join(f"flower_{i}\n" for i in range(102)))
    assert load_dataset("vtab/oxford_flowers102", tmp_path).classnames[3] == "flower 3"
    (tdir / "classnames.txt").write_text("just one\n")
    with pytest.raises(DatasetError, match="expected 102"):
        load_dataset("vtab/oxford_flowers102", tmp_path)


def test_vtab_errors_name_the_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"vtab-1k/(.|\n)*train800val200\.txt"):
        load_dataset("vtab/dtd", tmp_path)
    tdir = make_vtab(tmp_path, "dtd", 47)
    (tdir / "val200.txt").unlink()
    with pytest.raises(DatasetError, match=r"val200\.txt' is missing(.|\n)*get_vtab1k"):
        load_dataset("vtab/dtd", tmp_path)
    (tdir / "val200.txt").write_text("images/val200/0.jpg 47\n")
    with pytest.raises(DatasetError, match=r"label 47; expected 0\.\.46"):
        load_dataset("vtab/dtd", tmp_path)
    (tdir / "val200.txt").write_text("images/val200/0.jpg\n")
    with pytest.raises(DatasetError, match="expected '<relative/image/path> <integer label>'"):
        load_dataset("vtab/dtd", tmp_path)
    (tdir / "val200.txt").write_text("images/val200/0.jpg 1\n")
    for f in (tdir / "images" / "test").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("vtab/dtd", tmp_path)


def test_split_selector_rejects_other_datasets(tmp_path):
    make_vtab(tmp_path, "svhn", 10)
    with pytest.raises(ConfigError, match="expected one of"):
        load_dataset("vtab/svhn", tmp_path, split="trainval")
    task = load_dataset("vtab/svhn", tmp_path)
    with pytest.raises(ConfigError, match="no protocol splits"):
        select_split(task.with_splits(extra={}), "tune")


# ------------------------------------------------------------------------------------------ FGVC
def test_fgvc_registered():
    assert {s.name for s in FGVC_TASKS} <= set(list_datasets())
    assert [s.num_classes for s in FGVC_TASKS] == [200, 555, 102, 120, 196]


@pytest.mark.parametrize("name", sorted(FGVC_BUILDERS))
def test_fgvc_load_and_splits(tmp_path, name):
    ddir = FGVC_BUILDERS[name](tmp_path / "FGVC")  # under an FGVC/ folder of $DATA
    names, (n_train, n_val, n_test) = FGVC_EXPECTED[name]
    task = load_dataset(name, tmp_path)
    assert (len(task.train), len(task.val), len(task.test)) == (n_train, n_val, n_test)
    assert task.classnames == (names or FLOWERS102)
    assert task.extra["vtab_group"] == "fgvc"
    labels = {s.label for s in task.train + task.val + task.test}
    assert labels == set(range(task.num_classes))  # contiguous over the union of the files
    assert all(os.path.isfile(s.path) and s.classname == task.classnames[s.label] for s in task.test)
    assert [s.path for s in load_dataset(name, ddir).test] == [s.path for s in task.test]  # root = folder
    tune, final = (load_dataset(name, tmp_path, split=sp) for sp in ("tune", "final"))
    assert [s.path for s in tune.test] == [s.path for s in task.val] and tune.train == task.train
    assert final.test == task.test and final.train == task.train and not final.val


def test_fgvc_ids_map_over_all_files_and_errors(tmp_path):
    FGVC_BUILDERS["fgvc/cub"](tmp_path)
    task = load_dataset("fgvc/cub", tmp_path)
    sooty = [s for s in task.val if "Sooty" in s.path]
    assert sooty[0].label == 2  # val lacks class 2 but keeps the global mapping (1,2,3 -> 0,1,2)
    (tmp_path / "CUB_200_2011" / "test.json").write_text('["not", "a", "dict"]')
    with pytest.raises(DatasetError, match="mapping image paths to integer class ids"):
        load_dataset("fgvc/cub", tmp_path)
    (tmp_path / "CUB_200_2011" / "test.json").unlink()
    with pytest.raises(DatasetError, match=r"test\.json' is missing(.|\n)*train\.json"):
        load_dataset("fgvc/cub", tmp_path)
    with pytest.raises(DatasetError, match=r"Stanford-dogs(.|\n)*Images/"):
        load_dataset("fgvc/stanford_dogs", tmp_path)


# ------------------------------------------------------------------------------------------ protocol arithmetic
def test_group_means_on_hand_made_results():
    rows = [
        {"dataset": "vtab/cifar", "group": "natural", "seed": 42, "acc": 60.0, "trainable_params": 100},
        {"dataset": "vtab/cifar", "group": "natural", "seed": 44, "acc": 70.0, "trainable_params": 100},
        {"dataset": "vtab/dtd", "group": "natural", "seed": 42, "acc": 80.0, "trainable_params": 300},
        {"dataset": "vtab/eurosat", "group": "specialized", "seed": 42, "acc": 90.0, "trainable_params": 200},
        {"dataset": "vtab/kitti", "group": "structured", "seed": 42, "acc": 30.0, "trainable_params": 200},
        {"dataset": "vtab/dmlab", "group": "structured", "seed": 42, "acc": 50.0, "trainable_params": 200},
        {"dataset": "fgvc/cub", "group": "fgvc", "seed": 42, "acc": 85.0, "trainable_params": 200},
    ]
    s = summarize_vtab(rows, backbone_params=10_000)
    cifar = s["rows"][0]
    assert cifar["acc"] == 65.0 and cifar["std"] == pytest.approx(7.0710678)  # sample std of (60, 70)
    assert cifar["tuned_percent"] == pytest.approx(1.0)
    g = s["groups"]
    assert g["natural"]["acc"] == 72.5 and g["natural"]["n_tasks"] == 2 and not g["natural"]["complete"]
    assert g["specialized"]["acc"] == 90.0 and g["structured"]["acc"] == 40.0 and g["fgvc"]["acc"] == 85.0
    assert s["overall"]["mean_of_groups"] == pytest.approx((72.5 + 90.0 + 40.0) / 3)  # FGVC not in it
    assert s["overall"]["mean_of_tasks"] == pytest.approx((65 + 80 + 90 + 30 + 50) / 5)
    assert s["tuned_percent_mean"] == pytest.approx((1 + 3 + 2 + 2 + 2 + 2) / 6)


def test_grid_choice_and_lr_scaling():
    grid = [{"base_lr": lr, "wd": wd, "val_acc": acc} for lr, wd, acc in
            [(10.0, 0.01, 80.0), (1.0, 0.001, 90.0), (0.1, 0.0, 90.0), (0.1, 0.01, 90.0), (0.05, 0.0, 89.0)]]
    assert pick_best(grid) == {"base_lr": 0.1, "wd": 0.0, "val_acc": 90.0}  # tie → smaller lr, then wd
    assert scaled_lr(25.0, 64) == 6.25
    with pytest.raises(ConfigError):
        pick_best([])


# ------------------------------------------------------------------------------------------ end to end (tiny)
@pytest.fixture(scope="module")
def tiny_vtab_root(tmp_path_factory) -> Path:
    from vlprompt.data.tiny.suite import default_suite_dir, generate_suite, is_suite

    source = default_suite_dir()
    if not (is_suite(source) and all((source / t / "test.txt").is_file() for t in TINY_VTAB)):
        source = generate_suite(tmp_path_factory.mktemp("suite") / "full", tasks=list(TINY_VTAB))
    dest = tmp_path_factory.mktemp("trimmed") / "suite"
    return trimmed_tiny_suite(source, dest, {"train800": 40, "val200": 20, "test": 40})


def test_tiny_vtab_tasks_use_the_vtab_code_path(tiny_vtab_root):
    task = load_dataset("tiny/vtab_eurosat", tiny_vtab_root)
    assert task.extra["format"] == "vtab" and set(task.extra["vtab_lists"]) == {"train800", "val200",
                                                                              "train800val200", "test"}
    assert task.extra["vtab_group"] == "specialized" and task.extra["task_name"]
    final = load_dataset("tiny/vtab_clevr_count", tiny_vtab_root, split="final")
    assert (len(final.train), len(final.val), len(final.test)) == (60, 0, 40)


def test_vtab_protocol_end_to_end_and_skips_done_runs(tiny_vtab_root, tmp_path, cache_dir):
    train = {"epochs": 1, "batch_size": 16, "warmup_epochs": 0, "feature_views": 1, "cache_dir": cache_dir,
             "precision": "fp32"}
    spec = RunSpec("coop", "", str(tiny_vtab_root), out=str(tmp_path / "vtab"), shots=None,
                   method_options={"n_ctx": 2}, train_options=train)
    tasks = ["tiny/vtab_eurosat", "tiny/vtab_clevr_count"]
    s = vtab(spec, tasks, lrs=[2.0, 0.5], wds=[0.0], seeds=[42, 44])
    out = tmp_path / "vtab"
    for name in tasks:
        slug = name.replace("/", "_")
        choice = json.loads((out / slug / "tune" / "choice.json").read_text())
        assert [(r["base_lr"], r["lr"]) for r in choice["grid"]] == [(2.0, 0.125), (0.5, 0.03125)]  # ×16/256
        assert choice["best"] == pick_best(choice["grid"]) == {**s["choices"][name]}
        tune_res = RunDir(out / slug / "tune" / "lr2_wd0").read_results()
        assert tune_res["protocol"] == "vtab-tune" and tune_res["n_test"] == 20  # scored on val200
        cfg = RunDir(out / slug / "final" / "seed44").read_config()
        assert cfg["train"]["lr"] == choice["best"]["lr"] and cfg["train"]["weight_decay"] == 0.0
        res = RunDir(out / slug / "final" / "seed44").read_results()
        assert res["protocol"] == "vtab" and res["n_test"] == 40 and res["seed"] == 44
    rows = {r["dataset"]: r for r in s["rows"]}
    assert set(s["groups"]) == {"specialized", "structured"}
    assert s["overall"]["mean_of_groups"] == pytest.approx(
        (rows["tiny/vtab_eurosat"]["acc"] + rows["tiny/vtab_clevr_count"]["acc"]) / 2)
    assert 0 < rows["tiny/vtab_eurosat"]["tuned_percent"] < 1 and s["backbone_params"] > 1e6
    md = (out / "vtab.md").read_text()
    assert "Mean of the 2 VTAB group means" in md and "± " in md
    mtime = (out / "tiny_vtab_eurosat" / "final" / "seed42" / "prompt.safetensors").stat().st_mtime_ns
    # the CLI re-runs the same protocol: every run is finished, so nothing is retrained
    argv = ["vtab", "--method", "coop", "--datasets", *tasks, "--root", str(tiny_vtab_root), "--out", str(out),
            "--lrs", "2", "0.5", "--wds", "0", "--seeds", "42", "44", "-o", "n_ctx=2", "--epochs", "1",
            "--batch-size", "16", "--warmup-epochs", "0", "--feature-views", "1", "--cache-dir", cache_dir,
            "--precision", "fp32"]
    assert main(argv) == 0
    assert (out / "tiny_vtab_eurosat" / "final" / "seed42" / "prompt.safetensors").stat().st_mtime_ns == mtime
    again = json.loads((out / "vtab.json").read_text())
    assert again["overall"] == s["overall"]


def test_cli_rejects_lr_outside_the_grid(tmp_path, capsys):
    assert main(["vtab", "--method", "coop", "--datasets", "tiny/vtab_eurosat", "--out", str(tmp_path),
                 "--lr", "0.1"]) == 2
    assert "--lrs" in capsys.readouterr().err


def test_no_tune_needs_one_pair(tmp_path):
    spec = RunSpec("coop", "", ".", out=str(tmp_path), shots=None)
    with pytest.raises(ConfigError, match="exactly one"):
        vtab(spec, ["tiny/vtab_eurosat"], lrs=[1.0, 2.0], wds=[0.0], tune=False)


def test_train_command_split_option(tmp_path, shapes_root, cache_dir, capsys):
    make_vtab(tmp_path, "eurosat", 10)
    out = tmp_path / "run"
    argv = ["train", "--method", "zeroshot", "--dataset", "vtab/eurosat", "--root", str(tmp_path), "--out", str(out),
            "--split", "tune", "--cache-dir", cache_dir]
    assert main(argv) == 0
    res = RunDir(out).read_results()
    assert res["n_test"] == VTAB_COUNTS["val200"] and res["dataset"] == "vtab/eurosat"
    assert main(["train", "--method", "zeroshot", "--dataset", "imagefolder", "--root", str(shapes_root),
                 "--out", str(tmp_path / "r2"), "--split", "final", "--cache-dir", cache_dir]) == 2
    assert "no protocol splits" in capsys.readouterr().err


def test_folders_of_other_datasets_are_not_taken(tmp_path):
    (tmp_path / "eurosat" / "2750").mkdir(parents=True)  # CoOp's EuroSAT folder, same name as the VTAB task
    with pytest.raises(DatasetError, match="vtab-1k/eurosat"):
        load_dataset("vtab/eurosat", tmp_path)
    dtd = make_vtab(tmp_path, "dtd", 47)
    with pytest.raises(DatasetError, match="'svhn' not found"):
        load_dataset("vtab/svhn", dtd)  # another task's folder
    cub = FGVC_BUILDERS["fgvc/cub"](tmp_path)
    with pytest.raises(DatasetError, match="Stanford Dogs"):
        load_dataset("fgvc/stanford_dogs", cub)


def test_vtab_protocol_with_e2vpt_pruning(tiny_vtab_root, tmp_path, cache_dir):
    """grid → final seeds → prune + rewind on train800/val200 → final seeds with the masks; before/after report."""
    from vlprompt.protocols.vtab import PruneOptions

    train = {"epochs": 1, "batch_size": 16, "warmup_epochs": 0, "cache_dir": cache_dir, "precision": "fp32"}
    spec = RunSpec("e2vpt", "", str(tiny_vtab_root), out=str(tmp_path / "vtab"), shots=None,
                   method_options={"num_tokens": 4, "num_kv_tokens": 2}, train_options=train)
    prune = PruneOptions(token_levels=(50,), piece_levels=(50,))
    s = vtab(spec, ["tiny/vtab_eurosat"], lrs=[1.0], wds=[0.0], seeds=[42], prune=prune)
    base = tmp_path / "vtab" / "tiny_vtab_eurosat" / "prune"
    search = json.loads((base / "prune.json").read_text())
    assert (search["token_pct"], search["piece_pct"]) == (50, 50)
    assert sum(search["token_mask"]) == 2  # floor(4 · 50 %) of 4 tokens pruned
    assert all(sum(row) == 8 for row in search["piece_mask"])  # 8 of 16 pieces per token kept
    res = RunDir(base / "final" / "seed42").read_results()
    assert res["protocol"] == "vtab-pruned" and res["n_test"] == 40
    before, after = s["rows"][0], s["pruned"]["rows"][0]
    visual = search["visual_prompt_params"]
    assert after["trainable_params"] == before["trainable_params"] - round(search["pruned_fraction"] * visual)
    assert after["tuned_percent"] < before["tuned_percent"]
    assert s["pruning"]["tiny/vtab_eurosat"]["val_acc"] == search["val_acc"]
    md = (tmp_path / "vtab" / "vtab.md").read_text()
    assert "After E2VPT pruning + rewinding" in md and "50 / 50" in md
    mtime = (base / "prune.json").stat().st_mtime_ns
    again = vtab(spec, ["tiny/vtab_eurosat"], lrs=[1.0], wds=[0.0], seeds=[42], prune=prune)  # all done: skipped
    assert again["pruned"]["rows"][0]["acc"] == after["acc"] and (base / "prune.json").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="E2VPT's"):
        vtab(RunSpec("vpt-deep", "", ".", out=str(tmp_path / "x"), shots=None), ["tiny/vtab_eurosat"], prune=prune)


def test_cli_prune_levels_need_prune(tmp_path, capsys):
    assert main(["vtab", "--method", "e2vpt", "--datasets", "tiny/vtab_eurosat", "--out", str(tmp_path),
                 "--token-levels", "50"]) == 2
    assert "--prune" in capsys.readouterr().err
    assert main(["vtab", "--method", "vpt-deep", "--datasets", "tiny/vtab_eurosat", "--out", str(tmp_path),
                 "--prune", "--piece-levels", "50"]) == 2
    assert "E2VPT's" in capsys.readouterr().err


def test_vtab_protocol_runs_the_vit_baselines(tiny_vtab_root, tmp_path, cache_dir):
    """``linear`` (preset ``paper``) and ``finetune`` (no preset: the protocol's default for it is its base config,
    the reference's AdamW) through grid → final → table; finetune searches VPT's own finetune lr grid when none
    is given; tuned % = tuned / total parameters."""
    from vlprompt.protocols.vtab import vtab_markdown

    train = {"epochs": 1, "batch_size": 16, "warmup_epochs": 0, "cache_dir": cache_dir, "precision": "fp32"}
    summaries = {}
    for method, lrs in (("linear", [10.0, 1.0]), ("finetune", None)):
        spec = RunSpec(method, "", str(tiny_vtab_root), out=str(tmp_path / method), shots=None,
                       preset="paper" if method == "linear" else None, train_options=train)
        summaries[method] = s = vtab(spec, ["tiny/vtab_eurosat"], lrs=lrs, wds=[0.0], seeds=[42])
        choice = json.loads((tmp_path / method / "tiny_vtab_eurosat" / "tune" / "choice.json").read_text())
        grid = [r["base_lr"] for r in choice["grid"]]
        assert grid == ([10.0, 1.0] if method == "linear" else [0.001, 0.0001, 0.0005, 0.005])  # VPT's finetune grid
        cfg = RunDir(tmp_path / method / "tiny_vtab_eurosat" / "final" / "seed42").read_config()
        assert cfg["train"]["optimizer"] == ("sgd" if method == "linear" else "adamw-hf")
        assert cfg["train"]["scheduler"] == "linear-warmup-cosine" and cfg["train"]["batch_size"] == 16
        row = s["rows"][0]
        assert row["dataset"] == "tiny/vtab_eurosat" and 0 <= row["acc"] <= 100 and s["groups"]["specialized"]
        assert row["tuned_percent"] == pytest.approx(100.0 * row["trainable_params"] / row["total_params"])
        md = (tmp_path / method / "vtab.md").read_text()
        assert md == vtab_markdown(s, method) and "| tuned params | tuned % |" in md
        assert f"| {row['trainable_params']:,} | {row['tuned_percent']:.3f} |" in md
    lin, ft = summaries["linear"]["rows"][0], summaries["finetune"]["rows"][0]
    head = 10 * 128 + 10  # tiny-clip's 128-d pooled feature, 10 EuroSAT classes
    assert lin["trainable_params"] == head and lin["total_params"] == summaries["linear"]["backbone_params"] + head
    assert ft["total_params"] == lin["total_params"] and ft["trainable_params"] > 100 * head
