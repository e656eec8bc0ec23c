"""Miniature VTAB-1k (NOAH extracted layout) and FGVC (VPT json) datasets, and a trimmed tiny suite.

``make_vtab(data_root, folder)`` writes ``data_root/vtab-1k/<folder>/`` with ``images/{train800,val200,
train800val200,test}/<i>.jpg`` and the four ``"<relative path> <label>"`` lists; ``make_fgvc(data_root,
name)`` writes one FGVC dataset folder with ``train.json`` / ``val.json`` / ``test.json`` and its images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from data_fixtures import write_image

#: lines per list of the miniature VTAB tasks
VTAB_COUNTS = {"train800": 6, "val200": 3, "test": 5}


def make_vtab(data_root: Path, folder: str, num_classes: int, counts: dict[str, int] | None = None) -> Path:
    """One VTAB-1k task folder; labels cycle from ``num_classes - 1`` down so the largest label occurs."""
    counts = counts or VTAB_COUNTS
    tdir = data_root / "vtab-1k" / folder
    lines: dict[str, list[str]] = {}
    for key, n in counts.items():
        lines[key] = []
        for i in range(n):
            label = (num_classes - 1 - i) % num_classes
            rel = f"images/{key}/{i}.jpg"
            write_image(tdir / rel, label + i)
            lines[key].append(f"{rel} {label}")
    both = []
    for i, line in enumerate(lines["train800"] + lines["val200"]):
        rel = f"images/train800val200/{i}.jpg"
        write_image(tdir / rel, i)
        both.append(f"{rel} {line.rsplit(' ', 1)[1]}")
    lines["train800val200"] = both
    for key, ls in lines.items():
        (tdir / f"{key}.txt").write_text("".join(f"{x}\n" for x in ls))
    return tdir


# ------------------------------------------------------------------------------------------ FGVC
def _write_fgvc(ddir: Path, image_dir: Path, splits: dict[str, dict[str, int]]) -> Path:
    for i, (_, anno) in enumerate(sorted(splits.items())):
        for j, (rel, cid) in enumerate(anno.items()):
            write_image(image_dir / rel, cid + i + j)
    ddir.mkdir(parents=True, exist_ok=True)
    for split, anno in splits.items():
        (ddir / f"{split}.json").write_text(json.dumps(anno))
    return ddir


def make_cub(data_root: Path) -> Path:
    """CUB_200_2011 with 1-based ids 1..3, ``classes.txt``, and a val split lacking class 2."""
    ddir = data_root / "CUB_200_2011"
    folders = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross", 3: "003.Sooty_Albatross"}
    split = {
        "train": {f"{folders[c]}/train_{c}_{k}.jpg": c for c in folders for k in range(2)},
        "val": {f"{folders[c]}/val_{c}.jpg": c for c in (1, 3)},
        "test": {f"{folders[c]}/test_{c}.jpg": c for c in folders},
    }
    (ddir).mkdir(parents=True, exist_ok=True)
    (ddir / "classes.txt").write_text("".join(f"{c} {f}\n" for c, f in folders.items()))
    return _write_fgvc(ddir, ddir / "images", split)


def make_nabirds(data_root: Path) -> Path:
    """NABirds with non-contiguous ids and ``classes.txt`` (which also lists unused parent ids)."""
    ddir = data_root / "nabirds"
    ids = [295, 296, 400]
    split = {sp: {f"{c:04d}/{sp}_{c}.jpg": c for c in ids} for sp in ("train", "val", "test")}
    ddir.mkdir(parents=True, exist_ok=True)
    (ddir / "classes.txt").write_text("0 Birds\n295 Forster's Tern\n296 Common Tern\n400 Snowy Egret\n")
    return _write_fgvc(ddir, ddir / "images", split)


def make_flowers(data_root: Path) -> Path:
    """OxfordFlower: 102 ids (1..102), images at the dataset root under ``jpg/``."""
    ddir = data_root / "OxfordFlower"
    split = {
        "train": {f"jpg/image_{c:05d}.jpg": c for c in range(1, 103)},
        "val": {"jpg/image_01000.jpg": 5},
        "test": {"jpg/image_02000.jpg": 102, "jpg/image_02001.jpg": 1},
    }
    return _write_fgvc(ddir, ddir, split)


def make_dogs(data_root: Path) -> Path:
    ddir = data_root / "Stanford-dogs"
    folders = {0: "n02085620-Chihuahua", 1: "n02085782-Japanese_spaniel"}
    split = {sp: {f"{f}/{sp}_{c}.jpg": c for c, f in folders.items()} for sp in ("train", "val", "test")}
    return _write_fgvc(ddir, ddir / "Images", split)


def make_cars(data_root: Path) -> Path:
    ddir = data_root / "Stanford-cars"
    split = {sp: {f"car_ims/{sp}_{c:05d}.jpg": c for c in (1, 2, 3)} for sp in ("train", "val", "test")}
    return _write_fgvc(ddir, ddir, split)


FGVC_BUILDERS = {
    "fgvc/cub": make_cub, "fgvc/nabirds": make_nabirds, "fgvc/oxford_flowers": make_flowers,
    "fgvc/stanford_dogs": make_dogs, "fgvc/stanford_cars": make_cars,
}
#: name -> (class names, (n_train, n_val, n_test))
FGVC_EXPECTED = {
    "fgvc/cub": (["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"], (6, 2, 3)),
    "fgvc/nabirds": (["Forster's Tern", "Common Tern", "Snowy Egret"], (3, 3, 3)),
    "fgvc/oxford_flowers": (None, (102, 1, 2)),
    "fgvc/stanford_dogs": (["Chihuahua", "Japanese spaniel"], (2, 2, 2)),
    "fgvc/stanford_cars": (["stanford cars class 1", "stanford cars class 2", "stanford cars class 3"], (3, 3, 3)),
}


# ------------------------------------------------------------------------------------ tiny suite
TINY_VTAB = ("vtab_eurosat", "vtab_clevr_count")


def trimmed_tiny_suite(source: Path, dest: Path, counts: dict[str, int]) -> Path:
    """A copy of ``source`` (a generated tiny suite) holding only :data:`TINY_VTAB`, each list cut to its first
    ``counts[list]`` lines (the suite cycles labels, so the cut stays class-balanced) and only their images."""
    dest.mkdir(parents=True)
    for name in ("manifest.json", "groups.json"):
        shutil.copy(source / name, dest / name)
    for task in TINY_VTAB:
        src, dst = source / task, dest / task
        dst.mkdir()
        for name in ("classnames.txt", "template.txt", "task_name.txt"):
            shutil.copy(src / name, dst / name)
        lists = {k: (src / f"{k}.txt").read_text().splitlines()[: counts[k]] for k in ("train800", "val200", "test")}
        lists["train800val200"] = lists["train800"] + lists["val200"]
        for key, lines in lists.items():
            (dst / f"{key}.txt").write_text("".join(f"{x}\n" for x in lines))
            for line in lines:
                rel = line.rsplit(" ", 1)[0]
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                if not (dst / rel).exists():
                    shutil.copy(src / rel, dst / rel)
    return dest
