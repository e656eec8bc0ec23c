"""Miniature copies of every supported dataset, in their exact on-disk layouts, for the data tests.

Each ``make_<dataset>(data_root)`` writes ``data_root/<dataset folder>/`` with a few tiny (8x8) JPEGs
and the real metadata formats (``split_zhou_*.json``, ``classnames.txt``, FGVC variant lists) and
returns the dataset folder. ``EXPECTED[name]`` gives what loading it must produce.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from PIL import Image


@lru_cache(maxsize=64)
def jpeg_bytes(seed: int = 0, size: int = 8) -> bytes:
    """Bytes of a tiny JPEG whose colour depends on ``seed``."""
    colour = ((seed * 67) % 256, (seed * 131 + 40) % 256, (seed * 29 + 90) % 256)
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG")
    return buf.getvalue()


def write_image(path: Path, seed: int = 0) -> Path:
    """Write a tiny JPEG at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(seed % 64))
    return path


Entry = tuple[str, int, str]


def _json_dataset(
    data_root: Path, folder: str, image_subdir: str, split_file: str, splits: dict[str, list[Entry]]
) -> Path:
    """Write the images of ``splits`` and their ``split_zhou`` json."""
    ddir = data_root / folder
    image_dir = ddir / image_subdir if image_subdir else ddir
    image_dir.mkdir(parents=True, exist_ok=True)
    for entries in splits.values():
        for i, (rel, label, _) in enumerate(entries):
            write_image(image_dir / rel, label * 7 + i)
    (ddir / split_file).write_text(json.dumps({k: [list(e) for e in v] for k, v in splits.items()}))
    return ddir


def _three_way(per_class: dict[int, tuple[str, list[str]]], counts=(2, 1, 1)) -> dict[str, list[Entry]]:
    """Distribute each class's relative paths into train/val/test by ``counts``."""
    out: dict[str, list[Entry]] = {"train": [], "val": [], "test": []}
    for label, (name, paths) in per_class.items():
        start = 0
        for split, n in zip(("train", "val", "test"), counts, strict=True):
            out[split] += [(p, label, name) for p in paths[start : start + n]]
            start += n
    return out


def _folder_paths(folder: str, stem: str, n: int = 4, ext: str = "jpg") -> list[str]:
    return [f"{folder}/{stem}_{i:04d}.{ext}" for i in range(1, n + 1)]


def make_caltech101(data_root: Path) -> Path:
    per_class = {
        0: ("accordion", _folder_paths("accordion", "image")),
        1: ("airplane", _folder_paths("airplanes", "image")),
        2: ("face", _folder_paths("Faces", "image")),
    }
    return _json_dataset(
        data_root, "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", _three_way(per_class)
    )


def make_oxford_pets(data_root: Path) -> Path:
    per_class = {
        0: ("abyssinian", [f"Abyssinian_{i}.jpg" for i in range(1, 5)]),
        1: ("american_bulldog", [f"american_bulldog_{i}.jpg" for i in range(1, 5)]),
    }
    ddir = _json_dataset(
        data_root, "oxford_pets", "images", "split_zhou_OxfordPets.json", _three_way(per_class)
    )
    (ddir / "annotations").mkdir(exist_ok=True)
    (ddir / "annotations" / "trainval.txt").write_text("Abyssinian_1 1 1 1\n")
    return ddir


def make_stanford_cars(data_root: Path) -> Path:
    splits: dict[str, list[Entry]] = {
        "train": [
            ("cars_train/00001.jpg", 0, "2012 Tesla Model S Sedan"),
            ("cars_train/00002.jpg", 1, "2000 AM General Hummer SUV"),
            ("cars_train/00003.jpg", 0, "2012 Tesla Model S Sedan"),
        ],
        "val": [("cars_train/00004.jpg", 1, "2000 AM General Hummer SUV")],
        "test": [
            ("cars_test/00001.jpg", 0, "2012 Tesla Model S Sedan"),
            ("cars_test/00002.jpg", 1, "2000 AM General Hummer SUV"),
        ],
    }
    ddir = _json_dataset(data_root, "stanford_cars", "", "split_zhou_StanfordCars.json", splits)
    (ddir / "devkit").mkdir(exist_ok=True)
    return ddir


def make_oxford_flowers(data_root: Path) -> Path:
    names = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    per_class = {i: (n, [f"image_{i * 10 + k:05d}.jpg" for k in range(1, 5)]) for i, n in enumerate(names)}
    ddir = _json_dataset(
        data_root, "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", _three_way(per_class)
    )
    (ddir / "cat_to_name.json").write_text(json.dumps({str(i + 1): n for i, n in enumerate(names)}))
    return ddir


