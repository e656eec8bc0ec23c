"""The generic ``imagefolder`` and ``csv`` datasets."""

from __future__ import annotations

import pytest

from data_fixtures import make_csv, make_imagefolder, write_image
from vlprompt.data import load_dataset
from vlprompt.errors import DatasetError


def test_imagefolder(tmp_path):
    make_imagefolder(tmp_path)
    task = load_dataset("imagefolder", tmp_path)
    assert task.classnames == ["cat", "golden retriever", "zebra"]
    assert (len(task.train), len(task.val), len(task.test)) == (15, 6, 6)
    assert task.template == "a photo of a {}."
    assert all(s.classname == task.classnames[s.label] for s in task.train)


def test_imagefolder_without_val_and_with_template(tmp_path):
    make_imagefolder(tmp_path, with_val=False, template="a close-up photo of a {}.")
    task = load_dataset("ImageFolder", tmp_path, shots=2, subsample="base")
    assert task.val == [] and task.template == "a close-up photo of a {}."
    assert task.classnames == ["cat", "golden retriever"] and len(task.train) == 4


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetError, match="train/<class_name>/"):
        load_dataset("imagefolder", tmp_path / "nowhere")
    make_imagefolder(tmp_path)
    write_image(tmp_path / "test" / "unicorn" / "x.jpg")
    with pytest.raises(DatasetError, match="unicorn"):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_bad_template(tmp_path):
    make_imagefolder(tmp_path, template="no placeholder")
    with pytest.raises(DatasetError, match="template.txt"):
        load_dataset("imagefolder", tmp_path)


def test_csv_with_classnames(tmp_path):
    csv_path = make_csv(tmp_path)
    for root in (tmp_path, csv_path):  # the folder or the file itself
        task = load_dataset("csv", root)
        assert task.classnames == ["cat", "sea lion", "zebra"]  # sorted names
        assert (len(task.train), len(task.val), len(task.test)) == (9, 3, 6)
        assert all(s.classname == task.classnames[s.label] for s in task.test)
        assert all("zebra" in s.path for s in task.train if s.label == 2)


def test_csv_with_labels(tmp_path):
    make_csv(tmp_path, header="path,label,split")
    task = load_dataset("csv", tmp_path)
    assert task.classnames == ["class 0", "class 1", "class 2"]
    (tmp_path / "classnames.txt").write_text("zebra\ncat\nsea_lion\n")
    task = load_dataset("csv", tmp_path, shots=1)
    assert task.classnames == ["zebra", "cat", "sea lion"]
    assert [s.label for s in task.train] == [0, 1, 2]


def test_csv_with_label_and_classname(tmp_path):
    make_csv(tmp_path, header="path,label,classname,split")
    task = load_dataset("csv", tmp_path)
    assert task.classnames == ["zebra", "cat", "sea lion"]


def test_csv_errors(tmp_path):
    with pytest.raises(DatasetError, match="path,label,split"):
        load_dataset("csv", tmp_path)
    (tmp_path / "bad.csv").write_text("file,cls\na.jpg,x\n")
    with pytest.raises(DatasetError, match="path,label,split"):
        load_dataset("csv", tmp_path / "bad.csv")
    write_image(tmp_path / "a.jpg")
    (tmp_path / "bad.csv").write_text("path,classname,split\na.jpg,x,training\n")
    with pytest.raises(DatasetError, match="line 2: split 'training'"):
        load_dataset("csv", tmp_path / "bad.csv")
    (tmp_path / "bad.csv").write_text("path,classname,split\nmissing.jpg,x,train\n")
    with pytest.raises(DatasetError, match="missing.jpg"):
        load_dataset("csv", tmp_path / "bad.csv")
    (tmp_path / "other.csv").write_text("path,classname,split\n")
    with pytest.raises(DatasetError, match="several CSV files"):
        load_dataset("csv", tmp_path)
