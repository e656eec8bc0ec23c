"""The in-memory form of a dataset after loading: samples, class names, template."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    Attributes:
        path: absolute path of the image file.
        label: 0-based class index into the owning task's ``classnames``.
        classname: the class name (kept for split files; the task's list is authoritative).
        augment: this sample's training augmentation policy, or ``None`` for its task's
            ``augment`` (a task group gives every sample its member task's policy).
    """

    path: str
    label: int
    classname: str = ""
    augment: str | None = None


@dataclass
class Task:
    """A loaded dataset, ready for training and evaluation.

    Attributes:
        name: registry name of the dataset (``"eurosat"``, ``"imagefolder"`` ...).
        classnames: class names indexed by label (underscores already usable in prompts).
        template: the hand-crafted zero-shot template, with ``{}`` for the class name.
        train, val, test: the samples of each split (after few-shot sampling and class
            subsampling, if any).
        root: the dataset directory (image paths are stored relative to it in split files).
        shots: K of the few-shot sample, or ``None`` for the full training set.
        seed: seed of the few-shot sample.
        subsample: ``"all"``, ``"base"`` or ``"new"``.
        image_dir: the directory that split-file paths are relative to.
        augment: training augmentation policy (``"clip"``: CLIP's random resized crop + flip, every
            real dataset; ``"crop"`` / ``"none"`` for tasks whose labels those augmentations change;
            ``"per-sample"`` for a task group whose members differ: each sample carries its own).
    """

    name: str
    classnames: list[str]
    template: str
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    root: Path
    shots: int | None = None
    seed: int = 1
    subsample: str = "all"
    image_dir: Path | None = None
    augment: str = "clip"
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def with_splits(self, **changes) -> Task:
        """A copy with some fields replaced (e.g. ``train=...``)."""
        return replace(self, **changes)