def make_food101(data_root: Path) -> Path:
    per_class = {
        0: ("apple_pie", _folder_paths("apple_pie", "10056")),
        1: ("baby_back_ribs", _folder_paths("baby_back_ribs", "10070")),
    }
    ddir = _json_dataset(data_root, "food-101", "images", "split_zhou_Food101.json", _three_way(per_class))
    (ddir / "meta").mkdir(exist_ok=True)
    return ddir


def make_sun397(data_root: Path) -> Path:
    per_class = {
        0: ("abbey", _folder_paths("a/abbey", "sun_aaa")),
        1: ("outdoor apartment_building", _folder_paths("a/apartment_building/outdoor", "sun_abb")),
        2: ("indoor bistro", _folder_paths("b/bistro/indoor", "sun_bcc")),
    }
    return _json_dataset(data_root, "sun397", "SUN397", "split_zhou_SUN397.json", _three_way(per_class))


def make_dtd(data_root: Path) -> Path:
    per_class = {
        0: ("banded", _folder_paths("banded", "banded")),
        1: ("bubbly", _folder_paths("bubbly", "bubbly")),
    }
    return _json_dataset(
        data_root, "dtd", "images", "split_zhou_DescribableTextures.json", _three_way(per_class)
    )


def make_eurosat(data_root: Path) -> Path:
    # The published file stores the renamed names; raw folder names are accepted too (label 1, 2).
    per_class = {
        0: ("Annual Crop Land", _folder_paths("AnnualCrop", "AnnualCrop")),
        1: ("Forest", _folder_paths("Forest", "Forest")),
        2: ("HerbaceousVegetation", _folder_paths("HerbaceousVegetation", "HerbaceousVegetation")),
        3: ("SeaLake", _folder_paths("SeaLake", "SeaLake")),
    }
    return _json_dataset(data_root, "eurosat", "2750", "split_zhou_EuroSAT.json", _three_way(per_class))


def make_ucf101(data_root: Path) -> Path:
    per_class = {
        0: ("Apply_Eye_Makeup", [f"Apply_Eye_Makeup/v_ApplyEyeMakeup_g0{i}_c01.jpg" for i in range(1, 5)]),
        1: ("Basketball", [f"Basketball/v_Basketball_g0{i}_c01.jpg" for i in range(1, 5)]),
    }
    return _json_dataset(
        data_root, "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", _three_way(per_class)
    )


