"""Seeded few-shot sampling, base/new class subsampling and portable few-shot split files.

Sampling follows the reference (Dassl ``generate_fewshot_dataset``): for every class, ``K`` items
without replacement (all items when a class has fewer); train gets ``K`` per class and val
``min(K, 4)``. Unlike the reference, the sample depends only on ``(samples, K, seed)``: items are
sorted by path first and each call uses its own ``random.Random(seed)``, so the result is the same
whatever the input order or the global random state. Split files store paths relative to the
dataset's image folder, so they survive moving the data.

Example:
    >>> task = apply_few_shot(full_task, shots=16, seed=1)
    >>> save_split("run/split_shot16_seed1.json", task)
    >>> again = load_split("run/split_shot16_seed1.json", full_task)   # same samples, any machine
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

from vlprompt.errors import ConfigError, DatasetError

from .layout import abspath, pretty_classname
from .splitfile import read_split_entries, relative_entry, write_json_atomic
from .task import Sample, Task

SUBSAMPLE_CHOICES = ("all", "base", "new")
VAL_SHOTS_CAP = 4


def _check_shots(shots: object) -> int:
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ConfigError(f"shots={shots!r} is invalid; expected a positive integer (or None for all images)")
    return shots


def sample_few_shot(samples: Sequence[Sample], shots: int, seed: int) -> list[Sample]:
    """``shots`` random samples per label (all of them if fewer), reproducible from ``seed``.

    Labels are visited in sorted order; within a label the items are sorted by path and drawn with
    ``random.Random(seed).sample`` without replacement. The output is grouped by label.

    Example:
        >>> few = sample_few_shot(task.train, shots=4, seed=1)
    """
    shots = _check_shots(shots)
    by_label: dict[int, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: (s.path, s.label)):
        by_label[s.label].append(s)
    rng = random.Random(seed)
    out: list[Sample] = []
    for label in sorted(by_label):
        items = by_label[label]
        out += rng.sample(items, shots) if len(items) >= shots else items
    return out


def apply_few_shot(task: Task, shots: int, seed: int) -> Task:
    """A copy of ``task`` whose train has ``shots`` per class and val ``min(shots, 4)`` per class.

    The test split is unchanged. ``task.shots`` and ``task.seed`` record the sample.
    """
    shots = _check_shots(shots)
    return task.with_splits(
        train=sample_few_shot(task.train, shots, seed),
        val=sample_few_shot(task.val, min(shots, VAL_SHOTS_CAP), seed),
        shots=shots,
        seed=seed,
    )


#: CoOp ``lpclip``'s val shots per train shot (``val_shot_list``); other K get ``min(K, 4)``.
LPCLIP_VAL_SHOTS = {1: 1, 2: 2, 4: 4, 8: 4, 16: 4}


def _lpclip_draw(samples: Sequence[Sample], labels: Sequence[int], shots: int, rng: Any, split: str,
                 origin: str) -> list[Sample]:
    picked: list[Sample] = []
    have = [s.label for s in samples]
    for label in labels:
        idx = [i for i, lab in enumerate(have) if lab == label]  # dataset order, as np.where
        if len(idx) < shots:
            raise DatasetError(
                f"{origin}: class {label} has {len(idx)} {split} images, fewer than the {shots} that the "
                "lpclip protocol draws without replacement; expected at least that many (or fewer shots)"
            )
        picked += [samples[int(i)] for i in rng.choice(idx, size=shots, replace=False)]
    return picked


def sample_lpclip(task: Task, shots: int, seed: int) -> Task:
    """The few-shot sample of CoOp's ``lpclip/linear_probe.py`` for run ``seed``.

    The reference seeds numpy's global generator with the run number and, for every label present in
    train (sorted), draws ``shots`` indices with ``np.random.choice(..., replace=False)`` from that
    label's items in dataset order; then, from the same stream, ``LPCLIP_VAL_SHOTS[shots]`` val items
    per label. This draws the same indices with a private ``numpy.random.RandomState(seed)`` (the
    generator behind the global functions), so a task whose train/val lists are in the reference's
    order (the split file's) gets the reference's sample. A task without val images gets none.

    Raises:
        ConfigError: invalid ``shots``.
        DatasetError: a class with fewer train (or val) images than the protocol draws.

    Example:
        >>> run3 = sample_lpclip(load_dataset("eurosat", "~/data"), shots=16, seed=3)
    """
    import numpy as np

    shots = _check_shots(shots)
    origin = f"dataset '{task.name}'"
    rng = np.random.RandomState(seed)
    labels = sorted({s.label for s in task.train})
    train = _lpclip_draw(task.train, labels, shots, rng, "train", origin)
    val_shots = LPCLIP_VAL_SHOTS.get(shots, min(shots, VAL_SHOTS_CAP))
    val = _lpclip_draw(task.val, labels, val_shots, rng, "val", origin) if task.val else []
    return task.with_splits(train=train, val=val, shots=shots, seed=seed)


def class_counts(samples: Sequence[Sample], num_classes: int) -> list[int]:
    """Images per label ``0 .. num_classes - 1`` (0 for a label without images)."""
    counts = [0] * num_classes
    for s in samples:
        if 0 <= s.label < num_classes:
            counts[s.label] += 1
    return counts


def train_counts(task: Task) -> dict[str, Any]:
    """What a run trains on: ``{"n_train": N, "train_per_class": {"min": a, "max": b}}``.

    ``fit`` records it in ``config.yaml`` and ``results.json``: with ``--shots K`` a class that holds
    fewer than ``K`` images contributes all it has (the reference rule), so ``min`` may be below ``K``.

    Example:
        >>> train_counts(load_dataset("imagefolder", "shapes", shots=50))
        {'n_train': 40, 'train_per_class': {'min': 8, 'max': 8}}
    """
    counts = class_counts(task.train, task.num_classes)
    return {"n_train": len(task.train),
            "train_per_class": {"min": min(counts, default=0), "max": max(counts, default=0)}}


def _name_list(names: Sequence[str], limit: int = 8, quote: bool = True) -> str:
    shown = ", ".join(repr(n) if quote else n for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def shots_shortfall(task: Task) -> str | None:
    """The warning for a few-shot task whose classes hold fewer training images than ``task.shots``,
    or ``None`` (all classes have ``K``, or the task is not few-shot)."""
    if not task.shots:
        return None
    counts = class_counts(task.train, task.num_classes)
    short = [i for i, c in enumerate(counts) if c < task.shots]
    if not short:
        return None
    named = _name_list([f"{task.classnames[i]!r}: {counts[i]}" for i in short], quote=False)
    return (f"{task.name}: {len(short)} of {task.num_classes} classes have fewer than shots={task.shots} training "
            f"images and are trained on all they have ({named}); {len(task.train)} training images in all "
            "(recorded as n_train / train_per_class in config.yaml and results.json)")


def check_train_classes(task: Task, source: str = "") -> Task:
    """``task`` unchanged if every class has a training image (or the task has no training split at all).

    A class without training images would be trained on without a word (its prompts and head rows
    never see an example). Exempt: tasks whose protocol draws a random training subset that may miss
    classes (``task.extra["partial_train_classes"]``, VTAB-1k's train800).

    Raises:
        DatasetError: naming the classes, the dataset and where the training split comes from.
    """
    if not task.train or task.extra.get("partial_train_classes"):
        return task
    counts = class_counts(task.train, task.num_classes)
    empty = [task.classnames[i] for i, c in enumerate(counts) if c == 0]
    if empty:
        origin = source or task.extra.get("fewshot_split_file") or task.extra.get("split_file") or str(task.root)
        sub = f" ({task.subsample} classes)" if task.subsample != "all" else ""
        raise DatasetError(
            f"dataset '{task.name}'{sub}: {len(empty)} of {task.num_classes} classes have no training images "
            f"in the train split of '{origin}': {_name_list(empty)}; expected at least one training image "
            "per class (add images, or remove the class)"
        )
    return task


def base_new_labels(num_classes: int, which: str) -> list[int]:
    """The original labels kept by ``which``: base = first ceil(n/2), new = the rest, all = every label."""
    if which not in SUBSAMPLE_CHOICES:
        raise ConfigError(f"subsample={which!r} is invalid; expected one of {', '.join(SUBSAMPLE_CHOICES)}")
    m = math.ceil(num_classes / 2)
    return {"all": list(range(num_classes)), "base": list(range(m)), "new": list(range(m, num_classes))}[
        which
    ]


def subsample_classes(task: Task, which: str) -> Task:
    """Keep the base or new half of the classes, relabelled ``0..``, in train, val and test.

    ``"base"`` keeps the first ``ceil(n/2)`` labels and ``"new"`` the rest (relabelled from 0), as the
    base-to-new protocol of CoCoOp and its successors; ``"all"`` returns the task unchanged.

    Raises:
        ConfigError: unknown ``which``, or the task is already subsampled.
        DatasetError: the task has too few classes to leave any new class.
    """
    keep = base_new_labels(task.num_classes, which)
    if which == "all":
        return task.with_splits()
    if task.subsample != "all":
        raise ConfigError(
            f"task '{task.name}' is already subsampled to its {task.subsample!r} classes; "
            "expected a task with all classes"
        )
    if not keep:
        raise DatasetError(f"task '{task.name}' has {task.num_classes} class(es); no 'new' classes are left")
    relabel = {old: new for new, old in enumerate(keep)}
    classnames = [task.classnames[old] for old in keep]

    def pick(samples: list[Sample]) -> list[Sample]:
        return [
            Sample(s.path, relabel[s.label], classnames[relabel[s.label]], s.augment)
            for s in samples
            if s.label in relabel
        ]

    extra = dict(task.extra)
    extra["subsample_labels"] = keep
    return task.with_splits(
        classnames=classnames,
        train=pick(task.train),
        val=pick(task.val),
        test=pick(task.test),
        subsample=which,
        extra=extra,
    )


def _image_dir(task: Task) -> Path:
    return abspath(task.image_dir if task.image_dir is not None else task.root)


def save_split(path: str | os.PathLike[str], task: Task) -> Path:
    """Write the train and val samples of ``task`` as a portable split file; returns its path.

    The file is ``{"train": [[relpath, label, classname], ...], "val": [...], "meta": {...}}`` with
    paths relative to the task's image folder (``task.image_dir``, else ``task.root``). Save the task
    before class subsampling so that labels refer to the full dataset.

    Raises:
        ConfigError: the task is class-subsampled (its labels would not round-trip).
        DatasetError: an image lies outside the image folder.
    """
    if task.subsample != "all":
        raise ConfigError(
            f"cannot save a split of a task subsampled to {task.subsample!r} classes; save it before "
            "subsample_classes (load_dataset(..., split_file=...) re-applies the subsample)"
        )
    image_dir = _image_dir(task)
    data = {
        "train": [relative_entry(s, image_dir) for s in task.train],
        "val": [relative_entry(s, image_dir) for s in task.val],
        "meta": {
            "format": "vlprompt-split/1",
            "dataset": task.name,
            "shots": task.shots,
            "seed": task.seed,
            "num_classes": task.num_classes,
        },
    }
    out = abspath(path)
    write_json_atomic(out, data)
    return out


def read_split_meta(path: str | os.PathLike[str]) -> dict:
    """The ``"meta"`` object of a split file written by :func:`save_split` (``{}`` if absent)."""
    try:
        with open(abspath(path), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    meta = data.get("meta") if isinstance(data, dict) else None
    return meta if isinstance(meta, dict) else {}


@overload
def load_split(path: str | os.PathLike[str], task_or_root: Task) -> Task: ...
@overload
def load_split(
    path: str | os.PathLike[str], task_or_root: str | os.PathLike[str]
) -> dict[str, list[Sample]]: ...
def load_split(path, task_or_root):
    """Read a split file written by :func:`save_split` (or a ``split_zhou_*.json``).

    Args:
        path: the split file.
        task_or_root: the full task the split was drawn from: the train/val (and test, if the file
            has one) are replaced, labels and class names are checked against the task, and
            ``shots``/``seed`` are taken from the file's meta. Or an image folder: then a dict
            ``{"train": [...], "val": [...]}`` of samples with absolute paths is returned.

    Raises:
        DatasetError: a malformed file, a label or class name that does not match the task, or an
            image that does not exist under the image folder.
    """
    split_path = abspath(path)
    entries = read_split_entries(split_path, required=("train", "val"))
    if isinstance(task_or_root, Task):
        task: Task | None = task_or_root
        image_dir = _image_dir(task_or_root)
    else:
        task = None
        image_dir = abspath(task_or_root)
    splits: dict[str, list[Sample]] = {}
    for split, items in entries.items():
        samples = []
        for rel, label, name in items:
            if task is not None:
                if label >= task.num_classes or pretty_classname(name) != task.classnames[label]:
                    have = task.classnames[label] if label < task.num_classes else "no such label"
                    raise DatasetError(
                        f"split file '{split_path}': entry [{rel!r}, {label}, {name!r}] does not match "
                        f"dataset '{task.name}' (label {label} is {have!r}); expected a split of this dataset"
                    )
                name = task.classnames[label]
            image = os.path.join(image_dir, rel)
            if not os.path.isfile(image):
                raise DatasetError(
                    f"split file '{split_path}': image '{image}' ({split}) does not exist; expected the "
                    f"paths in the file to be relative to the image folder '{image_dir}'"
                )
            samples.append(Sample(image, label, pretty_classname(name)))
        splits[split] = samples
    if task is None:
        return splits
    meta = read_split_meta(split_path)
    shots = meta.get("shots", task.shots)
    seed = meta.get("seed", task.seed)
    extra = dict(task.extra)
    extra["fewshot_split_file"] = str(split_path)
    return task.with_splits(shots=shots, seed=seed, extra=extra, **splits)
