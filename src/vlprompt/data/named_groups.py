"""SoftCPT's task groups by name: General-10, Plant-6 and Fashion-20 (their data stays the user's).

``load_task_group("general10", root)`` (also ``"General-10"``; case, ``-`` and ``_`` ignored) expands
to the members below, read from the data root in SoftCPT's layout (``datasets/*.py`` of the
reference):

* **general10** — the CoOp datasets minus ImageNet, in the reference's order (``general10.py``):
  Caltech101, DTD, EuroSAT, FGVC-Aircraft, Food-101, Oxford Flowers, Oxford Pets, Stanford Cars,
  SUN397, UCF101. Each is found where its registered loader looks (``<root>/caltech-101``,
  ``<root>/dtd``, ...); a ``split_dk_<Name>.json`` in that folder (SoftCPT's split, relative to the
  loader's image folder, its ``meta`` block naming the task) is used when present, else the
  loader's CoOp split with ``task_name.txt`` or the built-in task name (docs/deviations.md S1).
* **plant6** — six ``split_dk`` datasets: ``fruit_vegetable``, ``kaggle_flower_recognition``,
  ``kaggle_mushroom``, ``kaggle_vegetable``, ``PlantSeedlingV1``, ``PlantVillage`` (file names and
  image folders in :data:`PLANT6`).
* **fashion20** — one file with 20 tasks: ``<root>/fashion20/split_dk_Fashion20.json``, images under
  ``<root>/fashion20/images/<task id>/<class id>/``.

Missing data is one :class:`~vlprompt.errors.DatasetError` that names the group's expected layout.

Example:
    >>> group = vp.load_dataset("plant6", "~/data", shots=4, seed=1)
    >>> len(group.extra["tasks"])
    6
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vlprompt.errors import ConfigError, DatasetError

#: General-10's members, in the order of the reference's ``general10.py``: (registered dataset name,
#: folder under the data root, image folder inside it that the split paths start from).
GENERAL10: tuple[tuple[str, str, str], ...] = (
    ("caltech101", "caltech-101", "101_ObjectCategories"), ("dtd", "dtd", "images"), ("eurosat", "eurosat", "2750"),
    ("fgvc_aircraft", "fgvc_aircraft", "images"), ("food101", "food-101", "images"),
    ("oxford_flowers", "oxford_flowers", "jpg"), ("oxford_pets", "oxford_pets", "images"),
    ("stanford_cars", "stanford_cars", ""), ("sun397", "sun397", "SUN397"), ("ucf101", "ucf101", "UCF-101-midframes"),
)

#: Plant-6's members: (split file, image folder), relative to the data root (reference ``datasets/*.py``).
PLANT6: tuple[tuple[str, str], ...] = (
    ("fruit_vegetable/split_dk_FruitVegetable.json", "fruit_vegetable/images"),
    ("kaggle_flower_recognition/split_dk_kaggle_flower.json", "kaggle_flower_recognition/flowers"),
    ("kaggle_mushroom/split_dk_KaggleMushroom.json", "kaggle_mushroom/Mushrooms"),
    ("kaggle_vegetable/split_dk_KaggleVegetable.json", "kaggle_vegetable/images"),
    ("PlantSeedlingV1/split_dk_PlantSeedlingV1.json", "PlantSeedlingV1/Nonsegmented"),
    ("PlantVillage/split_dk_PlantVillage.json", "PlantVillage/Plant_leave_diseases_dataset_without_augmentation"),
)

#: Fashion-20: (split file, image folder) relative to the data root.
FASHION20: tuple[str, str] = ("fashion20/split_dk_Fashion20.json", "fashion20/images")

#: Canonical names of the named groups.
NAMED_GROUPS: tuple[str, ...] = ("general10", "plant6", "fashion20")

_DK_HELP = ("a split_dk_<Name>.json (train/val/test entries [relative_path, [label], [task]] + a meta block with "
            "taskid2cname and taskid2tname, or a task_name.txt beside a single-task file)")

LAYOUTS: dict[str, str] = {
    "general10": ("<root>/ holding the ten CoOp dataset folders "
                  + ", ".join(f"{f}/ (images in {f}/{d + '/' if d else ''})" for _, f, d in GENERAL10)
                  + f", each with {_DK_HELP} (SoftCPT's split), or else the CoOp split its vlprompt loader reads "
                  "(split_zhou_<Name>.json; FGVC-Aircraft's images_variant_*.txt) and an optional task_name.txt"),
    "plant6": ("<root>/" + ", <root>/".join(f"{f} (images under {d}/)" for f, d in PLANT6)
               + f"; each file is {_DK_HELP}"),
    "fashion20": f"<root>/{FASHION20[0]} with images under <root>/{FASHION20[1]}/<task id>/<class id>/; "
                 f"the file is {_DK_HELP}",
}


def named_group(spec: object) -> str | None:
    """The canonical name (``general10``, ``plant6``, ``fashion20``) if ``spec`` names one, else ``None``."""
    if not isinstance(spec, str):
        return None
    key = spec.lower().replace("-", "").replace("_", "")
    return key if key in NAMED_GROUPS else None


def named_group_members(name: str, root: str | os.PathLike[str] | None) -> list[dict[str, Any]]:
    """The members of a named group under ``root`` (see the module docstring).

    Raises:
        ConfigError: no data root given.
        DatasetError: a split file of Plant-6 / Fashion-20 is missing (names the group's layout).
    """
    canon = named_group(name)
    if canon is None:
        raise ConfigError(f"{name!r} is not a named task group; expected one of {NAMED_GROUPS}")
    if not root:
        raise ConfigError(f"task group {canon!r} needs the data root (--root / --data-root) holding "
                          f"{LAYOUTS[canon]}")
    base = Path(os.path.expanduser(os.fspath(root))).resolve()
    if canon == "general10":
        return [_general10_member(base, *entry) for entry in GENERAL10]
    pairs = PLANT6 if canon == "plant6" else (FASHION20,)
    missing = [f for f, _ in pairs if not (base / f).is_file()]
    if missing:
        raise DatasetError(f"task group {canon!r}: {len(missing)} split file(s) missing under '{base}' (first: "
                           f"'{base / missing[0]}'); expected {LAYOUTS[canon]}")
    return [{"split_dk": str(base / f), "image_dir": str(base / d)} for f, d in pairs]


def _general10_member(base: Path, dataset: str, folder: str, image_subdir: str) -> dict[str, Any]:
    """SoftCPT's split of one General-10 dataset when its folder holds one ``split_dk_*.json``, else the
    registered loader (CoOp's split)."""
    ddir = base / folder
    if not ddir.is_dir():
        raise DatasetError(f"task group 'general10': dataset folder '{ddir}' is missing; expected "
                           f"{LAYOUTS['general10']}")
    found = sorted(ddir.glob("split_dk_*.json"))
    if len(found) > 1:
        raise DatasetError(f"task group 'general10': '{ddir}' holds {len(found)} split_dk_*.json files "
                           f"({[f.name for f in found]}); expected one")
    if found:
        return {"split_dk": str(found[0]), "image_dir": str(ddir / image_subdir), "name": dataset, "dataset": dataset}
    return {"dataset": dataset, "root": str(base)}


def layout_error(name: str, exc: Exception) -> DatasetError:
    """``exc`` (a member's data error) re-raised with the named group's expected layout."""
    canon = named_group(name) or name
    return DatasetError(f"task group {canon!r}: {exc}; the group expects {LAYOUTS.get(canon, '')}")
