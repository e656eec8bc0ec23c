"""Generic datasets for your own images: an image-folder tree or a CSV file.

``imagefolder`` layout::

    root/
      train/<class_name>/<image>.jpg      class names = sorted train folder names, "_" -> " "
      val/<class_name>/<image>.jpg        optional: without it the val split is empty
      test/<class_name>/<image>.jpg
      template.txt                        optional: one line with "{}", default "a photo of a {}."

``csv`` layout: ``root`` is a ``.csv`` file, or a folder holding exactly one. The header is
``path,label,split`` or ``path,classname,split`` (or both ``label`` and ``classname``); ``path`` is
relative to the CSV's folder (absolute paths are kept), ``split`` is ``train``, ``val`` or ``test``.
With ``classname``, labels are the sorted unique names unless a ``label`` column gives them. With
integer ``label`` only, names come from an optional ``classnames.txt`` (one per line, line i = label i)
next to the CSV, else they are ``"class 0"``, ``"class 1"``, .... An optional ``template.txt`` next to
the CSV sets the template.

Example:
    >>> from vlprompt.data import load_dataset
    >>> task = load_dataset("imagefolder", "~/my_photos", shots=8)
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from vlprompt.errors import DatasetError

from .layout import abspath, layout_tree, list_images, list_subdirs, pretty_classname, read_text_lines
from .registry import register_dataset
from .task import Sample, Task
from .templates import DEFAULT_TEMPLATE

SPLITS = ("train", "val", "test")
_FOLDER_LAYOUT = (
    "train/<class_name>/<image>.jpg",
    "val/<class_name>/<image>.jpg     (optional)",
    "test/<class_name>/<image>.jpg",
    'template.txt                    (optional, e.g. "a photo of a {}.")',
)


def read_template(folder: Path) -> str:
    """The first non-empty line of ``folder/template.txt``, or ``"a photo of a {}."`` without one.

    Raises:
        DatasetError: the template does not contain exactly one ``{}``.
    """
    path = folder / "template.txt"
    if not path.is_file():
        return DEFAULT_TEMPLATE
    lines = read_text_lines(path)
    template = lines[0] if lines else ""
    if template.count("{}") != 1:
        raise DatasetError(
            f"'{path}' holds the template {template!r}; expected one line with exactly one '{{}}' "
            "where the class name goes, e.g. 'a photo of a {}.'"
        )
    return template


@register_dataset("imagefolder", "image_folder", "folder")
def load_imagefolder(root: Path) -> Task:
    """Load ``root/{train,val,test}/<class>/*`` (see the module docstring)."""
    base = abspath(root)
    if not (base / "train").is_dir() or not (base / "test").is_dir():
        missing = "does not exist" if not base.is_dir() else "has no 'train/' and 'test/' folders"
        raise DatasetError(
            f"imagefolder dataset not found: '{base}' {missing}. Expected this layout:\n"
            + layout_tree(base.name or str(base), _FOLDER_LAYOUT, top=str(base.parent))
        )
    folders = list_subdirs(base / "train")
    if not folders:
        raise DatasetError(
            f"imagefolder: '{base / 'train'}' has no class folders; expected train/<class_name>/"
        )
    labels = {folder: i for i, folder in enumerate(folders)}
    classnames = [pretty_classname(f) for f in folders]
    if len(set(classnames)) != len(classnames):
        raise DatasetError(
            f"imagefolder: class folders in '{base / 'train'}' give duplicate names {classnames}; "
            "expected folder names that differ after '_' -> ' '"
        )
    splits: dict[str, list[Sample]] = {}
    for split in SPLITS:
        split_dir = base / split
        splits[split] = []
        if not split_dir.is_dir():
            continue
        for folder in list_subdirs(split_dir):
            if folder not in labels:
                raise DatasetError(
                    f"imagefolder: class folder '{split_dir / folder}' has no counterpart in "
                    f"'{base / 'train'}'; expected {split}/ to use the classes of train/"
                )
            label = labels[folder]
            splits[split] += [
                Sample(os.fspath(p), label, classnames[label]) for p in list_images(split_dir / folder)
            ]
    for split in ("train", "test"):
        if not splits[split]:
            raise DatasetError(
                f"imagefolder: no images found under '{base / split}'; expected {split}/<class>/*.jpg"
            )
    return Task(
        name="imagefolder",
        classnames=classnames,
        template=read_template(base),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        root=base,
        image_dir=base,
        extra={"has_val": (base / "val").is_dir()},
    )


# ------------------------------------------------------------------------------------------------ CSV


def _find_csv(root: Path) -> Path:
    base = abspath(root)
    if base.is_file():
        return base
    if base.is_dir():
        found = sorted(p for p in base.glob("*.csv") if p.is_file())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise DatasetError(
                f"csv: '{base}' holds several CSV files ({names}); pass the path of one of them"
            )
    raise DatasetError(
        f"csv dataset not found: '{base}' is neither a .csv file nor a folder holding one. Expected a CSV "
        "with header 'path,label,split' or 'path,classname,split' (paths relative to the CSV's folder, "
        "split one of train/val/test)"
    )


def _read_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"csv: cannot read '{path}' ({exc}); expected a UTF-8 CSV file") from exc
    if "path" not in header or "split" not in header or not ({"label", "classname"} & set(header)):
        raise DatasetError(
            f"csv: '{path}' has header {header}; expected columns 'path,label,split' or "
            "'path,classname,split'"
        )
    if not rows:
        raise DatasetError(f"csv: '{path}' has a header but no rows; expected one row per image")
    return rows


def _csv_labels(rows: list[dict[str, str]], path: Path) -> tuple[list[int], list[str]]:
    """Per-row labels and the class names (see the module docstring for the rules)."""
    has_label = "label" in rows[0]
    has_name = "classname" in rows[0]
    if has_label:
        labels = []
        for i, row in enumerate(rows, start=2):
            try:
                label = int(row["label"])
            except ValueError:
                label = -1
            if label < 0:
                raise DatasetError(
                    f"csv: '{path}' line {i}: label {row['label']!r}; expected an integer >= 0"
                )
            labels.append(label)
        n = max(labels) + 1
        if has_name:
            names: dict[int, str] = {}
            for i, (row, label) in enumerate(zip(rows, labels, strict=True), start=2):
                name = pretty_classname(row["classname"])
                if names.setdefault(label, name) != name:
                    raise DatasetError(
                        f"csv: '{path}' line {i}: label {label} is called {name!r} here and "
                        f"{names[label]!r} before; expected one class name per label"
                    )
            return labels, [names.get(i, f"class {i}") for i in range(n)]
        names_file = path.parent / "classnames.txt"
        if names_file.is_file():
            listed = [pretty_classname(x) for x in read_text_lines(names_file)]
            if len(listed) < n:
                raise DatasetError(
                    f"csv: '{names_file}' lists {len(listed)} class names but '{path}' uses label {n - 1}; "
                    "expected one name per label"
                )
            return labels, listed
        return labels, [f"class {i}" for i in range(n)]
    classnames = sorted({pretty_classname(row["classname"]) for row in rows})
    index = {name: i for i, name in enumerate(classnames)}
    return [index[pretty_classname(row["classname"])] for row in rows], classnames


@register_dataset("csv")
def load_csv(root: Path) -> Task:
    """Load a CSV-described dataset (see the module docstring)."""
    path = _find_csv(root)
    rows = _read_rows(path)
    labels, classnames = _csv_labels(rows, path)
    folder = path.parent
    splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    for i, (row, label) in enumerate(zip(rows, labels, strict=True), start=2):
        split = row["split"].lower()
        if split not in splits:
            raise DatasetError(f"csv: '{path}' line {i}: split {row['split']!r}; expected train, val or test")
        if not row["path"]:
            raise DatasetError(f"csv: '{path}' line {i}: empty path; expected an image path")
        image = os.path.join(folder, os.path.expanduser(row["path"]))
        if not os.path.isfile(image):
            raise DatasetError(
                f"csv: '{path}' line {i}: image '{image}' does not exist; "
                f"expected paths relative to '{folder}'"
            )
        splits[split].append(Sample(os.path.abspath(image), label, classnames[label]))
    for split in ("train", "test"):
        if not splits[split]:
            raise DatasetError(f"csv: '{path}' has no '{split}' rows; expected rows for train and test")
    return Task(
        name="csv",
        classnames=classnames,
        template=read_template(folder),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        root=folder,
        image_dir=folder,
        extra={"csv": str(path)},
    )
