"""Foreground masks for DAPT: on-disk layouts, binarisation, and the paired image/mask transform.

Where masks are looked for (``mask_dir`` = ``task.extra["mask_dir"]`` if set, else
``<dataset folder>/mask``), for an image at ``<image_dir>/<rel>``, first match wins, each name
tried with the image's own extension and with ``.png``:

1. ``mask_dir/<rel>`` — the **simple layout** for custom data: a mirror of the image folder
   (``mask/<class>/<file>.png`` for an ``imagefolder`` dataset); the tiny suite uses it too;
2. ``mask_dir/<class folder>/<file>`` — DAPT's layout for Food101, Caltech101, DTD, EuroSAT,
   UCF101 (``<class folder>`` = the image's parent folder);
3. ``mask_dir/<file>`` — DAPT's layout for the other datasets (flat folder of file names).

The reference's SUN397/ImageNet rule (the absolute image path cut at a fixed depth) is rule 1
for those datasets, without depending on where the data root lies.

Mask values: 1-bit images and images whose values are only 0 and 255 are binary masks
(foreground = non-zero); other images are label maps read as the reference does (the image
converted to RGB, first channel, 0 and 255 = background/void, any other value = foreground).

Resampling of disk masks (DAPT's ``DatasetWrapperMask`` + ``ComposePair``): the mask is kept as
label values (a binary mask as 0 / 1), resized to the image with PIL's default filter (bicubic),
cropped / resized with the image's own interpolation (bicubic) and flipped with it, and only then
thresholded with the label rule above. In-memory masks (Grad-CAM, values in [0, 1]) are
resampled nearest and keep their values.

Example:
    >>> t = PairedTrainTransform(224)
    >>> img, mask = t(Image.open("cat.jpg"), Image.open("mask/cat.png"))
    >>> img.shape, mask.shape
    (torch.Size([3, 224, 224]), torch.Size([1, 224, 224]))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from vlprompt.errors import DatasetError

from .images import open_image
from .task import Sample, Task
from .transforms import CLIP_MEAN, CLIP_STD, MILD_SCALE, TRAIN_SCALE, ToRGB, _check_augment, _check_size

MASK_LAYOUT_HELP = (
    "expected a mask per training image under <dataset folder>/mask/ (or task.extra['mask_dir']): "
    "mask/<path relative to the image folder> (simple layout), mask/<class folder>/<file> or "
    "mask/<file> (DAPT's layouts), as .png or with the image's extension"
)


def mask_to_array(mask: Image.Image) -> np.ndarray:
    """A ``uint8`` ``{0, 1}`` foreground array ``(H, W)`` from a mask image (rules in the module doc)."""
    if mask.mode == "1":
        return (np.asarray(mask) > 0).astype(np.uint8)
    arr = np.asarray(mask)
    if arr.ndim == 3:
        arr = arr[..., 0]
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 255}:
        return (arr > 0).astype(np.uint8)
    return ((arr != 0) & (arr != 255)).astype(np.uint8)


def _label_values(mask: Image.Image) -> np.ndarray:
    """The ``uint8`` label values ``(H, W)`` that the reference thresholds after resampling:
    binary masks as 0 / 1, label maps as the first channel of the RGB image."""
    arr = np.asarray(mask)
    if mask.mode == "1":
        return (arr > 0).astype(np.uint8)
    first = arr[..., 0] if arr.ndim == 3 else arr
    if set(np.unique(first).tolist()) <= {0, 255}:
        return (first > 0).astype(np.uint8)
    return np.asarray(mask.convert("RGB"))[..., 0].copy()


def labels_to_foreground(values: np.ndarray) -> np.ndarray:
    """The reference's threshold on resampled label values: 0 and 255 are background, the rest foreground."""
    return ((values != 0) & (values != 255)).astype(np.uint8)


