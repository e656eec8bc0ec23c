"""The CoOp few-shot benchmark datasets, read from their published on-disk layouts.

Nine datasets are read through CoOp's ``split_zhou_<Name>.json`` split files; FGVCAircraft uses its
official ``images_variant_{train,val,test}.txt`` lists. ``root`` is the data directory that holds the
dataset folders (``$DATA``), or a dataset folder itself.

Class names are taken from the split file entries (ordered by label), with underscores turned into
spaces; EuroSAT's raw folder names (``AnnualCrop`` ...) are renamed to CoOp's descriptive names
(``Annual Crop Land`` ...), whichever form the file stores. Missing split files are an error: vlprompt
never regenerates splits.

Example:
    >>> from vlprompt.data import load_dataset
    >>> task = load_dataset("eurosat", "~/data")  # reads ~/data/eurosat/split_zhou_EuroSAT.json
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vlprompt.errors import DatasetError

from .layout import (
    check_inside,
    check_some_exist,
    find_dataset_dir,
    pretty_classname,
    read_text_lines,
    require_dir,
    require_file,
)
from .registry import register_dataset
from .splitfile import classnames_from_entries, entries_to_samples, read_split_entries
from .task import Sample, Task
from .templates import get_template

COOP_DATASETS_URL = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"

#: EuroSAT folder name -> the descriptive class name CoOp uses in prompts.
EUROSAT_NEW_CNAMES: dict[str, str] = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@dataclass(frozen=True)
class JsonSplitSpec:
    """Where a split-json dataset lives and how its class names are read.

    Attributes:
        name: canonical registry name.
        display: the reference's dataset name (``DATASET.NAME``), used in messages.
        folder: folder under ``$DATA``.
        image_subdir: image folder inside ``folder`` that split paths are relative to ("" = ``folder``).
        split_file: the published split file name.
        layout: expected contents of ``folder`` (for error messages).
        rename: maps a stored class name to the prompt name (None = keep).
    """

    name: str
    display: str
    folder: str
    image_subdir: str
    split_file: str
    layout: tuple[str, ...]
    rename: Callable[[str], str] | None = None

    def markers(self) -> tuple[str, ...]:
        """Names whose presence identifies the dataset folder itself (generic names like ``images``
        are left out so that ``$DATA`` is never mistaken for a dataset folder)."""
        first = self.layout[0].split("/")[0]
        return tuple(m for m in (self.split_file, first) if m and m != "images")


def _rename_eurosat(name: str) -> str:
    return EUROSAT_NEW_CNAMES.get(name, name)


JSON_SPECS: tuple[JsonSplitSpec, ...] = (
    JsonSplitSpec(
        "caltech101",
        "Caltech101",
        "caltech-101",
        "101_ObjectCategories",
        "split_zhou_Caltech101.json",
        ("101_ObjectCategories/<class>/<image>.jpg", "split_zhou_Caltech101.json"),
    ),
    JsonSplitSpec(
        "oxford_pets",
        "OxfordPets",
        "oxford_pets",
        "images",
        "split_zhou_OxfordPets.json",
        ("images/<Breed_N>.jpg", "annotations/", "split_zhou_OxfordPets.json"),
    ),
    JsonSplitSpec(
        "stanford_cars",
        "StanfordCars",
        "stanford_cars",
        "",
        "split_zhou_StanfordCars.json",
        ("cars_train/<image>.jpg", "cars_test/<image>.jpg", "devkit/", "split_zhou_StanfordCars.json"),
    ),
    JsonSplitSpec(
        "oxford_flowers",
        "OxfordFlowers",
        "oxford_flowers",
        "jpg",
        "split_zhou_OxfordFlowers.json",
        ("jpg/image_<N>.jpg", "imagelabels.mat", "cat_to_name.json", "split_zhou_OxfordFlowers.json"),
    ),
    JsonSplitSpec(
        "food101",
        "Food101",
        "food-101",
        "images",
        "split_zhou_Food101.json",
        ("images/<class>/<image>.jpg", "meta/", "split_zhou_Food101.json"),
    ),
    JsonSplitSpec(
        "sun397",
        "SUN397",
        "sun397",
        "SUN397",
        "split_zhou_SUN397.json",
        ("SUN397/<letter>/<class>/.../<image>.jpg", "split_zhou_SUN397.json"),
    ),
    JsonSplitSpec(
        "dtd",
        "DescribableTextures",
        "dtd",
        "images",
        "split_zhou_DescribableTextures.json",
        ("images/<class>/<image>.jpg", "split_zhou_DescribableTextures.json"),
    ),
    JsonSplitSpec(
        "eurosat",
        "EuroSAT",
        "eurosat",
        "2750",
        "split_zhou_EuroSAT.json",
        ("2750/<class>/<image>.jpg", "split_zhou_EuroSAT.json"),
        rename=_rename_eurosat,
    ),
    JsonSplitSpec(
        "ucf101",
        "UCF101",
        "ucf101",
        "UCF-101-midframes",
        "split_zhou_UCF101.json",
        ("UCF-101-midframes/<Action_Name>/<video>.jpg", "split_zhou_UCF101.json"),
    ),
)

_ALIASES: dict[str, tuple[str, ...]] = {
    "caltech101": ("caltech",),
    "oxford_pets": ("pets",),
    "stanford_cars": ("cars",),
    "oxford_flowers": ("flowers102", "flowers"),
    "food101": ("food",),
    "sun397": ("sun",),
    "dtd": ("DescribableTextures", "textures"),
    "eurosat": (),
    "ucf101": ("ucf",),
}


def load_json_split_dataset(spec: JsonSplitSpec, root: str | os.PathLike[str]) -> Task:
    """Load a split-json dataset in full (train/val/test of the published split).

    Raises:
        DatasetError: missing dataset folder, split file or image folder, or a malformed split file.
    """
    ddir = find_dataset_dir(root, spec.folder, spec.markers(), spec.display, spec.layout)
    split_path = ddir / spec.split_file
    if not split_path.is_file():
        raise DatasetError(
            f"{spec.display}: split file '{split_path}' is missing. vlprompt uses the published CoOp splits "
            f"and does not regenerate them (a regenerated split depends on the seed, so results would not "
            f"be comparable with papers). Download '{spec.split_file}' (the split_zhou_*.json files linked "
            f"from CoOp's DATASETS.md, {COOP_DATASETS_URL}) and place it at '{split_path}'."
        )
    image_dir = ddir / spec.image_subdir if spec.image_subdir else ddir
    require_dir(image_dir, spec.display, spec.folder, spec.layout)
    entries = read_split_entries(split_path)
    classnames = classnames_from_entries(entries, split_path, spec.rename)
    samples = {split: entries_to_samples(items, image_dir, classnames) for split, items in entries.items()}
    check_some_exist(samples, spec.display, image_dir)
    return Task(
        name=spec.name,
        classnames=classnames,
        template=get_template(spec.name),
        train=samples["train"],
        val=samples["val"],
        test=samples["test"],
        root=ddir,
        image_dir=image_dir,
        extra={"split_file": str(split_path)},
    )


def _make_loader(spec: JsonSplitSpec) -> Callable[[Path], Task]:
    def loader(root: Path) -> Task:
        return load_json_split_dataset(spec, root)

    loader.__name__ = loader.__qualname__ = f"load_{spec.name}"
    loader.__doc__ = (
        f"Load {spec.display} from ``$DATA/{spec.folder}/`` ({spec.split_file}); template "
        f"{get_template(spec.name)!r}."
    )
    return loader


for _spec in JSON_SPECS:
    register_dataset(_spec.name, _spec.display, *_ALIASES[_spec.name])(_make_loader(_spec))


# --------------------------------------------------------------------------------------- FGVCAircraft

_AIRCRAFT_LAYOUT = (
    "images/<imageid>.jpg",
    "variants.txt",
    "images_variant_train.txt   (lines '<imageid> <variant name>')",
    "images_variant_val.txt",
    "images_variant_test.txt",
)


@register_dataset("fgvc_aircraft", "FGVCAircraft", "aircraft", "fgvc")
def load_fgvc_aircraft(root: Path) -> Task:
    """Load FGVCAircraft from ``$DATA/fgvc_aircraft/`` (the ``data/`` folder of fgvc-aircraft-2013b).

    Class names are the 100 lines of ``variants.txt`` (label = line index); the official
    ``images_variant_{train,val,test}.txt`` lists give the splits.
    """
    ddir = find_dataset_dir(
        root, "fgvc_aircraft", ("variants.txt", "images_variant_train.txt"), "FGVCAircraft", _AIRCRAFT_LAYOUT
    )
    variants_file = require_file(ddir / "variants.txt", "FGVCAircraft", "fgvc_aircraft", _AIRCRAFT_LAYOUT)
    raw_names = read_text_lines(variants_file)
    index = {name: i for i, name in reversed(list(enumerate(raw_names)))}
    classnames = [pretty_classname(n) for n in raw_names]
    image_dir = require_dir(ddir / "images", "FGVCAircraft", "fgvc_aircraft", _AIRCRAFT_LAYOUT)
    splits: dict[str, list[Sample]] = {}
    for split in ("train", "val", "test"):
        list_file = require_file(
            ddir / f"images_variant_{split}.txt", "FGVCAircraft", "fgvc_aircraft", _AIRCRAFT_LAYOUT
        )
        items = []
        for line in read_text_lines(list_file):
            image_id, _, variant = line.partition(" ")
            variant = variant.strip()
            if variant not in index:
                raise DatasetError(
                    f"FGVCAircraft: line {line!r} of '{list_file}' names variant {variant!r}, which is "
                    f"not in '{variants_file}'; expected '<imageid> <variant>' with a listed variant"
                )
            label = index[variant]
            check_inside(image_id, f"FGVCAircraft: line {line!r} of '{list_file}'", image_dir)
            items.append(Sample(os.path.join(image_dir, f"{image_id}.jpg"), label, classnames[label]))
        splits[split] = items
    check_some_exist(splits, "FGVCAircraft", image_dir)
    return Task(
        name="fgvc_aircraft",
        classnames=classnames,
        template=get_template("fgvc_aircraft"),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        root=ddir,
        image_dir=image_dir,
    )
