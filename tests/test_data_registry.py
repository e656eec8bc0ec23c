"""The dataset registry: forgiving name lookup, listing, registration of custom loaders."""

from __future__ import annotations

import pytest

from vlprompt.data import get_loader, list_datasets, register_dataset
from vlprompt.data.registry import canonical_name
from vlprompt.data.task import Task
from vlprompt.errors import ConfigError


@pytest.mark.parametrize(
    "name, canonical",
    [
        ("EuroSAT", "eurosat"),
        ("eurosat", "eurosat"),
        ("oxford_pets", "oxford_pets"),
        ("OxfordPets", "oxford_pets"),
        ("imagenet-v2", "imagenetv2"),
        ("imagenetv2", "imagenetv2"),
        ("ImageNet_Sketch", "imagenet_sketch"),
        ("IMAGEFOLDER", "imagefolder"),
        ("CSV", "csv"),
    ],
)
def test_lookup_ignores_case_dashes_underscores(name, canonical):
    assert canonical_name(name) == canonical
    assert get_loader(name) is get_loader(canonical)


def test_unknown_name_lists_known_names():
    with pytest.raises(ConfigError) as info:
        get_loader("cifar-10")
    message = str(info.value)
    assert "cifar-10" in message
    for known in ("eurosat", "imagenet", "imagefolder", "csv"):
        assert known in message


def test_list_is_sorted_canonical_names():
    names = list_datasets()
    assert names == sorted(names)
    assert len([n for n in names if not n.startswith(("tiny/", "vtab/", "fgvc/", "real/"))]) == 17
    assert len([n for n in names if n.startswith("vtab/")]) == 19
    assert len([n for n in names if n.startswith("fgvc/")]) == 5
    assert len([n for n in names if n.startswith("real/")]) == 5
    assert "OxfordPets" not in names


def test_register_custom_loader_and_conflicts(tmp_path):
    @register_dataset("toy_set_for_test", "toy-alias")
    def load_toy(root):
        return Task("toy_set_for_test", ["a", "b"], "{}", [], [], [], root)

    assert get_loader("ToySetForTest") is load_toy
    assert get_loader("toyalias")(tmp_path).classnames == ["a", "b"]

    def other(root):  # a different function under a taken name
        raise AssertionError

    with pytest.raises(ConfigError, match="already registered"):
        register_dataset("EuroSAT")(other)
