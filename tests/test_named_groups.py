"""SoftCPT's named task groups (General-10, Plant-6, Fashion-20) on miniature fake layouts."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import vlprompt as vp
from data_fixtures import make_dtd
from vlprompt.data import is_group_spec
from vlprompt.data.named_groups import FASHION20, GENERAL10, PLANT6, named_group
from vlprompt.errors import ConfigError, DatasetError


def _dk(path, image_dir, cnames, tnames=None, task_name_txt=None, per_class=3):
    """A split_dk file with ``per_class`` train / 1 val / 2 test images per class of every task."""
    entries = {"train": [], "val": [], "test": []}
    for t, names in enumerate(cnames):
        for c in range(len(names)):
            for split, n in (("train", per_class), ("val", 1), ("test", 2)):
                for i in range(n):
                    rel = f"{t}/{c}/{split}_{i}.jpg"
                    entries[split].append([rel, [c], [t]])
                    (image_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (8, 8), (30 * c % 255, 20 * t % 255, 60)).save(image_dir / rel)
    meta = {"taskid2cname": cnames, "taskid2metric": ["mean_acc"] * len(cnames)}
    if tnames is not None:
        meta["taskid2tname"] = tnames
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**entries, "meta": meta}))
    if task_name_txt:
        (path.parent / "task_name.txt").write_text(task_name_txt + "\n")


def test_names_are_group_specs():
    assert [named_group(s) for s in ("general10", "General-10", "PLANT_6", "fashion-20", "eurosat")] == [
        "general10", "general10", "plant6", "fashion20", None]
    assert is_group_spec("General-10") and is_group_spec("plant6") and not is_group_spec("eurosat")


def test_plant6_by_name(tmp_path):
    for i, (rel, img) in enumerate(PLANT6):
        _dk(tmp_path / rel, tmp_path / img, [[f"p{i}a", f"p{i}b"]], task_name_txt=f"plant task {i}")
    group = vp.load_dataset("Plant-6", tmp_path, shots=1, seed=1)
    tasks = group.extra["tasks"]
    assert group.name == "plant6" and [t["task_name"] for t in tasks] == [f"plant task {i}" for i in range(6)]
    assert group.num_classes == 12 and len(group.train) == 12 and all(t["metric"] == "mean_acc" for t in tasks)
    assert group.train[0].path.startswith(str(tmp_path / PLANT6[0][1]))
    (tmp_path / PLANT6[3][0]).unlink()
    with pytest.raises(DatasetError, match=r"plant6.*1 split file\(s\) missing.*kaggle_vegetable.*PlantVillage"):
        vp.load_dataset("plant6", tmp_path)
    with pytest.raises(ConfigError, match="needs the data root"):
        vp.load_dataset("plant6", None)


def test_fashion20_by_name(tmp_path):
    rel, img = FASHION20
    cnames = [[f"c{t}_{c}" for c in range(2 + t % 2)] for t in range(20)]
    _dk(tmp_path / rel, tmp_path / img, cnames, tnames=[f"attribute {t}" for t in range(20)], per_class=1)
    group = vp.load_dataset("fashion20", tmp_path, shots=1, seed=2, subsample="base")
    assert len(group.extra["tasks"]) == 20 and group.extra["tasks"][3]["task_name"] == "attribute 3"
    assert [t["num_classes"] for t in group.extra["tasks"]][:2] == [1, 2]  # ceil(n/2) base classes per task
    with pytest.raises(DatasetError, match=r"fashion20/split_dk_Fashion20.json.*<task id>/<class id>"):
        vp.load_dataset("fashion20", tmp_path / "elsewhere")


def test_general10_by_name_softcpt_layout_and_coop_split(tmp_path):
    for name, folder, image_subdir in GENERAL10:
        if name == "dtd":
            continue
        ddir = tmp_path / folder
        _dk(ddir / f"split_dk_{name}.json", ddir / image_subdir if image_subdir else ddir, [[f"{name} x", "y"]],
            tnames=[f"{name} recognition"], per_class=1)
    make_dtd(tmp_path)  # CoOp's split, no split_dk: read by the dtd loader, task name built in
    group = vp.load_dataset("general10", tmp_path, shots=1, seed=1)
    tasks = group.extra["tasks"]
    assert [t["name"] for t in tasks] == [g[0] for g in GENERAL10]  # the reference's order, registry names
    assert tasks[0]["task_name"] == "caltech101 recognition" and tasks[1]["task_name"] == "texture recognition"
    assert tasks[1]["num_classes"] == len(vp.load_dataset("dtd", tmp_path).classnames)
    assert len({t["offset"] for t in tasks}) == 10
    # a missing dataset folder names the group's layout
    (tmp_path / "ucf101" / "split_dk_ucf101.json").rename(tmp_path / "moved.json")
    import shutil

    shutil.rmtree(tmp_path / "ucf101")
    with pytest.raises(DatasetError, match=r"general10.*ucf101' is missing.*caltech-101/ \(images in"):
        vp.load_dataset("general10", tmp_path)
