"""What ``vlprompt datasets --root`` reports: which datasets are present under a data root, and why not.

A dataset is *present* when its loader reads it and it has every class the published dataset has
(where that count is known: the CoOp suite, ImageNet and its variants, FGVC); otherwise it is
*missing* (with the loader's reason: which file or folder) or *incomplete* (``4 of 200 classes``).
:func:`unreadable_images` opens every listed image (``--check``).

Example:
    >>> st = dataset_status("dtd", Path("~/data").expanduser())
    >>> st.state, st.detail
    ('present', '47 classes, 5640 images (train 2820, val 1128, test 1692)')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vlprompt.errors import VlpromptError

from .images import open_image
from .registry import get_loader
from .task import Sample, Task

#: Class counts of the published datasets (CoOp's DATASETS.md, ImageNet and its variants).
KNOWN_CLASSES: dict[str, int] = {
    "caltech101": 100, "oxford_pets": 37, "stanford_cars": 196, "oxford_flowers": 102, "food101": 101,
    "fgvc_aircraft": 100, "sun397": 397, "dtd": 47, "eurosat": 10, "ucf101": 101, "imagenet": 1000,
    "imagenet_sketch": 1000, "imagenetv2": 1000, "imagenet_a": 200, "imagenet_r": 200,
}


@dataclass(frozen=True)
class DatasetStatus:
    """``state``: ``present``, ``incomplete`` or ``missing``; ``detail``: counts, or the reason."""

    name: str
    state: str
    detail: str
    task: Task | None = None


def _splits(task: Task) -> str:
    parts = [f"{k} {len(v)}" for k, v in (("train", task.train), ("val", task.val), ("test", task.test)) if v]
    return ", ".join(parts)


def dataset_status(name: str, root: Path) -> DatasetStatus:
    """Load dataset ``name`` from ``root`` and compare its classes with the published count."""
    try:
        task = get_loader(name)(root)
    except VlpromptError as exc:
        reason = str(exc).splitlines()[0]
        return DatasetStatus(name, "missing", reason.split(" Expected ", 1)[0].rstrip(":"))
    n_images = len(task.train) + len(task.val) + len(task.test)
    expected = task.extra.get("expected_classes") or KNOWN_CLASSES.get(name)
    with_images = len({s.label for s in (*task.train, *task.val, *task.test)})
    counts = f"{task.num_classes} classes, {n_images} images ({_splits(task)})"
    if expected and (task.num_classes < expected or with_images < expected):
        have = min(task.num_classes, with_images)
        return DatasetStatus(name, "incomplete", f"{have} of {expected} classes have images; {counts}", task)
    return DatasetStatus(name, "present", counts, task)


def unreadable_images(task: Task, progress: Callable[[int, int], None] | None = None) -> list[tuple[str, str]]:
    """Open every image the task lists (each file once); ``(path, reason)`` of those that fail."""
    seen: dict[str, Sample] = {}
    for s in (*task.train, *task.val, *task.test):
        seen.setdefault(s.path, s)
    bad = []
    for i, sample in enumerate(seen.values()):
        try:
            open_image(sample)
        except VlpromptError as exc:
            bad.append((sample.path, str(exc).split(": ", 1)[-1].splitlines()[0]))
        if progress is not None:
            progress(i + 1, len(seen))
    return bad
