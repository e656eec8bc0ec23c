"""Reading and writing split files in the ``split_zhou_<Name>.json`` format.

A split file is a JSON object whose ``"train"``, ``"val"`` (and ``"test"``) keys hold lists of
``[relative_image_path, integer_label, classname]``; paths are relative to the dataset's image
folder. vlprompt's few-shot split files use the same format (``"test"`` omitted) plus a ``"meta"`` key.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from vlprompt.errors import DatasetError

from .layout import check_inside, pretty_classname
from .task import Sample, Task

Entry = tuple[str, int, str]

_FORMAT = 'a JSON object {"train": [[relative_path, label, classname], ...], "val": [...], "test": [...]}'


def read_split_entries(
    path: Path, required: Iterable[str] = ("train", "val", "test")
) -> dict[str, list[Entry]]:
    """The validated entries of each split present in the file (``required`` keys must be there).

    Raises:
        DatasetError: unreadable JSON, a missing key or a malformed entry, naming the file.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError as exc:
        raise DatasetError(f"split file '{path}' does not exist; expected {_FORMAT}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"split file '{path}' is not valid JSON ({exc}); expected {_FORMAT}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"split file '{path}' holds a {type(data).__name__}; expected {_FORMAT}")
    missing = [k for k in required if k not in data]
    if missing:
        raise DatasetError(
            f"split file '{path}' has no {', '.join(map(repr, missing))} key; expected {_FORMAT}"
        )
    out: dict[str, list[Entry]] = {}
    for split in ("train", "val", "test"):
        if split not in data:
            continue
        items = data[split]
        if not isinstance(items, list):
            raise DatasetError(f"split file '{path}': '{split}' is not a list; expected {_FORMAT}")
        out[split] = [_entry(item, path, split, i) for i, item in enumerate(items)]
    return out


def _entry(item: object, path: Path, split: str, index: int) -> Entry:
    ok = (
        isinstance(item, (list, tuple))
        and len(item) == 3
        and isinstance(item[0], str)
        and isinstance(item[1], int)
        and not isinstance(item[1], bool)
        and item[1] >= 0
        and isinstance(item[2], str)
    )
    if not ok:
        raise DatasetError(
            f"split file '{path}': entry {index} of '{split}' is {item!r}; "
            'expected [relative_path, label >= 0, classname], e.g. ["abbey/sun_aaa.jpg", 0, "abbey"]'
        )
    assert isinstance(item, (list, tuple))
    return check_inside(item[0], f"split file '{path}': entry {index} of '{split}'"), item[1], item[2]


def classnames_from_entries(
    splits: dict[str, list[Entry]], path: Path, rename: Callable[[str], str] | None = None
) -> list[str]:
    """Class names ordered by label, taken from the entries (``rename`` applied, then prettified).

    Raises:
        DatasetError: a label with two names, or labels that are not exactly ``0..n-1``.
    """
    names: dict[int, str] = {}
    for split, entries in splits.items():
        for rel, label, raw in entries:
            name = pretty_classname(rename(raw) if rename else raw)
            prev = names.setdefault(label, name)
            if prev != name:
                raise DatasetError(
                    f"split file '{path}': label {label} is called both {prev!r} and {name!r} "
                    f"(at '{rel}' in '{split}'); expected one class name per label"
                )
    if not names:
        raise DatasetError(f"split file '{path}' contains no images; expected {_FORMAT}")
    n = max(names) + 1
    gaps = [i for i in range(n) if i not in names]
    if gaps:
        raise DatasetError(
            f"split file '{path}': labels must be 0..{n - 1} without gaps, but {gaps[:5]} never occur"
        )
    return [names[i] for i in range(n)]


def entries_to_samples(entries: list[Entry], image_dir: Path, classnames: list[str]) -> list[Sample]:
    """Samples with absolute paths (``image_dir / relative_path``) and the task's class names."""
    base = os.fspath(image_dir)
    return [Sample(os.path.join(base, rel), label, classnames[label]) for rel, label, _ in entries]


def relative_entry(sample: Sample, image_dir: Path) -> list[object]:
    """``[relative_path, label, classname]`` of a sample, path relative to ``image_dir`` (POSIX style).

    Raises:
        DatasetError: the sample's image is not inside ``image_dir``.
    """
    rel = os.path.relpath(sample.path, image_dir)
    if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
        raise DatasetError(
            f"image '{sample.path}' is outside the dataset image folder '{image_dir}'; "
            "split files store paths relative to that folder"
        )
    return [Path(rel).as_posix(), sample.label, sample.classname]


def write_json_atomic(path: Path, data: object) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_lines(path: Path) -> list[str]:
    """The non-empty lines of a text file, stripped (``classnames.txt``, ``template.txt``, ...)."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def generated_split_task(name: str, folder: Path, display: str, augment: str, extra: dict) -> Task:
    """A :class:`Task` from a folder in the generated-suite layout (tiny and real suites): ``classnames.txt``,
    ``template.txt`` (first line), ``split_zhou_<display>.json`` and ``images/``.

    ``extra`` is copied and gains ``split_file`` and ``format``.
    """
    classnames = read_lines(folder / "classnames.txt")
    template = read_lines(folder / "template.txt")[0]
    split_file = folder / f"split_zhou_{display}.json"
    image_dir = folder / "images"
    splits = {sp: entries_to_samples(items, image_dir, classnames)
              for sp, items in read_split_entries(split_file).items()}
    info = {**extra, "split_file": str(split_file), "format": "split_zhou"}
    return Task(name=name, classnames=classnames, template=template, train=splits["train"], val=splits["val"],
                test=splits["test"], root=folder, image_dir=image_dir, augment=augment, extra=info)