def make_fgvc_aircraft(data_root: Path) -> Path:
    ddir = data_root / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Boeing 717"]
    ddir.mkdir(parents=True, exist_ok=True)
    (ddir / "variants.txt").write_text("\n".join(variants) + "\n")
    counts = {"train": 2, "val": 1, "test": 1}
    image_id = 1025794
    for split, n in counts.items():
        lines = []
        for label, variant in enumerate(variants):
            for _ in range(n):
                image_id += 1
                write_image(ddir / "images" / f"{image_id:07d}.jpg", label)
                lines.append(f"{image_id:07d} {variant}")
        (ddir / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return ddir


IMAGENET_CLASSES = [
    ("n01440764", "tench"),
    ("n01443537", "goldfish"),
    ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"),
]


def write_classnames(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {n}\n" for w, n in IMAGENET_CLASSES))


def make_imagenet(data_root: Path) -> Path:
    ddir = data_root / "imagenet"
    write_classnames(ddir / "classnames.txt")
    for label, (wnid, _) in enumerate(IMAGENET_CLASSES):
        for i in range(3):
            write_image(ddir / "images" / "train" / wnid / f"{wnid}_{i}.JPEG", label)
        write_image(ddir / "images" / "val" / wnid / f"ILSVRC2012_val_{label:08d}.JPEG", label)
    return ddir


def make_imagenetv2(data_root: Path) -> Path:
    ddir = data_root / "imagenetv2"
    write_classnames(ddir / "classnames.txt")
    for label in range(len(IMAGENET_CLASSES)):
        for i in range(2):
            write_image(
                ddir / "imagenetv2-matched-frequency-format-val" / str(label) / f"{label}abc{i}.jpeg", label
            )
    return ddir


def make_imagenet_sketch(data_root: Path) -> Path:
    ddir = data_root / "imagenet-sketch"
    write_classnames(ddir / "classnames.txt")
    for label, (wnid, _) in enumerate(IMAGENET_CLASSES):
        write_image(ddir / "images" / wnid / f"sketch_{label}.JPEG", label)
    return ddir


def _make_200(data_root: Path, folder: str, subdir: str) -> Path:
    ddir = data_root / folder
    write_classnames(ddir / "classnames.txt")
    for wnid in ("n01491361", "n01443537"):  # a subset of the classes, written out of order
        for i in range(2):
            write_image(ddir / subdir / wnid / f"{i}.jpg", i)
    (ddir / subdir / "README.txt").write_text("not a class\n")
    return ddir


def make_imagenet_a(data_root: Path) -> Path:
    return _make_200(data_root, "imagenet-adversarial", "imagenet-a")


def make_imagenet_r(data_root: Path) -> Path:
    return _make_200(data_root, "imagenet-rendition", "imagenet-r")


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "caltech101": make_caltech101,
    "oxford_pets": make_oxford_pets,
    "stanford_cars": make_stanford_cars,
    "oxford_flowers": make_oxford_flowers,
    "food101": make_food101,
    "sun397": make_sun397,
    "dtd": make_dtd,
    "eurosat": make_eurosat,
    "ucf101": make_ucf101,
    "fgvc_aircraft": make_fgvc_aircraft,
    "imagenet": make_imagenet,
    "imagenetv2": make_imagenetv2,
    "imagenet_sketch": make_imagenet_sketch,
    "imagenet_a": make_imagenet_a,
    "imagenet_r": make_imagenet_r,
}

#: name -> (class names, template, (n_train, n_val, n_test)) that loading the fixture must give.
EXPECTED: dict[str, tuple[list[str], str, tuple[int, int, int]]] = {
    "caltech101": (["accordion", "airplane", "face"], "a photo of a {}.", (6, 3, 3)),
    "oxford_pets": (["abyssinian", "american bulldog"], "a photo of a {}, a type of pet.", (4, 2, 2)),
    "stanford_cars": (
        ["2012 Tesla Model S Sedan", "2000 AM General Hummer SUV"],
        "a photo of a {}.",
        (3, 1, 2),
    ),
    "oxford_flowers": (
        ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"],
        "a photo of a {}, a type of flower.",
        (6, 3, 3),
    ),
    "food101": (["apple pie", "baby back ribs"], "a photo of {}, a type of food.", (4, 2, 2)),
    "sun397": (["abbey", "outdoor apartment building", "indoor bistro"], "a photo of a {}.", (6, 3, 3)),
    "dtd": (["banded", "bubbly"], "{} texture.", (4, 2, 2)),
    "eurosat": (
        ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Sea or Lake"],
        "a centered satellite photo of {}.",
        (8, 4, 4),
    ),
    "ucf101": (["Apply Eye Makeup", "Basketball"], "a photo of a person doing {}.", (4, 2, 2)),
    "fgvc_aircraft": (["707-320", "A300B4", "Boeing 717"], "a photo of a {}, a type of aircraft.", (6, 3, 3)),
    "imagenet": (["tench", "goldfish", "great white shark", "tiger shark"], "a photo of a {}.", (12, 4, 4)),
    "imagenetv2": (["tench", "goldfish", "great white shark", "tiger shark"], "a photo of a {}.", (0, 0, 8)),
    "imagenet_sketch": (
        ["tench", "goldfish", "great white shark", "tiger shark"],
        "a photo of a {}.",
        (0, 0, 4),
    ),
    "imagenet_a": (["goldfish", "tiger shark"], "a photo of a {}.", (0, 0, 4)),
    "imagenet_r": (["goldfish", "tiger shark"], "a photo of a {}.", (0, 0, 4)),
}


def make_imagefolder(root: Path, with_val: bool = True, template: str | None = None) -> Path:
    """``root/{train,val,test}/<class>/`` with 3 classes (one name with an underscore)."""
    for split, n in (("train", 5), ("val", 2), ("test", 2)):
        if split == "val" and not with_val:
            continue
        for label, cls in enumerate(("cat", "golden_retriever", "zebra")):
            for i in range(n):
                write_image(root / split / cls / f"{split}{i}.jpg", label)
    if template is not None:
        (root / "template.txt").write_text(template + "\n")
    return root


def make_csv(root: Path, header: str = "path,classname,split", name: str = "data.csv") -> Path:
    """``root/images/*.jpg`` plus a CSV with the given header; returns the CSV path."""
    rows = []
    classes = ["zebra", "cat", "sea_lion"]
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for label, cls in enumerate(classes):
            for i in range(n):
                rel = f"images/{cls}_{split}_{i}.jpg"
                write_image(root / rel, label)
                value = {"path,classname,split": cls, "path,label,split": str(label)}.get(header)
                if header == "path,label,classname,split":
                    rows.append(f"{rel},{label},{cls},{split}")
                else:
                    rows.append(f"{rel},{value},{split}")
    csv_path = root / name
    csv_path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return csv_path
