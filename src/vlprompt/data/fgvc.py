"""The five FGVC datasets of VPT in its json annotation format, registered as ``fgvc/<name>``.

Layout (``root`` is ``$DATA``, an ``FGVC``/``fgvc`` folder inside it, or the dataset folder itself)::

    $DATA/<dataset folder>/
        train.json  val.json  test.json     {"<relative image path>": <class id>, ...}
        <image dir>/...                     the json paths are relative to it

* ``fgvc/cub``: folder ``CUB_200_2011`` (or ``cub``), images under ``images/``, 200 classes;
* ``fgvc/nabirds``: folder ``nabirds``, images under ``images/``, 555 classes;
* ``fgvc/oxford_flowers``: folder ``OxfordFlower`` (or ``oxford_flowers``), paths relative to the folder, 102;
* ``fgvc/stanford_dogs``: folder ``Stanford-dogs`` (or ``stanford_dogs``), images under ``Images/``, 120;
* ``fgvc/stanford_cars``: folder ``Stanford-cars`` (or ``stanford_cars``), paths relative to the folder, 196.

Class ids are remapped to contiguous labels in sorted id order, as VPT does; the ids are taken from
the union of the three files (VPT takes them per file, which mislabels a split that lacks a class).
Splits: ``train`` / ``val`` / ``test`` as stored; :func:`vlprompt.data.vtab.select_split` gives ``tune``
(train → val) and ``final`` (train → test; VPT does not retrain on train+val for FGVC).

Class names, first found: ``classnames.txt`` in the dataset folder (one per line, label order);
CUB ``classes.txt`` / NABirds ``classes.txt`` (``<id> <name>`` lines); the image's class folder
(CUB ``001.Black_footed_Albatross/``, Dogs ``n02085620-Chihuahua/``); the Flowers-102 names; else
``"<dataset> class <id>"``.

Example:
    >>> import vlprompt as vp
    >>> task = vp.load_dataset("fgvc/cub", "~/data", split="tune")
    >>> task.num_classes
    200
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vlprompt.errors import DatasetError

from .layout import abspath, check_inside, check_some_exist, pretty_classname, read_text_lines
from .registry import register_dataset
from .task import Sample, Task
from .vtab import FLOWERS102

FGVC_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FgvcSpec:
    """One FGVC dataset: registry name, accepted folder names, image sub-folder, class count, template."""

    name: str
    display: str
    folders: tuple[str, ...]
    image_subdir: str
    num_classes: int
    template: str
    aliases: tuple[str, ...] = ()


FGVC_TASKS: tuple[FgvcSpec, ...] = (
    FgvcSpec("fgvc/cub", "CUB-200-2011", ("CUB_200_2011", "cub", "CUB", "cub200"), "images", 200,
             "a photo of a {}, a type of bird.", ("fgvc/cub200", "fgvc/cub_200_2011")),
    FgvcSpec("fgvc/nabirds", "NABirds", ("nabirds", "NABirds"), "images", 555,
             "a photo of a {}, a type of bird.", ()),
    FgvcSpec("fgvc/oxford_flowers", "Oxford Flowers", ("OxfordFlower", "oxford_flowers", "flowers102", "flowers"),
             "", 102, "a photo of a {}, a type of flower.", ("fgvc/flowers", "fgvc/flowers102")),
    FgvcSpec("fgvc/stanford_dogs", "Stanford Dogs", ("Stanford-dogs", "stanford_dogs", "StanfordDogs", "dogs"),
             "Images", 120, "a photo of a {}, a type of dog.", ("fgvc/dogs",)),
    FgvcSpec("fgvc/stanford_cars", "Stanford Cars", ("Stanford-cars", "stanford_cars", "StanfordCars", "cars"),
             "", 196, "a photo of a {}.", ("fgvc/cars",)),
)
FGVC_BY_NAME = {s.name: s for s in FGVC_TASKS}


def _layout_text(spec: FgvcSpec) -> str:
    img = f"{spec.image_subdir}/..." if spec.image_subdir else "<image folders>/..."
    return "\n".join([
        "    $DATA/", f"      {spec.folders[0]}/",
        "        train.json      {\"<relative image path>\": <class id>, ...}",
        "        val.json", "        test.json",
        f"        {img:<15s} (json paths are relative to {spec.image_subdir or 'the dataset folder'})",
    ])


def find_fgvc_dir(spec: FgvcSpec, root: str | os.PathLike[str]) -> Path:
    """The dataset folder (one holding ``train.json``) under ``root``, ``root/FGVC`` or ``root`` itself.

    Raises:
        DatasetError: not found; the message shows the expected layout.
    """
    base = abspath(root)
    for parent in (base, base / "FGVC", base / "fgvc"):
        for folder in spec.folders:
            if (parent / folder / "train.json").is_file():
                return parent / folder
    others = {f for o in FGVC_TASKS if o is not spec for f in o.folders}
    if (base / "train.json").is_file() and (base.name in spec.folders or base.name not in others):
        return base
    what = "does not exist" if not base.exists() else f"holds no '{spec.folders[0]}/train.json'"
    raise DatasetError(
        f"{spec.display} (VPT FGVC json format) not found: '{base}' {what}. Expected root to be the data "
        f"directory (or its FGVC/ folder, or the dataset folder itself), with the dataset folder named one of "
        f"{list(spec.folders)}, laid out as:\n" + _layout_text(spec)
    )


def _read_json_split(path: Path, spec: FgvcSpec) -> dict[str, int]:
    if not path.is_file():
        raise DatasetError(f"{spec.display}: annotation file '{path}' is missing. Expected:\n" + _layout_text(spec))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read '{path}': {exc}; expected a json object {{image path: class id}}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in data.items()
    ):
        raise DatasetError(f"'{path}' is malformed; expected a json object mapping image paths to integer class ids")
    image_dir = path.parent / spec.image_subdir if spec.image_subdir else path.parent
    for rel in data:
        check_inside(rel, f"annotation file '{path}'", image_dir)
    return data


def _id_names_file(path: Path) -> dict[int, str]:
    """``<id> <name>`` lines (CUB / NABirds ``classes.txt``); CUB's ``001.`` prefix is dropped."""
    out = {}
    for line in read_text_lines(path):
        cid, _, name = line.partition(" ")
        if cid.isdigit():
            out[int(cid)] = pretty_classname(re.sub(r"^\d+\.", "", name.strip()))
    return out


