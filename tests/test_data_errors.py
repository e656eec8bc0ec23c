"""Clear errors for missing roots, missing split files, bad images and unknown names."""

from __future__ import annotations

import json
import os

import pytest

from data_fixtures import BUILDERS
from vlprompt.data import ImageDataset, Sample, check_readable, load_dataset
from vlprompt.errors import ConfigError, DatasetError


def test_missing_root_shows_expected_layout(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_dataset("eurosat", tmp_path / "does-not-exist")
    message = str(info.value)
    assert "does not exist" in message
    assert "eurosat/" in message and "2750/<class>/" in message and "split_zhou_EuroSAT.json" in message


@pytest.mark.parametrize(
    "name, expected",
    [
        ("imagenet", "images/train/<wnid>/"),
        ("fgvc_aircraft", "images_variant_train.txt"),
        ("imagenetv2", "imagenetv2-matched-frequency-format-val/"),
        ("imagenet_a", "imagenet-a/<wnid>/"),
        ("ucf101", "UCF-101-midframes/"),
    ],
)
def test_empty_data_dir_shows_layout(tmp_path, name, expected):
    with pytest.raises(DatasetError, match="Expected root") as info:
        load_dataset(name, tmp_path)
    assert expected in str(info.value)


def test_missing_split_file_is_its_own_error(tmp_path):
    ddir = BUILDERS["oxford_pets"](tmp_path)
    (ddir / "split_zhou_OxfordPets.json").unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset("oxford_pets", tmp_path)
    message = str(info.value)
    assert "split_zhou_OxfordPets.json" in message and "DATASETS.md" in message
    assert "does not regenerate" in message
    assert not (ddir / "split_zhou_OxfordPets.json").exists()  # nothing regenerated


def test_malformed_split_file(tmp_path):
    ddir = BUILDERS["dtd"](tmp_path)
    path = ddir / "split_zhou_DescribableTextures.json"
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset("dtd", tmp_path)
    path.write_text(json.dumps({"train": [["a.jpg", "zero", "banded"]], "val": [], "test": []}))
    with pytest.raises(DatasetError, match="entry 0 of 'train'"):
        load_dataset("dtd", tmp_path)
    path.write_text(json.dumps({"train": [], "val": []}))
    with pytest.raises(DatasetError, match="'test'"):
        load_dataset("dtd", tmp_path)


def test_wrong_image_dir_is_reported(tmp_path):
    ddir = BUILDERS["food101"](tmp_path)
    os.rename(ddir / "images", ddir / "imgs")
    with pytest.raises(DatasetError, match="images"):
        load_dataset("food101", tmp_path)


def test_imagenet_missing_classnames(tmp_path):
    ddir = BUILDERS["imagenet"](tmp_path)
    (ddir / "classnames.txt").unlink()
    with pytest.raises(DatasetError, match="classnames.txt"):
        load_dataset("imagenet", tmp_path / "imagenet")


def test_fgvc_unknown_variant(tmp_path):
    ddir = BUILDERS["fgvc_aircraft"](tmp_path)
    with open(ddir / "images_variant_test.txt", "a") as fh:
        fh.write("1234567 Spitfire\n")
    with pytest.raises(DatasetError, match="Spitfire"):
        load_dataset("fgvc_aircraft", tmp_path)


def test_unreadable_image_names_file_and_split(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    ds = ImageDataset([Sample(str(bad), 0, "x")], split="train")
    with pytest.raises(DatasetError) as info:
        ds[0]
    assert str(bad) in str(info.value) and "train" in str(info.value)
    with pytest.raises(DatasetError, match="test split"):
        check_readable([Sample(str(tmp_path / "missing.jpg"), 0, "x")], split="test")


def test_unknown_dataset_and_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'.*eurosat"):
        load_dataset("mnist", tmp_path)
    BUILDERS["dtd"](tmp_path)
    with pytest.raises(ConfigError, match="subsample"):
        load_dataset("dtd", tmp_path, subsample="half")
    with pytest.raises(ConfigError, match="shots"):
        load_dataset("dtd", tmp_path, shots=0)


def _listing(root):
    return sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_loading_never_writes_into_the_data_folder(tmp_path):
    for build in BUILDERS.values():
        build(tmp_path)
    before = _listing(tmp_path)
    for name in BUILDERS:
        load_dataset(name, tmp_path, shots=1 if name in ("eurosat", "imagenet") else None, subsample="base")
    assert _listing(tmp_path) == before
