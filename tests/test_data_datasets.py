"""Loading each of the 15 benchmark datasets from a miniature copy in its exact on-disk layout."""

from __future__ import annotations

import os

import pytest

from data_fixtures import BUILDERS, EXPECTED
from vlprompt.data import list_datasets, load_dataset
from vlprompt.data.templates import IMAGENET_SELECT_TEMPLATES, TEMPLATES, ensemble_templates
from vlprompt.errors import DatasetError

ALL_15 = sorted(BUILDERS)


def test_all_benchmarks_registered():
    assert len(ALL_15) == 15
    assert set(ALL_15) <= set(list_datasets())
    assert {"imagefolder", "csv"} <= set(list_datasets())


@pytest.mark.parametrize("name", ALL_15)
def test_load_full_dataset(tmp_path, name):
    BUILDERS[name](tmp_path)
    classnames, template, (n_train, n_val, n_test) = EXPECTED[name]
    task = load_dataset(name, tmp_path)
    assert task.name == name
    assert task.classnames == classnames
    assert task.num_classes == len(classnames)
    assert task.template == template == TEMPLATES[name]
    assert (len(task.train), len(task.val), len(task.test)) == (n_train, n_val, n_test)
    assert task.shots is None and task.subsample == "all"
    for sample in task.train + task.val + task.test:
        assert os.path.isabs(sample.path) and os.path.isfile(sample.path)
        assert sample.classname == task.classnames[sample.label]
    # every class appears in test
    assert {s.label for s in task.test} == set(range(task.num_classes))


@pytest.mark.parametrize("name", ALL_15)
def test_root_may_be_the_dataset_folder(tmp_path, name):
    ddir = BUILDERS[name](tmp_path)
    a = load_dataset(name, tmp_path)
    b = load_dataset(name, ddir)
    assert a.classnames == b.classnames
    assert [s.path for s in a.test] == [s.path for s in b.test]


def test_imagenet_val_is_test(tmp_path):
    BUILDERS["imagenet"](tmp_path)
    task = load_dataset("ImageNet", tmp_path)
    assert task.val == task.test and task.val is not task.test
    assert all("/images/val/" in s.path for s in task.test)
    assert task.extra["wnids"][0] == "n01440764"


def test_imagenet_a_r_labels_map_back_to_1000_way(tmp_path):
    for name in ("imagenet_a", "imagenet_r"):
        BUILDERS[name](tmp_path)
        task = load_dataset(name, tmp_path)
        assert task.extra["wnids"] == ["n01443537", "n01491361"]  # sorted folders, README ignored
        assert task.extra["imagenet_labels"] == [1, 3]
        assert sorted({s.label for s in task.test}) == [0, 1]


def test_imagenetv2_label_is_folder_number(tmp_path):
    BUILDERS["imagenetv2"](tmp_path)
    task = load_dataset("imagenet-v2", tmp_path)
    for s in task.test:
        assert os.path.basename(os.path.dirname(s.path)) == str(s.label)


def test_variant_falls_back_to_imagenet_classnames(tmp_path):
    BUILDERS["imagenet"](tmp_path)
    ddir = BUILDERS["imagenet_sketch"](tmp_path)
    (ddir / "classnames.txt").unlink()
    assert load_dataset("imagenet-sketch", tmp_path).classnames == EXPECTED["imagenet_sketch"][0]


def test_split_paths_joined_with_image_dir(tmp_path):
    BUILDERS["stanford_cars"](tmp_path)
    BUILDERS["sun397"](tmp_path)
    cars = load_dataset("StanfordCars", tmp_path)
    assert cars.test[0].path == str(tmp_path / "stanford_cars" / "cars_test" / "00001.jpg")
    sun = load_dataset("SUN397", tmp_path)
    assert sun.image_dir == tmp_path / "sun397" / "SUN397"


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("EuroSAT", "eurosat"),
        ("OxfordPets", "oxford_pets"),
        ("oxford-pets", "oxford_pets"),
        ("DescribableTextures", "dtd"),
        ("Flowers102", "oxford_flowers"),
        ("OxfordFlowers", "oxford_flowers"),
        ("FGVCAircraft", "fgvc_aircraft"),
        ("ImageNetV2", "imagenetv2"),
        ("ImageNetSketch", "imagenet_sketch"),
        ("imagenet-a", "imagenet_a"),
        ("ImageNetR", "imagenet_r"),
        ("Food-101", "food101"),
        ("Caltech101", "caltech101"),
    ],
)
def test_aliases_load(tmp_path, alias, canonical):
    BUILDERS[canonical](tmp_path)
    assert load_dataset(alias, tmp_path).name == canonical


def test_ensemble_templates():
    assert ensemble_templates("imagenet") == list(IMAGENET_SELECT_TEMPLATES)
    assert len(IMAGENET_SELECT_TEMPLATES) == 7
    dtd = ensemble_templates("dtd")
    assert dtd[:7] == list(IMAGENET_SELECT_TEMPLATES) and dtd[7] == "{} texture."
    assert all(t.count("{}") == 1 for t in TEMPLATES.values())


def test_imagenet_classnames_with_more_classes_than_folders_is_an_error(tmp_path):
    ddir = BUILDERS["imagenet"](tmp_path)
    with open(ddir / "classnames.txt", "a") as f:
        f.write("n99999999 extra class\n")
    with pytest.raises(DatasetError, match="lists .* classes but .* has images of only .*n99999999"):
        load_dataset("imagenet", tmp_path)