def _folder_name(rel: str, spec: FgvcSpec) -> str | None:
    parts = rel.replace("\\", "/").split("/")
    if len(parts) < 2:
        return None
    folder = parts[-2]
    if spec.name == "fgvc/cub":
        return pretty_classname(re.sub(r"^\d+\.", "", folder))
    if spec.name == "fgvc/stanford_dogs":
        return pretty_classname(folder.split("-", 1)[1]) if "-" in folder else None
    return None


def _classnames(spec: FgvcSpec, ddir: Path, ids: list[int], first_path: dict[int, str]) -> tuple[list[str], str]:
    override = ddir / "classnames.txt"
    if override.is_file():
        names = [pretty_classname(n) for n in read_text_lines(override)]
        if len(names) != len(ids):
            raise DatasetError(f"'{override}' holds {len(names)} names; expected {len(ids)} (one per class, id order)")
        return names, "classnames.txt"
    classes = ddir / "classes.txt"
    if spec.name in ("fgvc/cub", "fgvc/nabirds") and classes.is_file():
        table = _id_names_file(classes)
        if all(i in table for i in ids):
            return [table[i] for i in ids], "classes.txt"
    if spec.name == "fgvc/oxford_flowers" and len(ids) == len(FLOWERS102):
        return list(FLOWERS102), "dataset"
    folder_names = [_folder_name(first_path[i], spec) for i in ids]
    if all(folder_names):
        return [str(n) for n in folder_names], "image folders"
    short = spec.name.split("/", 1)[1].replace("_", " ")
    return [f"{short} class {i}" for i in ids], "generated"


def load_fgvc(name: str, root: str | os.PathLike[str]) -> Task:
    """Load FGVC dataset ``name`` (``"fgvc/cub"`` ...) in full: train / val / test of its json files.

    Raises:
        DatasetError: missing folder / json file / images, or a malformed json file.
    """
    spec = FGVC_BY_NAME[name]
    ddir = find_fgvc_dir(spec, root)
    image_dir = ddir / spec.image_subdir if spec.image_subdir else ddir
    if not image_dir.is_dir():
        raise DatasetError(f"{spec.display}: image folder '{image_dir}' is missing. Expected:\n" + _layout_text(spec))
    annos = {sp: _read_json_split(ddir / f"{sp}.json", spec) for sp in FGVC_SPLITS}
    ids = sorted({cid for anno in annos.values() for cid in anno.values()})
    contiguous = {cid: i for i, cid in enumerate(ids)}
    first_path: dict[int, str] = {}
    for anno in annos.values():
        for rel, cid in anno.items():
            first_path.setdefault(cid, rel)
    classnames, source = _classnames(spec, ddir, ids, first_path)
    samples = {
        sp: [Sample(os.path.join(os.fspath(image_dir), rel), contiguous[cid], classnames[contiguous[cid]])
             for rel, cid in anno.items()]
        for sp, anno in annos.items()
    }
    check_some_exist(samples, spec.display, image_dir)
    extra = {"format": "fgvc-json", "vtab_group": "fgvc", "class_ids": ids, "classnames_source": source,
             "expected_classes": spec.num_classes}
    return Task(name=name, classnames=classnames, template=spec.template, train=samples["train"],
                val=samples["val"], test=samples["test"], root=ddir, image_dir=image_dir, extra=extra)


def _make_loader(spec: FgvcSpec) -> Callable[[Path], Task]:
    def loader(root: Path) -> Task:
        return load_fgvc(spec.name, root)

    short = spec.name.split("/", 1)[1]
    loader.__name__ = loader.__qualname__ = f"load_fgvc_{short}"
    loader.__doc__ = f"Load {spec.display} ({spec.num_classes} classes) from VPT's train/val/test.json."
    return loader


for _spec in FGVC_TASKS:
    register_dataset(_spec.name, *_spec.aliases, f"fgvc_{_spec.name.split('/', 1)[1]}")(_make_loader(_spec))
