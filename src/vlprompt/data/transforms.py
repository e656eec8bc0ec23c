"""CLIP's image pre-processing (reference: Dassl transforms with the CoOp configs).

* test: resize the shorter side to ``size`` (bicubic, aspect kept), centre crop ``size``, normalise.
* train: ``RandomResizedCrop(size, scale=(0.08, 1.0))`` (bicubic), random horizontal flip, normalise
  (augmentation policy ``"clip"``, every real dataset). A task may declare a milder policy when these
  augmentations change its labels (the tiny suite's positions, arrow directions, counts):
  ``"crop"`` = ``RandomResizedCrop(scale=(0.5, 1.0))`` without flip, ``"none"`` = the test transform.

Images are converted to RGB first (grey-scale, palette and RGBA files are common in real datasets).

Example:
    >>> t = test_transform(224)
    >>> t(Image.open("cat.jpg")).shape
    torch.Size([3, 224, 224])
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from torchvision import transforms as T

from vlprompt.errors import ConfigError

from .task import Sample

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
TRAIN_SCALE: tuple[float, float] = (0.08, 1.0)
TRANSFORM_KINDS = ("train", "test")
#: Training augmentation policies (see the module docstring).
AUGMENTS = ("clip", "crop", "none")
MILD_SCALE: tuple[float, float] = (0.5, 1.0)
#: ``Task.augment`` of a task group whose members differ: every sample carries its own policy.
PER_SAMPLE = "per-sample"
_VERSION = 1


class ToRGB:
    """Convert a PIL image to RGB (a picklable callable, safe for DataLoader workers)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


def _check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"image size {size!r} is invalid; expected a positive integer such as 224")
    return size


def test_transform(
    size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> T.Compose:
    """Resize (short side, bicubic) + CenterCrop + ToTensor + Normalize."""
    size = _check_size(size)
    return T.Compose(
        [
            ToRGB(),
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def train_transform(
    size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, augment: str = "clip"
) -> T.Compose:
    """Training transform of an augmentation policy.

    ``"clip"`` (default): RandomResizedCrop(scale=(0.08, 1), bicubic) + RandomHorizontalFlip + ToTensor +
    Normalize; ``"crop"``: RandomResizedCrop(scale=(0.5, 1)) without flip; ``"none"``: the test transform.
    """
    size = _check_size(size)
    _check_augment(augment)
    if augment == "none":
        return test_transform(size, mean, std)
    scale = TRAIN_SCALE if augment == "clip" else MILD_SCALE
    ops = [ToRGB(), T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC)]
    if augment == "clip":
        ops.append(T.RandomHorizontalFlip())
    return T.Compose([*ops, T.ToTensor(), T.Normalize(mean, std)])


def build_transform(
    kind: str, size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
    augment: str = "clip",
) -> T.Compose:
    """``train_transform`` (of policy ``augment``) or ``test_transform`` by name."""
    _check_kind(kind)
    if kind == "train":
        return train_transform(size, mean, std, augment)
    return test_transform(size, mean, std)


def sample_policies(samples: Sequence[Sample], default: str, override: str | None = None) -> list[str]:
    """The training augmentation policy of every sample: ``override`` (``TrainConfig.augment``) if
    set, else the sample's own (``Sample.augment``), else ``default`` (the task's ``augment``).

    Raises:
        ConfigError: an unknown policy, or a sample without a policy in a ``"per-sample"`` task.

    Example:
        >>> sample_policies(group.train, group.augment)        # e.g. ['none', 'none', ..., 'crop']
    """
    if override is not None:
        _check_augment(override)
        return [override] * len(samples)
    out = []
    for s in samples:
        policy = s.augment or default
        if policy == PER_SAMPLE:
            raise ConfigError(f"sample '{s.path}' has no augmentation policy and its task's is {PER_SAMPLE!r}; "
                              f"set Sample.augment to one of {', '.join(AUGMENTS)}")
        _check_augment(policy)
        out.append(policy)
    return out


def _check_augment(augment: str) -> None:
    if augment not in AUGMENTS:
        raise ConfigError(f"augmentation policy {augment!r} is unknown; expected one of {', '.join(AUGMENTS)}")


def image_norm(backbone: object) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` the backbone's weights expect: its ``image_mean`` / ``image_std``, else CLIP's.

    Example:
        >>> test_transform(bb.image_size, *image_norm(bb))
    """
    mean = getattr(backbone, "image_mean", None) or CLIP_MEAN
    std = getattr(backbone, "image_std", None) or CLIP_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _check_kind(kind: str) -> None:
    if kind not in TRANSFORM_KINDS:
        raise ConfigError(f"transform kind {kind!r} is unknown; expected 'train' or 'test'")


def transform_id(
    kind: str, size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
    augment: str = "clip",
) -> str:
    """A string that identifies a transform exactly, for use in feature-cache keys.

    Example:
        >>> transform_id("test", 224)
        'v1-test-resize_bicubic224-centercrop224-clipnorm'
    """
    _check_kind(kind)
    _check_augment(augment)
    size = _check_size(size)
    if tuple(mean) == CLIP_MEAN and tuple(std) == CLIP_STD:
        norm = "clipnorm"
    else:
        norm = "norm_" + "_".join(f"{v:.6g}" for v in (*mean, *std))
    if kind == "test" or augment == "none":
        ops = f"resize_bicubic{size}-centercrop{size}"
    elif augment == "crop":
        ops = f"rrc_bicubic{size}_s{MILD_SCALE[0]:g}-{MILD_SCALE[1]:g}"
    else:
        ops = f"rrc_bicubic{size}_s{TRAIN_SCALE[0]:g}-{TRAIN_SCALE[1]:g}-hflip"
    return f"v{_VERSION}-{kind}-{ops}-{norm}"


# ``test_transform`` matches pytest's test-name pattern; keep pytest from collecting it when a test
# module imports it.
test_transform.__test__ = False  # type: ignore[attr-defined]
