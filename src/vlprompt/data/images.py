"""A torch ``Dataset`` over a list of samples, with clear errors for unreadable images.

Example:
    >>> ds = ImageDataset(task.train, train_transform(224), split="train")
    >>> image, label, index = ds[0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vlprompt.errors import ConfigError, DatasetError

from .task import Sample, Task

_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def open_image(sample: Sample, split: str = "") -> Image.Image:
    """Decode the sample's image fully and return it as an RGB PIL image.

    Raises:
        DatasetError: the file is missing, truncated or not an image; names the file and split.
    """
    try:
        with Image.open(sample.path) as img:
            img.load()
            return img.convert("RGB")
    except _READ_ERRORS as exc:
        where = f" in the {split} split" if split else ""
        raise DatasetError(
            f"cannot read image '{sample.path}'{where} (label {sample.label}, {sample.classname!r}): "
            f"{type(exc).__name__}: {exc}. Expected a readable image file (JPEG, PNG, ...)"
        ) from exc


class ImageDataset(Dataset):
    """Images of ``samples`` as ``(transform(image), label, index)``.

    Args:
        samples: the samples (e.g. ``task.train``).
        transform: applied to the RGB PIL image; ``None`` returns the PIL image itself.
        split: split name used in error messages.
        per_sample: one transform per sample (replaces ``transform``), e.g. each sample's own
            augmentation policy in a task group (:func:`policy_transforms`).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], Any] | None = None,
        split: str = "",
        per_sample: Sequence[Callable[[Image.Image], Any]] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.split = split
        if per_sample is not None and len(per_sample) != len(self.samples):
            raise ConfigError(f"per_sample has {len(per_sample)} transforms for {len(self.samples)} samples")
        self.per_sample = list(per_sample) if per_sample is not None else None

    @classmethod
    def from_task(
        cls, task: Task, split: str, transform: Callable[[Image.Image], Any] | None = None
    ) -> ImageDataset:
        """The dataset of ``task``'s ``"train"``, ``"val"`` or ``"test"`` split."""
        if split not in ("train", "val", "test"):
            raise ConfigError(f"split {split!r} is unknown; expected 'train', 'val' or 'test'")
        return cls(getattr(task, split), transform, split=split)

    @property
    def labels(self) -> list[int]:
        """The label of every sample, in order."""
        return [s.label for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        sample = self.samples[index]
        image = open_image(sample, self.split)
        transform = self.per_sample[index] if self.per_sample is not None else self.transform
        if transform is not None:
            image = transform(image)
        return image, sample.label, index


def policy_transforms(policies: Sequence[str], build: Callable[[str], Any]) -> list[Any]:
    """One transform per sample from per-sample policy names, building each distinct policy once.

    Example:
        >>> tfs = policy_transforms(["none", "crop", "none"], lambda p: train_transform(224, augment=p))
        >>> ds = ImageDataset(samples, per_sample=tfs)
    """
    built: dict[str, Any] = {}
    return [built[p] if p in built else built.setdefault(p, build(p)) for p in policies]


def check_readable(samples: Sequence[Sample], split: str = "") -> None:
    """Open and decode every image once; raise on the first unreadable one.

    Raises:
        DatasetError: naming the unreadable file and the split.
    """
    for sample in samples:
        open_image(sample, split).close()
