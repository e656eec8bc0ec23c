"""ImageNet and its four test-only variants (V2, Sketch, A, R) in the CoOp on-disk layout.

Every folder carries a copy of ``classnames.txt`` (lines ``n01440764 tench``: wnid, space, CLIP's
cleaned class name). Labels follow the line order of that file (it is sorted by wnid, which is the
reference's sorted-folder order). ImageNet-A and -R contain 200 classes: their sorted wnid folders
become labels 0..199 and ``task.extra["imagenet_labels"]`` maps them back to the 1000-way labels.

ImageNet has no split file: its ``val`` images serve as both the validation and the test split.
The variants are test-only (empty train and val).

Example:
    >>> from vlprompt.data import load_dataset
    >>> task = load_dataset("imagenet-a", "~/data")   # ~/data/imagenet-adversarial/imagenet-a/<wnid>/
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from vlprompt.errors import DatasetError

from .layout import (
    find_dataset_dir,
    layout_tree,
    list_images,
    list_subdirs,
    pretty_classname,
    read_text_lines,
    require_dir,
)
from .registry import register_dataset
from .task import Sample, Task
from .templates import get_template

_CLASSNAMES_LINE = "classnames.txt   (1000 lines 'n01440764 tench')"


def read_classnames(path: Path) -> list[tuple[str, str]]:
    """``(wnid, classname)`` pairs of a ``classnames.txt``, in file order.

    Raises:
        DatasetError: a line without a name, or a repeated wnid.
    """
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for line in read_text_lines(path):
        wnid, _, name = line.partition(" ")
        if not name.strip():
            raise DatasetError(
                f"'{path}': line {line!r} has no class name; expected lines '<wnid> <class name>' "
                "such as 'n01440764 tench'"
            )
        if wnid in seen:
            raise DatasetError(f"'{path}': wnid {wnid!r} is listed twice; expected one line per class")
        seen.add(wnid)
        pairs.append((wnid, pretty_classname(name)))
    if not pairs:
        raise DatasetError(f"'{path}' is empty; expected lines '<wnid> <class name>'")
    return pairs


def _find_classnames(ddir: Path, display: str, folder: str, layout: Sequence[str]) -> list[tuple[str, str]]:
    """Read ``ddir/classnames.txt``, falling back to the sibling ``imagenet/classnames.txt``."""
    for candidate in (ddir / "classnames.txt", ddir.parent / "imagenet" / "classnames.txt"):
        if candidate.is_file():
            return read_classnames(candidate)
    raise DatasetError(
        f"{display}: '{ddir / 'classnames.txt'}' is missing (nor is there a '{ddir.parent / 'imagenet'}/"
        f"classnames.txt' to fall back on). Copy ImageNet's classnames.txt there; expected layout:\n"
        + layout_tree(folder, layout)
    )


def _scan_wnid_folders(
    split_dir: Path, labels: dict[str, int], classnames: list[str], display: str, what: str
) -> list[Sample]:
    """Samples of ``split_dir/<wnid>/<image>``, labelled through ``labels``."""
    samples: list[Sample] = []
    for wnid in list_subdirs(split_dir):
        if wnid not in labels:
            raise DatasetError(
                f"{display}: folder '{split_dir / wnid}' is not a class listed in {what}; "
                "expected one folder per wnid of classnames.txt"
            )
        label = labels[wnid]
        samples += [Sample(os.fspath(p), label, classnames[label]) for p in list_images(split_dir / wnid)]
    return samples


def _empty_error(display: str, where: Path, folder: str, layout: Sequence[str]) -> DatasetError:
    return DatasetError(
        f"{display}: no images found under '{where}'; expected layout:\n" + layout_tree(folder, layout)
    )


# ------------------------------------------------------------------------------------------- ImageNet

_IMAGENET_LAYOUT = (_CLASSNAMES_LINE, "images/train/<wnid>/<image>.JPEG", "images/val/<wnid>/<image>.JPEG")


@register_dataset("imagenet", "ImageNet", "ilsvrc2012", "imagenet1k")
def load_imagenet(root: Path) -> Task:
    """Load ImageNet from ``$DATA/imagenet/`` (train = ``images/train``; val = test = ``images/val``)."""
    ddir = find_dataset_dir(root, "imagenet", ("classnames.txt",), "ImageNet", _IMAGENET_LAYOUT)
    pairs = _find_classnames(ddir, "ImageNet", "imagenet", _IMAGENET_LAYOUT)
    classnames = [name for _, name in pairs]
    labels = {wnid: i for i, (wnid, _) in enumerate(pairs)}
    image_dir = require_dir(ddir / "images", "ImageNet", "imagenet", _IMAGENET_LAYOUT)
    splits = {}
    for split in ("train", "val"):
        split_dir = require_dir(image_dir / split, "ImageNet", "imagenet", _IMAGENET_LAYOUT)
        splits[split] = _scan_wnid_folders(split_dir, labels, classnames, "ImageNet", "classnames.txt")
        if not splits[split]:
            raise _empty_error("ImageNet", split_dir, "imagenet", _IMAGENET_LAYOUT)
        if split == "train":  # a class of classnames.txt without training images would be an empty class
            seen = {s.label for s in splits[split]}
            absent = [w for w, i in labels.items() if i not in seen]
            if absent:
                raise DatasetError(
                    f"ImageNet: classnames.txt lists {len(labels)} classes but '{split_dir}' has images of only "
                    f"{len(labels) - len(absent)}; first without a folder: {absent[0]!r}. Expected one folder "
                    "per wnid of classnames.txt (use classnames.txt of the classes you have)"
                )
    return Task(
        name="imagenet",
        classnames=classnames,
        template=get_template("imagenet"),
        train=splits["train"],
        val=list(splits["val"]),
        test=list(splits["val"]),
        root=ddir,
        image_dir=image_dir,
        extra={"wnids": [w for w, _ in pairs]},
    )


# ------------------------------------------------------------------------------------------- variants


def _test_only(
    name: str, classnames: list[str], test: list[Sample], ddir: Path, image_dir: Path, extra: dict
) -> Task:
    return Task(
        name=name,
        classnames=classnames,
        template=get_template(name),
        train=[],
        val=[],
        test=test,
        root=ddir,
        image_dir=image_dir,
        extra=extra,
    )


_V2_SUBDIR = "imagenetv2-matched-frequency-format-val"
_V2_LAYOUT = (_CLASSNAMES_LINE, f"{_V2_SUBDIR}/<0..999>/<image>.jpeg")


@register_dataset("imagenetv2", "ImageNetV2", "imagenet_v2")
def load_imagenetv2(root: Path) -> Task:
    """Load ImageNetV2 (matched-frequency) from ``$DATA/imagenetv2/``; label = the folder number."""
    ddir = find_dataset_dir(root, "imagenetv2", (_V2_SUBDIR,), "ImageNetV2", _V2_LAYOUT)
    pairs = _find_classnames(ddir, "ImageNetV2", "imagenetv2", _V2_LAYOUT)
    classnames = [name for _, name in pairs]
    image_dir = require_dir(ddir / _V2_SUBDIR, "ImageNetV2", "imagenetv2", _V2_LAYOUT)
    test: list[Sample] = []
    for folder in list_subdirs(image_dir):
        if not folder.isdigit() or int(folder) >= len(classnames):
            raise DatasetError(
                f"ImageNetV2: folder '{image_dir / folder}' is not a class index; expected folders "
                f"named 0..{len(classnames) - 1}"
            )
        label = int(folder)
        test += [Sample(os.fspath(p), label, classnames[label]) for p in list_images(image_dir / folder)]
    if not test:
        raise _empty_error("ImageNetV2", image_dir, "imagenetv2", _V2_LAYOUT)
    test.sort(key=lambda s: (s.label, s.path))
    return _test_only("imagenetv2", classnames, test, ddir, image_dir, {"wnids": [w for w, _ in pairs]})


_SKETCH_LAYOUT = (_CLASSNAMES_LINE, "images/<wnid>/<image>.JPEG")


@register_dataset("imagenet_sketch", "ImageNetSketch", "sketch")
def load_imagenet_sketch(root: Path) -> Task:
    """Load ImageNet-Sketch from ``$DATA/imagenet-sketch/images/<wnid>/`` (all 1000 classes)."""
    ddir = find_dataset_dir(root, "imagenet-sketch", (), "ImageNetSketch", _SKETCH_LAYOUT)
    pairs = _find_classnames(ddir, "ImageNetSketch", "imagenet-sketch", _SKETCH_LAYOUT)
    classnames = [name for _, name in pairs]
    labels = {wnid: i for i, (wnid, _) in enumerate(pairs)}
    image_dir = require_dir(ddir / "images", "ImageNetSketch", "imagenet-sketch", _SKETCH_LAYOUT)
    test = _scan_wnid_folders(image_dir, labels, classnames, "ImageNetSketch", "classnames.txt")
    if not test:
        raise _empty_error("ImageNetSketch", image_dir, "imagenet-sketch", _SKETCH_LAYOUT)
    return _test_only("imagenet_sketch", classnames, test, ddir, image_dir, {"wnids": [w for w, _ in pairs]})


def _load_200_class_variant(root: Path, name: str, display: str, folder: str, subdir: str) -> Task:
    """ImageNet-A / -R: the sorted wnid folders present become labels 0..n-1."""
    layout = (_CLASSNAMES_LINE, f"{subdir}/<wnid>/<image>.jpg   (200 wnid folders)")
    ddir = find_dataset_dir(root, folder, (subdir,), display, layout)
    pairs = _find_classnames(ddir, display, folder, layout)
    full = {wnid: i for i, (wnid, _) in enumerate(pairs)}
    image_dir = require_dir(ddir / subdir, display, folder, layout)
    wnids = list_subdirs(image_dir)
    unknown = [w for w in wnids if w not in full]
    if unknown:
        raise DatasetError(
            f"{display}: folder '{image_dir / unknown[0]}' is not a wnid listed in classnames.txt; "
            "expected only wnid folders (like n01498041)"
        )
    classnames = [pairs[full[w]][1] for w in wnids]
    labels = {w: i for i, w in enumerate(wnids)}
    test = _scan_wnid_folders(image_dir, labels, classnames, display, "classnames.txt")
    if not test:
        raise _empty_error(display, image_dir, folder, layout)
    extra = {"wnids": wnids, "imagenet_labels": [full[w] for w in wnids]}
    return _test_only(name, classnames, test, ddir, image_dir, extra)


@register_dataset("imagenet_a", "ImageNetA", "imagenet_adversarial")
def load_imagenet_a(root: Path) -> Task:
    """Load ImageNet-A from ``$DATA/imagenet-adversarial/imagenet-a/<wnid>/`` (200 classes)."""
    return _load_200_class_variant(root, "imagenet_a", "ImageNetA", "imagenet-adversarial", "imagenet-a")


@register_dataset("imagenet_r", "ImageNetR", "imagenet_rendition")
def load_imagenet_r(root: Path) -> Task:
    """Load ImageNet-R from ``$DATA/imagenet-rendition/imagenet-r/<wnid>/`` (200 classes)."""
    return _load_200_class_variant(root, "imagenet_r", "ImageNetR", "imagenet-rendition", "imagenet-r")
