"""Few-shot sampling, base/new subsampling and portable split files."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter

import pytest

from data_fixtures import BUILDERS
from vlprompt.data import (
    Sample,
    apply_few_shot,
    load_dataset,
    load_split,
    sample_few_shot,
    save_split,
    subsample_classes,
)
from vlprompt.data.task import Task
from vlprompt.errors import ConfigError, DatasetError


def _samples(per_label: dict[int, int]) -> list[Sample]:
    return [
        Sample(f"/d/{label}/{i:03d}.jpg", label, f"c{label}")
        for label, n in per_label.items()
        for i in range(n)
    ]


def _task(n_classes: int, per_class: int = 6) -> Task:
    split = _samples(dict.fromkeys(range(n_classes), per_class))
    names = [f"c{i}" for i in range(n_classes)]
    return Task("toy", names, "a photo of a {}.", split, list(split), list(split), root="/d")


def test_sample_counts_and_fewer_than_k():
    samples = _samples({0: 10, 1: 3, 2: 7})
    few = sample_few_shot(samples, 4, seed=1)
    assert Counter(s.label for s in few) == {0: 4, 1: 3, 2: 4}
    assert len(set(few)) == len(few)  # without replacement
    assert [s.label for s in few] == sorted(s.label for s in few)  # grouped in sorted label order


def test_sample_is_deterministic_and_order_independent():
    samples = _samples({0: 20, 1: 20, 3: 20})
    a = sample_few_shot(samples, 5, seed=7)
    shuffled = list(samples)
    random.Random(0).shuffle(shuffled)
    random.seed(12345)  # the global random state must not matter
    b = sample_few_shot(shuffled, 5, seed=7)
    assert a == b
    assert sample_few_shot(samples, 5, seed=8) != a


def test_sample_rejects_bad_shots():
    with pytest.raises(ConfigError, match="positive integer"):
        sample_few_shot(_samples({0: 3}), 0, seed=1)


def test_apply_few_shot_train_k_val_min_k_4():
    task = _task(3, per_class=20)
    for k, k_val in ((1, 1), (4, 4), (16, 4)):
        few = apply_few_shot(task, k, seed=2)
        assert Counter(s.label for s in few.train) == dict.fromkeys(range(3), k)
        assert Counter(s.label for s in few.val) == dict.fromkeys(range(3), k_val)
        assert few.test == task.test and few.shots == k and few.seed == 2
    assert len(task.train) == 60  # the input task is not modified


@pytest.mark.parametrize("n, n_base", [(4, 2), (5, 3), (10, 5), (37, 19)])
def test_base_new_relabelling(n, n_base):
    task = _task(n, per_class=2)
    base = subsample_classes(task, "base")
    new = subsample_classes(task, "new")
    assert base.classnames == task.classnames[:n_base]
    assert new.classnames == task.classnames[n_base:]
    for sub, offset in ((base, 0), (new, n_base)):
        for split in ("train", "val", "test"):
            items = getattr(sub, split)
            assert {s.label for s in items} == set(range(sub.num_classes))
            for s in items:
                assert s.classname == sub.classnames[s.label] == task.classnames[s.label + offset]
    assert base.subsample == "base" and new.subsample == "new"
    assert subsample_classes(task, "all").classnames == task.classnames


def test_subsample_rejects_bad_values():
    task = _task(4)
    with pytest.raises(ConfigError, match="'all', 'base' or 'new'|all, base, new"):
        subsample_classes(task, "novel")
    with pytest.raises(ConfigError, match="already subsampled"):
        subsample_classes(subsample_classes(task, "base"), "new")


def test_save_load_round_trip_survives_moving_the_data(tmp_path):
    BUILDERS["eurosat"](tmp_path / "a")
    full = load_dataset("eurosat", tmp_path / "a")
    few = apply_few_shot(full, 1, seed=3)
    split_file = save_split(tmp_path / "splits" / "eurosat_1shot.json", few)
    data = json.loads(split_file.read_text())
    assert set(data) == {"train", "val", "meta"}
    assert data["train"][0][0] == "AnnualCrop/" + data["train"][0][0].split("/")[1]  # relative to 2750/
    assert data["meta"]["shots"] == 1 and data["meta"]["seed"] == 3
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    moved = load_dataset("eurosat", tmp_path / "b", split_file=split_file)
    rel = [p.path.replace(str(tmp_path / "b"), "") for p in moved.train]
    assert rel == [p.path.replace(str(tmp_path / "a"), "") for p in few.train]
    assert [(s.label, s.classname) for s in moved.val] == [(s.label, s.classname) for s in few.val]
    assert moved.shots == 1 and moved.seed == 3
    assert len(moved.test) == len(full.test)
    # the same via load_split with a task or an image folder
    again = load_split(split_file, load_dataset("eurosat", tmp_path / "b"))
    assert again.train == moved.train
    as_dict = load_split(split_file, tmp_path / "b" / "eurosat" / "2750")
    assert [s.path for s in as_dict["train"]] == [s.path for s in moved.train]


def test_load_dataset_with_split_file_then_subsample(tmp_path):
    BUILDERS["caltech101"](tmp_path)
    few = load_dataset("caltech101", tmp_path, shots=1, seed=5)
    split_file = save_split(tmp_path / "s.json", few)
    new = load_dataset("caltech101", tmp_path, split_file=split_file, subsample="new")
    assert new.classnames == ["face"] and [s.label for s in new.train] == [0]
    with pytest.raises(ConfigError, match="2 disagrees"):
        load_dataset("caltech101", tmp_path, shots=2, split_file=split_file)
    with pytest.raises(ConfigError, match="subsampled"):
        save_split(tmp_path / "t.json", new)


def test_load_split_rejects_split_of_another_dataset(tmp_path):
    BUILDERS["dtd"](tmp_path)
    BUILDERS["food101"](tmp_path)
    split_file = save_split(tmp_path / "dtd.json", load_dataset("dtd", tmp_path, shots=1))
    with pytest.raises(DatasetError, match="does not match dataset 'food101'"):
        load_dataset("food101", tmp_path, split_file=split_file)


def test_load_split_reports_missing_image(tmp_path):
    BUILDERS["dtd"](tmp_path)
    few = load_dataset("dtd", tmp_path, shots=1)
    split_file = save_split(tmp_path / "dtd.json", few)
    missing = few.train[0].path
    (tmp_path / "dtd" / "images" / few.train[0].path.split("/images/")[1]).unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset("dtd", tmp_path, split_file=split_file)
    assert missing in str(info.value)


def test_load_dataset_shots_and_subsample(tmp_path):
    BUILDERS["imagenet"](tmp_path)
    task = load_dataset("imagenet", tmp_path, shots=2, seed=1, subsample="base")
    assert task.classnames == ["tench", "goldfish"]
    assert Counter(s.label for s in task.train) == {0: 2, 1: 2}
    assert len(task.test) == 2 and task.shots == 2
    assert (
        load_dataset("imagenet", tmp_path, shots=2, seed=1).train
        == load_dataset("imagenet", tmp_path, shots=2, seed=1).train
    )
