"""Datasets, few-shot splits and image transforms.

Importing this package registers every dataset: the 11 CoOp benchmarks (ImageNet, Caltech101,
OxfordPets, StanfordCars, OxfordFlowers, Food101, FGVCAircraft, SUN397, DTD, EuroSAT, UCF101), the
4 ImageNet variants (V2, Sketch, A, R), the 19 VTAB-1k tasks (``vtab/<task>``), the 5 FGVC datasets
of VPT (``fgvc/<name>``), the tiny suite (``tiny/<task>``), the real-data suite (``real/<name>``) and
the generic ``imagefolder`` and ``csv`` datasets.

Example:
    >>> from vlprompt.data import load_dataset, ImageDataset, test_transform
    >>> task = load_dataset("eurosat", "~/data", shots=16, seed=1, subsample="base")
    >>> ds = ImageDataset(task.test, test_transform(224), split="test")
"""

from __future__ import annotations

import os

from vlprompt.errors import ConfigError

from . import coop_datasets, custom, fgvc, imagenet, real, tiny, vtab  # noqa: F401  (registers the datasets)
from .fewshot import (
    apply_few_shot,
    check_train_classes,
    load_split,
    read_split_meta,
    sample_few_shot,
    sample_lpclip,
    save_split,
    subsample_classes,
)
from .images import ImageDataset, check_readable
from .multitask import is_group_spec, load_task_group, read_split_dk, split_group, task_structure
from .registry import canonical_name, get_loader, list_datasets, register_dataset
from .synthetic import make_image_folder
from .task import Sample, Task
from .templates import IMAGENET_SELECT_TEMPLATES, TEMPLATES, ensemble_templates
from .transforms import CLIP_MEAN, CLIP_STD, test_transform, train_transform, transform_id

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_SELECT_TEMPLATES",
    "TEMPLATES",
    "ImageDataset",
    "Sample",
    "Task",
    "apply_few_shot",
    "canonical_name",
    "check_readable",
    "ensemble_templates",
    "get_loader",
    "is_group_spec",
    "list_datasets",
    "load_dataset",
    "load_task_group",
    "split_group",
    "read_split_dk",
    "load_split",
    "make_image_folder",
    "register_dataset",
    "sample_few_shot",
    "sample_lpclip",
    "save_split",
    "subsample_classes",
    "task_structure",
    "test_transform",
    "train_transform",
    "transform_id",
]


def load_dataset(
    name: str,
    root: str | os.PathLike[str],
    shots: int | None = None,
    seed: int = 1,
    subsample: str = "all",
    split_file: str | os.PathLike[str] | None = None,
    split: str | None = None,
    check_train: bool = True,
) -> Task:
    """Load a registered dataset, optionally few-shot sampled and class-subsampled.

    Steps: load the full dataset from ``root`` -> take the few-shot sample stored in ``split_file``
    (if given) or draw ``shots`` per class with ``seed`` (if ``shots``) -> keep the ``"base"`` or
    ``"new"`` half of the classes (``subsample``). Nothing is written to ``root``.

    Args:
        name: dataset name (case, ``-`` and ``_`` ignored): ``"eurosat"``, ``"OxfordPets"``,
            ``"imagenet-v2"``, ``"imagefolder"``, ``"csv"`` ... (see :func:`list_datasets`).
        root: the data directory holding the dataset folder (``$DATA``), or the dataset folder
            itself (for ``csv``: the CSV file or its folder).
        shots: images per class in train (val gets ``min(shots, 4)``); ``None`` keeps all.
        seed: seed of the few-shot sample.
        subsample: ``"all"``, ``"base"`` (first ceil(n/2) classes) or ``"new"`` (the rest).
        split_file: a few-shot split saved by :func:`save_split`; used instead of sampling.
        split: VTAB-1k / FGVC protocol stage (applied first): ``"tune"`` (train800 → val200; FGVC
            train → val) or ``"final"`` (train800val200 → test; FGVC train → test); see
            :func:`vlprompt.data.vtab.select_split`.
        check_train: refuse a class without training images (below). ``False`` for evaluation only
            (zero-shot, transfer targets, the new classes of a trained run), where training images
            are never used.

    A task group (``"tiny-group/<name>"``, a group ``.yaml``, a ``split_dk_*.json``, ``"a,b"``) is
    loaded by :func:`~vlprompt.data.multitask.load_task_group` (per-task sampling, global labels).

    Raises:
        ConfigError: unknown name, invalid ``shots``/``subsample``, or ``shots`` disagreeing with
            the split file.
        DatasetError: missing or malformed data (the message shows the expected layout), or a class
            without training images in a task that has a training split (VTAB-1k's train800 excepted).

    Example:
        >>> task = load_dataset("dtd", "~/data", shots=16, seed=2, subsample="new")
        >>> task.template
        '{} texture.'
    """
    if subsample not in ("all", "base", "new"):
        raise ConfigError(f"subsample={subsample!r} is invalid; expected 'all', 'base' or 'new'")
    if is_group_spec(name):
        if split_file is not None:
            raise ConfigError("split_file is not supported for task groups; few-shot samples are drawn per task")
        return load_task_group(name, root, shots=shots, seed=seed, subsample=subsample, check_train=check_train)
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        raise ConfigError(f"shots={shots!r} is invalid; expected a positive integer or None")
    canonical = canonical_name(name)
    task = get_loader(name)(root)
    task.name = canonical
    if split is not None:
        task = vtab.select_split(task, split)
    task.seed = seed
    if split_file is not None:
        stored = read_split_meta(split_file).get("shots")
        if shots is not None and stored is not None and stored != shots:
            raise ConfigError(
                f"shots={shots} disagrees with the split file '{split_file}', which holds {stored} shots; "
                "expected the same value (or shots=None)"
            )
        task = load_split(split_file, task)
        if task.shots is None:
            task.shots = shots
    elif shots is not None:
        task = apply_few_shot(task, shots, seed)
    task = subsample_classes(task, subsample)
    return check_train_classes(task) if check_train else task