def read_mask_labels(path: str | os.PathLike[str]) -> Image.Image:
    """A mask file as an ``L`` image of label values (binary masks as 0 / 1), for resampling before
    the threshold (:func:`labels_to_foreground`), as the reference does."""
    try:
        with Image.open(path) as img:
            img.load()
            arr = _label_values(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot read mask '{path}': {type(exc).__name__}: {exc}") from exc
    return Image.fromarray(arr, "L")


def read_mask(path: str | os.PathLike[str]) -> Image.Image:
    """A mask file as an ``L`` image with values 0 / 255 (binarised with :func:`mask_to_array`)."""
    try:
        with Image.open(path) as img:
            img.load()
            arr = mask_to_array(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot read mask '{path}': {type(exc).__name__}: {exc}") from exc
    return Image.fromarray(arr * 255, "L")


def mask_candidates(sample: Sample, image_dir: Path, mask_dir: Path) -> list[Path]:
    """Paths where the mask of ``sample`` may lie, in order (rules 1–3 of the module doc)."""
    path = Path(sample.path)
    try:
        rel = path.relative_to(image_dir)
    except ValueError:
        rel = Path(path.name)
    names = [rel, Path(path.parent.name) / path.name, Path(path.name)]
    out: list[Path] = []
    for name in names:
        for cand in (mask_dir / name, mask_dir / name.with_suffix(".png")):
            if cand not in out:
                out.append(cand)
    return out


def task_mask_dir(task: Task) -> Path:
    """The mask folder of a task: ``task.extra["mask_dir"]`` or ``<dataset folder>/mask``."""
    extra = task.extra.get("mask_dir")
    return Path(extra) if extra else Path(task.root) / "mask"


class DiskMasks:
    """Mask files of a list of samples, located once (all must exist).

    Raises:
        DatasetError: a sample has no mask; names the first missing one and the expected layout.
    """

    def __init__(self, samples: Sequence[Sample], image_dir: str | os.PathLike[str], mask_dir: str | os.PathLike[str]):
        image_dir, mask_dir = Path(image_dir), Path(mask_dir)
        self.paths: list[str] = []
        missing = []
        for s in samples:
            found = next((c for c in mask_candidates(s, image_dir, mask_dir) if c.is_file()), None)
            if found is None:
                missing.append(s)
            else:
                self.paths.append(str(found))
        if missing:
            tried = ", ".join(str(c) for c in mask_candidates(missing[0], image_dir, mask_dir)[:4])
            raise DatasetError(
                f"{len(missing)} of {len(samples)} training images have no mask; first: '{missing[0].path}' "
                f"(tried {tried}, ...); {MASK_LAYOUT_HELP}"
            )

    @classmethod
    def for_task(cls, task: Task) -> DiskMasks:
        return cls(task.train, task.image_dir or task.root, task_mask_dir(task))

    #: masks are label values, thresholded after the paired transform (see the module doc)
    labels = True

    def __call__(self, index: int, image: Image.Image) -> Image.Image:
        return read_mask_labels(self.paths[index])


class ArrayMasks:
    """Masks held in memory (e.g. Grad-CAM masks of the current epoch): ``{index: uint8 (H, W)}``
    with values 0..255 (255 = 1.0); resized to the image by the paired transform."""

    labels = False

    def __init__(self, arrays: dict[int, np.ndarray]) -> None:
        self.arrays = arrays

    def __call__(self, index: int, image: Image.Image) -> Image.Image:
        return Image.fromarray(self.arrays[index], "L")


class PairedTrainTransform:
    """The training transform of an augmentation policy, applied identically to an image and its mask.

    The mask is first resized to the image; then, by ``augment``
    (:data:`vlprompt.data.transforms.AUGMENTS`, the task's policy as for every other method):

    * ``"clip"``: one ``RandomResizedCrop(size, scale=(0.08, 1))`` box and one horizontal-flip coin
      are drawn (torch RNG) and applied to both;
    * ``"crop"``: one ``RandomResizedCrop(size, scale=(0.5, 1))`` box, no flip;
    * ``"none"``: the test geometry (shorter side resized to ``size``, centre crop), no randomness.

    The image is resampled bicubic and normalised (``mean`` / ``std``, CLIP's by default). A mask of
    label values (``labels=True``: disk masks, :func:`read_mask_labels`) is resized to the image
    bicubic (PIL's default, as the reference), cropped bicubic like the image and then thresholded
    (:func:`labels_to_foreground`); any other mask (0..255 = 0..1) is resampled nearest and keeps its
    values. Returns ``(image (3, S, S), mask (1, S, S) float in [0, 1])``.
    """

    def __init__(
        self, size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
        augment: str = "clip",
    ) -> None:
        self.size = _check_size(size)
        _check_augment(augment)
        self.augment = augment
        self.normalize = T.Normalize(mean, std)
        self.rgb = ToRGB()

    def __call__(
        self, image: Image.Image, mask: Image.Image, labels: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.rgb(image)
        mode = T.InterpolationMode.BICUBIC if labels else T.InterpolationMode.NEAREST
        if mask.size != image.size:
            mask = mask.resize(image.size, Image.BICUBIC if labels else Image.NEAREST)
        size = [self.size, self.size]
        if self.augment == "none":
            image = TF.center_crop(TF.resize(image, self.size, T.InterpolationMode.BICUBIC), size)
            mask = TF.center_crop(TF.resize(mask, self.size, mode), size)
        else:
            scale = TRAIN_SCALE if self.augment == "clip" else MILD_SCALE
            top, left, h, w = T.RandomResizedCrop.get_params(image, list(scale), [3.0 / 4.0, 4.0 / 3.0])
            image = TF.resized_crop(image, top, left, h, w, size, T.InterpolationMode.BICUBIC)
            mask = TF.resized_crop(mask, top, left, h, w, size, mode)
            if self.augment == "clip" and torch.rand(1) < 0.5:
                image, mask = TF.hflip(image), TF.hflip(mask)
        if labels:
            out = torch.from_numpy(labels_to_foreground(np.asarray(mask))).float()[None]
        else:
            out = TF.to_tensor(mask)
        return self.normalize(TF.to_tensor(image)), out


MaskSource = Callable[[int, Image.Image], Image.Image]


class MaskedImageDataset(Dataset):
    """``(image, mask, label, index)`` of ``samples`` with a paired train transform.

    Args:
        samples: the training samples.
        masks: ``masks(index, pil_image) -> PIL mask`` (:class:`DiskMasks`, :class:`ArrayMasks`).
        transform: a :class:`PairedTrainTransform`, or one per sample (each sample's own policy).
    """

    def __init__(self, samples: Sequence[Sample], masks: MaskSource,
                 transform: PairedTrainTransform | Sequence[PairedTrainTransform], split: str = "train") -> None:
        self.samples = list(samples)
        self.masks = masks
        if not isinstance(transform, PairedTrainTransform) and len(transform) != len(self.samples):
            raise DatasetError(f"{len(transform)} paired transforms for {len(self.samples)} samples")
        self.transform = transform
        self.split = split

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        sample = self.samples[index]
        image = open_image(sample, self.split)
        tf = self.transform if isinstance(self.transform, PairedTrainTransform) else self.transform[index]
        image, mask = tf(image, self.masks(index, image), labels=getattr(self.masks, "labels", False))
        return image, mask, sample.label, index
